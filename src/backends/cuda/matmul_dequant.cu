// y[n, m] = x[n, k] · dequant(w)[m, k]^T for weights that cuBLAS cannot take as they are
// (Q8_0, Q4_0, Q4_1 GGUF blocks, and F32/F16/BF16 when asked), plus the BF16 GEMV that
// Blas uses for decode-sized n.
//
// - qgemv_kernel (n <= 8, 16-byte aligned rows): a warp owns two weight rows and walks them
//   in segments of 32 blocks: the segment's bytes come in with coalesced 16-byte loads
//   (all chunks of both rows in flight), go through the warp's shared memory, and each lane
//   then dequantizes one block per row (f32, as the CPU reference does) and dots it with
//   the n activation rows. Every weight byte is read once per call.
// - gemv_bf16_splitk_kernel (n <= 8, the default): a block of 4 warps owns two weight rows,
//   each warp a quarter of k, partial sums through shared memory.
// - gemv_bf16_kernel (n <= 8, MIL_GEMV_SPLITK=0): a warp owns two weight rows, 16-byte loads,
//   4 per row in flight, activations through L1.
// - dequant_matmul_kernel (the first version, any n and alignment): one warp per weight
//   row; each lane dequantizes whole blocks into registers and dots them with up to kRows
//   rows of x at once (for prefill it re-reads the weights once per 8 rows: slow; the
//   fast prefill path is launch_dequant_to_bf16 + cuBLASLt).
#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "backends/cuda/device_math.cuh"
#include "backends/cuda/kernels.h"
#include "backends/cuda/launch.cuh"

namespace mil::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kRows = 8;

template <DType T>
__global__ void __launch_bounds__(kWarps * 32)
    dequant_matmul_kernel(Mat x, Mat w, Mat y) {
  pdl_begin();
  const int lane = threadIdx.x & 31;
  const int64_t o = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (o >= w.rows) return;
  const int64_t k = w.cols;
  const int64_t blocks = (k + 31) / 32;
  const auto* wrow = static_cast<const uint8_t*>(row_ptr(w.data, w.stride, o));
  for (int64_t r0 = static_cast<int64_t>(blockIdx.y) * kRows; r0 < x.rows;
       r0 += static_cast<int64_t>(gridDim.y) * kRows) {
    const int nr = static_cast<int>(imin64(kRows, x.rows - r0));
    float acc[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) acc[r] = 0.0f;
    for (int64_t b = lane; b < blocks; b += 32) {
      float wv[32];
      dequant_block32<T>(wrow, b, k, wv);
      const bool full = (b + 1) * 32 <= k;
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        if (r < nr) {
          const auto* xr = static_cast<const uint16_t*>(row_ptr(x.data, x.stride, r0 + r)) + b * 32;
          float sum = 0.0f;
          if (full) {
#pragma unroll
            for (int i = 0; i < 32; ++i) sum += wv[i] * bf16_bits_to_f32(xr[i]);
          } else {
            for (int i = 0; b * 32 + i < k; ++i) sum += wv[i] * bf16_bits_to_f32(xr[i]);
          }
          acc[r] += sum;
        }
      }
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const float v = warp_sum(acc[r]);
      if (lane == 0 && r < nr) store_elem(row_ptr(y.data, y.stride, r0 + r), o, y.dtype, v);
    }
  }
}

constexpr int kGemvWarps = 4;
constexpr int kGemvRowsPerWarp = 2;

template <DType T>
__host__ __device__ constexpr int block_bytes() {
  return T == DType::Q8_0 ? 34 : T == DType::Q4_0 ? 18 : 20;
}

// Reduces acc[R][N] over the warp and stores the valid outputs (lane i stores output i).
template <int R, int N>
__device__ __forceinline__ void gemv_store(float (&acc)[R][N], int64_t row0, int64_t m, int nr,
                                           Mat y) {
  const int lane = threadIdx.x & 31;
  float mine = 0.0f;
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int n = 0; n < N; ++n) {
      const float v = warp_sum(acc[r][n]);
      if (lane == r * N + n) mine = v;
    }
  }
  const int r = lane / N, n = lane % N;
  if (lane < R * N && n < nr && row0 + r < m) store_elem(row_ptr(y.data, y.stride, n), row0 + r, y.dtype, mine);
}

