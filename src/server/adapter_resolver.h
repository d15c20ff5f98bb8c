// Turns a request's adapter parameters (LoRAX: adapter_id, adapter_source, merged_adapters,
// api_token; OpenAI: model) into the AdapterStore name the engine runs, registering adapters
// on first use: folders inside --adapter-dir, downloads from the Hugging Face Hub (hub/), and
// linear merges of registered adapters. Also the run-time load/unload/list management.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/error.h"

namespace mil {
class AdapterStore;
}

namespace mil::server {

// An adapter problem a client caused; `status` is the HTTP status to answer with.
class AdapterError : public Error {
 public:
  AdapterError(int status, std::string type, const std::string& message)
      : Error(message), status_(status), type_(std::move(type)) {}
  int status() const { return status_; }
  const std::string& type() const { return type_; }

 private:
  int status_;
  std::string type_;
};

struct AdapterSpec {
  std::string id;          // "" = the base model (unless merged)
  std::string source;      // "", "local" or "hub"
  std::string api_token;   // per-request hub token; never logged
  // LoRAX merged_adapters (used when merge_ids is not empty).
  std::vector<std::string> merge_ids;
  std::vector<float> merge_weights;
  std::string merge_strategy = "linear";
};

struct AdapterInfo {
  std::string name;
  std::string source;  // "startup", "local", "hub", "merged", "runtime"
  bool resident = false;
  int32_t pins = 0;
};

struct AdapterResolverOptions {
  std::string adapter_dir;    // "" = local adapters disabled
  std::string hub_cache;      // download cache directory
  std::string hub_endpoint;   // HF_ENDPOINT or https://huggingface.co
  std::string hf_token;       // HF_TOKEN; never logged
};

class AdapterResolver {
 public:
  AdapterResolver(AdapterStore& store, AdapterResolverOptions options);
  ~AdapterResolver();

  // The registered name to run, "" for the base model. May download (blocks): call it off
  // the I/O threads. Throws AdapterError (404 unknown, 422 invalid/refused path or strategy,
  // 401 hub access denied, 424 download failed) or mil::Error for a broken adapter file.
  std::string resolve(const AdapterSpec& spec);

  // vLLM's /v1/load_lora_adapter: registers `path` (inside adapter_dir, or an absolute path
  // inside it) under `name`. 422 for a bad name/path, 400 for a duplicate.
  void load(const std::string& name, const std::string& path);
  // /v1/unload_lora_adapter: 404 unknown, 422 while requests use it.
  void unload(const std::string& name);
  std::vector<AdapterInfo> list() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mil::server
