// CPU-only: every kernel table this machine can run (scalar, AVX2, AVX-512) against the
// scalar table. The op tests above see only the best table; these keep the fallbacks honest.
#include "backends/cpu/kernels.h"

#include <gtest/gtest.h>

#include <cstring>

#include "harness.h"
#include "reference.h"

namespace mil::test {
namespace {

using cpu::Kernels;

std::vector<const Kernels*> tables() {
  const Kernels* all[8];
  const int n = cpu::available_kernels(all, 8);
  return {all, all + n};
}

TEST(CpuKernels, QuantizeRowIsBitIdenticalAcrossTables) {
  Random rng(91);
  const int64_t nb = 37;
  std::vector<float> x = rng.uniform(nb * 32, -4.0f, 4.0f);
  for (int j = 0; j < 32; ++j) x[5 * 32 + j] = 0.0f;  // an all-zero block
  x[7 * 32 + 3] = 1e-30f;                             // a tiny block scale
  std::vector<int8_t> q0(nb * 32);
  std::vector<float> d0(nb * 2);
  cpu::scalar_kernels()->quantize_row(x.data(), nb, q0.data(), d0.data());
  for (const Kernels* k : tables()) {
    std::vector<int8_t> q(nb * 32);
    std::vector<float> d(nb * 2);
    k->quantize_row(x.data(), nb, q.data(), d.data());
    EXPECT_EQ(q, q0) << k->name;
    EXPECT_EQ(d, d0) << k->name;
  }
}

TEST(CpuKernels, TilesAgreeWithScalar) {
  Random rng(92);
  for (DType dtype : {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q4_1}) {
    for (int x_rows = 1; x_rows <= cpu::kMaxTileRows; ++x_rows) {
      for (int64_t k : {32, 96, 576, 1000}) {
        if (is_quantized(dtype) && k % 32 != 0) continue;
        const int64_t m = 13, nb = k / 32;
        const std::vector<uint8_t> w = rng.weight_rows(dtype, m, k);
        const std::vector<float> x = rng.uniform(x_rows * k);
        std::vector<int8_t> qs(x_rows * k);
        std::vector<float> ds(x_rows * nb * 2);
        for (int i = 0; i < x_rows; ++i)
          cpu::scalar_kernels()->quantize_row(x.data() + i * k, nb, qs.data() + i * k,
                                              ds.data() + i * nb * 2);
        auto run = [&](const Kernels& kern) {
          std::vector<float> y(x_rows * m, -1.0f);
          if (is_quantized(dtype)) {
            cpu::QuantTile t{reinterpret_cast<const std::byte*>(w.data()),
                             row_bytes(dtype, k),
                             m,
                             {qs.data(), ds.data(), nb},
                             x_rows,
                             y.data(),
                             static_cast<size_t>(m)};
            cpu::quant_tile_fn(kern, dtype)(t);
          } else {
            cpu::FloatTile t{reinterpret_cast<const std::byte*>(w.data()),
                             row_bytes(dtype, k),
                             m,
                             k,
                             x.data(),
                             static_cast<size_t>(k),
                             x_rows,
                             y.data(),
                             static_cast<size_t>(m)};
            cpu::float_tile_fn(kern, dtype)(t);
          }
          return y;
        };
        const std::vector<float> want = run(*cpu::scalar_kernels());
        for (const Kernels* kern : tables()) {
          EXPECT_LE(max_norm_error(run(*kern), want), 1e-5)
              << kern->name << " " << dtype_name(dtype) << " rows=" << x_rows << " k=" << k;
        }
      }
    }
  }
}

TEST(CpuKernels, DotAndAxpy) {
  Random rng(93);
  for (int64_t n : {1, 7, 16, 64, 1001}) {
    const std::vector<float> a = rng.uniform(n), b = rng.uniform(n);
    double want = 0.0;
    for (int64_t i = 0; i < n; ++i) want += static_cast<double>(a[i]) * b[i];
    for (const Kernels* k : tables()) {
      EXPECT_NEAR(k->dot_f32(a.data(), b.data(), n), want, 1e-5 * n) << k->name;
      std::vector<float> y = b;
      k->axpy_f32(0.5f, a.data(), y.data(), n);
      for (int64_t i = 0; i < n; ++i) EXPECT_FLOAT_EQ(y[i], b[i] + 0.5f * a[i]) << k->name;
    }
  }
}

}  // namespace
}  // namespace mil::test
