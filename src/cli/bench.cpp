// mil bench: prefill and decode tokens/s of one sequence, median of repeated runs.
// Prints one JSON line so runs can be compared by scripts.
#include <algorithm>
#include <cstdio>
#include <random>

#include "cli/commands.h"
#include "engine/generator.h"

namespace mil::cli {
namespace {

struct BenchOptions {
  ModelOptions model;
  int prompt_tokens = 128;
  int new_tokens = 128;
  int repeat = 3;
  std::string adapter;  // one of --lora-adapters, applied per row (not merged)
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void run_bench(const BenchOptions& o) {
  LoadedModel m = load_model(o.model);
  const ModelConfig& c = m.model->config();
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(c.vocab_size - 1));
  std::vector<int32_t> prompt(o.prompt_tokens);
  for (int32_t& t : prompt) t = token(rng);

  Generator generator(*m.model, o.prompt_tokens + o.new_tokens);
  GenerationParams params;
  params.max_new_tokens = o.new_tokens;
  params.stop_at_eos = false;
  params.adapter = o.adapter;
  GenerationParams warmup = params;
  warmup.max_new_tokens = 4;
  generator.generate(prompt, warmup);
  std::vector<double> prefill, decode;
  for (int i = 0; i < o.repeat; ++i) {
    const GenerationResult r = generator.generate(prompt, params);
    prefill.push_back(o.prompt_tokens / r.prefill_seconds);
    // The first new token comes from the prefill logits; each later one costs a step.
    decode.push_back((o.new_tokens - 1) / r.decode_seconds);
  }
  std::printf(
      "{\"engine\": \"mil\", \"model\": \"%s\", \"device\": \"%s\", \"threads\": %d, "
      "\"matmul\": \"%s\", "
      "\"adapter\": \"%s\", \"prompt_tokens\": %d, \"new_tokens\": %d, \"repeat\": %d, "
      "\"prefill_tokens_per_s\": %.2f, \"decode_tokens_per_s\": %.2f}\n",
      o.model.model_id.c_str(), m.device.c_str(), o.model.threads,
      m.device == "cuda" ? "bf16" : o.model.exact ? "exact" : o.model.int8 ? "int8" : "f32",
      o.adapter.c_str(), o.prompt_tokens, o.new_tokens, o.repeat, median(prefill), median(decode));
}

}  // namespace

void add_bench_command(CLI::App& app) {
  auto options = std::make_shared<BenchOptions>();
  CLI::App* cmd = app.add_subcommand("bench", "measure prefill and decode tokens/s");
  options->model.add_to(*cmd);
  cmd->add_option("--prompt-tokens", options->prompt_tokens)->capture_default_str()
      ->check(CLI::Range(1, 1 << 16));
  cmd->add_option("--new-tokens", options->new_tokens)->capture_default_str()
      ->check(CLI::Range(2, 1 << 16));
  cmd->add_option("--repeat", options->repeat)->capture_default_str()->check(CLI::Range(1, 1000));
  cmd->add_option("--adapter", options->adapter, "run with this registered LoRA adapter");
  cmd->callback([options] { run_bench(*options); });
}

}  // namespace mil::cli
