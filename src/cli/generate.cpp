// mil generate: runs the generation loop on token ids and streams the new ids.
#include <cstdio>

#include "cli/commands.h"
#include "core/error.h"
#include "engine/generator.h"

namespace mil::cli {
namespace {

struct GenerateOptions {
  ModelOptions model;
  std::string prompt_ids;
  GenerationParams gen;
  int64_t context = 0;  // 0: prompt + max_new_tokens
};

const char* finish_name(FinishReason r) {
  switch (r) {
    case FinishReason::Length: return "length";
    case FinishReason::EndOfSequence: return "eos_token";
    case FinishReason::StopToken: return "stop_sequence";
    case FinishReason::Cancelled: return "cancelled";
  }
  return "?";
}

void run_generate(const GenerateOptions& o) {
  const std::vector<int32_t> prompt = parse_token_ids(o.prompt_ids);
  MIL_CHECK(!prompt.empty(), "--prompt-ids: no token ids given");
  LoadedModel m = load_model(o.model);
  const int64_t context = o.context > 0 ? o.context
                                        : static_cast<int64_t>(prompt.size()) + o.gen.max_new_tokens;
  Generator generator(*m.model, context);
  const GenerationResult r = generator.generate(prompt, o.gen, [](int32_t token) {
    std::printf("%d ", token);
    std::fflush(stdout);
    return true;
  });
  std::printf("\n");
  const double prefill_tps = prompt.size() / std::max(r.prefill_seconds, 1e-9);
  const double decode_tps = r.tokens.size() > 1 ? (r.tokens.size() - 1) / std::max(r.decode_seconds, 1e-9) : 0;
  std::fprintf(stderr, "finish: %s; %zu prompt tokens at %.1f tokens/s, %zu new tokens at %.1f tokens/s\n",
               finish_name(r.finish), prompt.size(), prefill_tps, r.tokens.size(), decode_tps);
}

}  // namespace

void add_generate_command(CLI::App& app) {
  auto options = std::make_shared<GenerateOptions>();
  CLI::App* cmd = app.add_subcommand("generate", "generate tokens from a prompt of token ids");
  options->model.add_to(*cmd);
  cmd->add_option("--prompt-ids", options->prompt_ids, "prompt token ids, comma or space separated")
      ->required();
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
  cmd->callback([options] { run_generate(*options); });
}

}  // namespace mil::cli
