// Penalties and warpers against hand-computed HF semantics, and the stop-sequence text streams.
#include "engine/logits_processor.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "engine/stop_matcher.h"

namespace mil {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

TEST(LogitsProcessor, RepetitionPenaltyIsHfsAndFrequencyPresenceAreOpenAis) {
  std::vector<float> l{2.0f, -2.0f, 1.0f, 0.5f};
  RequestParams p;
  p.repetition_penalty = 2.0f;
  const std::vector<int32_t> context{0, 1, 1};
  apply_penalties(l, p, context, {});
  EXPECT_EQ(l, (std::vector<float>{1.0f, -4.0f, 1.0f, 0.5f}));  // each distinct id once

  std::vector<float> m{1.0f, 1.0f, 1.0f};
  RequestParams q;
  q.frequency_penalty = 0.5f;
  q.presence_penalty = 0.25f;
  const std::vector<int32_t> generated{2, 2, 0};
  apply_penalties(m, q, generated, generated);
  EXPECT_FLOAT_EQ(m[0], 1.0f - 0.5f - 0.25f);
  EXPECT_FLOAT_EQ(m[1], 1.0f);
  EXPECT_FLOAT_EQ(m[2], 1.0f - 1.0f - 0.25f);
}

TEST(LogitsProcessor, TopKKeepsTiesTopPAndTypicalKeepTheirMass) {
  std::vector<float> l{1.0f, 3.0f, 3.0f, 2.0f, 0.0f};
  apply_top_k(l, 2);
  EXPECT_EQ(l, (std::vector<float>{-kInf, 3.0f, 3.0f, -kInf, -kInf}));

  // probabilities 0.5, 0.25, 0.125, 0.125 (logits log2-spaced)
  const float ln2 = std::log(2.0f);
  std::vector<float> p{3 * ln2, 2 * ln2, ln2, ln2};
  apply_top_p(p, 0.7f);  // 0.5 + 0.25 reaches 0.7
  EXPECT_TRUE(std::isfinite(p[0]) && std::isfinite(p[1]));
  EXPECT_EQ(p[2], -kInf);
  EXPECT_EQ(p[3], -kInf);
  std::vector<float> all{3 * ln2, 2 * ln2, ln2, ln2};
  apply_top_p(all, 0.99f);
  for (float x : all) EXPECT_TRUE(std::isfinite(x));

  // Typical: entropy of (0.5, 0.25, 0.125, 0.125) is 1.75 bits = 1.213 nats; |-log p - H| is
  // smallest for p = 0.25 (0.173), then 0.5 (0.52), then the two 0.125 (0.867).
  std::vector<float> t{3 * ln2, 2 * ln2, ln2, ln2};
  apply_typical_p(t, 0.5f);  // 0.25 alone < 0.5, with 0.5 it is 0.75: keep both
  EXPECT_TRUE(std::isfinite(t[0]) && std::isfinite(t[1]));
  EXPECT_EQ(t[2], -kInf);
  EXPECT_EQ(t[3], -kInf);
  std::vector<float> t1{3 * ln2, 2 * ln2, ln2, ln2};
  apply_typical_p(t1, 0.2f);  // the most typical token always stays
  EXPECT_EQ(t1[0], -kInf);
  EXPECT_TRUE(std::isfinite(t1[1]));
}

TEST(LogitsProcessor, LogprobsAndTopEntries) {
  std::vector<float> l{0.0f, std::log(3.0f), 0.0f};
  std::vector<float> lp;
  log_softmax(l, lp);
  EXPECT_NEAR(lp[1], std::log(0.6f), 1e-6);
  const auto top = top_entries(lp, 2);
  ASSERT_EQ(top.size(), 2u);
  EXPECT_EQ(top[0].first, 1);
  EXPECT_EQ(top[1].first, 0);  // ties: lower id first
  EXPECT_EQ(argmax(l), 1);
  EXPECT_EQ(sample_from_logits(l, 0.1), 0);
  EXPECT_EQ(sample_from_logits(l, 0.5), 1);
  EXPECT_EQ(sample_from_logits(l, 0.9), 2);
}

TEST(LogitsProcessor, ChooserIsSeededAndGreedyIgnoresTheSeed) {
  std::vector<float> l(50);
  for (size_t i = 0; i < l.size(); ++i) l[i] = std::sin(static_cast<float>(i));
  RequestParams p;
  p.do_sample = true;
  p.temperature = 2.0f;
  p.top_n_tokens = 3;
  TokenChooser a(5), b(5), c(6);
  std::vector<int32_t> ta, tb, tc;
  for (int i = 0; i < 20; ++i) {
    ta.push_back(a.choose(l, p, {}, {}).token);
    tb.push_back(b.choose(l, p, {}, {}).token);
    tc.push_back(c.choose(l, p, {}, {}).token);
  }
  EXPECT_EQ(ta, tb);
  EXPECT_NE(ta, tc);
  const TokenChoice g = TokenChooser(1).choose(l, RequestParams{}, {}, {});
  EXPECT_EQ(g.token, argmax(l));
  std::vector<float> lp;
  log_softmax(l, lp);
  EXPECT_FLOAT_EQ(g.logprob, lp[g.token]);
}

TEST(StopMatcher, HoldsBackPossibleStartsAndCutsAtTheMatch) {
  StopMatcher m({"END", "xyz"});
  EXPECT_FALSE(m.append("hello E"));
  EXPECT_EQ(m.take_visible(false), "hello ");  // "E" could start END
  EXPECT_FALSE(m.append("N"));
  EXPECT_EQ(m.take_visible(false), "");
  EXPECT_FALSE(m.append("o x"));  // "ENo" is not END: released, "x" held
  EXPECT_EQ(m.take_visible(false), "ENo ");
  EXPECT_TRUE(m.append("yzzz"));  // spans pieces and ends mid-piece
  EXPECT_EQ(m.take_visible(true), "");
  EXPECT_EQ(m.output(), "hello ENo xyzzz");

  StopMatcher n({"ab"});
  n.append("xa");
  EXPECT_EQ(n.take_visible(false), "x");
  EXPECT_EQ(n.take_visible(true), "a");  // finished without a match: flush
  StopMatcher none({});
  none.append("abc");
  EXPECT_EQ(none.take_visible(false), "abc");
}

}  // namespace
}  // namespace mil
