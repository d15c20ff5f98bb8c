// Plain reference implementations of every op, written independently of the backends:
// straightforward loops with double accumulation over packed host vectors. They define
// what the ops must compute; backends are compared with them under per-op tolerances.
#pragma once

#include <cstdint>
#include <vector>

#include "backends/ops.h"

namespace mil::ref {

// Packed rows of any weight dtype -> f32 values (rows * cols).
std::vector<float> dequantize(DType dtype, const std::vector<uint8_t>& rows, int64_t num_rows,
                              int64_t cols);

// y[n, m] = x[n, k] * w[m, k]^T with w already f32.
std::vector<float> matmul(const std::vector<float>& x, const std::vector<float>& w, int64_t n,
                          int64_t k, int64_t m);
// What an int8-activation backend computes from x: each block of 32 rounded to
// q * d with d = max|x| / 127 and q = round-half-even(x * (1 / d)).
std::vector<float> quantize_activations(const std::vector<float>& x);
void add_bias(std::vector<float>& y, const std::vector<float>& bias, int64_t cols);
std::vector<float> rmsnorm(const std::vector<float>& x, const std::vector<float>& weight,
                           int64_t cols, float eps);
void rope(std::vector<float>& x, int64_t rows, int64_t cols, int32_t head_dim,
          const std::vector<int32_t>& positions, const std::vector<float>& inv_freq,
          bool interleaved);
std::vector<float> silu_mul(const std::vector<float>& gate, const std::vector<float>& up);

// Paged attention over caches given as full [slots, kv_heads * head_dim] host arrays.
struct AttentionInput {
  std::vector<int32_t> query_start, context_len, block_table;
  int32_t max_blocks_per_seq = 0, block_size = 0;
};
std::vector<float> attention(const std::vector<float>& q, const std::vector<float>& k_cache,
                             const std::vector<float>& v_cache, const AttentionInput& batch,
                             const AttentionShape& shape);

// Multi-LoRA over packed host arrays. Adapter s: a[s] f32 [rank[s], in] and b[s] f32
// [out, rank[s]], rank 0 = the adapter lacks this projection; v has v_cols columns.
struct LoraInput {
  std::vector<std::vector<float>> a, b;
  std::vector<int64_t> rank;
  std::vector<float> scale;
  std::vector<LoraSegment> segments;
};
// v[i, 0:rank] = x[i] · a^T (double sums) for adapter rows; other entries of v kept.
void lora_shrink(const std::vector<float>& x, int64_t in, const LoraInput& lora,
                 std::vector<float>& v, int64_t v_cols);
// y[i] += scale * v[i, 0:rank] · b^T (double sums) for adapter rows.
void lora_expand(const std::vector<float>& v, int64_t v_cols, const LoraInput& lora,
                 std::vector<float>& y, int64_t out);

int32_t argmax(const std::vector<float>& row);
int32_t sample(const std::vector<float>& row, const SamplingParams& params, float uniform);
// HF's RepetitionPenaltyLogitsProcessor on one row: each distinct id of `ids` (any order,
// repeats allowed) once, x < 0 ? x * penalty : x / penalty.
void repetition_penalty(std::vector<float>& row, const std::vector<int32_t>& ids, float penalty);
// log_softmax(row / temperature)[token]: f32 division, then long double.
double token_logprob(const std::vector<float>& row, float temperature, int32_t token);

}  // namespace mil::ref
