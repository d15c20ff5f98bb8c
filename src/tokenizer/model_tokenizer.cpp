#include "tokenizer/model_tokenizer.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "formats/gguf.h"

namespace mil {
namespace fs = std::filesystem;

namespace {

using ojson = nlohmann::ordered_json;

// bos_token/eos_token in tokenizer_config.json: a string or an AddedToken object.
std::string token_text(const ojson& config, const char* key, const std::string& source) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object()) {
    auto content = it->find("content");
    if (content != it->end() && content->is_string()) return content->get<std::string>();
  }
  fail("{}: field '{}' must be a string or an object with 'content'", source, key);
}

// chat_template: a string, or a list of {"name", "template"} of which "default" is used.
std::optional<std::string> template_text(const ojson& config, const std::string& source) {
  auto it = config.find("chat_template");
  if (it == config.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_array()) {
    for (const ojson& entry : *it) {
      if (entry.is_object() && entry.value("name", "") == "default" && entry.contains("template") &&
          entry["template"].is_string()) {
        return entry["template"].get<std::string>();
      }
    }
    fail("{}: field 'chat_template' is a list without a 'default' entry", source);
  }
  fail("{}: field 'chat_template' must be a string or a list", source);
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open", path.string());
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

fs::path find_gguf(const fs::path& path) {
  if (!fs::is_directory(path)) return path;
  for (const auto& entry : fs::directory_iterator(path)) {
    if (entry.path().extension() == ".gguf") return entry.path();
  }
  fail("{}: no tokenizer.json and no .gguf file", path.string());
}

}  // namespace

ModelTokenizer ModelTokenizer::load(const std::string& path_text) {
  ModelTokenizer m;
  const fs::path path(path_text);
  if (fs::is_directory(path) && fs::exists(path / "tokenizer.json")) {
    m.tokenizer_ = Tokenizer::from_hf_json((path / "tokenizer.json").string());
    const fs::path config_path = path / "tokenizer_config.json";
    if (fs::exists(config_path)) {
      const std::string source = config_path.string();
      ojson config;
      try {
        config = ojson::parse(read_file(config_path));
      } catch (const ojson::exception& e) {
        fail("{}: invalid JSON: {}", source, e.what());
      }
      if (!config.is_object()) fail("{}: expected a JSON object", source);
      m.bos_token_ = token_text(config, "bos_token", source);
      m.eos_token_ = token_text(config, "eos_token", source);
      if (auto text = template_text(config, source)) {
        m.chat_template_ = std::make_unique<ChatTemplate>(*text, source);
      }
    }
    // Newer checkpoints keep the template in its own file.
    if (!m.chat_template_ && fs::exists(path / "chat_template.jinja")) {
      const fs::path p = path / "chat_template.jinja";
      m.chat_template_ = std::make_unique<ChatTemplate>(read_file(p), p.string());
    }
    return m;
  }
  const GGUFFile gguf(find_gguf(path).string());
  m.tokenizer_ = Tokenizer::from_gguf(gguf);
  auto special = [&](const char* key) -> std::string {
    auto id = gguf.get_int(key);
    if (!id) return "";
    return std::string(m.tokenizer_->id_to_token(static_cast<int32_t>(*id)));
  };
  m.bos_token_ = special("tokenizer.ggml.bos_token_id");
  m.eos_token_ = special("tokenizer.ggml.eos_token_id");
  if (auto text = gguf.get_string("tokenizer.chat_template")) {
    m.chat_template_ = std::make_unique<ChatTemplate>(std::string(*text),
                                                      gguf.path());
  }
  return m;
}

std::string ModelTokenizer::render_chat(const std::vector<ChatMessage>& messages,
                                        bool add_generation_prompt) const {
  if (!chat_template_) fail("the model has no chat template");
  ojson list = ojson::array();
  for (const ChatMessage& m : messages) list.push_back({{"role", m.role}, {"content", m.content}});
  ojson context = {{"messages", std::move(list)},
                   {"add_generation_prompt", add_generation_prompt},
                   {"bos_token", bos_token_},
                   {"eos_token", eos_token_},
                   // transformers always passes these, as None when absent.
                   {"tools", nullptr},
                   {"documents", nullptr}};
  return chat_template_->render(context);
}

std::vector<int32_t> ModelTokenizer::encode_chat(const std::vector<ChatMessage>& messages,
                                                 bool add_generation_prompt) const {
  return tokenizer_->encode(render_chat(messages, add_generation_prompt), false);
}

}  // namespace mil
