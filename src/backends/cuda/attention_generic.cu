// Paged causal attention for any even head_dim up to 256 and any GQA ratio: one warp per
// (query row, head), lanes strided over head_dim, a scalar online softmax per warp. It reads
// every key once per query head, so it is for the shapes the tuned kernel (attention.cu)
// does not instantiate, such as the tiny test models' head_dim 16 and 32.
#include <cfloat>

#include "backends/cuda/device_math.cuh"
#include "backends/cuda/kernels_model.h"

namespace mil::cuda {
namespace {

constexpr int kWarpsPerBlock = 4;
constexpr int kPerLane = kGenericAttentionMaxDim / 32;

__global__ void attention_generic_kernel(AttentionArgs a) {
  const int lane = threadIdx.x & 31;
  const int heads = a.shape.num_heads, dim = a.shape.head_dim;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (item >= static_cast<int64_t>(a.num_rows) * heads) return;
  const int64_t row = item / heads;
  const int h = static_cast<int>(item % heads);
  const int kh = h / (heads / a.shape.num_kv_heads);
  const AttentionBatch& b = a.batch;

  int lo = 0, hi = b.num_seqs - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (b.query_start[mid] <= row) lo = mid; else hi = mid - 1;
  }
  const int seq = lo;
  const int32_t q_len = b.query_start[seq + 1] - b.query_start[seq];
  const int64_t visible =
      static_cast<int64_t>(b.context_len[seq]) - q_len + (row - b.query_start[seq]) + 1;
  const int32_t* table = b.block_table + static_cast<int64_t>(seq) * b.max_blocks_per_seq;

  const auto* qrow = static_cast<const uint16_t*>(row_ptr(a.q.data, a.q.stride, row)) +
                     static_cast<int64_t>(h) * dim;
  float q[kPerLane], acc[kPerLane];
#pragma unroll
  for (int e = 0; e < kPerLane; ++e) {
    const int d = lane + 32 * e;
    q[e] = d < dim ? bf16_bits_to_f32(qrow[d]) * a.shape.scale : 0.0f;
    acc[e] = 0.0f;
  }
  float m = -FLT_MAX, l = 0.0f;
  const int64_t kv_col = static_cast<int64_t>(kh) * dim;
  for (int64_t t = 0; t < visible; ++t) {
    const int64_t blk = table[t / b.block_size];
    const int64_t slot = blk * b.block_size + t % b.block_size;
    if (blk < 0 || slot >= a.k_cache.rows) continue;
    const auto* krow = static_cast<const uint16_t*>(row_ptr(a.k_cache.data, a.k_cache.stride, slot)) + kv_col;
    const auto* vrow = static_cast<const uint16_t*>(row_ptr(a.v_cache.data, a.v_cache.stride, slot)) + kv_col;
    float s = 0.0f;
#pragma unroll
    for (int e = 0; e < kPerLane; ++e) {
      const int d = lane + 32 * e;
      if (d < dim) s += q[e] * bf16_bits_to_f32(krow[d]);
    }
    s = warp_sum(s);
    const float m_new = fmaxf(m, s);
    const float corr = expf(m - m_new), p = expf(s - m_new);
    l = l * corr + p;
#pragma unroll
    for (int e = 0; e < kPerLane; ++e) {
      const int d = lane + 32 * e;
      if (d < dim) acc[e] = acc[e] * corr + p * bf16_bits_to_f32(vrow[d]);
    }
    m = m_new;
  }
  auto* orow = static_cast<uint16_t*>(row_ptr(a.out.data, a.out.stride, row)) + static_cast<int64_t>(h) * dim;
#pragma unroll
  for (int e = 0; e < kPerLane; ++e) {
    const int d = lane + 32 * e;
    if (d < dim) orow[d] = f32_to_bf16_bits(l > 0.0f ? acc[e] / l : 0.0f);
  }
}

}  // namespace

void launch_attention_generic(const AttentionArgs& a, cudaStream_t s) {
  const int64_t items = static_cast<int64_t>(a.num_rows) * a.shape.num_heads;
  if (items == 0) return;
  const auto blocks = static_cast<unsigned>((items + kWarpsPerBlock - 1) / kWarpsPerBlock);
  attention_generic_kernel<<<blocks, kWarpsPerBlock * 32, 0, s>>>(a);
}

}  // namespace mil::cuda
