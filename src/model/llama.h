// The Llama family (Llama 2/3, Mistral, Qwen2, SmolLM2) written once against the op
// interface:
//   embed -> N x [norm -> qkv (+bias) -> rope -> kv store -> paged attention -> o
//                 -> residual + norm -> gate_up -> silu*mul -> down -> residual + norm]
//   -> norm -> lm_head (only the rows whose logits are wanted)
// q/k/v (and gate/up) are column ranges of one activation buffer, filled by one matmul when
// the weights are fused (LlamaWeights::to_device) and by one matmul each otherwise; each
// target's LoRA goes to its own column range. Activations, the step's index arrays and the
// logits live in the backend's memory (activation_dtype(); logits f32).
#pragma once

#include <vector>

#include "backends/ops.h"
#include "core/buffer.h"
#include "lora/adapter_store.h"
#include "model/kv_cache.h"
#include "model/weights.h"

namespace mil {

// One forward step over the tokens of one or more sequences (host memory).
struct StepBatch {
  std::vector<int32_t> token_ids;   // n tokens, grouped by sequence
  std::vector<int32_t> positions;   // position of each token in its sequence
  std::vector<int32_t> slots;       // KV cache slot each token's key/value goes to
  std::vector<int32_t> query_start; // num_seqs + 1
  std::vector<int32_t> context_len; // num_seqs
  std::vector<int32_t> block_table; // num_seqs * max_blocks_per_seq
  int32_t max_blocks_per_seq = 0;
  std::vector<int32_t> logit_rows;  // token rows whose logits the caller wants
  // Adapter of each row, as segments of consecutive rows (empty: the base model only).
  std::vector<LoraSegment> lora_segments;
};

class LlamaModel {
 public:
  // `adapters` (optional) holds the LoRA adapters that steps may name by slot. The weights
  // must be in `ops`'s memory (LlamaWeights::to_device for a device backend).
  LlamaModel(const LlamaWeights& weights, Ops& ops, int64_t max_tokens_per_step,
             AdapterStore* adapters = nullptr);

  const ModelConfig& config() const { return weights_.config(); }
  int64_t max_tokens_per_step() const { return max_tokens_; }
  Ops& ops() const { return ops_; }
  AdapterStore* adapters() const { return adapters_; }
  KVCache make_kv_cache(int64_t num_blocks, int32_t block_size) const;
  // Bytes one KV block of `block_size` tokens takes (all layers, keys and values).
  int64_t kv_bytes_per_block(int32_t block_size) const;

  // Logits [step.logit_rows.size(), vocab], f32 in HOST memory (downloaded from the device
  // when the backend has one), valid until the next call.
  Tensor forward(const StepBatch& step, const KVCache& cache);

 private:
  void attention_block(const LayerWeights& l, int64_t layer, int64_t n,
                       const AttentionBatch& batch, const KVCache& cache);
  void mlp_block(const LayerWeights& l, int64_t layer, int64_t n);
  // y = x w^T (+ bias), without LoRA.
  void project(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y);
  // y += the LoRA of each row's adapter for this layer's `target` (nothing without adapters).
  void lora(const Tensor& x, const Tensor& y, int64_t layer, LoraTarget target);
  // Copies the step's index arrays into one host staging buffer and uploads it.
  void upload_step(const StepBatch& step);

  const LlamaWeights& weights_;
  Ops& ops_;
  int64_t max_tokens_;
  AdapterStore* adapters_;
  AttentionShape attn_shape_;
  OwnedTensor inv_freq_;
  int64_t q_cols_ = 0, kv_cols_ = 0, inter_ = 0;
  // Activations for up to max_tokens_ rows, in the backend's memory.
  OwnedTensor hidden_, normed_, qkv_, attn_out_, gate_up_, mlp_out_;
  OwnedTensor lora_v_;  // shrink output, f32 [max_tokens, max rank]
  OwnedTensor logits_, logit_input_;
  OwnedTensor host_logits_;  // where the logits are downloaded (when not in host memory)
  // The step's int32 arrays: packed on the host, uploaded in one copy.
  OwnedTensor step_host_, step_device_;
  // Device pointers into step_device_ for the step being run.
  const int32_t* d_ids_ = nullptr;
  const int32_t* d_positions_ = nullptr;
  const int32_t* d_slots_ = nullptr;
  const int32_t* d_query_start_ = nullptr;
  const int32_t* d_context_len_ = nullptr;
  const int32_t* d_block_table_ = nullptr;
  const int32_t* d_logit_rows_ = nullptr;
  const LoraSegment* d_segments_ = nullptr;
  int32_t num_segments_ = 0;  // > 0 only when some row has an adapter
};

}  // namespace mil