template <DType T, int N>
__global__ void __launch_bounds__(kGemvWarps * 32) qgemv_kernel(Mat x, Mat w, Mat y) {
  pdl_begin();
  constexpr int R = kGemvRowsPerWarp;
  constexpr int BPB = block_bytes<T>();
  constexpr int SEG = 32 * BPB;      // bytes of 32 blocks
  constexpr int CH = SEG / 16;       // 16-byte chunks of a full segment
  constexpr int CPL = (CH + 31) / 32;
  __shared__ __align__(16) uint8_t sbuf[kGemvWarps][R][SEG];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t row0 = (static_cast<int64_t>(blockIdx.x) * kGemvWarps + warp) * R;
  if (row0 >= w.rows) return;
  const int nr = static_cast<int>(x.rows);
  const int64_t nblk = w.cols / 32;
  const uint8_t* wrow[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    wrow[r] = static_cast<const uint8_t*>(row_ptr(w.data, w.stride, row0 + r < w.rows ? row0 + r : row0));
  }
  float acc[R][N];
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int n = 0; n < N; ++n) acc[r][n] = 0.0f;
  }
  for (int64_t s0 = 0; s0 < nblk; s0 += 32) {
    const int nb = static_cast<int>(imin64(32, nblk - s0));
    const int nch = nb * BPB / 16;
    uint4 regs[R][CPL];
#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
      for (int j = 0; j < CPL; ++j) {
        const int c = lane + 32 * j;
        if (c < nch) regs[r][j] = __ldg(reinterpret_cast<const uint4*>(wrow[r] + s0 * BPB) + c);
      }
    }
    __syncwarp();
#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
      for (int j = 0; j < CPL; ++j) {
        const int c = lane + 32 * j;
        if (c < nch) reinterpret_cast<uint4*>(sbuf[warp][r])[c] = regs[r][j];
      }
    }
    __syncwarp();
    if (lane < nb) {
      float wv[R][32];
#pragma unroll
      for (int r = 0; r < R; ++r) dequant_block32<T>(sbuf[warp][r], lane, 32, wv[r]);
#pragma unroll
      for (int n = 0; n < N; ++n) {
        if (n < nr) {
          const uint4* xp = reinterpret_cast<const uint4*>(
              static_cast<const uint16_t*>(row_ptr(x.data, x.stride, n)) + (s0 + lane) * 32);
#pragma unroll
          for (int q = 0; q < 4; ++q) {
            float xf[8];
            bf16x8_to_f32(__ldg(xp + q), xf);
#pragma unroll
            for (int r = 0; r < R; ++r) {
#pragma unroll
              for (int e = 0; e < 8; ++e) acc[r][n] += wv[r][q * 8 + e] * xf[e];
            }
          }
        }
      }
    }
  }
  gemv_store<R, N>(acc, row0, w.rows, nr, y);
}

template <int R, int U>
__device__ __forceinline__ void load_weight_chunks(const uint4* const (&wrow)[R], int64_t c0, int64_t cend,
                                                   uint4 (&wr)[R][U]) {
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int64_t c = c0 + 32 * u;
#pragma unroll
    for (int r = 0; r < R; ++r) {
      if (c < cend) wr[r][u] = __ldcs(wrow[r] + c);  // streamed: no reuse
    }
  }
}

// acc[r][n] += w row r's chunks c0 + 32u (u < U, below cend) · x row n's (n < nr): the
// weights from registers, the activations through L1.
template <int R, int U, int N>
__device__ __forceinline__ void accumulate_chunks(const uint4 (&wr)[R][U], int64_t c0, int64_t cend,
                                                  const Mat& x, int nr, float (&acc)[R][N]) {
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int64_t c = c0 + 32 * u;
    if (c < cend) {
      float wf[R][8];
#pragma unroll
      for (int r = 0; r < R; ++r) bf16x8_to_f32(wr[r][u], wf[r]);
#pragma unroll
      for (int n = 0; n < N; ++n) {
        if (n < nr) {
          float xf[8];
          bf16x8_to_f32(__ldg(static_cast<const uint4*>(row_ptr(x.data, x.stride, n)) + c), xf);
#pragma unroll
          for (int r = 0; r < R; ++r) {
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[r][n] += wf[r][e] * xf[e];
          }
        }
      }
    }
  }
}

