// lora_shrink and lora_expand (Punica's SGMV, BGMV for one segment per row) on every
// backend against the double-precision reference.
//
// Tolerance: 2e-5 normalised max error (as f32 matmul: f32 rounding of in-term sums for
// shrink, rank-term sums plus the f32 add to y for expand). Expand is checked against the
// reference fed the backend's own v, so each op carries only its own rounding. Everything
// an op must not write (v columns past a slot's rank, rows of base segments and of slots
// without the projection, all of y on those rows, guards and stride gaps) is poisoned with
// NaN or marked values before the op and must come back bit for bit.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>

#include "core/error.h"
#include "harness.h"
#include "reference.h"

namespace mil::test {
namespace {

constexpr double kF32Tol = 2e-5;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

struct LoraCase {
  const char* what;
  int64_t n, in, out;
  std::vector<int64_t> ranks;  // per slot; 0 = the adapter lacks this projection
  std::vector<LoraSegment> segments;
};

// One segment per row, row i on slot slot_of(i) (-1 = base).
template <typename F>
std::vector<LoraSegment> per_row(int32_t n, F slot_of) {
  std::vector<LoraSegment> segs;
  for (int32_t i = 0; i < n; ++i) segs.push_back({i, i + 1, slot_of(i)});
  return segs;
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof(float)) == 0; }

// Adapter weights on the device plus the LoraProjection that points at them.
struct DeviceAdapters {
  DeviceAdapters(const BackendUnderTest& backend, const ref::LoraInput& lora, int64_t in,
                 int64_t out, bool strided) {
    const size_t slots = lora.rank.size();
    for (size_t s = 0; s < slots; ++s) {
      const int64_t r = lora.rank[s];
      if (r == 0) {
        a.push_back(nullptr);
        b.push_back(nullptr);
        continue;
      }
      a.push_back(std::make_unique<DeviceTensor>(backend, DType::F32, r, in,
                                                 strided ? (in + 5) * 4 : 0, strided ? 4 : 0));
      b.push_back(std::make_unique<DeviceTensor>(backend, DType::F32, out, r,
                                                 strided ? (r + 3) * 4 : 0, strided ? 8 : 0));
      a.back()->set_f32(lora.a[s]);
      b.back()->set_f32(lora.b[s]);
    }
    for (size_t s = 0; s < slots; ++s) {
      // An empty view (no data) for slots without the projection, as the adapter store has.
      a_views.push_back(a[s] ? a[s]->view() : Tensor{});
      b_views.push_back(b[s] ? b[s]->view() : Tensor{});
    }
    proj.a = a_views.data();
    proj.b = b_views.data();
    proj.scale = lora.scale.data();
    proj.num_slots = static_cast<int32_t>(slots);
  }

  void check_untouched() const {
    for (const auto& t : a)
      if (t) t->check_untouched("a", true);
    for (const auto& t : b)
      if (t) t->check_untouched("b", true);
  }

