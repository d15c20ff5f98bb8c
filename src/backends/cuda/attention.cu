// Paged causal attention (GQA, variable length) over the block tables of AttentionBatch.
//
// Three kernels, chosen per call by launch_attention():
// - decode_kernel (split-KV, flash-decoding): one 128-thread block per (query row, kv head,
//   split). It handles every query head of the kv head's group, so each key and value row is
//   read once per group (GQA). Its key range is walked in chunks of 512: the block first
//   resolves the chunk's slots through the block table into shared memory, then scores the
//   keys (D/8 lanes per key, one 16-byte load each, 8 keys per thread in flight, q in
//   registers, a shuffle reduction), takes a chunk-wide softmax (running max/sum per head in
//   shared memory), then sums the value rows (again 16-byte loads, 8 in flight). With one
//   split the block writes the output row; with more it writes (m, l, acc) and
//   combine_kernel merges the splits.
// - flash_prefill_kernel: tensor cores (mma.sync m16n8k16 bf16, f32 accumulators) for
//   batches that are mostly prefill. One 128-thread block per (64 query rows of one
//   sequence, query head); 64-key K/V tiles come through cp.async into swizzled shared
//   memory, double buffered; online softmax in registers (FlashAttention-2 layout).
// - legacy_kernel: the first version (a warp per 32 keys, scalar q·k from shared memory),
//   kept as the fallback for unaligned q and for before/after timings
//   (KernelPolicy / MIL_ATTN_KERNEL=legacy; =split forces decode_kernel for every batch).
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>

#include <cuda_bf16.h>

#include "backends/cuda/device_math.cuh"
#include "backends/cuda/kernels.h"
#include "backends/cuda/launch.cuh"

