#include "model/llama.h"

#include <cmath>
#include <cstring>

#include "core/error.h"
#include "model/rope.h"

namespace mil {

LlamaModel::LlamaModel(const LlamaWeights& weights, Ops& ops, int64_t max_tokens_per_step,
                       AdapterStore* adapters)
    : weights_(weights), ops_(ops), max_tokens_(max_tokens_per_step), adapters_(adapters) {
  const ModelConfig& c = weights.config();
  const ShardedDims& d = weights.dims();
  // Until parallel/ brings a communicator, the partial sums of row-parallel layers
  // cannot be reduced, so only one rank runs.
  MIL_CHECK(weights.shard().world == 1, "tensor parallelism needs a communicator (world = {})",
            weights.shard().world);
  MIL_CHECK(max_tokens_ > 0, "max_tokens_per_step must be positive");
  attn_shape_ = {static_cast<int32_t>(d.num_heads), static_cast<int32_t>(d.num_kv_heads),
                 static_cast<int32_t>(c.head_dim),
                 static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.head_dim)))};
  const std::vector<float> inv_freq = rope_inv_freq(
      c, weights.rope_freq_factors.empty() ? nullptr : weights.rope_freq_factors.ptr<float>());
  inv_freq_ = OwnedTensor(DType::F32, 1, static_cast<int64_t>(inv_freq.size()));
  std::memcpy(inv_freq_.ptr<float>(), inv_freq.data(), inv_freq.size() * sizeof(float));

  const int64_t n = max_tokens_;
  hidden_ = OwnedTensor(DType::F32, n, c.hidden_size);
  normed_ = OwnedTensor(DType::F32, n, c.hidden_size);
  mlp_out_ = OwnedTensor(DType::F32, n, c.hidden_size);
  q_ = OwnedTensor(DType::F32, n, d.num_heads * c.head_dim);
  attn_out_ = OwnedTensor(DType::F32, n, d.num_heads * c.head_dim);
  k_ = OwnedTensor(DType::F32, n, d.num_kv_heads * c.head_dim);
  v_ = OwnedTensor(DType::F32, n, d.num_kv_heads * c.head_dim);
  gate_ = OwnedTensor(DType::F32, n, d.intermediate);
  up_ = OwnedTensor(DType::F32, n, d.intermediate);
}

KVCache LlamaModel::make_kv_cache(int64_t num_blocks, int32_t block_size) const {
  const ModelConfig& c = config();
  return KVCache(c.num_layers, num_blocks, block_size, weights_.dims().num_kv_heads * c.head_dim);
}

void LlamaModel::linear(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y,
                        int64_t layer, LoraTarget target) {
  ops_.matmul(x, w, y);
  if (!bias.empty()) ops_.add_bias(y, bias);
  if (segments_ == nullptr) return;
  const LoraProjection& proj = adapters_->projection(layer, target);
  const Tensor v = lora_v_.view().slice_rows(0, x.rows);
  const auto count = static_cast<int32_t>(segments_->size());
  ops_.lora_shrink(x, proj, segments_->data(), count, v);
  ops_.lora_expand(v, proj, segments_->data(), count, y);
}

