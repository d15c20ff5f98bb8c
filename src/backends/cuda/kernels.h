// Launchers of the CUDA kernels: plain pointers, strides and a stream, no mil::Tensor and no
// fmt, so that the .cu files stay free of host-library headers. The host glue
// (cuda_ops.cpp) checks arguments, calls a launcher, then checks cudaGetLastError().
// Strides are in bytes unless named *_elems.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "backends/ops.h"
#include "core/dtype.h"

namespace mil::cuda {

// A 2-D view, as Tensor without the host helpers.
struct Mat {
  void* data = nullptr;
  int64_t rows = 0, cols = 0;
  size_t stride = 0;  // bytes between rows
  DType dtype = DType::BF16;
};

// elementwise.cu
void launch_add_bias(Mat y, Mat bias, cudaStream_t s);
void launch_embedding(Mat table, const int32_t* ids, Mat out, cudaStream_t s);
void launch_rmsnorm(Mat x, Mat weight, float eps, Mat out, cudaStream_t s);
void launch_rope(Mat x, int32_t head_dim, const int32_t* positions, const float* inv_freq,
                 bool interleaved, cudaStream_t s);
void launch_rope_kv_store(Mat q, Mat k, Mat v, int32_t head_dim, const int32_t* positions,
                          const float* inv_freq, bool interleaved, const int32_t* slots, Mat k_cache,
                          Mat v_cache, cudaStream_t s);
void launch_kv_store(Mat k, Mat v, const int32_t* slots, Mat k_cache, Mat v_cache,
                     cudaStream_t s);
void launch_silu_mul(Mat gate, Mat up, Mat out, cudaStream_t s);
void launch_add(Mat a, Mat b, Mat out, cudaStream_t s);
// Packed conversions for the F16 matmul path: bf16 -> f16 (rows x cols of x into dst with
// dst_ld elements per row) and f32 -> bf16/f32 (src packed, src_ld elements per row).
void launch_bf16_to_f16(Mat x, uint16_t* dst, int64_t dst_ld, cudaStream_t s);
void launch_f32_to(const float* src, int64_t src_ld, Mat dst, cudaStream_t s);

// matmul_dequant.cu: y[n, m] = x[n, k] · dequant(w)[m, k]^T for F32/F16/BF16/Q8_0/Q4_0/Q4_1
// weights; x BF16, y BF16 or F32. f32 math.
void launch_dequant_matmul(Mat x, Mat w, Mat y, cudaStream_t s);

// BF16 GEMV for n = x.rows <= 8 (BF16 x and w, 16-byte aligned rows, cols % 8 == 0);
// false: not taken (the caller uses cuBLAS).
bool launch_gemv_bf16(Mat x, Mat w, Mat y, cudaStream_t s);
// dst[r * dst_ld + c] = bf16(dequant(w)[r, c]) for any weight dtype (prefill of quantized
// weights: dequantize into a scratch once, then one cuBLASLt GEMM).
void launch_dequant_to_bf16(Mat w, uint16_t* dst, int64_t dst_ld, cudaStream_t s);

// Which kernel variants run: the fast paths by default; tests and benchmarks switch them
// for before/after comparisons. Read from the environment at first use (MIL_ATTN_KERNEL=
// auto|split|legacy, MIL_QGEMV=0|1, MIL_GEMV_BF16=auto|off|N, MIL_GEMV_SPLITK=0|1,
// MIL_FUSED_ROPE_KV=0|1, MIL_PDL=0|1, MIL_ROW_VEC=0|1, MIL_DEQUANT_GEMM=0|1,
// MIL_ROPE_HEADS_MAX_ROWS=N) and then set in code.
struct KernelPolicy {
  enum class Attention { kAuto, kSplit, kLegacy };
  Attention attention = Attention::kAuto;
  bool qgemv = true;           // false: quantized matmuls take the first-version kernel
  bool fused_rope_kv = true;   // rope(q) + rope(k) + kv_store in one kernel (MIL_FUSED_ROPE_KV=0: three)
  bool gemv_splitk = true;     // BF16 GEMV: split-K kernel (MIL_GEMV_SPLITK=0: 8-row warps)
  int bf16_gemv_max_n = -1;    // -1: per-shape choice in Blas; 0: never; N: for n <= N
  bool pdl = true;             // launch.cuh: programmatic dependent launch (MIL_PDL=0: off)
  bool row_vec = true;         // vectorized decode row kernels (MIL_ROW_VEC=0: a block per row)
  // rope + kv_store takes a block per (head, row) up to this many rows, a block per row
  // beyond (prefill: 40 heads x 2048 rows of 64-thread blocks are ~20 waves).
  int64_t rope_heads_max_rows = 256;
  // Quantized weights, n > 8, BF16 output: dequantize bands of weight rows into a BF16
  // scratch, then cuBLASLt (MIL_DEQUANT_GEMM=0: the first-version kernel).
  bool dequant_gemm = true;
  int64_t dequant_band_rows = 0;  // rows per band; 0: as many as 32 MiB of BF16 hold
};
KernelPolicy& kernel_policy();

// attention.cu
struct AttentionArgs {
  Mat q, k_cache, v_cache, out;
  AttentionBatch batch;  // device arrays
  AttentionShape shape;
  int32_t num_rows = 0;  // q.rows
  // KV splits per (row, kv head); > 1 needs `partials`. A minimum: with few rows the
  // launcher may split further, up to what attention_partials_floats() sized for.
  int32_t splits = 1;
  float* partials = nullptr;  // attention_partials_floats(num_rows, num_heads, head_dim, splits)
};
size_t attention_partials_floats(int32_t rows, int32_t heads, int32_t head_dim, int32_t splits);
void launch_attention(const AttentionArgs& a, cudaStream_t s);

// lora.cu: one adapter slot of a projection, as the kernels read it.
struct LoraSlot {
  const float* a = nullptr;  // [rank, in], a_stride_elems per row
  const float* b = nullptr;  // [out, rank], b_stride_elems per row
  int64_t a_stride_elems = 0, b_stride_elems = 0;
  int32_t rank = 0;  // 0: the slot does not touch this projection
  float scale = 0.0f;
};
void launch_lora_shrink(Mat x, const LoraSlot* slots, int32_t num_slots, const LoraSegment* segs,
                        int32_t num_segments, int32_t max_rank, Mat v, cudaStream_t s);
void launch_lora_expand(Mat v, const LoraSlot* slots, int32_t num_slots, const LoraSegment* segs,
                        int32_t num_segments, int32_t max_rank, Mat y, cudaStream_t s);

// sample.cu
void launch_argmax(Mat logits, int32_t* out, cudaStream_t s);
// Workspace bytes for sample() of rows x vocab logits.
size_t sample_workspace_bytes(int64_t rows, int64_t vocab);
void launch_sample(Mat logits, const SamplingParams* params, const float* uniforms, int32_t* out,
                   void* workspace, size_t workspace_bytes, cudaStream_t s);
// Ops::repetition_penalty on f32 logits (ids, offsets, penalties in device memory).
void launch_repetition_penalty(Mat logits, const int32_t* ids, const int32_t* offsets,
                               const float* penalties, cudaStream_t s);
// Ops::token_logprobs on f32 logits.
void launch_token_logprobs(Mat logits, const float* temperatures, const int32_t* tokens, float* out,
                           cudaStream_t s);

}  // namespace mil::cuda
