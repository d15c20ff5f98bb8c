// embedding, rmsnorm, rope, kv_store, silu_mul and add on every backend.
//
// Tolerances (normalised max error): embedding and add are exact (same f32 operations);
// rmsnorm 1e-5 (f32 sum of squares); rope 2e-6 (f32 cos/sin vs double); silu_mul 2e-6
// (f32 exp).
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>

#include "core/error.h"
#include "core/half.h"
#include "harness.h"
#include "reference.h"

namespace mil::test {
namespace {

class Rowwise : public OpsTest {};

TEST_P(Rowwise, EmbeddingEveryDtype) {
  Random rng(21);
  for (DType dtype : {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q4_1}) {
    SCOPED_TRACE(dtype_name(dtype));
    const int64_t rows = 37, cols = 96;
    const std::vector<uint8_t> table = rng.weight_rows(dtype, rows, cols);
    DeviceTensor t(backend(), dtype, rows, cols, row_bytes(dtype, cols + 32));
    t.set_rows(table);
    const std::vector<int32_t> ids = {36, 0, 5, 5, 17};
    DeviceArray dids(backend(), ids);
    DeviceTensor out(backend(), DType::F32, 5, cols, (cols + 2) * 4, 4);
    ops->embedding(t, dids.i32(), out);
    const std::vector<float> all = ref::dequantize(dtype, table, rows, cols);
    std::vector<float> want;
    for (int32_t id : ids)
      want.insert(want.end(), all.begin() + id * cols, all.begin() + (id + 1) * cols);
    EXPECT_EQ(max_norm_error(out.get_f32(), want), 0.0);
    out.check_untouched("out");
    t.check_untouched("table", true);
  }
}

TEST_P(Rowwise, EmbeddingRejectsOutOfRangeIds) {
  DeviceTensor t(backend(), DType::Q8_0, 10, 32);
  DeviceTensor out(backend(), DType::F32, 2, 32);
  for (int32_t bad : {-1, 10, 1 << 30}) {
    DeviceArray ids(backend(), std::vector<int32_t>{1, bad});
    EXPECT_THROW(ops->embedding(t, ids.i32(), out), Error) << bad;
  }
}

// Dequantization of hand-computed blocks, checked through embedding (the op that exposes
// dequantized weights directly) and through a one-hot matmul.
TEST_P(Rowwise, QuantRoundTripHandComputedBlocks) {
  struct Case {
    DType dtype;
    std::vector<uint8_t> block;
    std::vector<std::pair<int, float>> expect;  // (element, value)
  };
  auto le16 = [](uint16_t v) { return std::vector<uint8_t>{uint8_t(v & 255), uint8_t(v >> 8)}; };
  std::vector<Case> cases;
  {  // Q8_0: d = 0.5 (f16 0x3800); q[0] = 3, q[1] = -4, q[31] = -128
    Case c{DType::Q8_0, le16(0x3800), {{0, 1.5f}, {1, -2.0f}, {2, 0.0f}, {31, -64.0f}}};
    std::vector<uint8_t> qs(32, 0);
    qs[0] = 3;
    qs[1] = static_cast<uint8_t>(-4);
    qs[31] = 0x80;
    c.block.insert(c.block.end(), qs.begin(), qs.end());
    cases.push_back(c);
  }
  {  // Q4_0: d = 2 (0x4000); byte 0 = 0xF1 -> element 0 nibble 1 -> -14, element 16 -> 14
    Case c{DType::Q4_0, le16(0x4000), {{0, -14.0f}, {16, 14.0f}, {1, 0.0f}, {17, 0.0f}}};
    std::vector<uint8_t> qs(16, 0x88);
    qs[0] = 0xF1;
    c.block.insert(c.block.end(), qs.begin(), qs.end());
    cases.push_back(c);
  }
  {  // Q4_1: d = 0.25 (0x3400), m = -1 (0xBC00); byte 15 = 0x4C -> e15: 12*.25-1 = 2, e31: 0
    Case c{DType::Q4_1, le16(0x3400), {{15, 2.0f}, {31, 0.0f}, {0, -1.0f}, {16, -1.0f}}};
    const std::vector<uint8_t> m = le16(0xBC00);
    c.block.insert(c.block.end(), m.begin(), m.end());
    std::vector<uint8_t> qs(16, 0);
    qs[15] = 0x4C;
    c.block.insert(c.block.end(), qs.begin(), qs.end());
    cases.push_back(c);
  }
  {  // F16 / BF16: 1.0 and -2.5
    Case f16{DType::F16, {}, {{0, 1.0f}, {1, -2.5f}}};
    for (uint16_t v : {uint16_t{0x3C00}, uint16_t{0xC100}}) {
      auto b = le16(v);
      f16.block.insert(f16.block.end(), b.begin(), b.end());
    }
    f16.block.resize(64, 0);
    cases.push_back(f16);
    Case bf{DType::BF16, {}, {{0, 1.0f}, {1, -2.5f}}};
    for (uint16_t v : {uint16_t{0x3F80}, uint16_t{0xC020}}) {
      auto b = le16(v);
      bf.block.insert(bf.block.end(), b.begin(), b.end());
    }
    bf.block.resize(64, 0);
    cases.push_back(bf);
  }
  for (const Case& c : cases) {
    SCOPED_TRACE(dtype_name(c.dtype));
    DeviceTensor t(backend(), c.dtype, 1, 32);
    t.set_rows(c.block);
    DeviceArray ids(backend(), std::vector<int32_t>{0});
    DeviceTensor out(backend(), DType::F32, 1, 32);
    ops->embedding(t, ids.i32(), out);
    const std::vector<float> got = out.get_f32();
    for (auto [i, v] : c.expect) EXPECT_EQ(got[i], v) << "element " << i;
    const std::vector<float> viaref = ref::dequantize(c.dtype, c.block, 1, 32);
    for (auto [i, v] : c.expect) EXPECT_EQ(viaref[i], v) << "reference element " << i;
    // One-hot activations pick single weights; exact even through 8-bit activations.
    for (auto [i, v] : c.expect) {
      std::vector<float> onehot(32, 0.0f);
      onehot[i] = 1.0f;
      DeviceTensor x(backend(), DType::F32, 1, 32);
      DeviceTensor y(backend(), DType::F32, 1, 1);
      x.set_f32(onehot);
      ops->matmul(x, t, y);
      EXPECT_NEAR(y.get_f32()[0], v, 1e-6 * std::max(1.0f, std::fabs(v))) << "matmul element " << i;
    }
  }
}

TEST_P(Rowwise, RmsnormStridedAndInPlace) {
  Random rng(31);
  for (auto [n, cols] : {std::pair<int64_t, int64_t>{1, 576}, {7, 5}, {3, 1}, {16, 1536}}) {
    const std::vector<float> x = rng.uniform(n * cols, -3.0f, 3.0f), w = rng.uniform(cols);
    const std::vector<float> want = ref::rmsnorm(x, w, cols, 1e-5f);
    DeviceTensor dw(backend(), DType::F32, 1, cols);
    dw.set_f32(w);
    {
      DeviceTensor dx(backend(), DType::F32, n, cols, (cols + 4) * 4, 16);
      DeviceTensor out(backend(), DType::F32, n, cols, (cols + 1) * 4);
      dx.set_f32(x);
      ops->rmsnorm(dx, dw, 1e-5f, out);
      EXPECT_LE(max_norm_error(out.get_f32(), want), 1e-5);
      out.check_untouched("out");
      dx.check_untouched("x", true);
    }
    {
      DeviceTensor dx(backend(), DType::F32, n, cols);
      dx.set_f32(x);
      ops->rmsnorm(dx, dw, 1e-5f, dx);
      EXPECT_LE(max_norm_error(dx.get_f32(), want), 1e-5);
      dx.check_untouched("x in place");
    }
  }
}

// residual += x, out = rmsnorm(residual): against the plain references of add and rmsnorm.
TEST_P(Rowwise, AddRmsnormStrided) {
  Random rng(37);
  for (auto [n, cols] : {std::pair<int64_t, int64_t>{1, 576}, {7, 5}, {16, 1536}}) {
    const std::vector<float> r = rng.uniform(n * cols, -3.0f, 3.0f);
    const std::vector<float> x = rng.uniform(n * cols, -1.0f, 1.0f), w = rng.uniform(cols);
    std::vector<float> sum(r.size());
    for (size_t i = 0; i < r.size(); ++i) sum[i] = r[i] + x[i];
    const std::vector<float> want = ref::rmsnorm(sum, w, cols, 1e-5f);
    DeviceTensor dw(backend(), DType::F32, 1, cols);
    dw.set_f32(w);
    DeviceTensor dr(backend(), DType::F32, n, cols, (cols + 3) * 4, 8);
    DeviceTensor dx(backend(), DType::F32, n, cols, (cols + 4) * 4, 16);
    DeviceTensor out(backend(), DType::F32, n, cols, (cols + 1) * 4);
    dr.set_f32(r);
    dx.set_f32(x);
    ops->add_rmsnorm(dr, dx, dw, 1e-5f, out);
    EXPECT_LE(max_norm_error(dr.get_f32(), sum), 1e-6);
    EXPECT_LE(max_norm_error(out.get_f32(), want), 1e-5);
    out.check_untouched("out");
    dr.check_untouched("residual");
    dx.check_untouched("x", true);
  }
}

TEST_P(Rowwise, RopeBothLayouts) {
  Random rng(41);
  for (bool interleaved : {false, true}) {
    for (auto [n, heads, dim] :
         {std::tuple<int64_t, int32_t, int32_t>{1, 9, 64}, {5, 3, 64}, {4, 2, 6}}) {
      SCOPED_TRACE(testing::Message()
                   << "interleaved=" << interleaved << " n=" << n << " dim=" << dim);
      const int64_t cols = int64_t{heads} * dim;
      std::vector<float> x = rng.uniform(n * cols);
      std::vector<int32_t> pos(n);
      for (auto& p : pos) p = rng.integer(0, 8000);
      std::vector<float> inv_freq(dim / 2);
      for (int j = 0; j < dim / 2; ++j)
        inv_freq[j] = static_cast<float>(1.0 / std::pow(100000.0, 2.0 * j / dim));
      DeviceTensor dx(backend(), DType::F32, n, cols, (cols + 8) * 4, 4);
      DeviceTensor df(backend(), DType::F32, 1, dim / 2);
      DeviceArray dp(backend(), pos);
      dx.set_f32(x);
      df.set_f32(inv_freq);
      ops->rope(dx, dim, dp.i32(), df, interleaved);
      ref::rope(x, n, cols, dim, pos, inv_freq, interleaved);
      EXPECT_LE(max_norm_error(dx.get_f32(), x), 2e-6);
      dx.check_untouched("x");
    }
  }
  DeviceTensor x(backend(), DType::F32, 1, 10);
  DeviceTensor f(backend(), DType::F32, 1, 2);
  DeviceArray p(backend(), std::vector<int32_t>{0});
  EXPECT_THROW(ops->rope(x, 4, p.i32(), f, false), Error);  // 10 % 4 != 0
}

TEST_P(Rowwise, KvStoreScatteredSlots) {
  Random rng(51);
  const int64_t slots = 40, width = 3 * 16, n = 6;
  const std::vector<float> k0 = rng.uniform(slots * width), v0 = rng.uniform(slots * width);
  // k and v are column slices of one fused qkv row, as the model produces them.
  const int64_t qkv = 5 * 16 + 2 * width;
  const std::vector<float> kn = rng.uniform(n * width), vn = rng.uniform(n * width);
  std::vector<int32_t> slot_ids(slots);
  std::iota(slot_ids.begin(), slot_ids.end(), 0);
  std::shuffle(slot_ids.begin(), slot_ids.end(), rng.gen());
  slot_ids.resize(n);
  DeviceTensor kc(backend(), DType::F32, slots, width), vc(backend(), DType::F32, slots, width);
  DeviceTensor k(backend(), DType::F32, n, width, qkv * 4, 5 * 16 * 4);
  DeviceTensor v(backend(), DType::F32, n, width, qkv * 4, (5 * 16 + width) * 4);
  kc.set_f32(k0);
  vc.set_f32(v0);
  k.set_f32(kn);
  v.set_f32(vn);
  DeviceArray ds(backend(), slot_ids);
  ops->kv_store(k, v, ds.i32(), kc, vc);
  std::vector<float> kw = k0, vw = v0;
  for (int64_t i = 0; i < n; ++i) {
    std::copy_n(kn.begin() + i * width, width, kw.begin() + slot_ids[i] * width);
    std::copy_n(vn.begin() + i * width, width, vw.begin() + slot_ids[i] * width);
  }
  EXPECT_EQ(kc.get_f32(), kw);
  EXPECT_EQ(vc.get_f32(), vw);
  kc.check_untouched("k_cache");
  vc.check_untouched("v_cache");
  DeviceArray bad(backend(), std::vector<int32_t>{0, 1, 2, 3, 4, 40});
  EXPECT_THROW(ops->kv_store(k, v, bad.i32(), kc, vc), Error);
}

// rope_kv_store = rope(q), rope(k), kv_store(k, v), against the reference.
TEST_P(Rowwise, RopeKvStore) {
  Random rng(52);
  for (bool interleaved : {false, true}) {
    const int64_t n = 5, slots = 20;
    const int32_t dim = 16, qh = 4, kvh = 2;
    const int64_t qw = qh * dim, kvw = kvh * dim, width = qw + 2 * kvw;
    const std::vector<float> qn = rng.uniform(n * qw), kn = rng.uniform(n * kvw), vn = rng.uniform(n * kvw);
    const std::vector<float> k0 = rng.uniform(slots * kvw), v0 = rng.uniform(slots * kvw);
    std::vector<int32_t> pos(n), slot_ids(slots);
    for (auto& p : pos) p = rng.integer(0, 8000);
    std::iota(slot_ids.begin(), slot_ids.end(), 0);
    std::shuffle(slot_ids.begin(), slot_ids.end(), rng.gen());
    slot_ids.resize(n);
    std::vector<float> inv_freq(dim / 2);
    for (int j = 0; j < dim / 2; ++j) inv_freq[j] = static_cast<float>(1.0 / std::pow(10000.0, 2.0 * j / dim));
    DeviceTensor q(backend(), DType::F32, n, qw, width * 4, 0);
    DeviceTensor k(backend(), DType::F32, n, kvw, width * 4, qw * 4);
    DeviceTensor v(backend(), DType::F32, n, kvw, width * 4, (qw + kvw) * 4);
    DeviceTensor kc(backend(), DType::F32, slots, kvw), vc(backend(), DType::F32, slots, kvw);
    DeviceTensor df(backend(), DType::F32, 1, dim / 2);
    DeviceArray dp(backend(), pos), ds(backend(), slot_ids);
    q.set_f32(qn);
    k.set_f32(kn);
    v.set_f32(vn);
    kc.set_f32(k0);
    vc.set_f32(v0);
    df.set_f32(inv_freq);
    ops->rope_kv_store(q, k, v, dim, dp.i32(), df, interleaved, ds.i32(), kc, vc);
    std::vector<float> qr = qn, kr = kn, kw = k0, vw = v0;
    ref::rope(qr, n, qw, dim, pos, inv_freq, interleaved);
    ref::rope(kr, n, kvw, dim, pos, inv_freq, interleaved);
    for (int64_t i = 0; i < n; ++i) {
      std::copy_n(kr.begin() + i * kvw, kvw, kw.begin() + slot_ids[i] * kvw);
      std::copy_n(vn.begin() + i * kvw, kvw, vw.begin() + slot_ids[i] * kvw);
    }
    EXPECT_LE(max_norm_error(q.get_f32(), qr), 2e-6);
    EXPECT_LE(max_norm_error(k.get_f32(), kr), 2e-6);
    EXPECT_LE(max_norm_error(kc.get_f32(), kw), 2e-6);
    EXPECT_EQ(vc.get_f32(), vw);
    kc.check_untouched("k_cache");
    vc.check_untouched("v_cache");
  }
}

TEST_P(Rowwise, SiluMulAndAdd) {
  Random rng(61);
  for (auto [n, cols] : {std::pair<int64_t, int64_t>{1, 1536}, {3, 7}}) {
    const std::vector<float> g = rng.uniform(n * cols, -8.0f, 8.0f), u = rng.uniform(n * cols);
    DeviceTensor dg(backend(), DType::F32, n, cols, (cols + 1) * 4),
        du(backend(), DType::F32, n, cols);
    DeviceTensor out(backend(), DType::F32, n, cols, 0, 4);
    dg.set_f32(g);
    du.set_f32(u);
    ops->silu_mul(dg, du, out);
    EXPECT_LE(max_norm_error(out.get_f32(), ref::silu_mul(g, u)), 2e-6);
    out.check_untouched("silu out");
    ops->silu_mul(dg, du, dg);  // in place
    EXPECT_LE(max_norm_error(dg.get_f32(), ref::silu_mul(g, u)), 2e-6);
    dg.check_untouched("silu in place");

    std::vector<float> sum(n * cols);
    for (size_t i = 0; i < sum.size(); ++i) sum[i] = g[i] + u[i];
    DeviceTensor a(backend(), DType::F32, n, cols, (cols + 2) * 4);
    a.set_f32(g);
    ops->add(a, du, out);
    EXPECT_EQ(out.get_f32(), sum);
    ops->add(a, du, a);  // in place, as the residual stream does
    EXPECT_EQ(a.get_f32(), sum);
    a.check_untouched("add in place");
  }
  DeviceTensor a(backend(), DType::F32, 2, 4), b(backend(), DType::F32, 2, 5);
  EXPECT_THROW(ops->add(a, b, a), Error);
  EXPECT_THROW(ops->silu_mul(a, b, a), Error);
}

MIL_INSTANTIATE_OPS_TEST(Rowwise);

}  // namespace
}  // namespace mil::test
