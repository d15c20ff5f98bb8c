// argmax, sample, repetition_penalty and token_logprobs on every backend: token ids and
// penalised logits must equal the reference's exactly, logprobs within one f32 ulp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

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

// Rows of a penalty test: each row's sorted list (repeats kept adjacent, as the op takes
// them), penalty and the logits it starts from.
struct PenaltyCase {
  std::vector<int32_t> ids;
  float penalty;
};

TEST_P(Sampling, RepetitionPenaltyMatchesHf) {
  Random rng(91);
  for (int64_t vocab : {int64_t{1}, int64_t{9}, int64_t{5000}}) {
    const int64_t cols_pad = 3;  // a strided view: the gaps must stay untouched
    std::vector<PenaltyCase> cases = {
        {{}, 1.3f},         // empty list
        {{0}, 1.25f},       // id 0 alone
        {{0, 0, 0}, 2.0f},  // one id three times: penalised once
        {{0}, 1.0f},        // penalty 1: untouched
        {{0}, 0.5f},        // a penalty below 1 raises positive logits
    };
    if (vocab > 1) {
      const auto last = static_cast<int32_t>(vocab - 1);
      cases.push_back({{0, 1, 1, last, last}, 1.2f});
      cases.push_back({{last}, 1.0f});
    }
    if (vocab > 100) {
      std::vector<int32_t> many;
      for (int i = 0; i < 3000; ++i)
        many.push_back(rng.integer(0, static_cast<int32_t>(vocab) - 1));
      std::sort(many.begin(), many.end());  // a few hundred repeats among them
      cases.push_back({many, 1.1f});
      cases.push_back({many, 1.0f});
    }
    const auto rows = static_cast<int64_t>(cases.size());
    std::vector<float> logits = rng.uniform(rows * vocab, -4.0f, 4.0f);
    logits[0] = -2.5f;  // id 0: negative in rows 0 and 1, positive in rows 2 and 4
    logits[vocab] = -2.5f;
    logits[2 * vocab] = 3.0f;
    logits[4 * vocab] = 1.0f;
    std::vector<int32_t> ids, offsets{0};
    std::vector<float> penalties;
    std::vector<float> want = logits;
    for (int64_t r = 0; r < rows; ++r) {
      ids.insert(ids.end(), cases[r].ids.begin(), cases[r].ids.end());
      offsets.push_back(static_cast<int32_t>(ids.size()));
      penalties.push_back(cases[r].penalty);
      std::vector<float> row(want.begin() + r * vocab, want.begin() + (r + 1) * vocab);
      ref::repetition_penalty(row, cases[r].ids, cases[r].penalty);
      std::copy(row.begin(), row.end(), want.begin() + r * vocab);
    }
    DeviceTensor dl(backend(), DType::F32, rows, vocab, (vocab + cols_pad) * 4);
    dl.set_f32(logits);
    DeviceArray d_ids(backend(), ids.empty() ? std::vector<int32_t>{-1} : ids);
    DeviceArray d_offsets(backend(), offsets);
    DeviceArray d_penalties(backend(), penalties);
    ops->repetition_penalty(dl, d_ids.i32(), d_offsets.i32(), d_penalties.f32());
    EXPECT_EQ(dl.get_f32(), want) << "vocab " << vocab;  // a multiply or a divide: exact
    dl.check_untouched("logits");
    // Hand values (exact in f32), independent of the reference.
    const std::vector<float> got = dl.get_f32();
    EXPECT_EQ(got[0], -2.5f);         // row 0: no ids
    EXPECT_EQ(got[vocab], -3.125f);   // row 1: -2.5 * 1.25
    EXPECT_EQ(got[2 * vocab], 1.5f);  // row 2: 3 / 2 once, though listed three times
    EXPECT_EQ(got[4 * vocab], 2.0f);  // row 4: 1 / 0.5
  }
}

TEST_P(Sampling, RepetitionPenaltyRejectsBadLists) {
  if (backend().device != Device::CPU) GTEST_SKIP() << "only host backends check the lists";
  DeviceTensor dl(backend(), DType::F32, 1, 8);
  dl.set_f32(std::vector<float>(8, 1.0f));
  DeviceArray penalty(backend(), std::vector<float>{1.5f});
  DeviceArray offsets(backend(), std::vector<int32_t>{0, 2});
  DeviceArray unsorted(backend(), std::vector<int32_t>{5, 2});
  DeviceArray outside(backend(), std::vector<int32_t>{2, 8});
  try {
    ops->repetition_penalty(dl, unsorted.i32(), offsets.i32(), penalty.f32());
    ADD_FAILURE() << "unsorted ids were accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not in increasing order"), std::string::npos) << e.what();
  }
  try {
    ops->repetition_penalty(dl, outside.i32(), offsets.i32(), penalty.f32());
    ADD_FAILURE() << "an id outside the vocabulary was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("outside the vocabulary"), std::string::npos) << e.what();
  }
}

TEST_P(Sampling, TokenLogprobsMatchReference) {
  Random rng(101);
  constexpr float kInf = std::numeric_limits<float>::infinity();
  for (int64_t vocab : {int64_t{1}, int64_t{7}, int64_t{5000}}) {
    const std::vector<float> temps = {1.0f, 0.7f, 1.3f, 2.0f, 0.05f};
    const auto rows = static_cast<int64_t>(temps.size()) + 1;
    std::vector<float> logits = rng.uniform(rows * vocab, -12.0f, 12.0f);
    std::vector<float> t(rows);
    std::vector<int32_t> tokens(rows);
    for (int64_t r = 0; r < rows; ++r) {
      t[r] = r < static_cast<int64_t>(temps.size()) ? temps[r] : 1.0f;
      tokens[r] = rng.integer(0, static_cast<int32_t>(vocab) - 1);
    }
    // The last row has -inf entries (filtered logits): they add nothing; one is the token.
    if (vocab > 1) {
      logits[(rows - 1) * vocab] = -kInf;
      tokens[rows - 1] = 0;
    }
    DeviceTensor dl(backend(), DType::F32, rows, vocab, (vocab + 1) * 4);
    dl.set_f32(logits);
    DeviceArray dt(backend(), t);
    DeviceArray dtok(backend(), tokens);
    DeviceArray out(backend(), std::vector<float>(rows, 0.0f));
    ops->token_logprobs(dl, dt.f32(), dtok.i32(), reinterpret_cast<float*>(out.mutable_i32()));
    dl.check_untouched("logits", true);
    const std::vector<int32_t> raw = out.get_i32();
    for (int64_t r = 0; r < rows; ++r) {
      float got;
      std::memcpy(&got, &raw[r], sizeof(got));
      const std::vector<float> row(logits.begin() + r * vocab, logits.begin() + (r + 1) * vocab);
      if (vocab > 1 && r == rows - 1) {
        EXPECT_EQ(got, -kInf);
        continue;
      }
      const double want = ref::token_logprob(row, t[r], tokens[r]);
      // The op sums in double, the reference in long double; the f32 result may round the
      // other way: one f32 ulp of the reference.
      const double ulp = std::nextafter(std::fabs(static_cast<float>(want)), kInf) -
                         std::fabs(static_cast<float>(want));
      EXPECT_LE(std::fabs(got - want), std::max(ulp, 1e-30))
          << "vocab " << vocab << " row " << r << " T=" << t[r];
      if (vocab == 1) {
        EXPECT_EQ(got, 0.0f);
      }
    }
  }
}

MIL_INSTANTIATE_OPS_TEST(Sampling);

}  // namespace
}  // namespace mil::test
