// Device helpers shared by the kernels: loads and stores of the element dtypes, GGUF block
// dequantization and warp/block reductions.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "core/dtype.h"

namespace mil::cuda {

__device__ __forceinline__ float bf16_bits_to_f32(uint16_t h) {
  return __uint_as_float(static_cast<uint32_t>(h) << 16);
}
__device__ __forceinline__ uint16_t f32_to_bf16_bits(float f) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(f));
}
// Eight bf16 values (one 16-byte load) to f32.
__device__ __forceinline__ void bf16x8_to_f32(const uint4 r, float* f) {
  f[0] = __uint_as_float(r.x << 16);
  f[1] = __uint_as_float(r.x & 0xffff0000u);
  f[2] = __uint_as_float(r.y << 16);
  f[3] = __uint_as_float(r.y & 0xffff0000u);
  f[4] = __uint_as_float(r.z << 16);
  f[5] = __uint_as_float(r.z & 0xffff0000u);
  f[6] = __uint_as_float(r.w << 16);
  f[7] = __uint_as_float(r.w & 0xffff0000u);
}

__device__ __forceinline__ float f16_bits_to_f32(uint16_t h) {
  return __half2float(__ushort_as_half(h));
}

// Element i of a row of a plain dtype (F32, F16, BF16).
__device__ __forceinline__ float load_elem(const void* row, int64_t i, DType t) {
  switch (t) {
    case DType::F32: return static_cast<const float*>(row)[i];
    case DType::F16: return f16_bits_to_f32(static_cast<const uint16_t*>(row)[i]);
    default: return bf16_bits_to_f32(static_cast<const uint16_t*>(row)[i]);
  }
}
// Stores to an F32 or BF16 row.
__device__ __forceinline__ void store_elem(void* row, int64_t i, DType t, float v) {
  if (t == DType::F32) {
    static_cast<float*>(row)[i] = v;
  } else {
    static_cast<uint16_t*>(row)[i] = f32_to_bf16_bits(v);
  }
}

__device__ __forceinline__ const void* row_ptr(const void* base, size_t stride, int64_t r) {
  return static_cast<const char*>(base) + r * stride;
}
__device__ __forceinline__ void* row_ptr(void* base, size_t stride, int64_t r) {
  return static_cast<char*>(base) + r * stride;
}

// Two bytes at a (2-byte aligned) address; GGUF blocks are only 2-byte aligned.
__device__ __forceinline__ uint16_t load_u16(const uint8_t* p) {
  return *reinterpret_cast<const uint16_t*>(p);
}

// Dequantizes the 32 elements of block `blk` (block index within the row) of any weight
// dtype into out[32]. Elements at or past `cols` (plain dtypes only) come back as 0.
template <DType T>
__device__ __forceinline__ void dequant_block32(const uint8_t* row, int64_t blk, int64_t cols,
                                                float* out) {
  if constexpr (T == DType::Q8_0) {
    const uint8_t* p = row + blk * 34;
    const float d = f16_bits_to_f32(load_u16(p));
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      const uint16_t two = load_u16(p + 2 + 2 * i);
      out[2 * i] = static_cast<float>(static_cast<int8_t>(two & 0xff)) * d;
      out[2 * i + 1] = static_cast<float>(static_cast<int8_t>(two >> 8)) * d;
    }
  } else if constexpr (T == DType::Q4_0 || T == DType::Q4_1) {
    constexpr int bytes = T == DType::Q4_0 ? 18 : 20;
    constexpr int qoff = T == DType::Q4_0 ? 2 : 4;
    const uint8_t* p = row + blk * bytes;
    const float d = f16_bits_to_f32(load_u16(p));
    const float m = T == DType::Q4_1 ? f16_bits_to_f32(load_u16(p + 2)) : 0.0f;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const uint16_t two = load_u16(p + qoff + 2 * i);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int q = (two >> (8 * h)) & 0xff;
        if constexpr (T == DType::Q4_0) {
          out[2 * i + h] = static_cast<float>((q & 0x0f) - 8) * d;
          out[2 * i + h + 16] = static_cast<float>((q >> 4) - 8) * d;
        } else {
          out[2 * i + h] = static_cast<float>(q & 0x0f) * d + m;
          out[2 * i + h + 16] = static_cast<float>(q >> 4) * d + m;
        }
      }
    }
  } else {
    const int64_t base = blk * 32;
    if (base + 32 <= cols) {
#pragma unroll
      for (int i = 0; i < 32; ++i) out[i] = load_elem(row, base + i, T);
    } else {
#pragma unroll
      for (int i = 0; i < 32; ++i) out[i] = base + i < cols ? load_elem(row, base + i, T) : 0.0f;
    }
  }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over a block of blockDim.x threads (a multiple of 32, at most 1024); every thread
// gets the result. `scratch` holds 32 floats.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : 0.0f;
  return warp_sum(v);
}

constexpr int kMaxGridY = 65535;

// Programmatic dependent launch (sm_90; launch.cuh's launch_kernel starts kernels this way).
// Such a kernel may begin while the kernel before it in the stream is still running, so it
// calls pdl_wait() before it reads anything an earlier kernel wrote or writes anything an
// earlier kernel reads; before that it may read only constants (weights). pdl_wait() returns
// once the earlier grid has finished and its writes are visible. pdl_launch_dependents() lets
// the next kernel start once every block of this one has called it (or exited). Both are
// no-ops in a kernel launched the ordinary way.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
// The usual prologue: wait for the previous kernel, then let the next one start.
__device__ __forceinline__ void pdl_begin() {
  pdl_wait();
  pdl_launch_dependents();
}

__device__ __forceinline__ int64_t imin64(int64_t a, int64_t b) { return a < b ? a : b; }

}  // namespace mil::cuda