namespace mil::cuda {
namespace {

struct Params {
  const uint16_t* q;
  size_t q_stride;  // elements
  const uint16_t* k;
  const uint16_t* v;
  size_t kv_stride;  // elements
  int64_t cache_rows;
  uint16_t* out;
  size_t out_stride;  // elements
  const int32_t* query_start;
  const int32_t* context_len;
  const int32_t* block_table;
  int32_t num_seqs, max_blocks, block_size;
  int32_t heads, kv_heads, group;
  float scale;
  float* partials;
};

// The sequence of query row `row`: the last s with query_start[s] <= row.
__device__ __forceinline__ int find_seq(const Params& p, int64_t row) {
  int lo = 0, hi = p.num_seqs - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (p.query_start[mid] <= row) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// The keys of query row `row` that each split covers: split i takes [i * chunk, (i + 1) *
// chunk) of the row's `visible` keys. Chunks are multiples of 32 keys and at least
// kMinSplitKeys long, so that a short context is not cut into many nearly empty splits (decode
// graphs fix the split count for every context length); splits past the last used one have
// no keys: the kernels skip them and combine_kernel reads only the `used` ones.
constexpr int64_t kMinSplitKeys = 64;
struct SplitSpan {
  int seq;
  int64_t visible, chunk;
  int used;
};
__device__ __forceinline__ SplitSpan split_span(const Params& p, int64_t row, int splits) {
  SplitSpan sp;
  sp.seq = find_seq(p, row);
  const int32_t q_len = p.query_start[sp.seq + 1] - p.query_start[sp.seq];
  sp.visible = static_cast<int64_t>(p.context_len[sp.seq]) - q_len + (row - p.query_start[sp.seq]) + 1;
  const int64_t chunk = ((sp.visible + splits - 1) / splits + 31) / 32 * 32;
  sp.chunk = chunk < kMinSplitKeys ? kMinSplitKeys : chunk;
  sp.used = sp.visible > 0 ? static_cast<int>(imin64(splits, (sp.visible + sp.chunk - 1) / sp.chunk)) : 0;
  return sp;
}

constexpr int kWarps = 4;


template <int D, int G>
__global__ void __launch_bounds__(kWarps * 32) legacy_kernel(Params p) {
  pdl_begin();
  constexpr int kPerLane = D / 32;
  __shared__ float sq[G][D];
  __shared__ float s_m[kWarps][G], s_l[kWarps][G];
  __shared__ float s_acc[kWarps][G][D];

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t row = blockIdx.x;
  const int kh = blockIdx.y;
  const int split = blockIdx.z, splits = gridDim.z;

  const SplitSpan sp = split_span(p, row, splits);
  if (splits > 1 && split >= sp.used) return;  // no keys: combine_kernel skips this split
  const int32_t* table = p.block_table + static_cast<int64_t>(sp.seq) * p.max_blocks;
  const int64_t begin = split * sp.chunk;
  const int64_t end = imin64(sp.visible, begin + sp.chunk);

  const int group = p.group;
  for (int i = threadIdx.x; i < G * D; i += blockDim.x) {
    const int g = i / D, d = i % D;
    sq[g][d] = g < group ? bf16_bits_to_f32(p.q[row * p.q_stride + (static_cast<int64_t>(kh) * group + g) * D + d]) * p.scale : 0.0f;
  }
  __syncthreads();

  float m[G], l[G], acc[G][kPerLane];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    m[g] = -FLT_MAX;
    l[g] = 0.0f;
#pragma unroll
    for (int e = 0; e < kPerLane; ++e) acc[g][e] = 0.0f;
  }
  const int64_t kv_col = static_cast<int64_t>(kh) * D;

  for (int64_t t0 = begin + warp * 32; t0 < end; t0 += kWarps * 32) {
    const int64_t key = t0 + lane;
    const bool valid = key < end;
    int64_t slot = 0;
    if (valid) {
      const int64_t blk = table[key / p.block_size];
      slot = blk * p.block_size + key % p.block_size;
      if (blk < 0 || slot >= p.cache_rows) slot = -1;
    }
    float s[G];
#pragma unroll
    for (int g = 0; g < G; ++g) s[g] = 0.0f;
    if (valid && slot >= 0) {
      const uint4* kp = reinterpret_cast<const uint4*>(p.k + slot * p.kv_stride + kv_col);
      uint4 kr[D / 8];
#pragma unroll
      for (int c = 0; c < D / 8; ++c) kr[c] = kp[c];
#pragma unroll
      for (int c = 0; c < D / 8; ++c) {
        const uint32_t w[4] = {kr[c].x, kr[c].y, kr[c].z, kr[c].w};
#pragma unroll
        for (int h = 0; h < 4; ++h) {
          const float k0 = __uint_as_float(w[h] << 16), k1 = __uint_as_float(w[h] & 0xffff0000u);
#pragma unroll
          for (int g = 0; g < G; ++g) s[g] += sq[g][c * 8 + 2 * h] * k0 + sq[g][c * 8 + 2 * h + 1] * k1;
        }
      }
    }
    float pr[G];
#pragma unroll
    for (int g = 0; g < G; ++g) {
      const float sc = valid && slot >= 0 ? s[g] : -FLT_MAX;
      const float m_new = fmaxf(m[g], warp_max(sc));
      pr[g] = valid && slot >= 0 ? expf(sc - m_new) : 0.0f;
      const float corr = expf(m[g] - m_new);
      l[g] = l[g] * corr + warp_sum(pr[g]);
      m[g] = m_new;
#pragma unroll
      for (int e = 0; e < kPerLane; ++e) acc[g][e] *= corr;
    }
    // Keys past the range or with a bad block carry p = 0 and read slot 0 instead, so the
    // loop has a fixed trip count and its 32 value loads can be issued ahead.
    const int64_t vslot = valid && slot >= 0 ? slot : 0;
#pragma unroll
    for (int j = 0; j < 32; ++j) {
      const int64_t sj = __shfl_sync(0xffffffffu, vslot, j);
      float pj[G];
#pragma unroll
      for (int g = 0; g < G; ++g) pj[g] = __shfl_sync(0xffffffffu, pr[g], j);
      const uint16_t* vp = p.v + sj * p.kv_stride + kv_col + lane * kPerLane;
      float vv[kPerLane];
      if constexpr (kPerLane == 4) {
        const uint2 raw = *reinterpret_cast<const uint2*>(vp);
        vv[0] = __uint_as_float(raw.x << 16);
        vv[1] = __uint_as_float(raw.x & 0xffff0000u);
        vv[2] = __uint_as_float(raw.y << 16);
        vv[3] = __uint_as_float(raw.y & 0xffff0000u);
      } else {
        const uint32_t raw = *reinterpret_cast<const uint32_t*>(vp);
        vv[0] = __uint_as_float(raw << 16);
        vv[1] = __uint_as_float(raw & 0xffff0000u);
      }
#pragma unroll
      for (int g = 0; g < G; ++g) {
#pragma unroll
        for (int e = 0; e < kPerLane; ++e) acc[g][e] += pj[g] * vv[e];
      }
    }
  }

  // Merge the warps.
#pragma unroll
  for (int g = 0; g < G; ++g) {
    if (lane == 0) {
      s_m[warp][g] = m[g];
      s_l[warp][g] = l[g];
    }
#pragma unroll
    for (int e = 0; e < kPerLane; ++e) s_acc[warp][g][lane * kPerLane + e] = acc[g][e];
  }
  __syncthreads();
  for (int i = threadIdx.x; i < G * D; i += blockDim.x) {
    const int g = i / D, d = i % D;
    if (g >= group) continue;
    float mm = -FLT_MAX;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mm = fmaxf(mm, s_m[w][g]);
    float ll = 0.0f, a = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float f = expf(s_m[w][g] - mm);
      ll += s_l[w][g] * f;
      a += s_acc[w][g][d] * f;
    }
    const int64_t h = static_cast<int64_t>(kh) * group + g;
    if (splits == 1) {
      p.out[row * p.out_stride + h * D + d] = f32_to_bf16_bits(ll > 0.0f ? a / ll : 0.0f);
    } else {
      float* part = p.partials + ((row * p.heads + h) * splits + split) * (D + 2);
      if (d == 0) {
        part[0] = mm;
        part[1] = ll;
      }
      part[2 + d] = a;
    }
  }
}

// Merges the used splits of one (row, head): blockDim.x == D >= splits. Thread t first
// holds split t's (max, sum) for the weights, then every thread sums its output dim over the
// splits with independent loads (a loop of dependent loads over 64 splits took 7.5 us).
template <int D>
__global__ void combine_kernel(Params p, int splits) {
  pdl_begin();
  __shared__ float s_w[D];
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const int h = blockIdx.y, d = threadIdx.x;
  const int used = split_span(p, row, splits).used;
  const float* part = p.partials + (row * p.heads + h) * splits * (D + 2);
  const float mt = d < used ? part[d * (D + 2)] : -FLT_MAX;
  const float lt = d < used ? part[d * (D + 2) + 1] : 0.0f;
  float mm = warp_max(mt);
  if ((d & 31) == 0) scratch[d >> 5] = mm;
  __syncthreads();
  mm = scratch[0];
#pragma unroll
  for (int w = 1; w < D / 32; ++w) mm = fmaxf(mm, scratch[w]);
  const float wt = lt > 0.0f ? expf(mt - mm) : 0.0f;
  s_w[d] = wt;
  const float ll = block_sum(lt * wt, scratch);  // its barriers also publish s_w
  float a = 0.0f;
#pragma unroll 8
  for (int t = 0; t < used; ++t) a += s_w[t] * part[t * (D + 2) + 2 + d];
  p.out[row * p.out_stride + static_cast<int64_t>(h) * D + d] = f32_to_bf16_bits(ll > 0.0f ? a / ll : 0.0f);
}

// ---------------------------------------------------------------------------------------
// decode_kernel: split-KV decode (any query layout; best when rows see many keys).

constexpr int kDThreads = 128;
constexpr int kDChunk = 512;  // keys per chunk (scores of a chunk live in shared memory)
constexpr int kDUnroll = 8;   // 16-byte loads in flight per thread

// The kDUnroll 16-byte pieces a thread reads of a K or V cache: keys i + u * KPS of the
// chunk (u < kDUnroll), at column kv_col of their slots; zeros past n or for a missing slot.
template <int KPS>
__device__ __forceinline__ void load_cache_pieces(const uint16_t* cache, size_t stride, const int64_t* s_slot,
                                                  int i, int n, int64_t kv_col, uint4 (&r)[kDUnroll]) {
#pragma unroll
  for (int u = 0; u < kDUnroll; ++u) {
    const int key = i + u * KPS;
    const int64_t slot = key < n ? s_slot[key] : -1;
    r[u] = slot >= 0 ? __ldg(reinterpret_cast<const uint4*>(cache + slot * stride + kv_col)) : make_uint4(0, 0, 0, 0);
  }
}

template <int D, int G>
__global__ void __launch_bounds__(kDThreads) decode_kernel(Params p) {
  pdl_begin();
  constexpr int L = D / 8;                // lanes per key row (one 16-byte load each)
  constexpr int KPS = kDThreads / L;      // keys per block step
  constexpr int kWarpsD = kDThreads / 32;
  __shared__ float s_p[G][kDChunk];
  __shared__ int64_t s_slot[kDChunk];
  __shared__ float s_red[kWarpsD][G][D];
  __shared__ float s_m[G], s_l[G], s_corr[G];

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int c = tid % L, kg = tid / L;
  const int64_t row = blockIdx.x;
  const int kh = blockIdx.y;
  const int split = blockIdx.z, splits = gridDim.z;
  const SplitSpan sp = split_span(p, row, splits);
  if (splits > 1 && split >= sp.used) return;  // no keys: combine_kernel skips this split
  const int32_t* table = p.block_table + static_cast<int64_t>(sp.seq) * p.max_blocks;
  const int64_t begin = split * sp.chunk;
  const int64_t end = imin64(sp.visible, begin + sp.chunk);
  const int group = p.group;
  const int64_t kv_col = static_cast<int64_t>(kh) * D + c * 8;

  float qf[G][8];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    if (g < group) {
      const uint4 r = *reinterpret_cast<const uint4*>(
          p.q + row * p.q_stride + (static_cast<int64_t>(kh) * group + g) * D + c * 8);
      bf16x8_to_f32(r, qf[g]);
#pragma unroll
      for (int e = 0; e < 8; ++e) qf[g][e] *= p.scale;
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) qf[g][e] = 0.0f;
    }
  }
  if (tid < G) {
    s_m[tid] = -INFINITY;
    s_l[tid] = 0.0f;
  }
  float acc[G][8];
