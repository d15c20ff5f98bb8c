#include "backends/cuda/blas.h"

#include "backends/cuda/cuda_check.h"
#include "backends/cuda/kernels.h"

namespace mil::cuda {
namespace {

constexpr size_t kLtWorkspaceBytes = 32u << 20;
// BF16 GEMV instead of cuBLASLt for n <= this (KernelPolicy::bf16_gemv_max_n overrides).
// H100, Llama-3-8B shapes: the GEMV beats cuBLASLt by 4-10% at n = 1 and loses from n = 8.
constexpr int64_t kGemvDefaultMaxN = 1;

// The largest power of two (up to 256) dividing the address: cuBLASLt picks kernels by it.
int alignment_of(const void* p) {
  const auto v = reinterpret_cast<uintptr_t>(p);
  int a = 256;
  while (a > 1 && v % a != 0) a /= 2;
  return a;
}

}  // namespace

Blas::Blas(cudaStream_t stream) : stream_(stream), workspace_(kLtWorkspaceBytes) {
  MIL_CUBLAS_CHECK(cublasCreate(&blas_));
  MIL_CUBLAS_CHECK(cublasSetStream(blas_, stream_));
  MIL_CUBLAS_CHECK(cublasLtCreate(&lt_));
}

Blas::~Blas() {
  for (auto& [key, p] : plans_) {
    if (p.op != nullptr) cublasLtMatmulDescDestroy(p.op);
    if (p.a != nullptr) cublasLtMatrixLayoutDestroy(p.a);
    if (p.b != nullptr) cublasLtMatrixLayoutDestroy(p.b);
    if (p.d != nullptr) cublasLtMatrixLayoutDestroy(p.d);
  }
  if (lt_ != nullptr) cublasLtDestroy(lt_);
  if (blas_ != nullptr) cublasDestroy(blas_);
}

Blas::LtPlan& Blas::plan(const GemmArgs& a) {
  const Key key{a.w_type, a.x_type,           a.y_type,           a.m, a.n, a.k, a.ldw, a.ldx,
                a.ldy,    alignment_of(a.w), alignment_of(a.x), alignment_of(a.y)};
  auto it = plans_.find(key);
  if (it != plans_.end()) return it->second;
  LtPlan& p = plans_[key];
  MIL_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  MIL_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  MIL_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  MIL_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, a.w_type, a.k, a.m, a.ldw));
  MIL_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, a.x_type, a.k, a.n, a.ldx));
  MIL_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.d, a.y_type, a.m, a.n, a.ldy));
  cublasLtMatmulPreference_t pref = nullptr;
  MIL_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const size_t ws = workspace_.size();
  const uint32_t al_a = alignment_of(a.w), al_b = alignment_of(a.x), al_d = alignment_of(a.y);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof(al_a));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof(al_b));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_d, sizeof(al_d));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_d, sizeof(al_d));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t st =
      cublasLtMatmulAlgoGetHeuristic(lt_, p.op, p.a, p.b, p.d, p.d, pref, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  p.ok = st == CUBLAS_STATUS_SUCCESS && found > 0;
  if (p.ok) p.algo = result.algo;
  return p;
}

bool Blas::use_gemv(const GemmArgs& a) const {
  if (a.w_type != CUDA_R_16BF || a.x_type != CUDA_R_16BF || a.n > 8) return false;
  if (a.y_type != CUDA_R_16BF && a.y_type != CUDA_R_32F) return false;
  const int max_n = kernel_policy().bf16_gemv_max_n;
  if (max_n >= 0) return a.n <= max_n;
  // Per-shape choice from the H100 timings in docs/PERFORMANCE.md (weights rotated
  // through more than L2): the GEMV wins at decode sizes.
  return a.n <= kGemvDefaultMaxN;
}

void Blas::gemm(const GemmArgs& a, bool use_lt) {
  if (a.m == 0 || a.n == 0) return;
  if (use_gemv(a)) {
    const Mat x{const_cast<void*>(a.x), a.n, a.k, static_cast<size_t>(a.ldx) * 2, DType::BF16};
    const Mat w{const_cast<void*>(a.w), a.m, a.k, static_cast<size_t>(a.ldw) * 2, DType::BF16};
    const bool f32 = a.y_type == CUDA_R_32F;
    const Mat y{a.y, a.n, a.m, static_cast<size_t>(a.ldy) * (f32 ? 4 : 2), f32 ? DType::F32 : DType::BF16};
    if (launch_gemv_bf16(x, w, y, stream_)) {
      MIL_CUDA_CHECK(cudaGetLastError());
      return;
    }
  }
  if (use_lt) {
    LtPlan& p = plan(a);
    if (p.ok) {
      const float alpha = 1.0f, beta = 0.0f;
      MIL_CUBLAS_CHECK(cublasLtMatmul(lt_, p.op, &alpha, a.w, p.a, a.x, p.b, &beta, a.y, p.d, a.y,
                                      p.d, &p.algo, workspace_.data(), workspace_.size(), stream_));
      return;
    }
  }
  gemm_ex(a);
}

void Blas::gemm_ex(const GemmArgs& a) {
  const float alpha = 1.0f, beta = 0.0f;
  MIL_CUBLAS_CHECK(cublasGemmEx(blas_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(a.m),
                                static_cast<int>(a.n), static_cast<int>(a.k), &alpha, a.w, a.w_type,
                                static_cast<int>(a.ldw), a.x, a.x_type, static_cast<int>(a.ldx),
                                &beta, a.y, a.y_type, static_cast<int>(a.ldy), CUBLAS_COMPUTE_32F,
                                CUBLAS_GEMM_DEFAULT));
}

}  // namespace mil::cuda