template <int N>
__global__ void __launch_bounds__(kGemvWarps * 32) gemv_bf16_kernel(Mat x, Mat w, Mat y) {
  pdl_begin();
  constexpr int R = kGemvRowsPerWarp;
  constexpr int U = 4;  // 16-byte loads per row in flight
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t row0 = (static_cast<int64_t>(blockIdx.x) * kGemvWarps + warp) * R;
  if (row0 >= w.rows) return;
  const int nr = static_cast<int>(x.rows);
  const int64_t chunks = w.cols / 8;
  const uint4* wrow[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    wrow[r] = static_cast<const uint4*>(row_ptr(w.data, w.stride, row0 + r < w.rows ? row0 + r : row0));
  }
  float acc[R][N];
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int n = 0; n < N; ++n) acc[r][n] = 0.0f;
  }
  for (int64_t c0 = lane; c0 < chunks; c0 += 32 * U) {
    uint4 wr[R][U];
    load_weight_chunks<R, U>(wrow, c0, chunks, wr);
    accumulate_chunks<R, U, N>(wr, c0, chunks, x, nr, acc);
  }
  gemv_store<R, N>(acc, row0, w.rows, nr, y);
}


// Split-K BF16 GEMV (the default for n <= 8): a block of kSkWarps warps owns kSkRows weight
// rows; warp w walks the w-th quarter of k for all of them (U 16-byte loads per row in
// flight), and the partial sums meet in shared memory. Per block a row group is ~4x smaller
// than gemv_bf16_kernel's, so there are 4x more blocks: for the 33-50 MB decode projections
// (o, qkv) nearly every load of the matrix is issued in the first wave instead of 4 rounds
// of latency per warp.
constexpr int kSkWarps = 4;
constexpr int kSkRows = 2;

template <int N>
__global__ void __launch_bounds__(kSkWarps * 32) gemv_bf16_splitk_kernel(Mat x, Mat w, Mat y) {
  constexpr int R = kSkRows;
  constexpr int U = 4;
  __shared__ float part[kSkWarps][R * N];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * R;
  const int nr = static_cast<int>(x.rows);
  const int64_t chunks = w.cols / 8;
  const int64_t per = (chunks + kSkWarps - 1) / kSkWarps;
  const int64_t cbeg = warp * per, cend = imin64(chunks, cbeg + per);
  const uint4* wrow[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    wrow[r] = static_cast<const uint4*>(row_ptr(w.data, w.stride, row0 + r < w.rows ? row0 + r : row0));
  }
  float acc[R][N];
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int n = 0; n < N; ++n) acc[r][n] = 0.0f;
  }
  // The first weight chunks are constants: their loads go out before the wait for x (under
  // PDL, while the previous kernel finishes); each later group is issued before the previous
  // one is consumed.
  uint4 wr[R][U];
  load_weight_chunks<R, U>(wrow, cbeg + lane, cend, wr);
  pdl_begin();
  for (int64_t c0 = cbeg + lane; c0 < cend; c0 += 32 * U) {
    uint4 next[R][U];
    if (c0 + 32 * U < cend) load_weight_chunks<R, U>(wrow, c0 + 32 * U, cend, next);
    accumulate_chunks<R, U, N>(wr, c0, cend, x, nr, acc);
#pragma unroll
    for (int u = 0; u < U; ++u) {
#pragma unroll
      for (int r = 0; r < R; ++r) wr[r][u] = next[r][u];
    }
  }
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int n = 0; n < N; ++n) {
      const float v = warp_sum(acc[r][n]);
      if (lane == 0) part[warp][r * N + n] = v;
    }
  }
  __syncthreads();
  if (threadIdx.x < R * N) {
    const int r = threadIdx.x / N, n = threadIdx.x % N;
    float v = 0.0f;
#pragma unroll
    for (int q = 0; q < kSkWarps; ++q) v += part[q][threadIdx.x];
    if (n < nr && row0 + r < w.rows) store_elem(row_ptr(y.data, y.stride, n), row0 + r, y.dtype, v);
  }
}

// Writes the BF16 image of any weight dtype: dst row r at dst + r * dst_ld elements.
template <DType T>
__global__ void dequant_to_bf16_kernel(Mat w, uint16_t* dst, int64_t dst_ld) {
  pdl_begin();
  const int64_t nblk = (w.cols + 31) / 32;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= w.rows * nblk) return;
  const int64_t r = i / nblk, b = i % nblk;
  float v[32];
  dequant_block32<T>(static_cast<const uint8_t*>(row_ptr(w.data, w.stride, r)), b, w.cols, v);
  uint16_t* d = dst + r * dst_ld + b * 32;
  if (b * 32 + 32 <= w.cols && reinterpret_cast<uintptr_t>(d) % 16 == 0) {
#pragma unroll
    for (int q = 0; q < 4; ++q) {  // four 16-byte stores
      uint32_t u[4];
#pragma unroll
      for (int h = 0; h < 4; ++h) {
        u[h] = static_cast<uint32_t>(f32_to_bf16_bits(v[q * 8 + 2 * h])) |
               (static_cast<uint32_t>(f32_to_bf16_bits(v[q * 8 + 2 * h + 1])) << 16);
      }
      reinterpret_cast<uint4*>(d)[q] = make_uint4(u[0], u[1], u[2], u[3]);
    }
    return;
  }
