#include "model/llama.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "model/rope.h"

namespace mil {

static_assert(sizeof(LoraSegment) == 3 * sizeof(int32_t), "segments travel as int32 triples");

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
  MIL_CHECK(weights.embedding.device == ops.device(),
            "the weights are not in the backend's memory (LlamaWeights::to_device)");
  attn_shape_ = {static_cast<int32_t>(d.num_heads), static_cast<int32_t>(d.num_kv_heads),
                 static_cast<int32_t>(c.head_dim),
                 static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.head_dim)))};
  const std::vector<float> inv_freq = rope_inv_freq(
      c, weights.rope_freq_factors.empty() ? nullptr : weights.rope_freq_factors.ptr<float>());
  inv_freq_ = ops.allocate(DType::F32, 1, static_cast<int64_t>(inv_freq.size()));
  ops.upload(inv_freq.data(), inv_freq_.view());
  ops.synchronize();

  const int64_t n = max_tokens_;
  const DType act = ops.activation_dtype();
  q_cols_ = d.num_heads * c.head_dim;
  kv_cols_ = d.num_kv_heads * c.head_dim;
  inter_ = d.intermediate;
  hidden_ = ops.allocate(act, n, c.hidden_size);
  normed_ = ops.allocate(act, n, c.hidden_size);
  mlp_out_ = ops.allocate(act, n, c.hidden_size);
  qkv_ = ops.allocate(act, n, q_cols_ + 2 * kv_cols_);
  attn_out_ = ops.allocate(act, n, q_cols_);
  gate_up_ = ops.allocate(act, n, 2 * inter_);
}

KVCache LlamaModel::make_kv_cache(int64_t num_blocks, int32_t block_size) const {
  return KVCache(ops_, config().num_layers, num_blocks, block_size, kv_cols_);
}

int64_t LlamaModel::kv_bytes_per_block(int32_t block_size) const {
  return KVCache::bytes_per_block(ops_.kv_dtype(), config().num_layers, block_size, kv_cols_);
}

void LlamaModel::project(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y) {
  ops_.matmul(x, w, y);
  if (!bias.empty()) ops_.add_bias(y, bias);
}

void LlamaModel::lora(const Tensor& x, const Tensor& y, int64_t layer, LoraTarget target) {
  if (num_segments_ == 0) return;
  const LoraProjection& proj = adapters_->projection(layer, target);
  const Tensor v = lora_v_.view().slice_rows(0, x.rows);
  ops_.lora_shrink(x, proj, d_segments_, num_segments_, v);
  ops_.lora_expand(v, proj, d_segments_, num_segments_, y);
}

