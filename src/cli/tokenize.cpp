// mil tokenize: the ids and pieces of a text, for debugging tokenization.
#include <cstdio>

#include "cli/commands.h"
#include "tokenizer/model_tokenizer.h"

namespace mil::cli {
namespace {

struct TokenizeOptions {
  std::string model_id;
  std::string text;
  bool chat = false;
  bool no_special = false;
};

// Pieces are shown with their bytes escaped where they are not printable text.
std::string printable(std::string_view piece) {
  std::string out;
  for (unsigned char c : piece) {
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

void run_tokenize(const TokenizeOptions& o) {
  const ModelTokenizer text = ModelTokenizer::load(o.model_id);
  const Tokenizer& tok = text.tokenizer();
  const std::vector<int32_t> ids = o.chat ? text.encode_chat({{"user", o.text}})
                                          : tok.encode(o.text, !o.no_special);
  for (int32_t id : ids) {
    const std::string decoded = tok.decode(std::span<const int32_t>(&id, 1));
    std::printf("%8d  %-24s  %s%s\n", id, printable(tok.id_to_token(id)).c_str(),
                printable(decoded).c_str(), tok.is_special(id) ? "  (special)" : "");
  }
  std::printf("%zu tokens\n", ids.size());
}

}  // namespace

void add_tokenize_command(CLI::App& app) {
  auto options = std::make_shared<TokenizeOptions>();
  CLI::App* cmd = app.add_subcommand("tokenize", "show the token ids and pieces of a text");
  cmd->add_option("--model-id", options->model_id, "HF model directory or GGUF file")->required();
  cmd->add_option("--text", options->text, "text to tokenize")->required();
  cmd->add_flag("--chat", options->chat, "apply the chat template to the text as a user message");
  cmd->add_flag("--no-special", options->no_special, "do not add BOS/EOS (post-processor)");
  cmd->callback([options] { run_tokenize(*options); });
}

}  // namespace mil::cli