  std::vector<std::unique_ptr<DeviceTensor>> a, b;
  std::vector<Tensor> a_views, b_views;
  LoraProjection proj;
};

class Lora : public OpsTest {
 protected:
  void run(const LoraCase& c, bool strided, uint32_t seed) {
    SCOPED_TRACE(testing::Message() << c.what << " n=" << c.n << " in=" << c.in << " out=" << c.out
                                    << (strided ? " strided" : ""));
    Random rng(seed);
    ref::LoraInput lora;
    lora.rank = c.ranks;
    lora.segments = c.segments;
    for (size_t s = 0; s < c.ranks.size(); ++s) {
      lora.a.push_back(rng.uniform(static_cast<size_t>(c.ranks[s] * c.in)));
      lora.b.push_back(rng.uniform(static_cast<size_t>(c.out * c.ranks[s])));
      // Some negative and fractional scales, as alpha / r gives.
      lora.scale.push_back(s % 3 == 2 ? -0.75f : 2.0f / static_cast<float>(s + 1));
    }
    const int64_t v_cols = std::max<int64_t>(1, *std::max_element(c.ranks.begin(), c.ranks.end()));
    const std::vector<float> x = rng.uniform(static_cast<size_t>(c.n * c.in));
    // v starts as NaN everywhere: only [adapter rows, 0:rank] may be written, and expand
    // must read nothing else. y starts random: base rows must keep it bit for bit.
    const std::vector<float> v0(static_cast<size_t>(c.n * v_cols), kNaN);
    const std::vector<float> y0 = rng.uniform(static_cast<size_t>(c.n * c.out));

    DeviceAdapters adapters(backend(), lora, c.in, c.out, strided);
    DeviceTensor xd(backend(), DType::F32, c.n, c.in, strided ? (c.in + 3) * 4 : 0,
                    strided ? 12 : 0);
    DeviceTensor v(backend(), DType::F32, c.n, v_cols, strided ? (v_cols + 2) * 4 : 0,
                   strided ? 4 : 0);
    DeviceTensor y(backend(), DType::F32, c.n, c.out, strided ? (c.out + 5) * 4 : 0,
                   strided ? 8 : 0);
    xd.set_f32(x);
    v.set_f32(v0);
    y.set_f32(y0);
    const auto count = static_cast<int32_t>(c.segments.size());

    ops->lora_shrink(xd, adapters.proj, c.segments.data(), count, v);
    const std::vector<float> got_v = v.get_f32();
    v.check_untouched("v");
    xd.check_untouched("x", true);
    y.check_untouched("y before expand", true);

    std::vector<float> want_v = v0;
    ref::lora_shrink(x, c.in, lora, want_v, v_cols);
    compare("v", got_v, want_v, written_rows(c), v_cols, /*whole_rows=*/false);

    ops->lora_expand(v, adapters.proj, c.segments.data(), count, y);
    const std::vector<float> got_y = y.get_f32();
    y.check_untouched("y");
    v.check_untouched("v after expand");
    const std::vector<float> v_after = v.get_f32();
    EXPECT_TRUE(std::equal(v_after.begin(), v_after.end(), got_v.begin(), same_bits))
        << "expand wrote to v";
    xd.check_untouched("x after expand", true);
    adapters.check_untouched();

    std::vector<float> want_y = y0;
    ref::lora_expand(got_v, v_cols, lora, want_y, c.out);
    compare("y", got_y, want_y, written_rows(c), c.out, /*whole_rows=*/true);
    // The whole chain against the reference all the way from x, as a sanity bound.
    std::vector<float> chain_y = y0;
    ref::lora_expand(want_v, v_cols, lora, chain_y, c.out);
    EXPECT_LE(max_norm_error(got_y, chain_y), 4 * kF32Tol);
  }

  // Per row: the rank written there (-1 = the row must not change at all).
  static std::vector<int64_t> written_rows(const LoraCase& c) {
    std::vector<int64_t> rank(static_cast<size_t>(c.n), -1);
    for (const LoraSegment& seg : c.segments) {
      if (seg.slot < 0 || c.ranks[seg.slot] == 0) continue;
      for (int32_t i = seg.row_begin; i < seg.row_end; ++i) rank[i] = c.ranks[seg.slot];
    }
    return rank;
  }