#pragma unroll
  for (int g = 0; g < G; ++g) {
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[g][e] = 0.0f;
  }

  for (int64_t c0 = begin; c0 < end; c0 += kDChunk) {
    const int n = static_cast<int>(imin64(kDChunk, end - c0));
    for (int i = tid; i < n; i += kDThreads) {
      const int64_t key = c0 + i;
      const int64_t blk = table[key / p.block_size];
      int64_t slot = blk * p.block_size + key % p.block_size;
      if (blk < 0 || slot >= p.cache_rows) slot = -1;
      s_slot[i] = slot;
    }
    __syncthreads();
    // Scores.
    for (int i0 = 0; i0 < n; i0 += KPS * kDUnroll) {
      uint4 kr[kDUnroll];
      load_cache_pieces<KPS>(p.k, p.kv_stride, s_slot, i0 + kg, n, kv_col, kr);
#pragma unroll
      for (int u = 0; u < kDUnroll; ++u) {
        const int i = i0 + u * KPS + kg;
        float kf[8];
        bf16x8_to_f32(kr[u], kf);
        float sc[G];
#pragma unroll
        for (int g = 0; g < G; ++g) {
          float s = 0.0f;
#pragma unroll
          for (int e = 0; e < 8; ++e) s += qf[g][e] * kf[e];
          sc[g] = s;
        }
#pragma unroll
        for (int o = L / 2; o > 0; o >>= 1) {
#pragma unroll
          for (int g = 0; g < G; ++g) sc[g] += __shfl_xor_sync(0xffffffffu, sc[g], o);
        }
        if (i < n) {
          const bool ok = s_slot[i] >= 0;
#pragma unroll
          for (int g = 0; g < G; ++g) {
            if (c == g) s_p[g][i] = ok ? sc[g] : -INFINITY;
          }
        }
      }
    }
    __syncthreads();
    // Chunk softmax: one warp per head.
    for (int g = warp; g < G; g += kWarpsD) {
      float mx = -INFINITY;
      for (int i = lane; i < n; i += 32) mx = fmaxf(mx, s_p[g][i]);
      mx = warp_max(mx);
      const float m_old = s_m[g];
      const float m_new = fmaxf(m_old, mx);
      const float base = m_new == -INFINITY ? 0.0f : m_new;
      float sum = 0.0f;
      for (int i = lane; i < n; i += 32) {
        const float e = expf(s_p[g][i] - base);
        s_p[g][i] = e;
        sum += e;
      }
      sum = warp_sum(sum);
      if (lane == 0) {
        const float corr = expf(m_old - base);
        s_corr[g] = corr;
        s_l[g] = s_l[g] * corr + sum;
        s_m[g] = m_new;
      }
    }
    __syncthreads();
#pragma unroll
    for (int g = 0; g < G; ++g) {
      const float corr = s_corr[g];
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[g][e] *= corr;
    }
    // Values.
    for (int i0 = 0; i0 < n; i0 += KPS * kDUnroll) {
      uint4 vr[kDUnroll];
      load_cache_pieces<KPS>(p.v, p.kv_stride, s_slot, i0 + kg, n, kv_col, vr);
#pragma unroll
      for (int u = 0; u < kDUnroll; ++u) {
        const int i = i0 + u * KPS + kg;
        if (i < n) {
          float vf[8];
          bf16x8_to_f32(vr[u], vf);
#pragma unroll
          for (int g = 0; g < G; ++g) {
            const float pg = s_p[g][i];
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[g][e] += pg * vf[e];
          }
        }
      }
    }
    __syncthreads();
  }

  // Sum the key groups: inside the warp by shuffles, across warps in shared memory.
