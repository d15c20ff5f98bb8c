// Row-wise kernels: add_bias, embedding, rmsnorm, rope, kv_store, silu_mul, add and the
// dtype conversions of the F16 matmul path. One thread block per row (grid-strided over
// rows), threads strided over columns; f32 math, BF16 or F32 storage.
#include <algorithm>

#include "backends/cuda/device_math.cuh"
#include "backends/cuda/kernels.h"
#include "backends/cuda/kernels_model.h"
#include "backends/cuda/launch.cuh"

namespace mil::cuda {
namespace {

constexpr int kThreads = 256;

dim3 rows_grid(int64_t rows) {
  return dim3(static_cast<unsigned>(std::min<int64_t>(rows, 65535 * 8)));
}

__global__ void add_bias_kernel(Mat y, Mat bias) {
  pdl_begin();
  for (int64_t r = blockIdx.x; r < y.rows; r += gridDim.x) {
    void* yr = row_ptr(y.data, y.stride, r);
    for (int64_t j = threadIdx.x; j < y.cols; j += blockDim.x)
      store_elem(yr, j, y.dtype, load_elem(yr, j, y.dtype) + load_elem(bias.data, j, bias.dtype));
  }
}

template <DType T>
__global__ void embedding_kernel(Mat table, const int32_t* ids, Mat out) {
  pdl_begin();
  for (int64_t r = blockIdx.x; r < out.rows; r += gridDim.x) {
    const int32_t id = ids[r];
    void* orow = row_ptr(out.data, out.stride, r);
    const bool ok = id >= 0 && id < table.rows;
    const auto* trow = static_cast<const uint8_t*>(row_ptr(table.data, table.stride, ok ? id : 0));
    // One block of 32 elements per thread.
    for (int64_t b = threadIdx.x; b * 32 < out.cols; b += blockDim.x) {
      float v[32];
      dequant_block32<T>(trow, b, table.cols, v);
      for (int i = 0; i < 32 && b * 32 + i < out.cols; ++i)
        store_elem(orow, b * 32 + i, out.dtype, ok ? v[i] : 0.0f);
    }
  }
}

// rmsnorm of x (kAdd false) or residual += x, rounded to residual's dtype, then rmsnorm of
// the rounded sums (kAdd true, as an add followed by an rmsnorm would). Every thread reads its
// own elements before writing them: out may alias the input.
template <bool kAdd>
__global__ void rmsnorm_kernel(Mat res, Mat x, Mat w, float eps, Mat out) {
  pdl_begin();
  __shared__ float scratch[32];
  const Mat& src = kAdd ? res : x;
  for (int64_t r = blockIdx.x; r < src.rows; r += gridDim.x) {
    void* sr = row_ptr(src.data, src.stride, r);
    float ss = 0.0f;
    for (int64_t j = threadIdx.x; j < src.cols; j += blockDim.x) {
      if constexpr (kAdd) {
        store_elem(sr, j, src.dtype, load_elem(sr, j, src.dtype) + load_elem(row_ptr(x.data, x.stride, r), j, x.dtype));
      }
      const float v = load_elem(sr, j, src.dtype);
      ss += v * v;
    }
    ss = block_sum(ss, scratch);
    const float inv = 1.0f / sqrtf(ss / static_cast<float>(src.cols) + eps);
    void* orow = row_ptr(out.data, out.stride, r);
    for (int64_t j = threadIdx.x; j < src.cols; j += blockDim.x)
      store_elem(orow, j, out.dtype, (load_elem(sr, j, src.dtype) * inv) * load_elem(w.data, j, w.dtype));
  }
}

// Rotates elements a and b of row xr by the angle of sine s and cosine c; with dst, the
// rotated values also go to dst (same dtype, so the stored bits equal a later copy of the row).
__device__ __forceinline__ void rotate_pair(void* xr, DType dt, int64_t a, int64_t b, float s, float c,
                                            void* dst) {
  const float x0 = load_elem(xr, a, dt), x1 = load_elem(xr, b, dt);
  const float ya = x0 * c - x1 * s, yb = x1 * c + x0 * s;
  store_elem(xr, a, dt, ya);
  store_elem(xr, b, dt, yb);
  if (dst != nullptr) {
    store_elem(dst, a, dt, ya);
    store_elem(dst, b, dt, yb);
  }
}

// RoPE on one row of heads of head_dim, threads strided over the rotated pairs.
__device__ __forceinline__ void rope_row(void* xr, int64_t cols, DType dt, int32_t head_dim, float pos,
                                         const float* inv_freq, bool interleaved, void* dst) {
  const int32_t half = head_dim / 2;
  const int64_t pairs = cols / 2;
  for (int64_t p = threadIdx.x; p < pairs; p += blockDim.x) {
    const int64_t head = p / half;
    const int32_t j = static_cast<int32_t>(p % half);
    const int64_t a = head * head_dim + (interleaved ? 2 * j : j);
    const int64_t b = head * head_dim + (interleaved ? 2 * j + 1 : j + half);
    float s, c;
    sincosf(pos * inv_freq[j], &s, &c);
    rotate_pair(xr, dt, a, b, s, c, dst);
  }
}

__global__ void rope_kernel(Mat x, int32_t head_dim, const int32_t* positions,
                            const float* inv_freq, bool interleaved) {
  pdl_begin();
  for (int64_t r = blockIdx.x; r < x.rows; r += gridDim.x) {
    rope_row(row_ptr(x.data, x.stride, r), x.cols, x.dtype, head_dim, static_cast<float>(positions[r]),
             inv_freq, interleaved, nullptr);
  }
}

// rope(q), rope(k) and kv_store(k, v) of a row in one block (16-bit caches of k's/v's dtype).
__global__ void rope_kv_store_kernel(Mat q, Mat k, Mat v, int32_t head_dim, const int32_t* positions,
                                     const float* inv_freq, bool interleaved, const int32_t* slots,
                                     Mat kc, Mat vc) {
  pdl_begin();
  for (int64_t r = blockIdx.x; r < q.rows; r += gridDim.x) {
    const float pos = static_cast<float>(positions[r]);
    const int32_t slot = slots[r];
    const bool store = slot >= 0 && slot < kc.rows;
    rope_row(row_ptr(q.data, q.stride, r), q.cols, q.dtype, head_dim, pos, inv_freq, interleaved, nullptr);
    rope_row(row_ptr(k.data, k.stride, r), k.cols, k.dtype, head_dim, pos, inv_freq, interleaved,
             store ? row_ptr(kc.data, kc.stride, slot) : nullptr);
    if (store) {
      const auto* vs = static_cast<const uint16_t*>(row_ptr(v.data, v.stride, r));
      auto* vd = static_cast<uint16_t*>(row_ptr(vc.data, vc.stride, slot));
      for (int64_t j = threadIdx.x; j < v.cols; j += blockDim.x) vd[j] = vs[j];
    }
  }
}

// Copies rows of 16-bit elements; cols even and 4-byte aligned rows use 32-bit moves.
__global__ void kv_store_kernel(Mat k, Mat v, const int32_t* slots, Mat kc, Mat vc) {
  pdl_begin();
  for (int64_t r = blockIdx.x; r < k.rows; r += gridDim.x) {
    const int32_t slot = slots[r];
    if (slot < 0 || slot >= kc.rows) continue;
    const auto* ks = static_cast<const uint16_t*>(row_ptr(k.data, k.stride, r));
    const auto* vs = static_cast<const uint16_t*>(row_ptr(v.data, v.stride, r));
    auto* kd = static_cast<uint16_t*>(row_ptr(kc.data, kc.stride, slot));
    auto* vd = static_cast<uint16_t*>(row_ptr(vc.data, vc.stride, slot));
    for (int64_t j = threadIdx.x; j < k.cols; j += blockDim.x) kd[j] = ks[j];
    for (int64_t j = threadIdx.x; j < v.cols; j += blockDim.x) vd[j] = vs[j];
  }
}

__global__ void silu_mul_kernel(Mat gate, Mat up, Mat out) {
  pdl_begin();
  for (int64_t r = blockIdx.x; r < gate.rows; r += gridDim.x) {
    const void* g = row_ptr(gate.data, gate.stride, r);
    const void* u = row_ptr(up.data, up.stride, r);
    void* o = row_ptr(out.data, out.stride, r);
    for (int64_t j = threadIdx.x; j < gate.cols; j += blockDim.x) {
      const float gv = load_elem(g, j, gate.dtype);
      store_elem(o, j, out.dtype, gv / (1.0f + expf(-gv)) * load_elem(u, j, up.dtype));
    }
  }
}

__global__ void add_kernel(Mat a, Mat b, Mat out) {
  pdl_begin();
  for (int64_t r = blockIdx.x; r < a.rows; r += gridDim.x) {
    const void* ar = row_ptr(a.data, a.stride, r);
    const void* br = row_ptr(b.data, b.stride, r);
    void* o = row_ptr(out.data, out.stride, r);
    for (int64_t j = threadIdx.x; j < a.cols; j += blockDim.x)
      store_elem(o, j, out.dtype, load_elem(ar, j, a.dtype) + load_elem(br, j, b.dtype));
  }
}

__global__ void bf16_to_f16_kernel(Mat x, uint16_t* dst, int64_t ld) {
  pdl_begin();
  for (int64_t r = blockIdx.x; r < x.rows; r += gridDim.x) {
    const void* xr = row_ptr(x.data, x.stride, r);
    for (int64_t j = threadIdx.x; j < x.cols; j += blockDim.x)
      dst[r * ld + j] = __half_as_ushort(__float2half_rn(load_elem(xr, j, DType::BF16)));
  }
}

__global__ void f32_to_kernel(const float* src, int64_t ld, Mat dst) {
  pdl_begin();
  for (int64_t r = blockIdx.x; r < dst.rows; r += gridDim.x) {
    void* d = row_ptr(dst.data, dst.stride, r);
    for (int64_t j = threadIdx.x; j < dst.cols; j += blockDim.x)
      store_elem(d, j, dst.dtype, src[r * ld + j]);
  }
}


// --- The decode path's row kernels, vectorized ---------------------------------------------
// At decode sizes (a few rows of 4k-14k columns) one block per row leaves the GPU idle, and
// each thread walks its columns one dependent load/store after another (out may alias an
// input, so nothing is hoisted): a 14336-wide silu_mul took 30 us on the H100 and an
// add_rmsnorm 8 us, 1.5 ms of a 7.2 ms decode step. Here each thread owns 8 bf16 columns (one
// 16-byte load per operand): element-wise kernels spread a row over many blocks, the norms
// hold their row in registers (one pass over memory), and rope + kv_store takes one block per
// head. Same arithmetic, in the same order per element, as the kernels above.

constexpr int kVec = 8;

__device__ __forceinline__ uint4 pack_bf16x8(const float* f) {
  uint4 r;
  r.x = static_cast<uint32_t>(f32_to_bf16_bits(f[0])) | (static_cast<uint32_t>(f32_to_bf16_bits(f[1])) << 16);
  r.y = static_cast<uint32_t>(f32_to_bf16_bits(f[2])) | (static_cast<uint32_t>(f32_to_bf16_bits(f[3])) << 16);
  r.z = static_cast<uint32_t>(f32_to_bf16_bits(f[4])) | (static_cast<uint32_t>(f32_to_bf16_bits(f[5])) << 16);
  r.w = static_cast<uint32_t>(f32_to_bf16_bits(f[6])) | (static_cast<uint32_t>(f32_to_bf16_bits(f[7])) << 16);
  return r;
}

__device__ __forceinline__ uint4* chunk_ptr(const Mat& m, int64_t r, int64_t c) {
  return reinterpret_cast<uint4*>(static_cast<char*>(m.data) + r * m.stride + c * 2);
}

__global__ void silu_mul_vec_kernel(Mat gate, Mat up, Mat out) {
  pdl_begin();
  const int64_t c = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * kVec;
  if (c >= gate.cols) return;
  for (int64_t r = blockIdx.y; r < gate.rows; r += gridDim.y) {
    float g[8], u[8], o[8];
    bf16x8_to_f32(*chunk_ptr(gate, r, c), g);
    bf16x8_to_f32(*chunk_ptr(up, r, c), u);
#pragma unroll
    for (int e = 0; e < 8; ++e) o[e] = g[e] / (1.0f + expf(-g[e])) * u[e];
    *chunk_ptr(out, r, c) = pack_bf16x8(o);
  }
}

__global__ void add_vec_kernel(Mat a, Mat b, Mat out) {
  pdl_begin();
  const int64_t c = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * kVec;
  if (c >= a.cols) return;
  for (int64_t r = blockIdx.y; r < a.rows; r += gridDim.y) {
    float x[8], y[8];
    bf16x8_to_f32(*chunk_ptr(a, r, c), x);
    bf16x8_to_f32(*chunk_ptr(b, r, c), y);
#pragma unroll
    for (int e = 0; e < 8; ++e) x[e] += y[e];
    *chunk_ptr(out, r, c) = pack_bf16x8(x);
  }
}

// rmsnorm (kAdd false: of x) or residual += x then rmsnorm of the rounded residual (kAdd true),
// a row per block, each thread kChunks chunks of 8 columns kept in registers.
template <bool kAdd, int kChunks>
__global__ void rmsnorm_vec_kernel(Mat res, Mat x, Mat w, float eps, Mat out) {
  pdl_begin();
  __shared__ float scratch[32];
  const Mat& src = kAdd ? res : x;
  const int64_t chunks = src.cols / kVec;
  for (int64_t r = blockIdx.x; r < src.rows; r += gridDim.x) {
    float v[kChunks][8];
    float ss = 0.0f;
#pragma unroll
    for (int i = 0; i < kChunks; ++i) {
      const int64_t c = threadIdx.x + static_cast<int64_t>(i) * blockDim.x;
      if (c < chunks) {
        bf16x8_to_f32(*chunk_ptr(src, r, c * kVec), v[i]);
        if constexpr (kAdd) {
          float y[8];
          bf16x8_to_f32(*chunk_ptr(x, r, c * kVec), y);
#pragma unroll
          for (int e = 0; e < 8; ++e) v[i][e] = bf16_bits_to_f32(f32_to_bf16_bits(v[i][e] + y[e]));
          *chunk_ptr(res, r, c * kVec) = pack_bf16x8(v[i]);
        }
#pragma unroll
        for (int e = 0; e < 8; ++e) ss += v[i][e] * v[i][e];
      }
    }
    ss = block_sum(ss, scratch);
    const float inv = 1.0f / sqrtf(ss / static_cast<float>(src.cols) + eps);
#pragma unroll
    for (int i = 0; i < kChunks; ++i) {
      const int64_t c = threadIdx.x + static_cast<int64_t>(i) * blockDim.x;
      if (c < chunks) {
        float o[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) o[e] = (v[i][e] * inv) * load_elem(w.data, c * kVec + e, w.dtype);
        *chunk_ptr(out, r, c * kVec) = pack_bf16x8(o);
      }
    }
  }
}

// rope_kv_store_kernel with a block per (head, row) and a thread per rotated pair: blocks
// [0, q_heads) rotate q's heads, the rest rotate k's heads (copied to the cache slot) and copy
// v's. The arithmetic of rope_row (rotate_pair).
__global__ void rope_kv_store_heads_kernel(Mat q, Mat k, Mat v, int32_t head_dim, const int32_t* positions,
                                           const float* inv_freq, bool interleaved, const int32_t* slots,
                                           Mat kc, Mat vc, int32_t q_heads) {
  pdl_begin();
  const int32_t half = head_dim / 2, j = static_cast<int32_t>(threadIdx.x);
  const int32_t head = static_cast<int32_t>(blockIdx.x);
  const bool is_q = head < q_heads;
  const int64_t h0 = static_cast<int64_t>(is_q ? head : head - q_heads) * head_dim;
  const int64_t a = h0 + (interleaved ? 2 * j : j), b = h0 + (interleaved ? 2 * j + 1 : j + half);
  for (int64_t r = blockIdx.y; r < q.rows; r += gridDim.y) {
    float s, c;
    sincosf(static_cast<float>(positions[r]) * inv_freq[j], &s, &c);
    const Mat& m = is_q ? q : k;
    const int32_t slot = is_q ? -1 : slots[r];
    const bool store = slot >= 0 && slot < kc.rows;
    rotate_pair(row_ptr(m.data, m.stride, r), m.dtype, a, b, s, c,
                store ? row_ptr(kc.data, kc.stride, slot) : nullptr);
    if (!store) continue;
    const auto* vs = static_cast<const uint16_t*>(row_ptr(v.data, v.stride, r));
    auto* vd = static_cast<uint16_t*>(row_ptr(vc.data, vc.stride, slot));
    vd[h0 + j] = vs[h0 + j];
    vd[h0 + j + half] = vs[h0 + j + half];
  }
}

bool vec_ok(const Mat& m) {
  return kernel_policy().row_vec && m.dtype == DType::BF16 && m.cols % kVec == 0 && reinterpret_cast<uintptr_t>(m.data) % 16 == 0 &&
         (m.rows <= 1 || m.stride % 16 == 0);
}

dim3 vec_grid(int64_t rows, int64_t cols) {
  return dim3(static_cast<unsigned>((cols / kVec + kThreads - 1) / kThreads),
              static_cast<unsigned>(std::min<int64_t>(rows, 65535)));
}

// Launches rmsnorm_vec_kernel when the row fits in registers; false: not taken.
template <bool kAdd>
bool launch_rmsnorm_vec(Mat res, Mat x, Mat w, float eps, Mat out, cudaStream_t s) {
  const Mat& src = kAdd ? res : x;
  if (!vec_ok(src) || !vec_ok(out) || (kAdd && !vec_ok(x))) return false;
  const int64_t chunks = src.cols / kVec;
  const auto threads_for = [&](int per) {
    return static_cast<unsigned>((chunks + per - 1) / per + 31) / 32 * 32;
  };
  if (chunks <= 1024) {
    launch_kernel(rmsnorm_vec_kernel<kAdd, 1>, rows_grid(src.rows), threads_for(1), 0, s, res, x, w, eps, out);
  } else if (chunks <= 2048) {
    launch_kernel(rmsnorm_vec_kernel<kAdd, 2>, rows_grid(src.rows), threads_for(2), 0, s, res, x, w, eps, out);
  } else if (chunks <= 4096) {
    launch_kernel(rmsnorm_vec_kernel<kAdd, 4>, rows_grid(src.rows), threads_for(4), 0, s, res, x, w, eps, out);
  } else {
    return false;
  }
  return true;
}

}  // namespace

void launch_add_bias(Mat y, Mat bias, cudaStream_t s) {
  if (y.rows == 0) return;
  launch_kernel(add_bias_kernel, rows_grid(y.rows), kThreads, 0, s, y, bias);
}

void launch_embedding(Mat table, const int32_t* ids, Mat out, cudaStream_t s) {
  if (out.rows == 0) return;
  const dim3 g = rows_grid(out.rows);
  switch (table.dtype) {
    case DType::F32: launch_kernel(embedding_kernel<DType::F32>, g, 128, 0, s, table, ids, out); break;
    case DType::F16: launch_kernel(embedding_kernel<DType::F16>, g, 128, 0, s, table, ids, out); break;
    case DType::BF16: launch_kernel(embedding_kernel<DType::BF16>, g, 128, 0, s, table, ids, out); break;
    case DType::Q8_0: launch_kernel(embedding_kernel<DType::Q8_0>, g, 128, 0, s, table, ids, out); break;
    case DType::Q4_0: launch_kernel(embedding_kernel<DType::Q4_0>, g, 128, 0, s, table, ids, out); break;
    case DType::Q4_1: launch_kernel(embedding_kernel<DType::Q4_1>, g, 128, 0, s, table, ids, out); break;
    default: break;  // the glue refuses other dtypes
  }
}

void launch_rmsnorm(Mat x, Mat weight, float eps, Mat out, cudaStream_t s) {
  if (x.rows == 0) return;
  if (launch_rmsnorm_vec<false>(x, x, weight, eps, out, s)) return;
  launch_kernel(rmsnorm_kernel<false>, rows_grid(x.rows), 512, 0, s, x, x, weight, eps, out);
}

void launch_add_rmsnorm(Mat residual, Mat x, Mat weight, float eps, Mat out, cudaStream_t s) {
  if (residual.rows == 0) return;
  if (launch_rmsnorm_vec<true>(residual, x, weight, eps, out, s)) return;
  launch_kernel(rmsnorm_kernel<true>, rows_grid(residual.rows), 512, 0, s, residual, x, weight, eps, out);
}

void launch_rope(Mat x, int32_t head_dim, const int32_t* positions, const float* inv_freq,
                 bool interleaved, cudaStream_t s) {
  if (x.rows == 0) return;
  launch_kernel(rope_kernel, rows_grid(x.rows), kThreads, 0, s, x, head_dim, positions, inv_freq, interleaved);
}

void launch_rope_kv_store(Mat q, Mat k, Mat v, int32_t head_dim, const int32_t* positions,
                          const float* inv_freq, bool interleaved, const int32_t* slots, Mat k_cache,
                          Mat v_cache, cudaStream_t s) {
  if (q.rows == 0) return;
  const int32_t half = head_dim / 2;
  if (kernel_policy().row_vec && q.rows <= kernel_policy().rope_heads_max_rows && half >= 1 && half <= 1024 && head_dim % 2 == 0 && q.cols % head_dim == 0 && k.cols % head_dim == 0 &&
      v.cols == k.cols) {
    const auto q_heads = static_cast<int32_t>(q.cols / head_dim);
    const dim3 grid(static_cast<unsigned>(q_heads + k.cols / head_dim),
                    static_cast<unsigned>(std::min<int64_t>(q.rows, 65535)));
    launch_kernel(rope_kv_store_heads_kernel, grid, static_cast<unsigned>(half), 0, s, q, k, v, head_dim,
                  positions, inv_freq, interleaved, slots, k_cache, v_cache, q_heads);
    return;
  }
  launch_kernel(rope_kv_store_kernel, rows_grid(q.rows), kThreads, 0, s, q, k, v, head_dim, positions, inv_freq,
                                                              interleaved, slots, k_cache, v_cache);
}

void launch_kv_store(Mat k, Mat v, const int32_t* slots, Mat k_cache, Mat v_cache,
                     cudaStream_t s) {
  if (k.rows == 0) return;
  launch_kernel(kv_store_kernel, rows_grid(k.rows), kThreads, 0, s, k, v, slots, k_cache, v_cache);
}

void launch_silu_mul(Mat gate, Mat up, Mat out, cudaStream_t s) {
  if (gate.rows == 0) return;
  if (vec_ok(gate) && vec_ok(up) && vec_ok(out)) {
    launch_kernel(silu_mul_vec_kernel, vec_grid(gate.rows, gate.cols), kThreads, 0, s, gate, up, out);
    return;
  }
  launch_kernel(silu_mul_kernel, rows_grid(gate.rows), kThreads, 0, s, gate, up, out);
}

void launch_add(Mat a, Mat b, Mat out, cudaStream_t s) {
  if (a.rows == 0) return;
  if (vec_ok(a) && vec_ok(b) && vec_ok(out)) {
    launch_kernel(add_vec_kernel, vec_grid(a.rows, a.cols), kThreads, 0, s, a, b, out);
    return;
  }
  launch_kernel(add_kernel, rows_grid(a.rows), kThreads, 0, s, a, b, out);
}

void launch_bf16_to_f16(Mat x, uint16_t* dst, int64_t dst_ld, cudaStream_t s) {
  if (x.rows == 0) return;
  launch_kernel(bf16_to_f16_kernel, rows_grid(x.rows), kThreads, 0, s, x, dst, dst_ld);
}

void launch_f32_to(const float* src, int64_t src_ld, Mat dst, cudaStream_t s) {
  if (dst.rows == 0) return;
  launch_kernel(f32_to_kernel, rows_grid(dst.rows), kThreads, 0, s, src, src_ld, dst);
}

}  // namespace mil::cuda
