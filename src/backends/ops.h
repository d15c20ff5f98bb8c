// The op interface: everything the model does to tensors goes through here, so that
// model/ is written once for every backend. Activations are activation_dtype() (f32 on the
// CPU backend, bf16 on CUDA); weights stay in their storage dtype and are dequantized inside
// matmul/embedding. Pointers in argument structs point to memory of the backend's device.
// Memory of the backend's device comes from allocate(); upload/download move bytes between
// it and host memory in the order of the backend's other work (asynchronously on CUDA: host
// memory handed to upload must stay valid and unchanged, and downloaded bytes must not be
// read, until synchronize()).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "core/buffer.h"
#include "core/error.h"
#include "core/tensor.h"

namespace mil {

// Where each sequence of a step lives in the paged KV cache. CSR-style: the query rows of
// sequence i are q rows [query_start[i], query_start[i+1]); its context (cached tokens,
// the new ones included, which come last) is context_len[i] tokens long; token t of it
// sits in slot block_table[i * max_blocks_per_seq + t / block_size] * block_size + t % block_size.
struct AttentionBatch {
  int32_t num_seqs = 0;
  const int32_t* query_start = nullptr;  // num_seqs + 1
  const int32_t* context_len = nullptr;  // num_seqs
  const int32_t* block_table = nullptr;  // num_seqs * max_blocks_per_seq
  int32_t max_blocks_per_seq = 0;
  int32_t block_size = 0;
};

struct AttentionShape {
  int32_t num_heads = 0;
  int32_t num_kv_heads = 0;  // num_heads % num_kv_heads == 0 (GQA; equal for MHA)
  int32_t head_dim = 0;
  float scale = 0.0f;  // usually 1/sqrt(head_dim)
};

// temperature <= 0 means greedy. top_k <= 0 and top_p >= 1 disable those filters.
// HF order: temperature, then top-k, then top-p.
struct SamplingParams {
  float temperature = 0.0f;
  int32_t top_k = 0;
  float top_p = 1.0f;
};

// Multi-LoRA (Punica's SGMV/BGMV): the rows of a step are grouped into segments of
// consecutive rows that share an adapter slot. A decode batch with a different adapter on
// every row is simply one segment per row.
struct LoraSegment {
  int32_t row_begin = 0;
  int32_t row_end = 0;  // exclusive
  int32_t slot = -1;    // adapter slot, -1 = base model (no adapter: both ops skip the rows)
};

// One target projection (say layer 3's q_proj) for every adapter slot: slot s adds
// scale[s] * (x · a[s]^T) · b[s]^T to the projection's output. a[s]: f32 [rank_s, in],
// b[s]: f32 [out, rank_s]; an empty a[s] means the adapter in slot s does not touch this
// projection. Ranks differ between slots. Arrays hold num_slots entries.
struct LoraProjection {
  const Tensor* a = nullptr;
  const Tensor* b = nullptr;
  const float* scale = nullptr;
  int32_t num_slots = 0;
  // Bumped by the owner whenever an entry changes (0: unknown, always re-read). A device
  // backend may keep its own copy of the slot table and refresh it only when this moves.
  uint64_t generation = 0;
};

// The largest steps a model will run, for Ops::reserve_workspaces (engine warm-up).
struct StepLimits {
  int64_t max_rows = 0;         // token rows of one step
  int64_t max_sample_rows = 0;  // logits rows one step hands to sample()
  int64_t vocab = 0;            // columns of those logits
  AttentionShape attention;     // the shape every attention call of the model has
  // The LoRA projections steps may name: a backend that keeps per-projection state (CUDA's
  // device copies of the slot tables) allocates it now, at the projection's num_slots.
  std::vector<const LoraProjection*> lora;
};

// A recorded sequence of ops (a CUDA graph) that replays the same launches on the same
// memory: the inputs it reads must be written in place (same addresses) before launch().
class OpsGraph {
 public:
  virtual ~OpsGraph() = default;
  virtual void launch() = 0;
};

class Ops {
 public:
  virtual ~Ops() = default;
  virtual Device device() const = 0;
  // The dtype of activations (hidden states, q/k/v, MLP) and of the KV cache.
  virtual DType activation_dtype() const = 0;
  virtual DType kv_dtype() const { return activation_dtype(); }