#pragma unroll
  for (int o = L; o < 32; o <<= 1) {
#pragma unroll
    for (int g = 0; g < G; ++g) {
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[g][e] += __shfl_xor_sync(0xffffffffu, acc[g][e], o);
    }
  }
  if (lane < L) {
#pragma unroll
    for (int g = 0; g < G; ++g) {
#pragma unroll
      for (int e = 0; e < 8; ++e) s_red[warp][g][c * 8 + e] = acc[g][e];
    }
  }
  __syncthreads();
  for (int i = tid; i < G * D; i += kDThreads) {
    const int g = i / D, d = i % D;
    if (g >= group) continue;
    float a = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarpsD; ++w) a += s_red[w][g][d];
    const float ll = s_l[g];
    const int64_t h = static_cast<int64_t>(kh) * group + g;
    if (splits == 1) {
      p.out[row * p.out_stride + h * D + d] = f32_to_bf16_bits(ll > 0.0f ? a / ll : 0.0f);
    } else {
      float* part = p.partials + ((row * p.heads + h) * splits + split) * (D + 2);
      if (d == 0) {
        part[0] = ll > 0.0f ? s_m[g] : -FLT_MAX;
        part[1] = ll;
      }
      part[2 + d] = a;
    }
  }
}

// ---------------------------------------------------------------------------------------
// flash_prefill_kernel: tensor-core causal attention for prefill batches.

