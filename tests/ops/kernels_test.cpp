// CPU-only: every kernel table this machine can run (scalar, AVX2, AVX-512) against the
// scalar table and the reference. The op tests see only the best table (or the one that
// MIL_CPU_KERNELS names); these keep the fallbacks honest.
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
    // Quantized dtypes here take the int8 kernels (QuantTile); their f32-activation
    // kernels are covered by F32ActivationTilesMatchReference below.
    const int max_rows = is_quantized(dtype) ? cpu::kMaxTileRows : cpu::kMaxFloatTileRows;
    for (int x_rows = 1; x_rows <= max_rows; ++x_rows) {
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

// The f32-activation kernels for quantized weights (make_cpu_ops' default path) against
// the double-precision reference on dequantized weights, at the f32 tolerance of float
// weights. Every table, every tile height up to kMaxFloatTileRows (the AVX-512 table has
// native 1..4 and 8 rows and splits 5..7), odd and even block counts, and strided views: the
// weight is a column slice one block into a wider matrix (so rows start unaligned), x and y
// are column slices too. Every y element outside the tile must keep its sentinel.
TEST(CpuKernels, F32ActivationTilesMatchReference) {
  Random rng(94);
  constexpr float kSentinel = -12345.0f;
  for (DType dtype : {DType::Q8_0, DType::Q4_0, DType::Q4_1}) {
    for (int64_t k : {32, 96, 576, 1536}) {
      const int64_t m = 13, wide_k = k + 3 * 32;
      std::vector<uint8_t> wide = rng.weight_rows(dtype, m, wide_k);
      if (dtype == DType::Q4_0) {
        // llama.cpp's Q4_0 scales may be negative (d = max / -8): flip every third one.
        const size_t bb = block_bytes(dtype);
        for (size_t b = 0; b < wide.size() / bb; b += 3) wide[b * bb + 1] ^= 0x80;
      }
      const std::vector<float> wide_f = ref::dequantize(dtype, wide, m, wide_k);
      std::vector<float> wf(m * k);  // columns [32, 32 + k) of the wide weight
      for (int64_t r = 0; r < m; ++r)
        for (int64_t j = 0; j < k; ++j) wf[r * k + j] = wide_f[r * wide_k + 32 + j];
      for (int x_rows = 1; x_rows <= cpu::kMaxFloatTileRows; ++x_rows) {
        SCOPED_TRACE(testing::Message() << dtype_name(dtype) << " k=" << k << " rows=" << x_rows);
        const size_t x_stride = static_cast<size_t>(k + 5), y_stride = static_cast<size_t>(m + 3);
        std::vector<float> xs = rng.uniform(x_rows * x_stride, -2.0f, 2.0f), x(x_rows * k);
        for (int i = 0; i < x_rows; ++i)
          for (int64_t j = 0; j < k; ++j) x[i * k + j] = xs[i * x_stride + 1 + j];
        const std::vector<float> want = ref::matmul(x, wf, x_rows, k, m);
        std::vector<float> want_scalar;
        for (const Kernels* kern : tables()) {
          std::vector<float> ys(x_rows * y_stride, kSentinel);
          cpu::FloatTile t{reinterpret_cast<const std::byte*>(wide.data()) + row_bytes(dtype, 32),
                           row_bytes(dtype, wide_k),
                           m,
                           k,
                           xs.data() + 1,
                           x_stride,
                           x_rows,
                           ys.data() + 2,
                           y_stride};
          cpu::float_tile_fn(*kern, dtype)(t);
          std::vector<float> got(x_rows * m);
          for (int i = 0; i < x_rows; ++i) {
            for (size_t j = 0; j < y_stride; ++j) {
              const float v = ys[i * y_stride + j];
              if (j >= 2 && j < 2 + static_cast<size_t>(m)) {
                got[i * m + (j - 2)] = v;
              } else {
                EXPECT_EQ(v, kSentinel) << kern->name << " wrote y outside the tile";
              }
            }
          }
          EXPECT_LE(max_norm_error(got, want), 2e-5) << kern->name;
          if (want_scalar.empty()) want_scalar = got;  // tables() starts with scalar
          EXPECT_LE(max_norm_error(got, want_scalar), 2e-5) << kern->name << " vs scalar";
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
