// Row-wise kernels: add_bias, embedding, rmsnorm, rope, kv_store, silu_mul, add and the
// dtype conversions of the F16 matmul path. One thread block per row (grid-strided over
// rows), threads strided over columns; f32 math, BF16 or F32 storage.
#include <algorithm>

#include "backends/cuda/device_math.cuh"
#include "backends/cuda/kernels.h"
#include "backends/cuda/kernels_model.h"

namespace mil::cuda {
namespace {

constexpr int kThreads = 256;

dim3 rows_grid(int64_t rows) {
  return dim3(static_cast<unsigned>(std::min<int64_t>(rows, 65535 * 8)));
}

__global__ void add_bias_kernel(Mat y, Mat bias) {
  for (int64_t r = blockIdx.x; r < y.rows; r += gridDim.x) {
    void* yr = row_ptr(y.data, y.stride, r);
    for (int64_t j = threadIdx.x; j < y.cols; j += blockDim.x)
      store_elem(yr, j, y.dtype, load_elem(yr, j, y.dtype) + load_elem(bias.data, j, bias.dtype));
  }
}

template <DType T>
__global__ void embedding_kernel(Mat table, const int32_t* ids, Mat out) {
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

__global__ void rmsnorm_kernel(Mat x, Mat w, float eps, Mat out) {
  __shared__ float scratch[32];
  for (int64_t r = blockIdx.x; r < x.rows; r += gridDim.x) {
    const void* xr = row_ptr(x.data, x.stride, r);
    float ss = 0.0f;
    for (int64_t j = threadIdx.x; j < x.cols; j += blockDim.x) {
      const float v = load_elem(xr, j, x.dtype);
      ss += v * v;
    }
    ss = block_sum(ss, scratch);
    const float inv = 1.0f / sqrtf(ss / static_cast<float>(x.cols) + eps);
    void* orow = row_ptr(out.data, out.stride, r);
    // Every thread reads its own elements before writing them: out may alias x.
    for (int64_t j = threadIdx.x; j < x.cols; j += blockDim.x)
      store_elem(orow, j, out.dtype, (load_elem(xr, j, x.dtype) * inv) * load_elem(w.data, j, w.dtype));
  }
}

// residual += x, rounded to residual's dtype; the rounded sums are what gets normalised
// (as an add followed by an rmsnorm would). Each thread reads back only its own elements.
__global__ void add_rmsnorm_kernel(Mat res, Mat x, Mat w, float eps, Mat out) {
  __shared__ float scratch[32];
  for (int64_t r = blockIdx.x; r < res.rows; r += gridDim.x) {
    void* rr = row_ptr(res.data, res.stride, r);
    const void* xr = row_ptr(x.data, x.stride, r);
    float ss = 0.0f;
    for (int64_t j = threadIdx.x; j < res.cols; j += blockDim.x) {
      store_elem(rr, j, res.dtype, load_elem(rr, j, res.dtype) + load_elem(xr, j, x.dtype));
      const float v = load_elem(rr, j, res.dtype);
      ss += v * v;
    }
    ss = block_sum(ss, scratch);
    const float inv = 1.0f / sqrtf(ss / static_cast<float>(res.cols) + eps);
    void* orow = row_ptr(out.data, out.stride, r);
    for (int64_t j = threadIdx.x; j < res.cols; j += blockDim.x)
      store_elem(orow, j, out.dtype, (load_elem(rr, j, res.dtype) * inv) * load_elem(w.data, j, w.dtype));
  }
}

__global__ void rope_kernel(Mat x, int32_t head_dim, const int32_t* positions,
                            const float* inv_freq, bool interleaved) {
  const int32_t half = head_dim / 2;
  const int64_t pairs = x.cols / 2;
  for (int64_t r = blockIdx.x; r < x.rows; r += gridDim.x) {
    const float pos = static_cast<float>(positions[r]);
    void* xr = row_ptr(x.data, x.stride, r);
    for (int64_t p = threadIdx.x; p < pairs; p += blockDim.x) {
      const int64_t head = p / half;
      const int32_t j = static_cast<int32_t>(p % half);
      const int64_t a = head * head_dim + (interleaved ? 2 * j : j);
      const int64_t b = head * head_dim + (interleaved ? 2 * j + 1 : j + half);
      float s, c;
      sincosf(pos * inv_freq[j], &s, &c);
      const float x0 = load_elem(xr, a, x.dtype), x1 = load_elem(xr, b, x.dtype);
      store_elem(xr, a, x.dtype, x0 * c - x1 * s);
      store_elem(xr, b, x.dtype, x1 * c + x0 * s);
    }
  }
}

// One row of rope_kernel; with dst, each rotated value also goes to dst (same dtype as x, so
// the stored bits equal a later copy of the row).
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
    const float x0 = load_elem(xr, a, dt), x1 = load_elem(xr, b, dt);
    const float ya = x0 * c - x1 * s, yb = x1 * c + x0 * s;
    store_elem(xr, a, dt, ya);
    store_elem(xr, b, dt, yb);
    if (dst != nullptr) {
      store_elem(dst, a, dt, ya);
      store_elem(dst, b, dt, yb);
    }
  }
}

// rope(q), rope(k) and kv_store(k, v) of a row in one block (16-bit caches of k's/v's dtype).
__global__ void rope_kv_store_kernel(Mat q, Mat k, Mat v, int32_t head_dim, const int32_t* positions,
                                     const float* inv_freq, bool interleaved, const int32_t* slots,
                                     Mat kc, Mat vc) {
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
  for (int64_t r = blockIdx.x; r < a.rows; r += gridDim.x) {
    const void* ar = row_ptr(a.data, a.stride, r);
    const void* br = row_ptr(b.data, b.stride, r);
    void* o = row_ptr(out.data, out.stride, r);
    for (int64_t j = threadIdx.x; j < a.cols; j += blockDim.x)
      store_elem(o, j, out.dtype, load_elem(ar, j, a.dtype) + load_elem(br, j, b.dtype));
  }
}

__global__ void bf16_to_f16_kernel(Mat x, uint16_t* dst, int64_t ld) {
  for (int64_t r = blockIdx.x; r < x.rows; r += gridDim.x) {
    const void* xr = row_ptr(x.data, x.stride, r);
    for (int64_t j = threadIdx.x; j < x.cols; j += blockDim.x)
      dst[r * ld + j] = __half_as_ushort(__float2half_rn(load_elem(xr, j, DType::BF16)));
  }
}

__global__ void f32_to_kernel(const float* src, int64_t ld, Mat dst) {
  for (int64_t r = blockIdx.x; r < dst.rows; r += gridDim.x) {
    void* d = row_ptr(dst.data, dst.stride, r);
    for (int64_t j = threadIdx.x; j < dst.cols; j += blockDim.x)
      store_elem(d, j, dst.dtype, src[r * ld + j]);
  }
}

}  // namespace

