// Launchers of the kernels the model needs beyond the op-test set of kernels.h: the fused
// residual add + RMSNorm, and attention for the head dims and GQA ratios that the tuned
// kernel of attention.cu does not take (tiny test models: head_dim 16 or 32). Same
// conventions as kernels.h (strides in bytes, device pointers, the caller checks).
#pragma once

#include "backends/cuda/kernels.h"

namespace mil::cuda {

// elementwise.cu: residual += x (stored in residual's dtype), out = rmsnorm(residual) * weight.
void launch_add_rmsnorm(Mat residual, Mat x, Mat weight, float eps, Mat out, cudaStream_t s);

// attention_generic.cu: one warp per (query row, head), online softmax over the visible keys;
// head_dim even and at most kGenericAttentionMaxDim, any GQA ratio. Slow but general.
constexpr int kGenericAttentionMaxDim = 256;
void launch_attention_generic(const AttentionArgs& a, cudaStream_t s);

}  // namespace mil::cuda