  // Memory. allocate: an uninitialised contiguous tensor in the backend's memory.
  // allocate_host: host memory that upload/download move fastest (pinned on CUDA).
  virtual OwnedTensor allocate(DType dtype, int64_t rows, int64_t cols) = 0;
  virtual OwnedTensor allocate_host(DType dtype, int64_t rows, int64_t cols) = 0;
  // dst (backend memory, possibly strided) <- `src`, dst.rows packed rows of host memory.
  virtual void upload(const void* src, const Tensor& dst) = 0;
  // `dst`, src.rows packed rows of host memory <- src (backend memory, possibly strided).
  virtual void download(const Tensor& src, void* dst) = 0;
  // Waits for every op and copy issued so far.
  virtual void synchronize() = 0;
  // Free and total bytes of the backend's memory, where it can tell (false: it cannot).
  virtual bool memory_info(size_t* free_bytes, size_t* total_bytes) const {
    (void)free_bytes;
    (void)total_bytes;
    return false;
  }
  // Sizes the workspaces the backend grows inside ops (attention partials, sampling, LoRA
  // slot tables) for every step within `limits`, so that such steps allocate nothing later:
  // the engine calls it at warm-up, before it sizes the KV cache from the memory left.
  // Workspaces that depend only on the shapes of a model's own matmuls are sized by running
  // a step of the largest shape (the engine's warm-up does both). Backends without
  // workspaces do nothing.
  virtual void reserve_workspaces(const StepLimits& limits) { (void)limits; }
  // How many allocations of the backend's memory have been made so far: allocate(),
  // allocate_host() and every workspace an op grew. After warm-up a step of any shape within
  // its limits must leave it unchanged (no allocation on the hot path; tests check it).
  // Host scratch of the CPU backend's kernels (std::vector) is not the backend's memory.
  uint64_t allocation_count() const { return allocations_.load(std::memory_order_relaxed); }

  // Graph capture (plan/run split). Between begin_capture() and end_capture() ops are
  // recorded, not run; nothing may allocate, upload, download or synchronize in between, and
  // workspaces must already have their final size (run the same ops once eagerly first).
  // Backends without graphs return false from supports_graphs() and fail on the others.
  virtual bool supports_graphs() const { return false; }
  virtual void begin_capture() { fail("this backend cannot capture graphs"); }
  virtual std::unique_ptr<OpsGraph> end_capture() { fail("this backend cannot capture graphs"); }

