// Checks of CUDA runtime and cuBLAS return codes: a failure throws mil::Error naming the call.
#pragma once

#include <cublas_api.h>
#include <cuda_runtime.h>

#include "core/error.h"

#define MIL_CUDA_CHECK(call)                                                              \
  do {                                                                                    \
    const cudaError_t mil_cuda_err_ = (call);                                             \
    if (mil_cuda_err_ != cudaSuccess)                                                     \
      ::mil::fail("CUDA error {} ({}) at {}:{}: {}", cudaGetErrorName(mil_cuda_err_),     \
                  cudaGetErrorString(mil_cuda_err_), __FILE__, __LINE__, #call);          \
  } while (0)

#define MIL_CUBLAS_CHECK(call)                                                            \
  do {                                                                                    \
    const cublasStatus_t mil_cublas_st_ = (call);                                         \
    if (mil_cublas_st_ != CUBLAS_STATUS_SUCCESS)                                          \
      ::mil::fail("cuBLAS error {} at {}:{}: {}", static_cast<int>(mil_cublas_st_),       \
                  __FILE__, __LINE__, #call);                                             \
  } while (0)

// After every kernel launch: launch configuration errors surface here.
#define MIL_CUDA_CHECK_LAUNCH() MIL_CUDA_CHECK(cudaGetLastError())
