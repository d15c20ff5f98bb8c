// The CUDA backend (sm_90a). Built with -DMIL_CUDA=ON.
//
// Contract (what differs from the CPU backend's, see backends/ops.h):
// - Every tensor an op touches lives in device memory of the backend's device
//   (Tensor::device == Device::CUDA); ops check dtypes and shapes on the host and never read
//   device memory on the host.
// - Activations are BF16 with f32 accumulation inside every kernel: matmul x, embedding out,
//   rmsnorm x/out, rope x, kv_store k/v, attention q/out, silu_mul, lora_shrink x,
//   lora_expand y. matmul y, embedding out, add_bias y and add may also be F32 (logits);
//   argmax and sample take F32 or BF16 logits.
// - Weights: matmul takes BF16 (cuBLASLt, cuBLAS when Lt has no algorithm for the layout),
//   F16 (activations converted to F16, cuBLASLt with an F32 result), F32, Q8_0, Q4_0 and
//   Q4_1 (a kernel that dequantizes on the fly; f32 math). Norm weights, biases and inv_freq
//   are F32 (norm weights and biases may be BF16). LoRA a/b are F32, v is F32.
// - KV caches are BF16, [slots, kv_heads * head_dim], row stride a multiple of 16 bytes.
//   Attention: a tuned kernel for head_dim 64 and 128 with GQA ratios up to 8, a generic
//   one (one warp per row and head) for other even head dims up to 256 (for every shape
//   with MIL_ATTN_KERNEL=generic, a cross-check).
// - Memory: allocate() is cudaMalloc, allocate_host() pinned host memory (cudaMallocHost);
//   upload/download are cudaMemcpy2DAsync on the backend's stream.
// - Pointer arguments: per-token and per-sequence arrays are DEVICE pointers: embedding ids,
//   rope positions, kv_store slots, the AttentionBatch arrays, LoRA segments, argmax/sample
//   out, sample params and uniforms. They are not validated on the host: out-of-range ids,
//   slots or block ids are skipped by the kernels (no out-of-bounds access), never reported.
//   LoraProjection's a/b/scale arrays are HOST arrays (the adapter store's slot table) whose
//   tensors point to device memory; the backend keeps a device copy of each projection's
//   slot table and re-uploads it only when LoraProjection::generation moves (0: every call).
// - Ops are asynchronous on the backend's stream (a blocking stream, so plain cudaMemcpy on
//   the legacy default stream orders with them). Every CUDA call and launch is checked.
// - Graphs (Ops::begin_capture/end_capture): stream capture into a cudaGraphExec replayed on
//   the backend's stream. Workspaces (attention split-KV partials, f16 staging, sampling,
//   LoRA slot tables) never grow inside a capture (an error says so: the caller runs every
//   shape it captures eagerly first, which sizes them); one that grows while a graph is alive
//   keeps its old allocation for the graph. upload/download/synchronize fail inside a capture.
#pragma once

#include <memory>

#include "backends/ops.h"

namespace mil {

struct CudaOpsOptions {
  // false: dense BF16/F16 matmuls go through cuBLAS (cublasGemmEx) instead of cuBLASLt.
  bool use_cublaslt = true;
  // Splits of the KV range per (query row, kv head) in attention; 0 = chosen from the
  // multiprocessor count.
  int attention_splits = 0;
};

// CUDA devices present (0 when there is no driver or no GPU).
int cuda_device_count();

std::unique_ptr<Ops> make_cuda_ops(int device);
std::unique_ptr<Ops> make_cuda_ops(int device, const CudaOpsOptions& options);

}  // namespace mil