constexpr int kFM = 64;  // query rows per block (16 per warp)
constexpr int kFN = 64;  // keys per tile
constexpr int kFThreads = 128;

__device__ __forceinline__ uint32_t smem_u32(const void* ptr) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(ptr));
}
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool pred) {
  const int n = pred ? 16 : 0;  // 0: zero-fill
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
__device__ __forceinline__ void ldsm_x4(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2,
                                        uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2,
                                          uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}
__device__ __forceinline__ void mma_bf16(float* d, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  uint32_t r;
  memcpy(&r, &v, 4);
  return r;
}
// Byte offset of 16-byte chunk `ch` of row `r` in a [rows][D] bf16 tile, XOR-swizzled so that
// ldmatrix's eight row reads hit eight different bank groups.
template <int D>
__device__ __forceinline__ uint32_t swz(int r, int ch) {
  return static_cast<uint32_t>(r * D * 2 + ((ch ^ (r & 7)) << 4));
}

template <int D>
constexpr size_t flash_smem_bytes() {
  return static_cast<size_t>(kFM) * D * 2 + 4ull * kFN * D * 2 + 2ull * kFN * sizeof(int);
}

template <int D>
__global__ void __launch_bounds__(kFThreads) flash_prefill_kernel(Params p) {
  constexpr int kCh = D / 8;  // 16-byte chunks per row
  extern __shared__ __align__(128) uint8_t smem[];
  uint8_t* sq = smem;
  uint8_t* sk = sq + kFM * D * 2;       // [2][kFN][D]
  uint8_t* sv = sk + 2 * kFN * D * 2;   // [2][kFN][D]
  int* s_valid = reinterpret_cast<int*>(sv + 2 * kFN * D * 2);  // [2][kFN]
  __shared__ int s_seq, s_tile;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int h = blockIdx.x;
  const int kh = h / p.group;
  // Blocks map to (sequence, 64-row tile) in order, the last tiles (the longest causal
  // ranges) first.
  const int t = static_cast<int>(gridDim.y) - 1 - static_cast<int>(blockIdx.y);
  if (warp == 0) {
    int base = 0, seq = -1, tile = 0;
    for (int s0 = 0; s0 < p.num_seqs; s0 += 32) {
      const int s = s0 + lane;
      int nt = 0;
      if (s < p.num_seqs) nt = (p.query_start[s + 1] - p.query_start[s] + kFM - 1) / kFM;
      int inc = nt;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const int v = __shfl_up_sync(0xffffffffu, inc, o);
        if (lane >= o) inc += v;
      }
      const int excl = inc - nt;
      const unsigned hit = __ballot_sync(0xffffffffu, nt > 0 && base + excl <= t && t < base + inc);
      if (hit != 0) {
        const int src = __ffs(hit) - 1;
        seq = s0 + src;
        tile = t - base - __shfl_sync(0xffffffffu, excl, src);
        break;
      }
      base += __shfl_sync(0xffffffffu, inc, 31);
    }
    if (lane == 0) {
      s_seq = seq;
      s_tile = tile;
    }
  }
  __syncthreads();
  const int seq = s_seq;
  if (seq < 0) return;
  const int q0 = p.query_start[seq];
  const int q_len = p.query_start[seq + 1] - q0;
  const int ctx = p.context_len[seq];
  const int row0 = s_tile * kFM;
  const int rows = min(kFM, q_len - row0);
  const int past = ctx - q_len;  // position of the sequence's first query row
  const int kv_end = max(0, min(ctx, past + row0 + rows));
  const int n_tiles = (kv_end + kFN - 1) / kFN;
  const int32_t* table = p.block_table + static_cast<int64_t>(seq) * p.max_blocks;
  const int64_t kv_col = static_cast<int64_t>(kh) * D;

  for (int i = tid; i < kFM * kCh; i += kFThreads) {
    const int r = i / kCh, ch = i % kCh;
    const bool ok = r < rows;
    const uint16_t* src =
        ok ? p.q + static_cast<int64_t>(q0 + row0 + r) * p.q_stride + static_cast<int64_t>(h) * D + ch * 8
           : p.q;
    cp_async16(smem_u32(sq + swz<D>(r, ch)), src, ok);
  }
  auto load_kv = [&](int tile, int buf) {
    for (int i = tid; i < kFN * kCh; i += kFThreads) {
      const int r = i / kCh, ch = i % kCh;
      const int key = tile * kFN + r;
      int64_t slot = -1;
      if (key < kv_end) {
        const int64_t blk = table[key / p.block_size];
        slot = blk * p.block_size + key % p.block_size;
        if (blk < 0 || slot >= p.cache_rows) slot = -1;
      }
      const bool ok = slot >= 0;
      const int64_t off = ok ? slot * static_cast<int64_t>(p.kv_stride) + kv_col + ch * 8 : 0;
      const uint32_t so = static_cast<uint32_t>(buf * kFN * D * 2) + swz<D>(r, ch);
      cp_async16(smem_u32(sk) + so, p.k + off, ok);
      cp_async16(smem_u32(sv) + so, p.v + off, ok);
      if (ch == 0) s_valid[buf * kFN + r] = ok ? 1 : 0;
    }
  };
  if (n_tiles > 0) load_kv(0, 0);
  cp_async_commit();

  const float sl2 = p.scale * 1.4426950408889634f;  // scores in log2 units
  const int r_lo = warp * 16 + (lane >> 2);          // this thread's rows: r_lo and r_lo + 8
  const bool rv0 = r_lo < rows, rv1 = r_lo + 8 < rows;
  const int pos0 = past + row0 + r_lo, pos1 = pos0 + 8;
  uint32_t qf[D / 16][4];
  float o[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;

  for (int j = 0; j < n_tiles; ++j) {
    const int buf = j & 1;
    if (j + 1 < n_tiles) {
      load_kv(j + 1, buf ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (j == 0) {
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        const int r = warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
        const int ch = kk * 2 + (lane >> 4);
        ldsm_x4(smem_u32(sq + swz<D>(r, ch)), qf[kk][0], qf[kk][1], qf[kk][2], qf[kk][3]);
      }
    }
    // S = Q K^T for this warp's 16 rows x 64 keys.
    float s[kFN / 8][4];
#pragma unroll
    for (int i = 0; i < kFN / 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.0f;
    const uint32_t kb = smem_u32(sk) + static_cast<uint32_t>(buf * kFN * D * 2);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
      for (int nb = 0; nb < kFN / 8; nb += 2) {
        const int key = nb * 8 + (lane & 7) + ((lane >> 4) << 3);
        const int ch = kk * 2 + ((lane >> 3) & 1);
        uint32_t b0, b1, b2, b3;
        ldsm_x4(kb + swz<D>(key, ch), b0, b1, b2, b3);
        mma_bf16(s[nb], qf[kk], b0, b1);
        mma_bf16(s[nb + 1], qf[kk], b2, b3);
      }
    }
    // Mask (causal, context end, bad blocks), online softmax.
    const int* vf = s_valid + buf * kFN;
    const int kbase = j * kFN;
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int nb = 0; nb < kFN / 8; ++nb) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int kl = nb * 8 + (lane & 3) * 2 + e;
        const int key = kbase + kl;
        const bool kv = vf[kl] != 0;
        const float a = kv && rv0 && key <= pos0 ? s[nb][e] * sl2 : -INFINITY;
        const float b = kv && rv1 && key <= pos1 ? s[nb][2 + e] * sl2 : -INFINITY;
        s[nb][e] = a;
        s[nb][2 + e] = b;
        mx0 = fmaxf(mx0, a);
        mx1 = fmaxf(mx1, b);
      }
    }
#pragma unroll
    for (int off = 1; off < 4; off <<= 1) {
      mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, off));
      mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, off));
    }
    const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
    const float b0v = mn0 == -INFINITY ? 0.0f : mn0, b1v = mn1 == -INFINITY ? 0.0f : mn1;
    const float c0 = exp2f(m0 - b0v), c1 = exp2f(m1 - b1v);
    m0 = mn0;
    m1 = mn1;
    l0 *= c0;
    l1 *= c1;