#pragma unroll
  for (int e = 0; e < 32; ++e) {
    if (b * 32 + e < w.cols) d[e] = f32_to_bf16_bits(v[e]);
  }
}

bool aligned16(const void* p, size_t stride, int64_t rows) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0 && (rows <= 1 || stride % 16 == 0);
}

template <DType T>
bool launch_qgemv(Mat x, Mat w, Mat y, cudaStream_t s) {
  if (x.rows > 8 || w.cols % 32 != 0 || (w.cols / 32 * block_bytes<T>()) % 16 != 0) return false;
  if (!aligned16(w.data, w.stride, w.rows) || !aligned16(x.data, x.stride, x.rows)) return false;
  const int per_block = kGemvWarps * kGemvRowsPerWarp;
  const dim3 grid(static_cast<unsigned>((w.rows + per_block - 1) / per_block));
  const int threads = kGemvWarps * 32;
  if (x.rows <= 1) {
    launch_kernel(qgemv_kernel<T, 1>, grid, threads, 0, s, x, w, y);
  } else if (x.rows <= 2) {
    launch_kernel(qgemv_kernel<T, 2>, grid, threads, 0, s, x, w, y);
  } else if (x.rows <= 4) {
    launch_kernel(qgemv_kernel<T, 4>, grid, threads, 0, s, x, w, y);
  } else {
    launch_kernel(qgemv_kernel<T, 8>, grid, threads, 0, s, x, w, y);
  }
  return true;
}

}  // namespace

KernelPolicy& kernel_policy() {
  static KernelPolicy policy = [] {
    KernelPolicy p;
    if (const char* e = std::getenv("MIL_ATTN_KERNEL")) {
      if (std::strcmp(e, "legacy") == 0) p.attention = KernelPolicy::Attention::kLegacy;
      if (std::strcmp(e, "split") == 0) p.attention = KernelPolicy::Attention::kSplit;
    }
    if (const char* e = std::getenv("MIL_QGEMV")) p.qgemv = e[0] != '0';
    if (const char* e = std::getenv("MIL_GEMV_SPLITK")) p.gemv_splitk = e[0] != '0';
    if (const char* e = std::getenv("MIL_FUSED_ROPE_KV")) p.fused_rope_kv = e[0] != '0';
    if (const char* e = std::getenv("MIL_PDL")) p.pdl = e[0] != '0';
    if (const char* e = std::getenv("MIL_ROW_VEC")) p.row_vec = e[0] != '0';
    if (const char* e = std::getenv("MIL_DEQUANT_GEMM")) p.dequant_gemm = e[0] != '0';
    if (const char* e = std::getenv("MIL_ROPE_HEADS_MAX_ROWS")) p.rope_heads_max_rows = std::atoll(e);
    if (const char* e = std::getenv("MIL_GEMV_BF16")) {
      if (std::strcmp(e, "off") == 0) {
        p.bf16_gemv_max_n = 0;
      } else if (std::strcmp(e, "auto") != 0) {
        p.bf16_gemv_max_n = std::atoi(e);
      }
    }
    return p;
  }();
  return policy;
}

