// mil generate: runs the generation loop on a text prompt (optionally through the model's
// chat template) or on token ids, and streams the continuation as it is produced.
#include <cstdio>
#include <optional>

#include "cli/commands.h"
#include "core/error.h"
#include "engine/generator.h"
#include "tokenizer/model_tokenizer.h"

namespace mil::cli {
namespace {

struct GenerateOptions {
  ModelOptions model;
  std::string prompt;
  std::string prompt_ids;
  bool chat = false;
  std::string system;
  bool show_special = false;
  std::string adapter;
  GenerationParams gen;
  int64_t context = 0;  // 0: prompt + max_new_tokens
};

const char* finish_name(FinishReason r) { return finish_reason_name(r); }

void run_generate(GenerateOptions o) {
  if (!o.adapter.empty()) {
    if (o.adapter.find('=') != std::string::npos) {
      o.model.lora_adapters.push_back(o.adapter);
      o.adapter = split_adapter_spec(o.adapter).first;
    }
    // A merged adapter is part of the weights: the prompt runs on the "base".
    o.gen.adapter = o.model.merge_adapter ? "" : o.adapter;
  }
  std::optional<ModelTokenizer> text;
  std::vector<int32_t> prompt;
  if (!o.prompt_ids.empty()) {
    prompt = parse_token_ids(o.prompt_ids);
  } else {
    text = ModelTokenizer::load(o.model.model_id);
    if (o.chat) {
      std::vector<ChatMessage> messages;
      if (!o.system.empty()) messages.push_back({"system", o.system});
      messages.push_back({"user", o.prompt});
      prompt = text->encode_chat(messages);
    } else {
      prompt = text->tokenizer().encode(o.prompt);
    }
  }
  MIL_CHECK(!prompt.empty(), "the prompt has no tokens");
  LoadedModel m = load_model(o.model);
  const int64_t context = o.context > 0 ? o.context
                                        : static_cast<int64_t>(prompt.size()) + o.gen.max_new_tokens;
  Generator generator(*m.model, context);
  std::optional<IncrementalDecoder> decoder;
  if (text) decoder.emplace(text->tokenizer(), !o.show_special);
  const GenerationResult r = generator.generate(prompt, o.gen, [&](int32_t token) {
    if (decoder) {
      const std::string piece = decoder->push(token);
      std::fwrite(piece.data(), 1, piece.size(), stdout);
    } else {
      std::printf("%d ", token);
    }
    std::fflush(stdout);
    return true;
  });
  if (decoder) {
    const std::string rest = decoder->flush();
    std::fwrite(rest.data(), 1, rest.size(), stdout);
  }
  std::printf("\n");
  const double prefill_tps = prompt.size() / std::max(r.prefill_seconds, 1e-9);
  const double decode_tps = r.tokens.size() > 1 ? (r.tokens.size() - 1) / std::max(r.decode_seconds, 1e-9) : 0;
  std::fprintf(stderr, "finish: %s; %zu prompt tokens at %.1f tokens/s, %zu new tokens at %.1f tokens/s\n",
               finish_name(r.finish), prompt.size(), prefill_tps, r.tokens.size(), decode_tps);
}

}  // namespace

void add_generate_command(CLI::App& app) {
  auto options = std::make_shared<GenerateOptions>();
  CLI::App* cmd = app.add_subcommand("generate", "generate a continuation of a prompt");
  options->model.add_to(*cmd);
  auto* prompt = cmd->add_option("--prompt", options->prompt, "prompt text");
  auto* ids = cmd->add_option("--prompt-ids", options->prompt_ids,
                              "prompt token ids, comma or space separated (instead of --prompt)");
  prompt->excludes(ids);
  cmd->add_flag("--chat", options->chat,
                "apply the model's chat template to the prompt as a user message")
      ->needs(prompt);
  cmd->add_option("--system", options->system, "system message for --chat")->needs("--chat");
  cmd->add_flag("--show-special", options->show_special, "print special tokens such as EOS");
  cmd->add_option("--adapter", options->adapter,
                  "LoRA adapter for this prompt: NAME (one of --lora-adapters) or NAME=PATH");
  cmd->add_option("--max-new-tokens", options->gen.max_new_tokens, "tokens to generate at most")
      ->capture_default_str()->check(CLI::Range(0, 1 << 20));
  cmd->add_option("--temperature", options->gen.sampling.temperature, "0: greedy")
      ->capture_default_str()->check(CLI::Range(0.0, 100.0));
  cmd->add_option("--top-k", options->gen.sampling.top_k, "0: off")->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-p", options->gen.sampling.top_p, "1: off")->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--seed", options->gen.seed, "sampling seed")->capture_default_str();
  cmd->add_flag("!--ignore-eos", options->gen.stop_at_eos, "keep going past EOS");
  cmd->add_option("--context", options->context, "KV cache tokens (0: prompt + max-new-tokens)");
  cmd->callback([options, prompt, ids] {
    if (prompt->count() + ids->count() == 0) throw CLI::RequiredError("--prompt or --prompt-ids");
    run_generate(*options);
  });
}

}  // namespace mil::cli