#pragma unroll
    for (int i = 0; i < D / 8; ++i) {
      o[i][0] *= c0;
      o[i][1] *= c0;
      o[i][2] *= c1;
      o[i][3] *= c1;
    }
    uint32_t pa[kFN / 16][4];
#pragma unroll
    for (int nb = 0; nb < kFN / 8; ++nb) {
      const float p0 = exp2f(s[nb][0] - b0v), p1 = exp2f(s[nb][1] - b0v);
      const float p2 = exp2f(s[nb][2] - b1v), p3 = exp2f(s[nb][3] - b1v);
      l0 += p0 + p1;
      l1 += p2 + p3;
      pa[nb / 2][(nb & 1) * 2] = pack_bf16x2(p0, p1);
      pa[nb / 2][(nb & 1) * 2 + 1] = pack_bf16x2(p2, p3);
    }
    // O += P V.
    const uint32_t vb = smem_u32(sv) + static_cast<uint32_t>(buf * kFN * D * 2);
#pragma unroll
    for (int kk = 0; kk < kFN / 16; ++kk) {
#pragma unroll
      for (int nd = 0; nd < D / 8; nd += 2) {
        const int key = kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3);
        const int ch = nd + (lane >> 4);
        uint32_t v0, v1, v2, v3;
        ldsm_x4_t(vb + swz<D>(key, ch), v0, v1, v2, v3);
        mma_bf16(o[nd], pa[kk], v0, v1);
        mma_bf16(o[nd + 1], pa[kk], v2, v3);
      }
    }
    __syncthreads();
  }
  cp_async_wait<0>();

