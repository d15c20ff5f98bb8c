// argmax and sample on every backend: token ids must equal the reference's exactly.
#include <gtest/gtest.h>

#include <cstring>

#include "core/error.h"
#include "harness.h"
#include "reference.h"

namespace mil::test {
namespace {

class Sampling : public OpsTest {};

TEST_P(Sampling, ArgmaxTakesLowestIndexAmongTies) {
  Random rng(71);
  const int64_t vocab = 1001;
  std::vector<float> logits = rng.uniform(3 * vocab, -5.0f, 5.0f);
  logits[0 * vocab + 400] = logits[0 * vocab + 17] = 9.0f;  // tie: 17 wins
  logits[1 * vocab + 1000] = 9.0f;                          // last element
  logits[2 * vocab + 0] = 9.0f;                             // first element
  DeviceTensor dl(backend(), DType::F32, 3, vocab, (vocab + 1) * 4);
  dl.set_f32(logits);
  DeviceArray out(backend(), std::vector<int32_t>(3, -1));
  ops->argmax(dl, out.mutable_i32());
  EXPECT_EQ(out.get_i32(), (std::vector<int32_t>{17, 1000, 0}));
}

TEST_P(Sampling, MatchesReferenceUnderEveryFilter) {
  Random rng(81);
  const SamplingParams params[] = {{0.0f, 0, 1.0f},     {1.0f, 0, 1.0f},    {0.7f, 40, 1.0f},
                                   {1.3f, 0, 0.9f},     {0.8f, 50, 0.95f},  {1.0f, 1, 1.0f},
                                   {1.0f, 0, 0.0f},     {0.5f, 5000, 0.5f}, {2.0f, 0, 0.999f},
                                   {1.0f, 100000, 1.0f}};
  for (int64_t vocab : {int64_t{1}, int64_t{7}, int64_t{5000}}) {
    const int64_t rows = 40;
    std::vector<float> logits = rng.uniform(rows * vocab, -6.0f, 6.0f);
    std::vector<SamplingParams> p(rows);
    std::vector<float> u(rows);
    for (int64_t i = 0; i < rows; ++i) {
      p[i] = params[i % std::size(params)];
      u[i] = rng.uniform(1, 0.0f, 1.0f)[0];
    }
    u[0] = 0.0f;
    u[1] = 0.99999994f;
    DeviceTensor dl(backend(), DType::F32, rows, vocab);
    dl.set_f32(logits);
    // SamplingParams travel as raw bytes so that a device backend can receive them too.
    DeviceArray dp(backend(),
                   std::vector<int32_t>(reinterpret_cast<const int32_t*>(p.data()),
                                        reinterpret_cast<const int32_t*>(p.data() + rows)));
    DeviceArray du(backend(), u);
    DeviceArray out(backend(), std::vector<int32_t>(rows, -1));
    ops->sample(dl, reinterpret_cast<const SamplingParams*>(dp.i32()), du.f32(), out.mutable_i32());
    const std::vector<int32_t> got = out.get_i32();
    for (int64_t i = 0; i < rows; ++i) {
      const std::vector<float> row(logits.begin() + i * vocab, logits.begin() + (i + 1) * vocab);
      EXPECT_EQ(got[i], ref::sample(row, p[i], u[i]))
          << "vocab " << vocab << " row " << i << " T=" << p[i].temperature << " k=" << p[i].top_k
          << " p=" << p[i].top_p << " u=" << u[i];
    }
  }
}

TEST_P(Sampling, TiesOrderedByLowerIdAndTopPPrefix) {
  // Four equal logits: each holds 1/4. top_p 0.5 keeps ids {2, 5}; u picks within them.
  std::vector<float> logits(8, -1e9f);
  for (int id : {2, 5, 6, 7}) logits[id] = 1.0f;
  DeviceTensor dl(backend(), DType::F32, 4, 8);
  std::vector<float> all;
  for (int r = 0; r < 4; ++r) all.insert(all.end(), logits.begin(), logits.end());
  dl.set_f32(all);
  const SamplingParams p{1.0f, 0, 0.5f};
  std::vector<int32_t> raw(4 * sizeof(SamplingParams) / 4);
  for (int r = 0; r < 4; ++r) std::memcpy(raw.data() + r * sizeof(p) / 4, &p, sizeof(p));
  DeviceArray dp(backend(), raw);
  DeviceArray du(backend(), std::vector<float>{0.0f, 0.49f, 0.51f, 0.99f});
  DeviceArray out(backend(), std::vector<int32_t>(4, -1));
  ops->sample(dl, reinterpret_cast<const SamplingParams*>(dp.i32()), du.f32(), out.mutable_i32());
  EXPECT_EQ(out.get_i32(), (std::vector<int32_t>{2, 2, 5, 5}));
}

MIL_INSTANTIATE_OPS_TEST(Sampling);

}  // namespace
}  // namespace mil::test