  // Entries the op computes meet kF32Tol; every other entry keeps its bits.
  static void compare(const char* what, const std::vector<float>& got,
                      const std::vector<float>& want, const std::vector<int64_t>& rank,
                      int64_t cols, bool whole_rows) {
    std::vector<float> got_c, want_c;
    size_t changed = 0;
    for (size_t i = 0; i < rank.size(); ++i) {
      const int64_t upto = rank[i] < 0 ? 0 : (whole_rows ? cols : rank[i]);
      for (int64_t j = 0; j < cols; ++j) {
        const size_t at = i * cols + j;
        if (j < upto) {
          got_c.push_back(got[at]);
          want_c.push_back(want[at]);
        } else if (!same_bits(got[at], want[at])) {
          if (changed++ == 0)
            ADD_FAILURE() << what << ": row " << i << " column " << j << " must be left as it was";
        }
      }
    }
    EXPECT_EQ(changed, 0u) << what << ": entries outside the adapter rows changed";
    if (!got_c.empty()) {
      EXPECT_LE(max_norm_error(got_c, want_c), kF32Tol) << what;
    }
  }
};

TEST_P(Lora, PrefillSegments) {
  // SGMV: a few long segments, a base prompt between two adapters.
  const LoraCase c{"prefill", 45, 576, 576, {16, 8}, {{0, 17, 0}, {17, 20, -1}, {20, 45, 1}}};
  uint32_t seed = 1;
  for (bool strided : {false, true}) run(c, strided, seed++);
  // One long segment on one adapter (all of a prompt), at the gate shape.
  const LoraCase one{"one segment", 37, 576, 1536, {16}, {{0, 37, 0}}};
  for (bool strided : {false, true}) run(one, strided, seed++);
}

TEST_P(Lora, DecodeOneSegmentPerRow) {
  // BGMV: 32 rows, each on its own rank-16 adapter.
  LoraCase c{
      "decode distinct", 32, 576, 1536, std::vector<int64_t>(32, 16), per_row(32, [](int32_t i) {
        return i;
      })};
  uint32_t seed = 10;
  for (bool strided : {false, true}) run(c, strided, seed++);
  // Rows revisiting slots in no order, base rows among them.
  LoraCase mixed{"decode shuffled", 19, 576, 576, {16, 16, 16}, per_row(19, [](int32_t i) {
                   return i % 4 == 3 ? -1 : (i * 7) % 3;
                 })};
  for (bool strided : {false, true}) run(mixed, strided, seed++);
}

TEST_P(Lora, MixedRanksBaseRowsAndMissingProjection) {
  // Ranks 1..64 in one batch, slot 5 lacks the projection (rank 0), base rows interleaved,
  // segments of 1, 2 (the decode form) and 3+ rows (the tiled form), an empty segment,
  // and an odd inner size so the kernels' tails run.
  const LoraCase c{"mixed ranks",
                   40,
                   100,
                   67,
                   {1, 4, 8, 16, 64, 0},
                   {{0, 1, 2},
                    {1, 3, -1},
                    {3, 5, 0},
                    {5, 5, 3},
                    {5, 14, 4},
                    {14, 15, 5},
                    {15, 18, 1},
                    {18, 19, -1},
                    {19, 29, 3},
                    {29, 31, 5},
                    {31, 32, 4},
                    {33, 40, 2}}};  // row 32 is in no segment: left alone like a base row
  uint32_t seed = 20;
  for (bool strided : {false, true}) run(c, strided, seed++);
  // The same at SmolLM2's shapes, with enough work that two threads split the rows.
  LoraCase big = c;
  big.what = "mixed ranks 576";
  big.in = 576;
  big.out = 1536;
  for (bool strided : {false, true}) run(big, strided, seed++);
}

TEST_P(Lora, OnlyBaseRowsTouchNothing) {
  const LoraCase c{"base only", 6, 64, 32, {8}, {{0, 4, -1}, {4, 6, -1}}};
  run(c, false, 30);
  const LoraCase none{"no segments", 3, 64, 32, {8}, {}};
  run(none, true, 31);
  const LoraCase empty{"slot without projection", 4, 64, 32, {0, 4}, {{0, 4, 0}}};
  run(empty, false, 32);
}

TEST_P(Lora, RejectsBadArguments) {
  const int64_t n = 4, in = 64, out = 32, rank = 8;
  Random rng(40);
  ref::LoraInput lora;
  lora.rank = {rank, 0};
  lora.a = {rng.uniform(rank * in), {}};
  lora.b = {rng.uniform(out * rank), {}};
  lora.scale = {1.0f, 1.0f};
  DeviceAdapters adapters(backend(), lora, in, out, false);
  DeviceTensor x(backend(), DType::F32, n, in), v(backend(), DType::F32, n, rank),
      y(backend(), DType::F32, n, out);
  x.set_f32(rng.uniform(n * in));
  v.set_f32(rng.uniform(n * rank));
  y.set_f32(rng.uniform(n * out));
  const LoraProjection& p = adapters.proj;

  auto both_throw = [&](const std::vector<LoraSegment>& segs, const LoraProjection& proj,
                        const char* why) {
    SCOPED_TRACE(why);
    const auto count = static_cast<int32_t>(segs.size());
    EXPECT_THROW(ops->lora_shrink(x, proj, segs.data(), count, v), Error);
    EXPECT_THROW(ops->lora_expand(v, proj, segs.data(), count, y), Error);
  };
  both_throw({{0, 2, 0}, {1, 4, 0}}, p, "overlapping segments");
  both_throw({{2, 4, 0}, {0, 2, 0}}, p, "unsorted segments");
  both_throw({{0, 5, 0}}, p, "segment past the rows");
  both_throw({{-1, 2, 0}}, p, "negative row");
  both_throw({{3, 2, 0}}, p, "reversed segment");
  both_throw({{0, 4, 2}}, p, "slot past num_slots");
  both_throw({{0, 4, -2}}, p, "slot below -1");
  LoraProjection no_arrays = p;
  no_arrays.scale = nullptr;
  both_throw({{0, 4, 0}}, no_arrays, "no scale array");
  // A bad segment after good ones: nothing may be written before the check fails.
  both_throw({{0, 2, 0}, {2, 6, 0}}, p, "bad last segment");
  {
    const std::vector<LoraSegment> segs = {{0, 4, 0}};
    EXPECT_THROW(ops->lora_shrink(x, p, segs.data(), -1, v), Error);
    EXPECT_THROW(ops->lora_shrink(x, p, nullptr, 1, v), Error);
    // v too narrow for rank 8.
    DeviceTensor narrow(backend(), DType::F32, n, rank - 1);
    EXPECT_THROW(ops->lora_shrink(x, p, segs.data(), 1, narrow), Error);
    EXPECT_THROW(ops->lora_expand(narrow, p, segs.data(), 1, y), Error);
    // v with the wrong number of rows.
    DeviceTensor short_v(backend(), DType::F32, n - 1, rank);
    EXPECT_THROW(ops->lora_shrink(x, p, segs.data(), 1, short_v), Error);
    EXPECT_THROW(ops->lora_expand(short_v, p, segs.data(), 1, y), Error);
    // x / y whose columns do not match a / b.
    DeviceTensor x_wide(backend(), DType::F32, n, in + 32),
        y_wide(backend(), DType::F32, n, out + 1);
    EXPECT_THROW(ops->lora_shrink(x_wide, p, segs.data(), 1, v), Error);
    EXPECT_THROW(ops->lora_expand(v, p, segs.data(), 1, y_wide), Error);
    // Non-f32 activations and adapters.
    DeviceTensor x_i32(backend(), DType::I32, n, in), v_f16(backend(), DType::F16, n, rank);
    EXPECT_THROW(ops->lora_shrink(x_i32, p, segs.data(), 1, v), Error);
    EXPECT_THROW(ops->lora_shrink(x, p, segs.data(), 1, v_f16), Error);
    EXPECT_THROW(ops->lora_expand(v_f16, p, segs.data(), 1, y), Error);
    DeviceTensor a_f16(backend(), DType::F16, rank, in);
    std::vector<Tensor> a_views = {a_f16.view(), Tensor{}};
    LoraProjection bad_a = p;
    bad_a.a = a_views.data();
    EXPECT_THROW(ops->lora_shrink(x, bad_a, segs.data(), 1, v), Error);
    // b whose columns disagree with a's rank.
    DeviceTensor b_bad(backend(), DType::F32, out, rank / 2);
    std::vector<Tensor> b_views = {b_bad.view(), Tensor{}};
    LoraProjection bad_b = p;
    bad_b.b = b_views.data();
    EXPECT_THROW(ops->lora_shrink(x, bad_b, segs.data(), 1, v), Error);
    EXPECT_THROW(ops->lora_expand(v, bad_b, segs.data(), 1, y), Error);
  }
  // A rejected call writes nothing.
  v.check_untouched("v", true);
  y.check_untouched("y", true);
  x.check_untouched("x", true);
  adapters.check_untouched();
  // Base rows and a slot without the projection are valid and leave v and y alone.
  const std::vector<LoraSegment> ok = {{0, 2, -1}, {2, 4, 1}};
  EXPECT_NO_THROW(ops->lora_shrink(x, p, ok.data(), 2, v));
  EXPECT_NO_THROW(ops->lora_expand(v, p, ok.data(), 2, y));
  v.check_untouched("v after no-op", true);
  y.check_untouched("y after no-op", true);
}

MIL_INSTANTIATE_OPS_TEST(Lora);

}  // namespace
}  // namespace mil::test
