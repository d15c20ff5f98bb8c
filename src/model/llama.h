// The Llama family (Llama 2/3, Mistral, Qwen2, SmolLM2) written once against the op
// interface:
//   embed -> N x [norm -> qkv (+bias) -> rope -> kv store -> paged attention -> o
//                 -> residual + norm -> gate_up -> silu*mul -> down -> residual + norm]
//   -> norm -> lm_head (only the rows whose logits are wanted)
// q/k/v (and gate/up) are column ranges of one activation buffer, filled by one matmul when
// the weights are fused (LlamaWeights::to_device) and by one matmul each otherwise; each
// target's LoRA goes to its own column range. Activations, the step's index arrays and the
// logits live in the backend's memory (activation_dtype(); logits f32).
//
// Decode graphs (backends that capture graphs: CUDA). capture_decode_graphs() records the
// whole decode step (embedding, all layers, final norm, lm_head of every row) once per batch
// size of a set, for one KV cache. A later step in which every sequence has exactly one new
// token (and wants its logits), no row names an adapter and the batch fits a captured size
// runs as the graph of the smallest captured size >= its batch: the host writes the step's
// arrays into fixed buffers at the fixed offsets of that size's layout (block tables padded
// to the captured max_blocks_per_seq) and uploads them in one copy before the launch. Padding
// rows read token 0 at position 0 with context length 1 (one key of block 0, read only) and
// KV slot -1, which kv_store drops, so they write nothing outside their own activation rows.
// Prefill, mixed and LoRA steps run eagerly, as on the CPU.
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

// The largest steps a caller will run: what LlamaModel::reserve sizes every per-step buffer
// for (rows are at most max_tokens_per_step).
struct StepMaxima {
  int64_t logit_rows = 1;      // rows of logits one step asks for
  int64_t sample_rows = 0;     // rows one step argmaxes or samples with the backend's ops
  int32_t seqs = 1;            // sequences in one step
  int32_t blocks_per_seq = 1;  // width of a step's block table (StepBatch::max_blocks_per_seq)
  int32_t lora_rank = 0;       // the largest adapter rank a step may name
};

// Where forward() leaves the logits.
enum class LogitsOn { Host, Device };

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
  // when the backend has one), valid until the next call. LogitsOn::Device leaves them in
  // the backend's memory without waiting for the step (the caller synchronizes before it
  // reads anything the step produced; the next forward waits for it).
  Tensor forward(const StepBatch& step, const KVCache& cache, LogitsOn where = LogitsOn::Host);

  // Warm-up (no allocation on the hot path). reserve() allocates every per-step buffer
  // (activations are allocated by the constructor) at its size for the largest step within
  // `maxima`, and has the backend size its op workspaces (Ops::reserve_workspaces): a step
  // within them then allocates nothing. Larger steps still work (their buffers grow).
  void reserve(const StepMaxima& maxima);
  // Runs the largest steps within `maxima` (a prefill of max_tokens_per_step rows, then a
  // decode batch of maxima.seqs rows) over a scratch KV cache of `block_size` tokens per block
  // that is freed on return, so that whatever the backend allocates at its first use of a
  // shape (cuBLASLt, matmul staging) is allocated before the caller measures free memory.
  // The KV contents it writes are garbage and thrown away.
  void warm_up(const StepMaxima& maxima, int32_t block_size);

  // Default batch sizes of the decode graphs.
  static std::vector<int32_t> default_graph_batch_sizes() { return {1, 2, 4, 8, 16, 32, 64, 128}; }
  // Captures the decode graphs for `cache` (see the top of this file), replacing earlier
  // ones: sizes above max_tokens_per_step are dropped; steps whose block tables are wider
  // than max_blocks_per_seq run eagerly. Runs each size once eagerly first (warm-up, sizing
  // the backend's workspaces). Returns the number of graphs: 0 when the backend cannot
  // capture or graphs are disabled.
  int capture_decode_graphs(const KVCache& cache, std::vector<int32_t> batch_sizes,
                            int32_t max_blocks_per_seq);
  // Drops the graphs if they were captured for `cache` (before it goes away).
  void release_decode_graphs(const KVCache& cache);
  // Off: no graph is captured or run (on by default).
  void set_decode_graphs_enabled(bool on) { graphs_enabled_ = on; }
  bool decode_graphs_enabled() const { return graphs_enabled_; }
  std::vector<int32_t> decode_graph_batch_sizes() const;
  // The graph size the last forward ran as (0: it ran eagerly).
  int32_t last_graph_batch() const { return last_graph_batch_; }

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
  void validate(const StepBatch& step, const KVCache& cache);
  // Embedding, the layers, then the final norm and lm_head of the `m` rows d_logit_rows_
  // names into `logits` (gathered: their normalised hidden rows). Reads only the d_* arrays.
  void run_body(int64_t n, const AttentionBatch& batch, const KVCache& cache,
                const Tensor& gathered, const Tensor& logits);
  // Decode graphs: the index of the graph that runs `step` (-1: run it eagerly).
  int graph_for(const StepBatch& step, const KVCache& cache) const;
  // The fixed layout of a graph step of `b` rows in graph_device_ (sets the d_* pointers).
  void point_at_graph_layout(int32_t b);
  int64_t graph_step_ints(int32_t b) const;
  // Writes `step` (or, with nullptr, only padding rows) in the layout of `b` rows and uploads it.
  void upload_graph_step(const StepBatch* step, int32_t b);
  AttentionBatch graph_batch(int32_t b, const KVCache& cache) const;
  Tensor finish(const Tensor& logits, LogitsOn where);

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
  bool pending_sync_ = false;  // the last step left its logits on the device unwaited

  struct DecodeGraph {
    int32_t batch = 0;
    std::unique_ptr<OpsGraph> graph;
  };
  bool graphs_enabled_ = true;
  int32_t last_graph_batch_ = 0;
  std::vector<DecodeGraph> graphs_;  // ascending batch sizes
  const void* graph_cache_ = nullptr;  // keys(0) of the cache the graphs were captured for
  int64_t graph_cache_blocks_ = 0;
  int32_t graph_max_blocks_ = 0;
  OwnedTensor graph_host_, graph_device_, graph_logits_, graph_logit_input_;
};

}  // namespace mil