bool launch_gemv_bf16(Mat x, Mat w, Mat y, cudaStream_t s) {
  if (x.rows == 0 || w.rows == 0) return true;
  if (x.rows > 8 || w.dtype != DType::BF16 || x.dtype != DType::BF16 || w.cols % 8 != 0) return false;
  if (!aligned16(w.data, w.stride, w.rows) || !aligned16(x.data, x.stride, x.rows)) return false;
  if (kernel_policy().gemv_splitk) {
    const dim3 grid(static_cast<unsigned>((w.rows + kSkRows - 1) / kSkRows));
    const int threads = kSkWarps * 32;
    if (x.rows <= 1) {
      launch_kernel(gemv_bf16_splitk_kernel<1>, grid, threads, 0, s, x, w, y);
    } else if (x.rows <= 2) {
      launch_kernel(gemv_bf16_splitk_kernel<2>, grid, threads, 0, s, x, w, y);
    } else if (x.rows <= 4) {
      launch_kernel(gemv_bf16_splitk_kernel<4>, grid, threads, 0, s, x, w, y);
    } else {
      launch_kernel(gemv_bf16_splitk_kernel<8>, grid, threads, 0, s, x, w, y);
    }
    return true;
  }
  const int per_block = kGemvWarps * kGemvRowsPerWarp;
  const dim3 grid(static_cast<unsigned>((w.rows + per_block - 1) / per_block));
  const int threads = kGemvWarps * 32;
  if (x.rows <= 1) {
    launch_kernel(gemv_bf16_kernel<1>, grid, threads, 0, s, x, w, y);
  } else if (x.rows <= 2) {
    launch_kernel(gemv_bf16_kernel<2>, grid, threads, 0, s, x, w, y);
  } else if (x.rows <= 4) {
    launch_kernel(gemv_bf16_kernel<4>, grid, threads, 0, s, x, w, y);
  } else {
    launch_kernel(gemv_bf16_kernel<8>, grid, threads, 0, s, x, w, y);
  }
  return true;
}

void launch_dequant_to_bf16(Mat w, uint16_t* dst, int64_t dst_ld, cudaStream_t s) {
  const int64_t total = w.rows * ((w.cols + 31) / 32);
  if (total == 0) return;
  const unsigned grid = static_cast<unsigned>((total + 255) / 256);
  switch (w.dtype) {
    case DType::F32: launch_kernel(dequant_to_bf16_kernel<DType::F32>, grid, 256, 0, s, w, dst, dst_ld); break;
    case DType::F16: launch_kernel(dequant_to_bf16_kernel<DType::F16>, grid, 256, 0, s, w, dst, dst_ld); break;
    case DType::BF16: launch_kernel(dequant_to_bf16_kernel<DType::BF16>, grid, 256, 0, s, w, dst, dst_ld); break;
    case DType::Q8_0: launch_kernel(dequant_to_bf16_kernel<DType::Q8_0>, grid, 256, 0, s, w, dst, dst_ld); break;
    case DType::Q4_0: launch_kernel(dequant_to_bf16_kernel<DType::Q4_0>, grid, 256, 0, s, w, dst, dst_ld); break;
    case DType::Q4_1: launch_kernel(dequant_to_bf16_kernel<DType::Q4_1>, grid, 256, 0, s, w, dst, dst_ld); break;
    default: break;
  }
}

void launch_dequant_matmul(Mat x, Mat w, Mat y, cudaStream_t s) {
  if (x.rows == 0 || w.rows == 0) return;
  if (kernel_policy().qgemv && x.dtype == DType::BF16) {
    bool done = false;
    switch (w.dtype) {
      case DType::Q8_0: done = launch_qgemv<DType::Q8_0>(x, w, y, s); break;
      case DType::Q4_0: done = launch_qgemv<DType::Q4_0>(x, w, y, s); break;
      case DType::Q4_1: done = launch_qgemv<DType::Q4_1>(x, w, y, s); break;
      case DType::BF16: done = launch_gemv_bf16(x, w, y, s); break;
      default: break;
    }
    if (done) return;
  }
  const dim3 grid(static_cast<unsigned>((w.rows + kWarps - 1) / kWarps),
                  static_cast<unsigned>(std::min<int64_t>((x.rows + kRows - 1) / kRows, 1024)));
  const int threads = kWarps * 32;
  switch (w.dtype) {
    case DType::F32: launch_kernel(dequant_matmul_kernel<DType::F32>, grid, threads, 0, s, x, w, y); break;
    case DType::F16: launch_kernel(dequant_matmul_kernel<DType::F16>, grid, threads, 0, s, x, w, y); break;
    case DType::BF16: launch_kernel(dequant_matmul_kernel<DType::BF16>, grid, threads, 0, s, x, w, y); break;
    case DType::Q8_0: launch_kernel(dequant_matmul_kernel<DType::Q8_0>, grid, threads, 0, s, x, w, y); break;
    case DType::Q4_0: launch_kernel(dequant_matmul_kernel<DType::Q4_0>, grid, threads, 0, s, x, w, y); break;
    case DType::Q4_1: launch_kernel(dequant_matmul_kernel<DType::Q4_1>, grid, threads, 0, s, x, w, y); break;
    default: break;  // the glue refuses other dtypes
  }
}

}  // namespace mil::cuda
