#include <charconv>
#include <thread>

#include "backends/cpu/cpu_ops.h"
#ifdef MIL_HAVE_CUDA
#include "backends/cuda/cuda_ops.h"
#endif
#include "cli/commands.h"
#include "core/error.h"
#include "lora/adapter.h"

namespace mil::cli {

void ModelOptions::add_to(CLI::App& cmd) {
  cmd.add_option("--model-id", model_id, "HF model directory or GGUF file")->required();
  cmd.add_option("--device", device,
                 "cpu, cuda, or auto (cuda when MIL is built with CUDA and a GPU is present)")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  cmd.add_option("--threads", threads, "CPU threads (0: all cores)")->capture_default_str();
  cmd.add_flag("--exact", exact,
               "plain scalar reference kernels (slow; an accuracy yardstick)");
  cmd.add_flag("--int8", int8,
               "quantize activations to 8 bits for quantized weights, as llama.cpp does (faster "
               "at one thread, less accurate on models with outlier activations)")
      ->excludes("--exact");
  cmd.add_option("--max-batch-tokens", max_tokens_per_step, "tokens per forward step (prefill chunk)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 16));
  cmd.add_option("--lora-adapters", lora_adapters,
                 "PEFT LoRA adapters to register, NAME=PATH (comma separated or repeated)")
      ->delimiter(',');
  cmd.add_flag("--merge-adapter", merge_adapter,
               "fold the one registered adapter into the base weights (single-adapter serving)");
  cmd.add_option("--max-resident-adapters", max_resident_adapters,
                 "adapters kept in memory at once (least recently used ones are evicted)")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
}

std::pair<std::string, std::string> split_adapter_spec(const std::string& spec) {
  const size_t eq = spec.find('=');
  if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size()) {
    fail("adapter '{}': expected NAME=PATH", spec);
  }
  return {spec.substr(0, eq), spec.substr(eq + 1)};
}

std::string resolve_device(const std::string& device) {
  if (device == "cpu") return "cpu";
#ifdef MIL_HAVE_CUDA
  if (device == "cuda") {
    MIL_CHECK(cuda_device_count() > 0, "--device cuda: no CUDA GPU is present");
    return "cuda";
  }
  return cuda_device_count() > 0 ? "cuda" : "cpu";
#else
  MIL_CHECK(device != "cuda", "--device cuda: this mil was built without CUDA (-DMIL_CUDA=ON)");
  return "cpu";
#endif
}

LoadedModel load_model(const ModelOptions& options) {
  LoadedModel m;
  const int threads = options.threads > 0
                          ? options.threads
                          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  // The CPU matmul paths (--exact, --int8) pick the CPU unless a device is named.
  m.device = resolve_device((options.exact || options.int8) && options.device == "auto"
                                ? "cpu"
                                : options.device);
#ifdef MIL_HAVE_CUDA
  if (m.device == "cuda") {
    MIL_CHECK(!options.exact && !options.int8, "--exact and --int8 are CPU matmul paths");
    m.ops = make_cuda_ops(0);
  }
#endif
  if (!m.ops) {
    m.ops = options.exact  ? make_cpu_ops_exact(threads)
            : options.int8 ? make_cpu_ops_int8(threads)
                           : make_cpu_ops(threads);
  }
  m.weights = std::make_unique<LlamaWeights>(open_weight_source(options.model_id), ShardSpec{});
  if (options.merge_adapter) {
    MIL_CHECK(options.lora_adapters.size() == 1, "--merge-adapter needs exactly one adapter");
    const auto [name, path] = split_adapter_spec(options.lora_adapters[0]);
    m.weights->merge_lora(load_lora_adapter(name, path, m.weights->config(), ShardSpec{}));
  } else if (!options.lora_adapters.empty() || options.adapter_store) {
    m.adapters = std::make_unique<AdapterStore>(
        m.weights->config(), ShardSpec{},
        AdapterStore::Limits{options.max_resident_adapters, size_t{8} << 30});
    m.adapters->use_backend(*m.ops);
    for (const std::string& spec : options.lora_adapters) {
      const auto [name, path] = split_adapter_spec(spec);
      m.adapters->add(name, path);
    }
  }
  m.weights->to_device(*m.ops);
  m.model = std::make_unique<LlamaModel>(*m.weights, *m.ops, options.max_tokens_per_step,
                                         m.adapters.get());
  return m;
}

std::vector<int32_t> parse_token_ids(const std::string& text) {
  std::vector<int32_t> ids;
  const char* p = text.data();
  const char* end = p + text.size();
  while (p < end) {
    while (p < end && (*p == ',' || *p == ' ' || *p == '\n' || *p == '\t')) ++p;
    if (p == end) break;
    int32_t v = 0;
    auto [next, ec] = std::from_chars(p, end, v);
    if (ec != std::errc() || v < 0) fail("invalid token id near '{}'", std::string(p, std::min<size_t>(12, end - p)));
    ids.push_back(v);
    p = next;
  }
  return ids;
}

}  // namespace mil::cli
