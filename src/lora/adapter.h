// One LoRA adapter in host memory, ready for the shrink/expand ops: every targeted module as
// f32 A [rank, in] and B [out, rank] (contiguous), already cut to this tensor-parallel rank's
// shard and, for GGUF llama bases, with q/k rows in the base's permuted order.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "core/buffer.h"
#include "core/tensor.h"
#include "formats/model_config.h"
#include "formats/peft_adapter.h"  // LoraTarget
#include "core/shard.h"

namespace mil {

struct LoraModule {
  Tensor a;  // f32 [rank, in_shard], views of the adapter's own buffer
  Tensor b;  // f32 [out_shard, rank]
  float scale = 0.0f;
  int32_t rank = 0;
};

class LoraAdapter;
struct WeightedLoraAdapter {
  const LoraAdapter* adapter = nullptr;
  float weight = 1.0f;
};

class LoraAdapter {
 public:
  LoraAdapter() = default;
  LoraAdapter(LoraAdapter&&) noexcept = default;
  LoraAdapter& operator=(LoraAdapter&&) noexcept = default;

  const std::string& name() const { return name_; }
  size_t bytes() const { return storage_.size(); }  // host memory its tensors take
  // The one host allocation every module's a and b view (bytes() long).
  const void* storage() const { return storage_.data(); }
  int32_t max_rank() const { return max_rank_; }
  // The PEFT config's `r` and its scale before rank/alpha patterns (see PeftAdapter); a merge
  // keeps its first component's.
  int32_t config_rank() const { return config_rank_; }
  float config_scale() const { return config_scale_; }
  int64_t num_layers() const { return static_cast<int64_t>(modules_.size()) / kNumLoraTargets; }
  // nullptr when the adapter does not target this projection (or the layer is out of range).
  const LoraModule* module(int64_t layer, LoraTarget target) const;

 private:
  friend LoraAdapter load_lora_adapter(const std::string&, const std::string&, const ModelConfig&,
                                       ShardSpec);
  friend LoraAdapter merge_lora_adapters_linear(const std::string&, std::span<const WeightedLoraAdapter>);
  std::string name_;
  HostBuffer storage_;                // every A and B, one allocation (moves keep views valid)
  std::vector<LoraModule> modules_;   // layer * kNumLoraTargets + target; rank 0 = not targeted
  int32_t max_rank_ = 0;
  int32_t config_rank_ = 0;
  float config_scale_ = 0.0f;
};

// Bytes load_lora_adapter would allocate for `adapter` on `shard` (the store budgets with it
// before reading any weights).
size_t lora_adapter_bytes(const PeftAdapter& adapter, const ModelConfig& base, ShardSpec shard);

// Reads the PEFT adapter folder at `path` (see formats/peft_adapter.h for what is accepted).
// Column-parallel projections (q/k/v/gate/up) keep this rank's rows of B; row-parallel ones
// (o/down) keep this rank's columns of A, as the base weights are split.
LoraAdapter load_lora_adapter(const std::string& name, const std::string& path,
                              const ModelConfig& base, ShardSpec shard);

// LoRAX's "linear" merge (lorax_server/utils/merges/strategies.py, LinearMerge + merge_adapters):
// per targeted module, A = sum_i w_i A_i and B = sum_i w_i B_i over the components that target
// it (the union of their targets), every module scaled by the FIRST component's config scale
// (LoRAX copies its LoraConfig and recomputes lora_alpha / r). The merged delta is therefore
// scale_0 * (sum w_i B_i)(sum w_i A_i), cross terms included, not sum w_i scale_i B_i A_i.
// Refused as LoRAX refuses: config ranks that differ, or a module whose ranks differ between
// components (torch.stack would fail). Components must come from the same base model and shard.
LoraAdapter merge_lora_adapters_linear(const std::string& name,
                                       std::span<const WeightedLoraAdapter> components);

}  // namespace mil
