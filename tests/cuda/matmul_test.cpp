// matmul on CUDA against the CPU backend, for every weight dtype, n in {1, 7, 64, 300},
// strided x / w / y views, BF16 and F32 outputs, cuBLASLt and the cuBLAS fallback; the
// decode kernels (BF16 GEMV, Q8_0/Q4_0/Q4_1 GEMV) at n <= 8 with partial and full 32-block
// segments, forced on and off through KernelPolicy; quantized prefill sizes with BF16 y
// through dequantized BF16 bands + cuBLASLt (F32 y: the f32-dequantizing kernel).
// Tolerances: BF16 y: rel L2 <= 1e-2 (output rounding, ~2e-3 expected); F32 y: rel L2
// <= 1e-4 (f32 accumulation in a different order; F16 weights see x converted to F16,
// exact for these inputs).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include "backends/cuda/cuda_ops.h"
#include "backends/cuda/kernels.h"
#include "cuda/cuda_harness.h"

namespace mil::test::gpu {
namespace {

struct MatmulCase {
  DType w;
  int64_t n, k;
  bool lt;
  int gemv = -1;  // KernelPolicy::bf16_gemv_max_n for BF16; 0 also turns the quantized GEMV off
  int64_t band = 0;  // KernelPolicy::dequant_band_rows (quantized, n > 8, BF16 y)
};

struct MatmulPolicyScope {
  cuda::KernelPolicy saved = cuda::kernel_policy();
  MatmulPolicyScope(int gemv, int64_t band) {
    cuda::kernel_policy().bf16_gemv_max_n = gemv;
    cuda::kernel_policy().qgemv = gemv != 0;
    cuda::kernel_policy().dequant_band_rows = band;
  }
  ~MatmulPolicyScope() { cuda::kernel_policy() = saved; }
};

class CudaMatmul : public CudaOpsTest, public ::testing::WithParamInterface<MatmulCase> {};

TEST_P(CudaMatmul, MatchesCpu) {
  const MatmulCase c = GetParam();
  const MatmulPolicyScope policy(c.gemv, c.band);
  if (!c.lt) gpu = make_cuda_ops(0, CudaOpsOptions{false, 0});
  Random rng(static_cast<uint32_t>(c.n * 31 + c.k + static_cast<int>(c.w)));
  const int64_t m = 384, n = c.n, k = c.k;
  const auto x = round_bf16(rng.uniform(n * k));
  const auto w = rng.weight_rows(c.w, m, k);
  // x as a column slice of a wider activation (qkv-like), w with padded rows.
  GpuTensor gx(DType::BF16, n, k, (k + 64) * 2, 64);
  GpuTensor gw(c.w, m, k, row_bytes(c.w, k) + 64);
  gx.set(x);
  gw.set_bytes(w);
  OwnedTensor hx = host_f32(x, n, k), hy(DType::F32, n, m);
  cpu->matmul(hx, Tensor::contiguous(c.w, m, k, const_cast<uint8_t*>(w.data())), hy);
  const std::vector<float> ref = to_vector(hy);
  for (DType ydt : {DType::BF16, DType::F32}) {
    SCOPED_TRACE(dtype_name(ydt));
    const size_t es = ydt == DType::F32 ? 4 : 2;
    GpuTensor gy(ydt, n, m, (m + 32) * es, 32 * es);
    gpu->matmul(gx, gw, gy);
    const double tol = ydt == DType::F32 ? 1e-4 : 1e-2;
    EXPECT_LE(rel_l2_error(gy.get(), ref), tol);
    gy.check_untouched("y");
  }
  // A 2-byte aligned view: cuBLASLt may have no kernel for it (then cuBLAS runs).
  if (c.w == DType::BF16) {
    GpuTensor gx2(DType::BF16, n, k, (k + 1) * 2, 2);
    gx2.set(x);
    GpuTensor gy(DType::BF16, n, m, (m + 3) * 2, 6);
    gpu->matmul(gx2, gw, gy);
    EXPECT_LE(rel_l2_error(gy.get(), ref), 1e-2);
    gy.check_untouched("y (odd alignment)");
  }
  gx.check_untouched("x", true);
  gw.check_untouched("w", true);
}

std::vector<MatmulCase> cases() {
  std::vector<MatmulCase> all;
  for (DType w : {DType::BF16, DType::F16, DType::F32, DType::Q8_0, DType::Q4_0, DType::Q4_1}) {
    for (int64_t n : {1, 7, 64, 300}) all.push_back({w, n, 512, true});
  }
  for (DType w : {DType::BF16, DType::F16, DType::F32}) {
    all.push_back({w, 7, 200, true});  // k not a multiple of 32
  }
  for (DType w : {DType::BF16, DType::F16}) {
    for (int64_t n : {1, 64}) all.push_back({w, n, 512, false});
  }
  for (DType w : {DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q4_1}) {
    for (int64_t n : {1, 3, 8}) {
      all.push_back({w, n, 1536, true, 8});  // GEMV forced on (k: one full + one partial segment)
      all.push_back({w, n, 512, true, 8});
    }
    all.push_back({w, 5, 1536, true, 0});  // first-version kernel / cuBLASLt
  }
  for (DType w : {DType::Q8_0, DType::Q4_1}) {
    all.push_back({w, 64, 512, true, -1, 128});  // BF16 y: three bands of dequantized rows
  }
  return all;
}

INSTANTIATE_TEST_SUITE_P(Grid, CudaMatmul, ::testing::ValuesIn(cases()), [](const auto& param_info) {
  const MatmulCase& c = param_info.param;
  return fmt::format("{}_n{}_k{}_{}{}{}", dtype_name(c.w), c.n, c.k, c.lt ? "lt" : "cublas",
                     c.gemv < 0 ? "" : c.gemv == 0 ? "_nogemv" : "_gemv",
                     c.band > 0 ? fmt::format("_band{}", c.band) : "");
});

}  // namespace
}  // namespace mil::test::gpu
