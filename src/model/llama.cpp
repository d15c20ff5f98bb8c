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

void LlamaModel::validate(const StepBatch& step, const KVCache& cache) {
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
}

Tensor LlamaModel::forward(const StepBatch& step, const KVCache& cache, LogitsOn where) {
  validate(step, cache);
  // The staging buffers are about to be rewritten: the last step must have read them.
  if (pending_sync_) {
    ops_.synchronize();
    pending_sync_ = false;
  }
  const int64_t n = static_cast<int64_t>(step.token_ids.size());
  const int64_t m = static_cast<int64_t>(step.logit_rows.size());
  const int g = graph_for(step, cache);
  last_graph_batch_ = g >= 0 ? graphs_[g].batch : 0;
  if (g >= 0) {
    upload_graph_step(&step, graphs_[g].batch);
    graphs_[g].graph->launch();
    return finish(graph_logits_.view().slice_rows(0, m), where);
  }

  upload_step(step);
  const AttentionBatch batch{static_cast<int32_t>(step.context_len.size()), d_query_start_,
                             d_context_len_, d_block_table_, step.max_blocks_per_seq,
                             cache.block_size()};
  if (m > 0 && logits_.view().rows < m) {
    logits_ = ops_.allocate(DType::F32, m, weights_.dims().vocab);
    logit_input_ = ops_.allocate(ops_.activation_dtype(), m, config().hidden_size);
  }
  const Tensor gathered = m > 0 ? logit_input_.view().slice_rows(0, m) : Tensor{};
  const Tensor logits = m > 0 ? logits_.view().slice_rows(0, m) : Tensor{};
  run_body(n, batch, cache, gathered, logits);
  return finish(logits, where);
}

Tensor LlamaModel::finish(const Tensor& logits, LogitsOn where) {
  if (logits.rows == 0) {
    ops_.synchronize();  // the staging buffer of the step's arrays is reused by the next step
    return {};
  }
  if (logits.device == Device::CPU) {
    ops_.synchronize();
    return logits;
  }
  if (where == LogitsOn::Device) {
    pending_sync_ = true;
    return logits;
  }
  const int64_t m = logits.rows;
  if (host_logits_.view().rows < m) host_logits_ = ops_.allocate_host(DType::F32, m, logits.cols);
  const Tensor host = host_logits_.view().slice_rows(0, m);
  ops_.download(logits, host.data);
  ops_.synchronize();
  return host;
}

void LlamaModel::run_body(int64_t n, const AttentionBatch& batch, const KVCache& cache,
                          const Tensor& gathered, const Tensor& logits) {
  const ModelConfig& c = config();
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
  if (logits.rows == 0) return;
  // Final norm and lm_head only for the rows whose logits are wanted.
  ops_.embedding(hidden, d_logit_rows_, gathered);  // a row gather
  ops_.rmsnorm(gathered, weights_.final_norm, eps, gathered);
  ops_.matmul(gathered, weights_.lm_head, logits);
}

// --- Warm-up -------------------------------------------------------------------------------

void LlamaModel::reserve(const StepMaxima& mx) {
  MIL_CHECK(mx.logit_rows >= 0 && mx.sample_rows >= 0 && mx.seqs >= 1 && mx.blocks_per_seq >= 1 &&
                mx.lora_rank >= 0,
            "reserve: invalid step maxima (logit rows {}, sample rows {}, seqs {}, blocks per "
            "sequence {}, LoRA rank {})",
            mx.logit_rows, mx.sample_rows, mx.seqs, mx.blocks_per_seq, mx.lora_rank);
  if (pending_sync_) {  // buffers below may be replaced: the last step must be done with them
    ops_.synchronize();
    pending_sync_ = false;
  }
  const int64_t n = max_tokens_;
  const int64_t seqs = std::min<int64_t>(mx.seqs, n);
  const int64_t logit_rows = std::min(mx.logit_rows, n);
  const int64_t vocab = weights_.dims().vocab;
  if (logit_rows > 0 && logits_.view().rows < logit_rows) {
    logits_ = ops_.allocate(DType::F32, logit_rows, vocab);
    logit_input_ = ops_.allocate(ops_.activation_dtype(), logit_rows, config().hidden_size);
  }
  // finish() downloads device logits here; the CPU backend's are host memory already.
  if (logit_rows > 0 && ops_.device() != Device::CPU && host_logits_.view().rows < logit_rows) {
    host_logits_ = ops_.allocate_host(DType::F32, logit_rows, vocab);
  }
  if (adapters_ != nullptr) {
    const int64_t rank = std::max<int64_t>({mx.lora_rank, adapters_->max_rank(), 1});
    if (lora_v_.view().cols < rank) lora_v_ = ops_.allocate(DType::F32, max_tokens_, rank);
  }
  // The step's arrays as upload_step packs them: ids, positions and slots of n rows,
  // query_start and context_len, the block table, the logit rows, and the LoRA segments
  // (int32 triples, at most one per sequence).
  const int64_t ints =
      3 * n + (seqs + 1) + seqs + seqs * mx.blocks_per_seq + logit_rows + 3 * seqs;
  if (step_host_.view().cols < ints) {
    step_host_ = ops_.allocate_host(DType::I32, 1, ints);
    step_device_ = ops_.allocate(DType::I32, 1, ints);
  }
  StepLimits limits;
  limits.max_rows = n;
  limits.max_sample_rows = std::min(mx.sample_rows, n);
  limits.vocab = vocab;
  limits.attention = attn_shape_;
  if (adapters_ != nullptr) {
    for (int64_t layer = 0; layer < config().num_layers; ++layer) {
      for (int t = 0; t < kNumLoraTargets; ++t) {
        limits.lora.push_back(&adapters_->projection(layer, static_cast<LoraTarget>(t)));
      }
    }
  }
  ops_.reserve_workspaces(limits);
}

