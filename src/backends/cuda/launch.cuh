// Kernel launches with programmatic dependent launch (PDL, sm_90): in a CUDA graph or a
// stream, the next kernel's blocks are scheduled while the previous kernel's last blocks
// still run, and a matmul's blocks start streaming their weights before the activations are
// ready. That hides the launch gap and the tail of every small kernel of a decode step.
// Every kernel started through launch_kernel() must follow device_math.cuh's pdl_wait()
// rule. KernelPolicy::pdl (MIL_PDL=0) turns the attribute off for before/after timings.
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "backends/cuda/kernels.h"

namespace mil::cuda {

// Launches kernel<<<grid, block, smem, s>>>(args...); errors show in cudaGetLastError().
template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t s,
                   Args&&... args) {
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = s;
  cfg.attrs = attr;
  cfg.numAttrs = kernel_policy().pdl ? 1 : 0;
  (void)cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

}  // namespace mil::cuda
