// Test helpers: a tiny base-model config and PEFT adapter folders written to a temp dir
// (adapter_config.json + adapter_model.safetensors), with deterministic tensor values so tests
// can compare what was loaded with what was written.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/file_writers.h"
#include "core/half.h"
#include "formats/model_config.h"
#include "formats/peft_adapter.h"

namespace mil::test {

using nlohmann::json;

// hidden 16, 4 heads of 4 (q out 16), 2 kv heads (k/v out 8), intermediate 24, 2 layers:
// everything splits over 2 ranks.
inline ModelConfig tiny_base() {
  ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.vocab_size = 32;
  c.hidden_size = 16;
  c.intermediate_size = 24;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 4;
  c.max_position_embeddings = 64;
  return c;
}

// Values exactly representable in f16 and bf16 (multiples of 1/16 in [-2, 2)), different for
// every (seed, index).
inline float test_value(uint32_t seed, int64_t i) {
  const uint32_t h = (seed * 2654435761u) ^ static_cast<uint32_t>(i * 40503 + 7);
  return static_cast<float>(static_cast<int>((h >> 7) % 64) - 32) / 16.0f;
}

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  std::string dtype = "F32";
  uint32_t seed = 0;
};

// The safetensors bytes of `tensors`, element i of tensor k being test_value(seed, i).
inline Bytes adapter_safetensors(const std::vector<TensorSpec>& tensors) {
  json header = json::object();
  Writer data;
  for (const TensorSpec& t : tensors) {
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    const size_t begin = data.bytes.size();
    for (int64_t i = 0; i < n; ++i) {
      const float v = test_value(t.seed, i);
      if (t.dtype == "F32") data.put<float>(v);
      else if (t.dtype == "F16") data.put<uint16_t>(f32_to_f16(v));
      else if (t.dtype == "BF16") data.put<uint16_t>(f32_to_bf16(v));
      else data.put<int64_t>(static_cast<int64_t>(v));  // "I64": a dtype LoRA must refuse
    }
    header[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {begin, data.bytes.size()}}};
  }
  header["__metadata__"] = {{"format", "pt"}};
  return safetensors_bytes(header.dump(), data.bytes);
}

inline std::string tensor_name(int64_t layer, LoraTarget t, char ab) {
  return "base_model.model." + lora_module_path(layer, t) + ".lora_" + ab + ".weight";
}

// A/B specs for one module of `base` at `rank`; seeds derive from (layer, target) so every
// tensor differs.
inline void add_module(std::vector<TensorSpec>& out, const ModelConfig& base, int64_t layer,
                       LoraTarget t, int64_t rank, const std::string& dtype = "F32") {
  const auto seed = static_cast<uint32_t>(layer * 100 + static_cast<int>(t) * 10);
  out.push_back({tensor_name(layer, t, 'A'), {rank, lora_in_features(base, t)}, dtype, seed + 1});
  out.push_back({tensor_name(layer, t, 'B'), {lora_out_features(base, t), rank}, dtype, seed + 2});
}

inline const std::vector<LoraTarget>& all_targets() {
  static const std::vector<LoraTarget> kAll = {LoraTarget::Q, LoraTarget::K,    LoraTarget::V,
                                               LoraTarget::O, LoraTarget::Gate, LoraTarget::Up,
                                               LoraTarget::Down};
  return kAll;
}

inline json lora_config(int64_t r, double alpha, const json& targets) {
  return {{"peft_type", "LORA"},       {"r", r},          {"lora_alpha", alpha},
          {"target_modules", targets}, {"bias", "none"},  {"fan_in_fan_out", false},
          {"use_rslora", false},       {"use_dora", false}, {"modules_to_save", nullptr},
          {"task_type", "CAUSAL_LM"},  {"base_model_name_or_path", "tiny"}};
}

// A temp folder removed with the object.
class AdapterDir {
 public:
  AdapterDir() {
    static int counter = 0;
    path_ = std::filesystem::temp_directory_path() /
            ("mil_lora_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  AdapterDir(const AdapterDir&) = delete;
  AdapterDir& operator=(const AdapterDir&) = delete;
  ~AdapterDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }

  std::string path() const { return path_.string(); }
  void write(const std::string& file, std::span<const std::byte> bytes) const {
    std::ofstream out(path_ / file, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  }
  void write(const std::string& file, const std::string& text) const {
    write(file, std::as_bytes(std::span<const char>(text.data(), text.size())));
  }
  void config(const json& j) const { write("adapter_config.json", j.dump(2)); }
  void tensors(const std::vector<TensorSpec>& t) const {
    write("adapter_model.safetensors", adapter_safetensors(t));
  }

  // A standard adapter: rank `r`, alpha `alpha`, `targets` on every layer.
  void standard(const ModelConfig& base, int64_t r, double alpha,
                const std::vector<LoraTarget>& targets = all_targets(), const std::string& dtype = "F32") const {
    json names = json::array();
    std::vector<TensorSpec> specs;
    for (LoraTarget t : targets) names.push_back(std::string(lora_target_name(t)));
    for (int64_t layer = 0; layer < base.num_layers; ++layer) {
      for (LoraTarget t : targets) add_module(specs, base, layer, t, r, dtype);
    }
    config(lora_config(r, alpha, names));
    tensors(specs);
  }

 private:
  std::filesystem::path path_;
};

}  // namespace mil::test