void LlamaModel::warm_up(const StepMaxima& mx, int32_t block_size) {
  MIL_CHECK(block_size > 0, "warm-up: block_size must be positive, got {}", block_size);
  const int64_t n = max_tokens_;
  // The prefill: n rows in sequences of at most the model's positions, each in its own blocks.
  const int64_t seq_len = std::min<int64_t>(n, config().max_position_embeddings);
  const int64_t prefill_seqs = (n + seq_len - 1) / seq_len;
  const int64_t per_seq = (seq_len + block_size - 1) / block_size;
  // The decode batch: one row per sequence at position 0, row i in slot i.
  const int64_t decode_seqs = std::min<int64_t>(std::max(mx.seqs, 1), n);
  const int64_t blocks =
      std::max(prefill_seqs * per_seq, (decode_seqs + block_size - 1) / block_size);
  const KVCache cache = make_kv_cache(blocks, block_size);
  const int64_t logit_rows = std::min(mx.logit_rows, n);

  StepBatch prefill;
  prefill.max_blocks_per_seq = static_cast<int32_t>(per_seq);
  prefill.query_start.push_back(0);
  for (int64_t s = 0; s < prefill_seqs; ++s) {
    const int64_t len = std::min(seq_len, n - s * seq_len);
    for (int64_t t = 0; t < len; ++t) {
      prefill.token_ids.push_back(0);
      prefill.positions.push_back(static_cast<int32_t>(t));
      prefill.slots.push_back(static_cast<int32_t>(s * per_seq * block_size + t));
    }
    prefill.query_start.push_back(static_cast<int32_t>(prefill.token_ids.size()));
    prefill.context_len.push_back(static_cast<int32_t>(len));
    for (int64_t b = 0; b < per_seq; ++b) {
      prefill.block_table.push_back(static_cast<int32_t>(s * per_seq + b));
    }
  }
  for (int64_t r = n - logit_rows; r < n; ++r) {
    prefill.logit_rows.push_back(static_cast<int32_t>(r));
  }
  (void)forward(prefill, cache);

  StepBatch decode;
  decode.max_blocks_per_seq = 1;
  decode.query_start.push_back(0);
  for (int64_t i = 0; i < decode_seqs; ++i) {
    decode.token_ids.push_back(0);
    decode.positions.push_back(0);
    decode.slots.push_back(static_cast<int32_t>(i));
    decode.query_start.push_back(static_cast<int32_t>(i + 1));
    decode.context_len.push_back(1);
    decode.block_table.push_back(static_cast<int32_t>(i / block_size));
    if (i < logit_rows) decode.logit_rows.push_back(static_cast<int32_t>(i));
  }
  (void)forward(decode, cache);
  ops_.synchronize();
}

// --- Decode graphs -------------------------------------------------------------------------

std::vector<int32_t> LlamaModel::decode_graph_batch_sizes() const {
  std::vector<int32_t> sizes;
  for (const DecodeGraph& g : graphs_) sizes.push_back(g.batch);
  return sizes;
}

int64_t LlamaModel::graph_step_ints(int32_t b) const {
  // ids, positions, slots, query_start (b + 1), context_len, block_table, logit_rows
  return int64_t{6} * b + 1 + int64_t{b} * graph_max_blocks_;
}

void LlamaModel::point_at_graph_layout(int32_t b) {
  const auto* dev = graph_device_.view().ptr<const int32_t>();
  d_ids_ = dev;
  d_positions_ = dev + b;
  d_slots_ = dev + 2 * b;
  d_query_start_ = dev + 3 * b;
  d_context_len_ = dev + 4 * b + 1;
  d_block_table_ = dev + 5 * b + 1;
  d_logit_rows_ = dev + 5 * b + 1 + int64_t{b} * graph_max_blocks_;
  d_segments_ = nullptr;
}

AttentionBatch LlamaModel::graph_batch(int32_t b, const KVCache& cache) const {
  return AttentionBatch{b, d_query_start_, d_context_len_, d_block_table_, graph_max_blocks_,
                        cache.block_size()};
}

