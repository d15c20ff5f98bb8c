// PEFT LoRA adapter directories: adapter_config.json + adapter_model.safetensors, as written by
// `PeftModel.save_pretrained`. Both files are untrusted. Opening an adapter parses the config,
// maps the safetensors file (validating its header, not reading the weights) and checks every
// tensor against the config and the base model, so that a bad adapter fails when it is
// registered rather than when a request first names it.
//
// Supported: plain LoRA (optionally rsLoRA) on the q/k/v/o/gate/up/down projections of a
// Llama-family model, with per-module rank_pattern/alpha_pattern, target_modules as a list
// (exact names or dotted suffixes), "all-linear" or a regex string, layers_to_transform and
// exclude_modules. Everything that changes the math beyond `y += scale * x A^T B^T` (DoRA,
// bias training, modules_to_save, ...) is refused with an error naming the file and field.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "formats/model_config.h"
#include "formats/safetensors.h"

namespace mil {

// The projections LoRA may target, in the order of a layer's forward pass.
enum class LoraTarget : uint8_t { Q, K, V, O, Gate, Up, Down };
inline constexpr int kNumLoraTargets = 7;

std::string_view lora_target_name(LoraTarget t);  // "q_proj", ..., "down_proj"
// The module path HF/PEFT give the projection: "model.layers.3.self_attn.q_proj".
std::string lora_module_path(int64_t layer, LoraTarget t);
// Unsharded [out_features, in_features] of the projection in the base model.
int64_t lora_in_features(const ModelConfig& base, LoraTarget t);
int64_t lora_out_features(const ModelConfig& base, LoraTarget t);

// One targeted projection: its two tensors in the mapped file (already checked: 2-D,
// F32/F16/BF16, A [rank, in], B [out, rank]) and its scale.
struct PeftModule {
  int64_t layer = 0;
  LoraTarget target = LoraTarget::Q;
  int32_t rank = 0;
  float scale = 0.0f;  // alpha / rank, or alpha / sqrt(rank) with use_rslora
  const TensorInfo* a = nullptr;
  const TensorInfo* b = nullptr;
};

class PeftAdapter {
 public:
  // `dir` holds adapter_config.json and adapter_model.safetensors.
  PeftAdapter(const std::string& dir, const ModelConfig& base);
  PeftAdapter(const PeftAdapter&) = delete;
  PeftAdapter& operator=(const PeftAdapter&) = delete;

  const std::string& config_path() const { return config_path_; }
  const std::string& weights_path() const { return file_.path(); }
  const std::string& base_model() const { return base_model_; }  // informational only
  // Sorted by (layer, target); a targeted module without tensors is absent (PEFT would leave
  // its B at zero, so it contributes nothing).
  const std::vector<PeftModule>& modules() const { return modules_; }
  int32_t max_rank() const { return max_rank_; }
  // The config's own `r` and the scale it gives (lora_alpha / r, or / sqrt(r) with use_rslora),
  // before rank_pattern/alpha_pattern. LoRAX's adapter merges scale by these.
  int32_t config_rank() const { return config_rank_; }
  float config_scale() const { return config_scale_; }

 private:
  std::string config_path_;
  std::string base_model_;
  SafetensorsFile file_;
  std::vector<PeftModule> modules_;
  int32_t max_rank_ = 0;
  int32_t config_rank_ = 0;
  float config_scale_ = 0.0f;
};

}  // namespace mil