#pragma unroll
  for (int off = 1; off < 4; off <<= 1) {
    l0 += __shfl_xor_sync(0xffffffffu, l0, off);
    l1 += __shfl_xor_sync(0xffffffffu, l1, off);
  }
  const float inv0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, inv1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
#pragma unroll
  for (int nd = 0; nd < D / 8; ++nd) {
    const int d = nd * 8 + (lane & 3) * 2;
    if (rv0) {
      uint16_t* dst = p.out + static_cast<int64_t>(q0 + row0 + r_lo) * p.out_stride +
                      static_cast<int64_t>(h) * D + d;
      *reinterpret_cast<uint32_t*>(dst) = pack_bf16x2(o[nd][0] * inv0, o[nd][1] * inv0);
    }
    if (rv1) {
      uint16_t* dst = p.out + static_cast<int64_t>(q0 + row0 + r_lo + 8) * p.out_stride +
                      static_cast<int64_t>(h) * D + d;
      *reinterpret_cast<uint32_t*>(dst) = pack_bf16x2(o[nd][2] * inv1, o[nd][3] * inv1);
    }
  }
}

template <int D>
void launch_flash(const Params& p, int rows, cudaStream_t s) {
  constexpr size_t smem = flash_smem_bytes<D>();
  static const bool attr_set = [] {
    return cudaFuncSetAttribute(flash_prefill_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                static_cast<int>(smem)) == cudaSuccess;
  }();
  (void)attr_set;  // a failure shows as a launch error
  const int tiles = (rows + kFM - 1) / kFM + p.num_seqs;
  const dim3 grid(static_cast<unsigned>(p.heads), static_cast<unsigned>(tiles));
  flash_prefill_kernel<D><<<grid, kFThreads, smem, s>>>(p);
}

template <int D, int G>
void launch_split(const Params& p, int rows, int splits, bool legacy, cudaStream_t s) {
  const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>(p.kv_heads),
                  static_cast<unsigned>(splits));
  if (legacy) {
    launch_kernel(legacy_kernel<D, G>, grid, kWarps * 32, 0, s, p);
  } else {
    launch_kernel(decode_kernel<D, G>, grid, kDThreads, 0, s, p);
  }
  if (splits > 1) {
    launch_kernel(combine_kernel<D>, dim3(static_cast<unsigned>(rows), static_cast<unsigned>(p.heads)), D, 0, s, p, splits);
  }
}

template <int D>
void launch_d(const Params& p, int rows, int splits, bool legacy, cudaStream_t s) {
  if (p.group <= 1) return launch_split<D, 1>(p, rows, splits, legacy, s);
  if (p.group <= 2) return launch_split<D, 2>(p, rows, splits, legacy, s);
  if (p.group <= 4) return launch_split<D, 4>(p, rows, splits, legacy, s);
  return launch_split<D, 8>(p, rows, splits, legacy, s);
}