void launch_add_bias(Mat y, Mat bias, cudaStream_t s) {
  if (y.rows == 0) return;
  add_bias_kernel<<<rows_grid(y.rows), kThreads, 0, s>>>(y, bias);
}

void launch_embedding(Mat table, const int32_t* ids, Mat out, cudaStream_t s) {
  if (out.rows == 0) return;
  const dim3 g = rows_grid(out.rows);
  switch (table.dtype) {
    case DType::F32: embedding_kernel<DType::F32><<<g, 128, 0, s>>>(table, ids, out); break;
    case DType::F16: embedding_kernel<DType::F16><<<g, 128, 0, s>>>(table, ids, out); break;
    case DType::BF16: embedding_kernel<DType::BF16><<<g, 128, 0, s>>>(table, ids, out); break;
    case DType::Q8_0: embedding_kernel<DType::Q8_0><<<g, 128, 0, s>>>(table, ids, out); break;
    case DType::Q4_0: embedding_kernel<DType::Q4_0><<<g, 128, 0, s>>>(table, ids, out); break;
    case DType::Q4_1: embedding_kernel<DType::Q4_1><<<g, 128, 0, s>>>(table, ids, out); break;
    default: break;  // the glue refuses other dtypes
  }
}

void launch_rmsnorm(Mat x, Mat weight, float eps, Mat out, cudaStream_t s) {
  if (x.rows == 0) return;
  rmsnorm_kernel<<<rows_grid(x.rows), 512, 0, s>>>(x, weight, eps, out);
}

void launch_add_rmsnorm(Mat residual, Mat x, Mat weight, float eps, Mat out, cudaStream_t s) {
  if (residual.rows == 0) return;
  add_rmsnorm_kernel<<<rows_grid(residual.rows), 512, 0, s>>>(residual, x, weight, eps, out);
}

void launch_rope(Mat x, int32_t head_dim, const int32_t* positions, const float* inv_freq,
                 bool interleaved, cudaStream_t s) {
  if (x.rows == 0) return;
  rope_kernel<<<rows_grid(x.rows), kThreads, 0, s>>>(x, head_dim, positions, inv_freq, interleaved);
}

void launch_rope_kv_store(Mat q, Mat k, Mat v, int32_t head_dim, const int32_t* positions,
                          const float* inv_freq, bool interleaved, const int32_t* slots, Mat k_cache,
                          Mat v_cache, cudaStream_t s) {
  if (q.rows == 0) return;
  rope_kv_store_kernel<<<rows_grid(q.rows), kThreads, 0, s>>>(q, k, v, head_dim, positions, inv_freq,
                                                              interleaved, slots, k_cache, v_cache);
}

void launch_kv_store(Mat k, Mat v, const int32_t* slots, Mat k_cache, Mat v_cache,
                     cudaStream_t s) {
  if (k.rows == 0) return;
  kv_store_kernel<<<rows_grid(k.rows), kThreads, 0, s>>>(k, v, slots, k_cache, v_cache);
}

void launch_silu_mul(Mat gate, Mat up, Mat out, cudaStream_t s) {
  if (gate.rows == 0) return;
  silu_mul_kernel<<<rows_grid(gate.rows), kThreads, 0, s>>>(gate, up, out);
}

void launch_add(Mat a, Mat b, Mat out, cudaStream_t s) {
  if (a.rows == 0) return;
  add_kernel<<<rows_grid(a.rows), kThreads, 0, s>>>(a, b, out);
}

void launch_bf16_to_f16(Mat x, uint16_t* dst, int64_t dst_ld, cudaStream_t s) {
  if (x.rows == 0) return;
  bf16_to_f16_kernel<<<rows_grid(x.rows), kThreads, 0, s>>>(x, dst, dst_ld);
}

void launch_f32_to(const float* src, int64_t src_ld, Mat dst, cudaStream_t s) {
  if (dst.rows == 0) return;
  f32_to_kernel<<<rows_grid(dst.rows), kThreads, 0, s>>>(src, src_ld, dst);
}

}  // namespace mil::cuda
