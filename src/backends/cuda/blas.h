// Dense matmuls through cuBLASLt (with cuBLAS as the fallback): y = x · w^T in row-major
// terms, which is column-major D[m, n] = op_T(A[k, m]) · B[k, n] with A = w, B = x.
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <tuple>

#include "backends/cuda/device_buffer.h"

namespace mil::cuda {

struct GemmArgs {
  const void* w = nullptr;  // [m, k] row-major, ldw elements per row
  const void* x = nullptr;  // [n, k] row-major
  void* y = nullptr;        // [n, m] row-major
  cudaDataType_t w_type = CUDA_R_16BF, x_type = CUDA_R_16BF, y_type = CUDA_R_16BF;
  int64_t m = 0, n = 0, k = 0, ldw = 0, ldx = 0, ldy = 0;
};

class Blas {
 public:
  explicit Blas(cudaStream_t stream);
  ~Blas();
  Blas(const Blas&) = delete;
  Blas& operator=(const Blas&) = delete;

  // BF16 x BF16 with n <= 8 (decode): MIL's GEMV kernel where it beats cuBLASLt (see
  // use_gemv). Otherwise cuBLASLt when `use_lt` and Lt has an algorithm for the layout, else
  // cublasGemmEx.
  void gemm(const GemmArgs& a, bool use_lt);

 private:
  struct LtPlan {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
    cublasLtMatmulAlgo_t algo{};
    bool ok = false;
  };
  using Key = std::tuple<int, int, int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int,
                         int, int>;
  LtPlan& plan(const GemmArgs& a);
  bool use_gemv(const GemmArgs& a) const;
  void gemm_ex(const GemmArgs& a);

  cudaStream_t stream_;
  cublasHandle_t blas_ = nullptr;
  cublasLtHandle_t lt_ = nullptr;
  DeviceBuffer workspace_;
  std::map<Key, LtPlan> plans_;
};

}  // namespace mil::cuda
