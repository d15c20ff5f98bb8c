// Greedy and stochastic token choice. Order as in HF: temperature, top-k, top-p, then one
// draw by inverse CDF over candidates sorted by decreasing probability (ties: lower id
// first), so that a given uniform always yields the same token on every backend.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "backends/cpu/cpu_internal.h"

namespace mil::cpu {

int32_t argmax_row(const float* logits, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i) {
    if (logits[i] > logits[best]) best = i;
  }
  return static_cast<int32_t>(best);
}

int32_t sample_row(const float* logits, int64_t n, const SamplingParams& params, float uniform,
                   std::vector<float>& probs, std::vector<int32_t>& ids) {
  if (params.temperature <= 0.0f || n == 1) return argmax_row(logits, n);
  const float inv_t = 1.0f / params.temperature;
  const float max_logit = logits[argmax_row(logits, n)];
  // Unnormalised probabilities exp((l - max) / T); the normalisation happens on the
  // candidates that survive the filters.
  probs.resize(n);
  ids.resize(n);
  double total = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    probs[i] = std::exp((logits[i] - max_logit) * inv_t);
    total += probs[i];
    ids[i] = static_cast<int32_t>(i);
  }
  auto before = [&](int32_t a, int32_t b) {
    return probs[a] > probs[b] || (probs[a] == probs[b] && a < b);
  };

  int64_t kept = n;
  if (params.top_k > 0 && params.top_k < n) {
    kept = params.top_k;
    std::nth_element(ids.begin(), ids.begin() + kept, ids.end(), before);
  }
  const auto end = ids.begin() + kept;  // [begin, end) holds the top-k, unordered
  // Sorting all of a 50k vocabulary costs milliseconds; usually a few hundred candidates
  // carry the top-p mass, so sort a prefix first and sort further only when that prefix
  // does not reach top_p.
  const bool top_p = params.top_p < 1.0f;
  int64_t sorted = top_p ? std::min<int64_t>(kept, 256) : kept;
  std::partial_sort(ids.begin(), ids.begin() + sorted, end, before);
  double kept_mass = total;
  if (kept < n) {
    kept_mass = 0.0;
    for (int64_t i = 0; i < kept; ++i) kept_mass += probs[ids[i]];
  }
  if (top_p) {
    const double target = static_cast<double>(params.top_p) * kept_mass;
    double cum = 0.0;
    int64_t i = 0;
    for (;;) {
      for (; i < sorted && cum < target; ++i) cum += probs[ids[i]];
      if (cum >= target || sorted == kept) break;
      sorted = std::min(kept, sorted * 4);
      std::partial_sort(ids.begin() + i, ids.begin() + sorted, end, before);
    }
    kept = std::max<int64_t>(i, 1);  // float rounding may leave cum < target: keep all
    kept_mass = cum;
  }

  const double target = static_cast<double>(uniform) * kept_mass;
  double cum = 0.0;
  for (int64_t i = 0; i < kept; ++i) {
    cum += probs[ids[i]];
    if (target < cum) return ids[i];
  }
  return ids[kept - 1];
}

void repetition_penalty_row(float* logits, const int32_t* ids, int64_t count, float penalty) {
  for (int64_t j = 0; j < count; ++j) {
    if (j > 0 && ids[j] == ids[j - 1]) continue;  // a repeat: each id is penalised once
    float& x = logits[ids[j]];
    x = x < 0 ? x * penalty : x / penalty;
  }
}

float token_logprob_row(const float* logits, int64_t n, float temperature, int32_t token) {
  // The order of engine/logits_processor.cpp's log_softmax over the temperature-divided row,
  // so that a host backend gives the host path's logprob bit for bit.
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  float max = logits[0] / temperature;
  for (int64_t i = 1; i < n; ++i) max = std::max(max, logits[i] / temperature);
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const float x = logits[i] / temperature;
    if (x != kNegInf) sum += std::exp(static_cast<double>(x) - max);
  }
  const double log_sum = std::log(sum) + max;
  const float x = logits[token] / temperature;
  return x == kNegInf ? kNegInf : static_cast<float>(static_cast<double>(x) - log_sum);
}

}  // namespace mil::cpu