Tensor LlamaModel::forward(const StepBatch& step, const KVCache& cache) {
  const ModelConfig& c = config();
  const int64_t n = static_cast<int64_t>(step.token_ids.size());
  const int64_t num_seqs = static_cast<int64_t>(step.context_len.size());
  MIL_CHECK(n > 0 && n <= max_tokens_, "a step holds 1..{} tokens, got {}", max_tokens_, n);
  MIL_CHECK(step.positions.size() == static_cast<size_t>(n) &&
                step.slots.size() == static_cast<size_t>(n),
            "step: positions and slots must have one entry per token");
  MIL_CHECK(step.query_start.size() == static_cast<size_t>(num_seqs + 1) &&
                step.query_start.front() == 0 && step.query_start.back() == n,
            "step: query_start must span the {} tokens", n);
  MIL_CHECK(step.block_table.size() == static_cast<size_t>(num_seqs * step.max_blocks_per_seq),
            "step: block_table must have num_seqs * max_blocks_per_seq entries");
  for (int32_t slot : step.slots) {
    MIL_CHECK(slot >= 0 && slot < cache.num_blocks() * cache.block_size(),
              "step: KV slot {} is outside the cache", slot);
  }
  for (int64_t s = 0; s < num_seqs; ++s) {
    MIL_CHECK(step.context_len[s] <= step.max_blocks_per_seq * cache.block_size() &&
                  step.context_len[s] >= step.query_start[s + 1] - step.query_start[s],
              "step: sequence {} has an inconsistent context length", s);
  }
  for (int64_t i = 0; i < num_seqs * step.max_blocks_per_seq; ++i) {
    MIL_CHECK(step.block_table[i] >= 0 && step.block_table[i] < cache.num_blocks(),
              "step: block {} is outside the cache", step.block_table[i]);
  }
  for (int32_t p : step.positions) {
    MIL_CHECK(p >= 0 && p < c.max_position_embeddings, "position {} is outside the model's {} "
              "positions", p, c.max_position_embeddings);
  }

  segments_ = nullptr;
  bool any_adapter = false;
  for (const LoraSegment& seg : step.lora_segments) {
    MIL_CHECK(seg.row_begin >= 0 && seg.row_begin <= seg.row_end && seg.row_end <= n,
              "step: LoRA segment [{}, {}) is outside the step", seg.row_begin, seg.row_end);
    any_adapter |= seg.slot >= 0;
  }
  if (any_adapter) {
    MIL_CHECK(adapters_ != nullptr, "step: rows name adapters but the model has no adapter store");
    const int64_t rank = std::max<int64_t>(adapters_->max_rank(), 1);
    if (lora_v_.view().cols < rank) lora_v_ = OwnedTensor(DType::F32, max_tokens_, rank);
    segments_ = &step.lora_segments;
  }
  const AttentionBatch batch{static_cast<int32_t>(num_seqs), step.query_start.data(),
                             step.context_len.data(),       step.block_table.data(),
                             step.max_blocks_per_seq,       cache.block_size()};
  const Tensor hidden = hidden_.view().slice_rows(0, n);
  ops_.embedding(weights_.embedding, step.token_ids.data(), hidden);
  for (int64_t layer = 0; layer < c.num_layers; ++layer) {
    const LayerWeights& l = weights_.layers[layer];
    attention_block(l, layer, n, step, batch, cache);
    mlp_block(l, layer, n);
  }

  // Final norm and lm_head only for the rows whose logits are wanted.
  const int64_t m = static_cast<int64_t>(step.logit_rows.size());
  if (m == 0) return {};
  if (logits_.view().rows < m) {
    logits_ = OwnedTensor(DType::F32, m, weights_.dims().vocab);
    logit_input_ = OwnedTensor(DType::F32, m, c.hidden_size);
  }
  const Tensor gathered = logit_input_.view().slice_rows(0, m);
  for (int64_t i = 0; i < m; ++i) {
    const int32_t row = step.logit_rows[i];
    MIL_CHECK(row >= 0 && row < n, "logit row {} is outside the step", row);
    std::memcpy(gathered.row<float>(i), hidden.row<float>(row), c.hidden_size * sizeof(float));
  }
  ops_.rmsnorm(gathered, weights_.final_norm, static_cast<float>(c.rms_norm_eps), gathered);
  const Tensor logits = logits_.view().slice_rows(0, m);
  ops_.matmul(gathered, weights_.lm_head, logits);
  return logits;
}

void LlamaModel::attention_block(const LayerWeights& l, int64_t layer, int64_t n,
                                 const StepBatch& step, const AttentionBatch& batch,
                                 const KVCache& cache) {
  const ModelConfig& c = config();
  const float eps = static_cast<float>(c.rms_norm_eps);
  const Tensor hidden = hidden_.view().slice_rows(0, n);
  const Tensor normed = normed_.view().slice_rows(0, n);
  const Tensor q = q_.view().slice_rows(0, n);
  const Tensor k = k_.view().slice_rows(0, n);
  const Tensor v = v_.view().slice_rows(0, n);
  const Tensor attn = attn_out_.view().slice_rows(0, n);
  const Tensor out = mlp_out_.view().slice_rows(0, n);

  ops_.rmsnorm(hidden, l.attn_norm, eps, normed);
  linear(normed, l.q, l.q_bias, q, layer, LoraTarget::Q);
  linear(normed, l.k, l.k_bias, k, layer, LoraTarget::K);
  linear(normed, l.v, l.v_bias, v, layer, LoraTarget::V);
  const int32_t head_dim = static_cast<int32_t>(c.head_dim);
  ops_.rope(q, head_dim, step.positions.data(), inv_freq_, c.rope.interleaved);
  ops_.rope(k, head_dim, step.positions.data(), inv_freq_, c.rope.interleaved);
  ops_.kv_store(k, v, step.slots.data(), cache.keys(layer), cache.values(layer));
  ops_.attention(q, cache.keys(layer), cache.values(layer), batch, attn_shape_, attn);
  linear(attn, l.o, l.o_bias, out, layer, LoraTarget::O);
  ops_.add(hidden, out, hidden);
}

void LlamaModel::mlp_block(const LayerWeights& l, int64_t layer, int64_t n) {
  const float eps = static_cast<float>(config().rms_norm_eps);
  const Tensor hidden = hidden_.view().slice_rows(0, n);
  const Tensor normed = normed_.view().slice_rows(0, n);
  const Tensor gate = gate_.view().slice_rows(0, n);
  const Tensor up = up_.view().slice_rows(0, n);
  const Tensor out = mlp_out_.view().slice_rows(0, n);

  ops_.rmsnorm(hidden, l.ffn_norm, eps, normed);
  linear(normed, l.gate, l.gate_bias, gate, layer, LoraTarget::Gate);
  linear(normed, l.up, l.up_bias, up, layer, LoraTarget::Up);
  ops_.silu_mul(gate, up, gate);
  linear(gate, l.down, l.down_bias, out, layer, LoraTarget::Down);
  ops_.add(hidden, out, hidden);
}

}  // namespace mil
