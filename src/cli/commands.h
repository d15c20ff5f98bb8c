// Subcommands of the mil executable. Each registers its options and a callback that does
// the work through the library parts; no logic of its own beyond argument plumbing.
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <string>
#include <vector>

#include "backends/ops.h"
#include "lora/adapter_store.h"
#include "model/llama.h"

namespace mil::cli {

void add_generate_command(CLI::App& app);
void add_bench_command(CLI::App& app);
void add_info_command(CLI::App& app);
void add_tokenize_command(CLI::App& app);
void add_serve_command(CLI::App& app);

// Options every model-running command shares.
struct ModelOptions {
  std::string model_id;
  std::string device = "auto";  // cpu, cuda, or auto: cuda when built with it and a GPU is present
  int threads = 0;  // 0: all cores
  bool exact = false;
  bool int8 = false;
  int64_t max_tokens_per_step = 512;
  std::vector<std::string> lora_adapters;  // NAME=PATH, registered at start-up
  bool merge_adapter = false;               // fold the single adapter into the weights
  int max_resident_adapters = 32;
  bool adapter_store = false;  // create the AdapterStore even with no adapters (run-time loading)
  void add_to(CLI::App& cmd);
};

// A loaded model with its backend, ready to run.
struct LoadedModel {
  std::string device;  // "cpu" or "cuda"
  std::unique_ptr<Ops> ops;
  std::unique_ptr<LlamaWeights> weights;
  std::unique_ptr<AdapterStore> adapters;  // null when no adapter was given (and no
                                           // adapter_store asked for) or it was merged
  std::unique_ptr<LlamaModel> model;
};
LoadedModel load_model(const ModelOptions& options);
// The backend `device` ("cpu", "cuda", "auto") resolves to: "cpu" or "cuda".
std::string resolve_device(const std::string& device);

std::vector<int32_t> parse_token_ids(const std::string& text);
// "NAME=PATH" -> {NAME, PATH}.
std::pair<std::string, std::string> split_adapter_spec(const std::string& spec);

}  // namespace mil::cli