void LlamaModel::upload_graph_step(const StepBatch* step, int32_t b) {
  const int32_t n = step != nullptr ? static_cast<int32_t>(step->token_ids.size()) : 0;
  const int32_t w = graph_max_blocks_;
  int32_t* h = graph_host_.ptr<int32_t>();
  int32_t* ids = h;
  int32_t* positions = h + b;
  int32_t* slots = h + 2 * b;
  int32_t* query_start = h + 3 * b;
  int32_t* context_len = h + 4 * b + 1;
  int32_t* block_table = h + 5 * b + 1;
  int32_t* logit_rows = block_table + int64_t{b} * w;
  for (int32_t i = 0; i < b; ++i) {
    const bool real = i < n;
    ids[i] = real ? step->token_ids[i] : 0;
    positions[i] = real ? step->positions[i] : 0;
    slots[i] = real ? step->slots[i] : -1;  // kv_store drops negative slots
    query_start[i] = i;
    context_len[i] = real ? step->context_len[i] : 1;
    int32_t* row = block_table + int64_t{i} * w;
    int32_t filled = 0;
    if (real) {
      filled = step->max_blocks_per_seq;
      std::memcpy(row, step->block_table.data() + int64_t{i} * filled,
                  static_cast<size_t>(filled) * sizeof(int32_t));
    }
    std::fill(row + filled, row + w, 0);
    logit_rows[i] = i;
  }
  query_start[b] = b;
  ops_.upload(h, graph_device_.view().slice_cols(0, graph_step_ints(b)));
  point_at_graph_layout(b);
}

int LlamaModel::graph_for(const StepBatch& step, const KVCache& cache) const {
  if (!graphs_enabled_ || graphs_.empty() || num_segments_ > 0) return -1;
  if (cache.keys(0).data != graph_cache_ || cache.num_blocks() != graph_cache_blocks_) return -1;
  const size_t n = step.token_ids.size();
  if (step.context_len.size() != n || step.logit_rows.size() != n ||
      step.max_blocks_per_seq > graph_max_blocks_) {
    return -1;
  }
  for (size_t i = 0; i < n; ++i) {
    if (step.query_start[i] != static_cast<int32_t>(i) || step.logit_rows[i] != static_cast<int32_t>(i)) {
      return -1;
    }
  }
  for (size_t g = 0; g < graphs_.size(); ++g) {
    if (static_cast<size_t>(graphs_[g].batch) >= n) return static_cast<int>(g);
  }
  return -1;
}

int LlamaModel::capture_decode_graphs(const KVCache& cache, std::vector<int32_t> batch_sizes,
                                      int32_t max_blocks_per_seq) {
  graphs_.clear();
  graph_cache_ = nullptr;
  if (!graphs_enabled_ || !ops_.supports_graphs()) return 0;
  std::sort(batch_sizes.begin(), batch_sizes.end());
  batch_sizes.erase(std::unique(batch_sizes.begin(), batch_sizes.end()), batch_sizes.end());
  std::erase_if(batch_sizes, [&](int32_t b) { return b <= 0 || b > max_tokens_; });
  if (batch_sizes.empty()) return 0;
  MIL_CHECK(cache.num_blocks() > 0, "decode graphs: the KV cache has no blocks");
  if (pending_sync_) {
    ops_.synchronize();
    pending_sync_ = false;
  }
  graph_max_blocks_ = std::max<int32_t>(max_blocks_per_seq, 1);
  const int32_t most = batch_sizes.back();
  const int64_t ints = graph_step_ints(most);
  if (graph_host_.view().cols < ints) {
    graph_host_ = ops_.allocate_host(DType::I32, 1, ints);
    graph_device_ = ops_.allocate(DType::I32, 1, ints);
  }
  if (graph_logits_.view().rows < most) {
    graph_logits_ = ops_.allocate(DType::F32, most, weights_.dims().vocab);
    graph_logit_input_ = ops_.allocate(ops_.activation_dtype(), most, config().hidden_size);
  }
  num_segments_ = 0;
  // Warm-up: every size once eagerly (plans, workspaces at their final sizes), all padding.
  for (int32_t b : batch_sizes) {
    upload_graph_step(nullptr, b);
    run_body(b, graph_batch(b, cache), cache, graph_logit_input_.view().slice_rows(0, b),
             graph_logits_.view().slice_rows(0, b));
    ops_.synchronize();
  }
  for (int32_t b : batch_sizes) {
    point_at_graph_layout(b);
    ops_.begin_capture();
    try {
      run_body(b, graph_batch(b, cache), cache, graph_logit_input_.view().slice_rows(0, b),
               graph_logits_.view().slice_rows(0, b));
    } catch (...) {
      try {
        (void)ops_.end_capture();
      } catch (...) {
      }
      graphs_.clear();
      throw;
    }
    graphs_.push_back(DecodeGraph{b, ops_.end_capture()});
  }
  graph_cache_ = cache.keys(0).data;
  graph_cache_blocks_ = cache.num_blocks();
  return static_cast<int>(graphs_.size());
}

void LlamaModel::release_decode_graphs(const KVCache& cache) {
  if (cache.num_blocks() > 0 && cache.keys(0).data == graph_cache_) {
    graphs_.clear();
    graph_cache_ = nullptr;
  }
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
  ops_.rope_kv_store(q, k, v, head_dim, d_positions_, inv_freq_, c.rope.interleaved, d_slots_,
                     cache.keys(layer), cache.values(layer));
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