  // y[n, w.rows] = x[n, w.cols] * w^T. x, y: f32. w: any storage dtype, possibly strided.
  virtual void matmul(const Tensor& x, const Tensor& w, const Tensor& y) = 0;
  // y[i, :] += bias[0, :] (bias f32, 1 x y.cols).
  virtual void add_bias(const Tensor& y, const Tensor& bias) = 0;
  // out[i, :] = table[ids[i], :] as f32; out.rows ids. Ids out of range are an error.
  virtual void embedding(const Tensor& table, const int32_t* ids, const Tensor& out) = 0;
  // out = x / sqrt(mean(x^2) + eps) * weight (weight f32, 1 x cols). out may alias x.
  virtual void rmsnorm(const Tensor& x, const Tensor& weight, float eps, const Tensor& out) = 0;
  // Rotates x [n, heads * head_dim] in place, token i at positions[i]. inv_freq: f32,
  // 1 x head_dim/2, scaling already folded in. interleaved: pairs (2j, 2j+1) as in GGUF
  // llama files; otherwise pairs (j, j + head_dim/2) as in HF's rotate_half.
  virtual void rope(const Tensor& x, int32_t head_dim, const int32_t* positions,
                    const Tensor& inv_freq, bool interleaved) = 0;
  // Writes row i of k and v to row slots[i] of k_cache and v_cache.
  virtual void kv_store(const Tensor& k, const Tensor& v, const int32_t* slots,
                        const Tensor& k_cache, const Tensor& v_cache) = 0;
  // The attention prologue of a layer: rope(q), rope(k), then kv_store(k, v). The result is
  // that of those three calls (k is left rotated too); backends may fuse them into one kernel.
  virtual void rope_kv_store(const Tensor& q, const Tensor& k, const Tensor& v, int32_t head_dim,
                             const int32_t* positions, const Tensor& inv_freq, bool interleaved,
                             const int32_t* slots, const Tensor& k_cache, const Tensor& v_cache) {
    rope(q, head_dim, positions, inv_freq, interleaved);
    rope(k, head_dim, positions, inv_freq, interleaved);
    kv_store(k, v, slots, k_cache, v_cache);
  }
  // Causal attention of q [n, num_heads * head_dim] over the cached keys/values
  // ([slots, num_kv_heads * head_dim]); out like q.
  virtual void attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                         const AttentionBatch& batch, const AttentionShape& shape,
                         const Tensor& out) = 0;
  // out = silu(gate) * up. out may alias gate.
  virtual void silu_mul(const Tensor& gate, const Tensor& up, const Tensor& out) = 0;
  // out = a + b. out may alias a.
  virtual void add(const Tensor& a, const Tensor& b, const Tensor& out) = 0;
  // The residual step between blocks: residual += x, then out = rmsnorm(residual) (the
  // updated residual, as stored, is what gets normalised). Same contract as add + rmsnorm.
  virtual void add_rmsnorm(const Tensor& residual, const Tensor& x, const Tensor& weight,
                           float eps, const Tensor& out) = 0;
  // Shrink: v[rows of each segment, 0:rank] = x[rows] · a[slot]^T, kept in f32. Rows of base
  // segments and of slots without this projection are left as they are. v: f32 [n, >= max rank].
  virtual void lora_shrink(const Tensor& x, const LoraProjection& proj, const LoraSegment* segments,
                           int32_t num_segments, const Tensor& v) = 0;
  // Expand: y[rows] += scale[slot] * v[rows, 0:rank] · b[slot]^T for every adapter segment.
  virtual void lora_expand(const Tensor& v, const LoraProjection& proj, const LoraSegment* segments,
                           int32_t num_segments, const Tensor& y) = 0;
  // out[i] = argmax of logits row i (the lowest index among ties).
  virtual void argmax(const Tensor& logits, int32_t* out) = 0;
  // out[i] drawn from row i under params[i], using uniforms[i] in [0, 1) as the only
  // randomness (the caller owns the seeded generator), by inverse CDF over candidates
  // sorted by decreasing probability. Greedy rows take the argmax.
  virtual void sample(const Tensor& logits, const SamplingParams* params, const float* uniforms,
                      int32_t* out) = 0;
  // HF's RepetitionPenaltyLogitsProcessor, in place on f32 logits: for every id of row i's
  // list ids[offsets[i] .. offsets[i+1]), logit = logit < 0 ? logit * penalties[i]
  // : logit / penalties[i]. Lists hold the ids seen in the sequence (prompt and generated)
  // in increasing order; an id may repeat and is still penalised once. Rows whose penalty is
  // 1 are left alone, whatever their list. offsets (rows + 1), ids and penalties are in the
  // backend's memory (nothing is allocated, so the op may be captured). Ids must lie in
  // [0, logits.cols): the CPU backend checks the order and range; a device backend skips
  // what it cannot check (an id out of range is ignored there, never written).
  virtual void repetition_penalty(const Tensor& logits, const int32_t* ids, const int32_t* offsets,
                                  const float* penalties) = 0;
  // out[i] = log_softmax(logits row i / temperatures[i])[tokens[i]]: the logprob the host's
  // token choice reports (engine/logits_processor.h), computed the same way: every f32 logit
  // divided by the row's temperature in f32 (1 leaves it as it is), then the row's max and
  // the sum of exp(x - max) in double, -inf entries adding nothing. logits f32; temperatures,
  // tokens and out in the backend's memory, tokens within [0, logits.cols).
  virtual void token_logprobs(const Tensor& logits, const float* temperatures,
                              const int32_t* tokens, float* out) = 0;

 protected:
  // Backends call this once per allocation of their memory (see allocation_count()).
  void count_allocation() { allocations_.fetch_add(1, std::memory_order_relaxed); }

 private:
  // Atomic: the adapter store allocates on the engine thread while tests read it.
  std::atomic<uint64_t> allocations_{0};
};

std::unique_ptr<Ops> make_cpu_ops(int num_threads);

}  // namespace mil