void LlamaModel::upload_step(const StepBatch& step) {
  const auto size = [](const auto& v) { return static_cast<int64_t>(v.size()); };
  const int64_t seg_ints = num_segments_ > 0 ? 3 * size(step.lora_segments) : 0;
  const int64_t total = 3 * size(step.token_ids) + size(step.query_start) + size(step.context_len) +
                        size(step.block_table) + size(step.logit_rows) + seg_ints;
  if (step_host_.view().cols < total) {
    const int64_t cap = std::max<int64_t>(total + total / 2, 1024);
    step_host_ = ops_.allocate_host(DType::I32, 1, cap);
    step_device_ = ops_.allocate(DType::I32, 1, cap);
  }
  int32_t* host = step_host_.ptr<int32_t>();
  const auto* dev = step_device_.view().ptr<const int32_t>();
  int64_t at = 0;
  const auto put = [&](const void* src, int64_t ints) {
    if (ints > 0) std::memcpy(host + at, src, static_cast<size_t>(ints) * sizeof(int32_t));
    const int32_t* where = dev + at;
    at += ints;
    return where;
  };
  d_ids_ = put(step.token_ids.data(), size(step.token_ids));
  d_positions_ = put(step.positions.data(), size(step.positions));
  d_slots_ = put(step.slots.data(), size(step.slots));
  d_query_start_ = put(step.query_start.data(), size(step.query_start));
  d_context_len_ = put(step.context_len.data(), size(step.context_len));
  d_block_table_ = put(step.block_table.data(), size(step.block_table));
  d_logit_rows_ = put(step.logit_rows.data(), size(step.logit_rows));
  d_segments_ = reinterpret_cast<const LoraSegment*>(put(step.lora_segments.data(), seg_ints));
  ops_.upload(host, step_device_.view().slice_cols(0, std::max<int64_t>(at, 1)));
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
  for (int32_t id : step.token_ids) {
    MIL_CHECK(id >= 0 && id < weights_.embedding.rows, "step: token id {} is outside the "
              "vocabulary ({})", id, weights_.embedding.rows);
  }
  for (int32_t slot : step.slots) {
    MIL_CHECK(slot >= 0 && slot < cache.num_blocks() * cache.block_size(),
              "step: KV slot {} is outside the cache", slot);
  }
  for (int64_t s = 0; s < num_seqs; ++s) {
    MIL_CHECK(step.context_len[s] <= step.max_blocks_per_seq * cache.block_size() &&
                  step.context_len[s] >= step.query_start[s + 1] - step.query_start[s] &&
                  step.query_start[s + 1] >= step.query_start[s],
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
  const int64_t m = static_cast<int64_t>(step.logit_rows.size());
  for (int32_t row : step.logit_rows) {
    MIL_CHECK(row >= 0 && row < n, "logit row {} is outside the step", row);
  }

  num_segments_ = 0;
  bool any_adapter = false;
  for (const LoraSegment& seg : step.lora_segments) {
    MIL_CHECK(seg.row_begin >= 0 && seg.row_begin <= seg.row_end && seg.row_end <= n,
              "step: LoRA segment [{}, {}) is outside the step", seg.row_begin, seg.row_end);
    any_adapter |= seg.slot >= 0;
  }
  if (any_adapter) {
    MIL_CHECK(adapters_ != nullptr, "step: rows name adapters but the model has no adapter store");
    for (const LoraSegment& seg : step.lora_segments) {
      MIL_CHECK(seg.slot < adapters_->num_slots(), "step: adapter slot {} is out of range",
                seg.slot);
    }
    const int64_t rank = std::max<int64_t>(adapters_->max_rank(), 1);
    if (lora_v_.view().cols < rank) lora_v_ = ops_.allocate(DType::F32, max_tokens_, rank);
    num_segments_ = static_cast<int32_t>(step.lora_segments.size());
  }
  upload_step(step);

  const AttentionBatch batch{static_cast<int32_t>(num_seqs), d_query_start_, d_context_len_,
                             d_block_table_, step.max_blocks_per_seq, cache.block_size()};
  const float eps = static_cast<float>(c.rms_norm_eps);
  const Tensor hidden = hidden_.view().slice_rows(0, n);
  const Tensor normed = normed_.view().slice_rows(0, n);
  const Tensor out = mlp_out_.view().slice_rows(0, n);
  ops_.embedding(weights_.embedding, d_ids_, hidden);
  ops_.rmsnorm(hidden, weights_.layers[0].attn_norm, eps, normed);
  for (int64_t layer = 0; layer < c.num_layers; ++layer) {
    const LayerWeights& l = weights_.layers[layer];
    attention_block(l, layer, n, batch, cache);
    ops_.add_rmsnorm(hidden, out, l.ffn_norm, eps, normed);
    mlp_block(l, layer, n);
    if (layer + 1 < c.num_layers) {
      ops_.add_rmsnorm(hidden, out, weights_.layers[layer + 1].attn_norm, eps, normed);
    } else {
      ops_.add(hidden, out, hidden);
    }
  }

  // Final norm and lm_head only for the rows whose logits are wanted.
  if (m == 0) {
    ops_.synchronize();  // the staging buffer of the step's arrays is reused by the next step
    return {};
  }
  if (logits_.view().rows < m) {
    logits_ = ops_.allocate(DType::F32, m, weights_.dims().vocab);
    logit_input_ = ops_.allocate(ops_.activation_dtype(), m, c.hidden_size);
  }
  const Tensor gathered = logit_input_.view().slice_rows(0, m);
  ops_.embedding(hidden, d_logit_rows_, gathered);  // a row gather
  ops_.rmsnorm(gathered, weights_.final_norm, eps, gathered);
  const Tensor logits = logits_.view().slice_rows(0, m);
  ops_.matmul(gathered, weights_.lm_head, logits);
  if (logits.device == Device::CPU) {
    ops_.synchronize();
    return logits;
  }
  if (host_logits_.view().rows < m) host_logits_ = ops_.allocate_host(DType::F32, m, logits.cols);
  const Tensor host = host_logits_.view().slice_rows(0, m);
  ops_.download(logits, host.data);
  ops_.synchronize();
  return host;
}

void LlamaModel::attention_block(const LayerWeights& l, int64_t layer, int64_t n,
                                 const AttentionBatch& batch, const KVCache& cache) {
  const ModelConfig& c = config();
  const Tensor normed = normed_.view().slice_rows(0, n);
  const Tensor qkv = qkv_.view().slice_rows(0, n);
  const Tensor q = qkv.slice_cols(0, q_cols_);
  const Tensor k = qkv.slice_cols(q_cols_, kv_cols_);
  const Tensor v = qkv.slice_cols(q_cols_ + kv_cols_, kv_cols_);
  const Tensor attn = attn_out_.view().slice_rows(0, n);
  const Tensor out = mlp_out_.view().slice_rows(0, n);

  if (!l.qkv.empty()) {
    project(normed, l.qkv, l.qkv_bias, qkv);
    if (l.qkv_bias.empty() && !l.q_bias.empty()) {
      ops_.add_bias(q, l.q_bias);
      ops_.add_bias(k, l.k_bias);
      ops_.add_bias(v, l.v_bias);
    }
  } else {
    project(normed, l.q, l.q_bias, q);
    project(normed, l.k, l.k_bias, k);
    project(normed, l.v, l.v_bias, v);
  }
  lora(normed, q, layer, LoraTarget::Q);
  lora(normed, k, layer, LoraTarget::K);
  lora(normed, v, layer, LoraTarget::V);
  const int32_t head_dim = static_cast<int32_t>(c.head_dim);
  ops_.rope(q, head_dim, d_positions_, inv_freq_, c.rope.interleaved);
  ops_.rope(k, head_dim, d_positions_, inv_freq_, c.rope.interleaved);
  ops_.kv_store(k, v, d_slots_, cache.keys(layer), cache.values(layer));
  ops_.attention(q, cache.keys(layer), cache.values(layer), batch, attn_shape_, attn);
  project(attn, l.o, l.o_bias, out);
  lora(attn, out, layer, LoraTarget::O);
}

void LlamaModel::mlp_block(const LayerWeights& l, int64_t layer, int64_t n) {
  const Tensor normed = normed_.view().slice_rows(0, n);
  const Tensor gate_up = gate_up_.view().slice_rows(0, n);
  const Tensor gate = gate_up.slice_cols(0, inter_);
  const Tensor up = gate_up.slice_cols(inter_, inter_);
  const Tensor out = mlp_out_.view().slice_rows(0, n);

  if (!l.gate_up.empty()) {
    project(normed, l.gate_up, l.gate_up_bias, gate_up);
    if (l.gate_up_bias.empty() && !l.gate_bias.empty()) {
      ops_.add_bias(gate, l.gate_bias);
      ops_.add_bias(up, l.up_bias);
    }
  } else {
    project(normed, l.gate, l.gate_bias, gate);
    project(normed, l.up, l.up_bias, up);
  }
  lora(normed, gate, layer, LoraTarget::Gate);
  lora(normed, up, layer, LoraTarget::Up);
  ops_.silu_mul(gate, up, gate);
  project(gate, l.down, l.down_bias, out);
  lora(gate, out, layer, LoraTarget::Down);
}

}  // namespace mil