bool aligned(const void* ptr, size_t stride_bytes, size_t a) {
  return reinterpret_cast<uintptr_t>(ptr) % a == 0 && stride_bytes % a == 0;
}

}  // namespace

namespace {

constexpr int kMaxSplits = 64;

int multiprocessors() {
  static const int sms = [] {
    int dev = 0, n = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) {
      n = 132;
    }
    return n;
  }();
  return sms;
}

// The most splits launch_attention may use for `rows` query rows, whatever the kv heads:
// enough for four resident 128-thread blocks per multiprocessor.
int split_cap(int64_t rows) {
  return static_cast<int>(std::clamp<int64_t>((4 * multiprocessors() + rows - 1) / rows, 1, kMaxSplits));
}

// decode_kernel keeps up to four blocks resident per multiprocessor (128 threads, <= 128
// registers for GQA groups up to 4): about 4 x SMs blocks fill the GPU in one wave. (Timed
// on the H100 at 32 q / 8 kv heads: 2x SMs blocks left batch 1 at 16k context at 1.3 TB/s.)
int preferred_splits(int64_t rows, int32_t kv_heads, int32_t group) {
  // GQA groups over 4 need ~210 registers a thread: two resident blocks.
  const int64_t blocks = rows * kv_heads, target = (group <= 4 ? 4 : 2) * multiprocessors();
  return static_cast<int>(std::clamp<int64_t>((target + blocks / 2) / blocks, 1, kMaxSplits));
}

}  // namespace

size_t attention_partials_floats(int32_t rows, int32_t heads, int32_t head_dim, int32_t splits) {
  const int s = std::max(splits, split_cap(rows));
  return static_cast<size_t>(rows) * heads * s * (head_dim + 2);
}

void launch_attention(const AttentionArgs& a, cudaStream_t s) {
  if (a.num_rows == 0) return;
  Params p;
  p.q = static_cast<const uint16_t*>(a.q.data);
  p.q_stride = a.q.stride / 2;
  p.k = static_cast<const uint16_t*>(a.k_cache.data);
  p.v = static_cast<const uint16_t*>(a.v_cache.data);
  p.kv_stride = a.k_cache.stride / 2;
  p.cache_rows = a.k_cache.rows;
  p.out = static_cast<uint16_t*>(a.out.data);
  p.out_stride = a.out.stride / 2;
  p.query_start = a.batch.query_start;
  p.context_len = a.batch.context_len;
  p.block_table = a.batch.block_table;
  p.num_seqs = a.batch.num_seqs;
  p.max_blocks = a.batch.max_blocks_per_seq;
  p.block_size = a.batch.block_size;
  p.heads = a.shape.num_heads;
  p.kv_heads = a.shape.num_kv_heads;
  p.group = a.shape.num_heads / a.shape.num_kv_heads;
  p.scale = a.shape.scale;
  p.partials = a.partials;
  using Kernel = KernelPolicy::Attention;
  const Kernel k = kernel_policy().attention;
  // q rows one stride apart (a single row has no stride to check).
  const size_t q_stride = a.num_rows > 1 ? a.q.stride : 16, out_stride = a.num_rows > 1 ? a.out.stride : 4;
  const bool q16 = aligned(a.q.data, q_stride, 16);
  const bool out4 = aligned(a.out.data, out_stride, 4);
  // Mostly-prefill batches (more than two query rows per sequence on average) take the
  // tensor-core kernel; decode batches take split-KV.
  const bool flash = k == Kernel::kAuto && q16 && out4 && a.num_rows > 2 * a.batch.num_seqs;
  const bool legacy = k == Kernel::kLegacy || !q16;
  // Split count: at least the caller's; more where few (row, kv head) pairs would leave
  // multiprocessors idle, up to what attention_partials_floats made room for.
  int splits = 1;
  if (a.splits > 1 && a.partials != nullptr) {
    splits = std::min(std::max(a.splits, legacy ? 1 : preferred_splits(a.num_rows, p.kv_heads, p.group)),
                      std::max(a.splits, split_cap(a.num_rows)));
  }
  splits = std::min(splits, kMaxSplits);  // combine_kernel: a thread per split
  if (a.shape.head_dim == 64) {
    if (flash) return launch_flash<64>(p, a.num_rows, s);
    launch_d<64>(p, a.num_rows, splits, legacy, s);
  } else {
    if (flash) return launch_flash<128>(p, a.num_rows, s);
    launch_d<128>(p, a.num_rows, splits, legacy, s);
  }
}

}  // namespace mil::cuda
