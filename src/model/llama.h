// The Llama family (Llama 2/3, Mistral, Qwen2, SmolLM2) written once against the op
// interface:
//   embed -> N x [norm -> q,k,v (+bias) -> rope -> kv store -> paged attention -> o
//                 -> residual -> norm -> gate, up -> silu*mul -> down -> residual]
//   -> norm -> lm_head (only the rows whose logits are wanted)
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
  // `adapters` (optional) holds the LoRA adapters that steps may name by slot.
  LlamaModel(const LlamaWeights& weights, Ops& ops, int64_t max_tokens_per_step,
             AdapterStore* adapters = nullptr);

  const ModelConfig& config() const { return weights_.config(); }
  int64_t max_tokens_per_step() const { return max_tokens_; }
  Ops& ops() const { return ops_; }
  AdapterStore* adapters() const { return adapters_; }
  KVCache make_kv_cache(int64_t num_blocks, int32_t block_size) const;

  // Logits [step.logit_rows.size(), vocab], valid until the next call.
  Tensor forward(const StepBatch& step, const KVCache& cache);

 private:
  void attention_block(const LayerWeights& l, int64_t layer, int64_t n, const StepBatch& step,
                       const AttentionBatch& batch, const KVCache& cache);
  void mlp_block(const LayerWeights& l, int64_t layer, int64_t n);
  // y = x w^T (+ bias) (+ the LoRA of each row's adapter for this layer's `target`).
  void linear(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y,
              int64_t layer, LoraTarget target);

  const LlamaWeights& weights_;
  Ops& ops_;
  int64_t max_tokens_;
  AdapterStore* adapters_;
  const std::vector<LoraSegment>* segments_ = nullptr;  // of the step being run
  OwnedTensor lora_v_;  // shrink output, [max_tokens, max rank]
  AttentionShape attn_shape_;
  OwnedTensor inv_freq_;
  // Activations for up to max_tokens_ rows.
  OwnedTensor hidden_, normed_, q_, k_, v_, attn_out_, gate_, up_, mlp_out_;
  OwnedTensor logits_, logit_input_;
};

}  // namespace mil
