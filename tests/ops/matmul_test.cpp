// matmul and add_bias on every backend against the f32 reference.
//
// Tolerances (normalised max error = max|got - ref| / max|ref|):
//  - f32 activations (make_cpu_ops and make_cpu_ops_exact for every weight dtype, and
//    F32/F16/BF16 weights everywhere): 2e-5, the f32 rounding of K-term sums.
//  - int8 activations (make_cpu_ops_int8 with Q8_0/Q4_0/Q4_1 weights): against the f32
//    reference, relative L2 <= 1e-2 and max error <= 3e-2 (the 8-bit rounding of x; about
//    4e-3 measured on these cases), checked where there are >= 64 outputs; against the
//    reference fed the same quantized activations, 2e-5, which catches kernel bugs that
//    would hide inside the looser bound.
#include <gtest/gtest.h>

#include "core/error.h"
#include "harness.h"
#include "reference.h"

namespace mil::test {
namespace {

constexpr double kF32Tol = 2e-5;
constexpr double kInt8RelL2 = 1e-2;
constexpr double kInt8Max = 3e-2;

struct MatmulCase {
  int64_t n, k, m;
};

const DType kWeightTypes[] = {DType::F32,  DType::F16,  DType::BF16,
                              DType::Q8_0, DType::Q4_0, DType::Q4_1};

class Matmul : public OpsTest {
 protected:
  // strided: w is a column slice (starting one block in) of a wider weight, x and y are
  // column slices of wider activations, so every stride differs from the packed one.
  void run(DType dtype, MatmulCase c, bool strided, uint32_t seed) {
    SCOPED_TRACE(testing::Message() << dtype_name(dtype) << " n=" << c.n << " k=" << c.k
                                    << " m=" << c.m << (strided ? " strided" : ""));
    Random rng(seed);
    const std::vector<uint8_t> wbytes = rng.weight_rows(dtype, c.m, c.k);
    const std::vector<float> x = rng.uniform(static_cast<size_t>(c.n * c.k));

    const size_t w_stride = strided ? row_bytes(dtype, c.k + 3 * kQuantBlock) : 0;
    const size_t w_lead = strided ? row_bytes(dtype, kQuantBlock) : 0;
    DeviceTensor w(backend(), dtype, c.m, c.k, w_stride, w_lead);
    DeviceTensor xd(backend(), DType::F32, c.n, c.k, strided ? (c.k + 3) * 4 : 0, strided ? 12 : 0);
    DeviceTensor y(backend(), DType::F32, c.n, c.m, strided ? (c.m + 5) * 4 : 0, strided ? 8 : 0);
    w.set_rows(wbytes);
    xd.set_f32(x);

    ops->matmul(xd, w, y);
    const std::vector<float> got = y.get_f32();
    y.check_untouched("y");
    w.check_untouched("w", /*unchanged=*/true);
    xd.check_untouched("x", /*unchanged=*/true);

    const std::vector<float> wf = ref::dequantize(dtype, wbytes, c.m, c.k);
    const std::vector<float> want = ref::matmul(x, wf, c.n, c.k, c.m);
    if (backend().int8_activations && is_quantized(dtype)) {
      // With only a few outputs one of them may be a near-cancelling sum whose relative
      // error says nothing about the kernel; the exact comparison below still runs.
      if (c.n * c.m >= 64) {
        EXPECT_LE(rel_l2_error(got, want), kInt8RelL2);
        EXPECT_LE(max_norm_error(got, want), kInt8Max);
      }
      const std::vector<float> same_x =
          ref::matmul(ref::quantize_activations(x), wf, c.n, c.k, c.m);
      EXPECT_LE(max_norm_error(got, same_x), kF32Tol);
    } else {
      EXPECT_LE(max_norm_error(got, want), kF32Tol);
    }
  }
};

TEST_P(Matmul, AllDtypesShapesAndLayouts) {
  // n covers a single row, tiles of every height (1..8; 13 = 8 + 5 splits a tile of 5) and
  // odd remainders; m covers row counts that are not a multiple of the 4-row thread split.
  const MatmulCase cases[] = {{1, 32, 1},   {1, 576, 67},  {3, 96, 33},   {5, 160, 7},
                              {4, 64, 9},   {8, 64, 130},  {17, 1536, 9}, {64, 576, 40},
                              {2, 2048, 5}, {1, 1536, 576}};
  const MatmulCase more_cases[] = {{13, 96, 21}, {11, 576, 19}, {7, 1536, 6}};
  // Seeds run on from 1 over `cases`; the later cases get their own range so that the
  // original inputs stay the same (the int8 path's exact check sits near its bound on some
  // single-output cases, where Q4_0's offset term cancels most of the sum).
  uint32_t seed = 1, more_seed = 1000;
  for (DType dtype : kWeightTypes) {
    for (const MatmulCase& c : cases) {
      for (bool strided : {false, true}) run(dtype, c, strided, seed++);
    }
    for (const MatmulCase& c : more_cases) {
      for (bool strided : {false, true}) run(dtype, c, strided, more_seed++);
    }
  }
}

// The reason make_cpu_ops keeps activations in f32: SmolLM2's residual stream has a few
// channels hundreds of times larger than the rest, and 8-bit blocks holding one of them
// round their neighbours to zero. f32-activation backends must not care.
TEST_P(Matmul, OutlierActivationsKeepF32Accuracy) {
  if (backend().int8_activations) GTEST_SKIP() << "8-bit activations lose outlier neighbours";
  for (DType dtype : {DType::Q8_0, DType::Q4_0, DType::Q4_1}) {
    SCOPED_TRACE(dtype_name(dtype));
    const int64_t n = 5, k = 576, m = 37;
    Random rng(13);
    const std::vector<uint8_t> wbytes = rng.weight_rows(dtype, m, k);
    std::vector<float> x = rng.uniform(n * k, -0.05f, 0.05f);
    for (int64_t i = 0; i < n; ++i) {
      x[i * k + 17] = 400.0f;  // one outlier in the first block, another in the 10th
      x[i * k + 300] = -250.0f;
    }
    DeviceTensor w(backend(), dtype, m, k), xd(backend(), DType::F32, n, k),
        y(backend(), DType::F32, n, m);
    w.set_rows(wbytes);
    xd.set_f32(x);
    ops->matmul(xd, w, y);
    // Without the outlier columns: the small-activation part of each dot product, which
    // must not be lost next to the outliers' contribution.
    const std::vector<float> wf = ref::dequantize(dtype, wbytes, m, k);
    const std::vector<float> want = ref::matmul(x, wf, n, k, m);
    EXPECT_LE(max_norm_error(y.get_f32(), want), kF32Tol);
    y.check_untouched("y");
  }
}

TEST_P(Matmul, ZeroActivationsGiveZero) {
  // An all-zero block has scale 0; the quantizer must not divide by it.
  DeviceTensor w(backend(), DType::Q4_1, 3, 64);
  DeviceTensor x(backend(), DType::F32, 2, 64);
  DeviceTensor y(backend(), DType::F32, 2, 3);
  Random rng(7);
  w.set_rows(rng.weight_rows(DType::Q4_1, 3, 64));
  x.set_f32(std::vector<float>(128, 0.0f));
  ops->matmul(x, w, y);
  for (float v : y.get_f32()) EXPECT_EQ(v, 0.0f);
}

TEST_P(Matmul, RejectsMismatchedShapes) {
  DeviceTensor w(backend(), DType::Q8_0, 4, 64);
  DeviceTensor x(backend(), DType::F32, 2, 96);
  DeviceTensor y(backend(), DType::F32, 2, 4);
  EXPECT_THROW(ops->matmul(x, w, y), Error);
  DeviceTensor x2(backend(), DType::F32, 2, 64);
  DeviceTensor y2(backend(), DType::F32, 3, 4);
  EXPECT_THROW(ops->matmul(x2, w, y2), Error);
  DeviceTensor xi(backend(), DType::I32, 2, 64);
  EXPECT_THROW(ops->matmul(xi, w, y), Error);
}

TEST_P(Matmul, AddBias) {
  Random rng(11);
  for (auto [n, m] : {std::pair<int64_t, int64_t>{1, 7}, {5, 576}}) {
    const std::vector<float> y0 = rng.uniform(n * m), bias = rng.uniform(m);
    DeviceTensor y(backend(), DType::F32, n, m, (m + 1) * 4, 4);
    DeviceTensor b(backend(), DType::F32, 1, m);
    y.set_f32(y0);
    b.set_f32(bias);
    ops->add_bias(y, b);
    std::vector<float> want = y0;
    ref::add_bias(want, bias, m);
    EXPECT_LE(max_norm_error(y.get_f32(), want), 1e-7);
    y.check_untouched("y");
    b.check_untouched("bias", true);
  }
  DeviceTensor y(backend(), DType::F32, 2, 8);
  DeviceTensor b(backend(), DType::F32, 1, 7);
  EXPECT_THROW(ops->add_bias(y, b), Error);
}

MIL_INSTANTIATE_OPS_TEST(Matmul);

}  // namespace
}  // namespace mil::test
