#include "engine/logits_processor.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <numeric>
#include <unordered_map>

namespace mil {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Softmax probabilities (double) of `logits`, -inf entries giving 0.
std::vector<double> softmax(std::span<const float> logits) {
  const float max = *std::max_element(logits.begin(), logits.end());
  std::vector<double> p(logits.size());
  double sum = 0;
  for (size_t i = 0; i < logits.size(); ++i) {
    p[i] = logits[i] == kNegInf ? 0.0 : std::exp(static_cast<double>(logits[i]) - max);
    sum += p[i];
  }
  for (double& x : p) x /= sum;
  return p;
}

}  // namespace

void apply_penalties(std::span<float> logits, const RequestParams& params,
                     std::span<const int32_t> context, std::span<const int32_t> generated) {
  const auto vocab = static_cast<int32_t>(logits.size());
  if (params.repetition_penalty != 1.0f) {
    const float p = params.repetition_penalty;
    std::vector<bool> seen(logits.size(), false);
    for (int32_t id : context) {
      if (id < 0 || id >= vocab || seen[id]) continue;
      seen[id] = true;
      float& x = logits[id];
      x = x < 0 ? x * p : x / p;
    }
  }
  if (params.frequency_penalty != 0.0f || params.presence_penalty != 0.0f) {
    std::unordered_map<int32_t, int32_t> counts;
    for (int32_t id : generated) {
      if (id >= 0 && id < vocab) ++counts[id];
    }
    for (const auto& [id, count] : counts) {
      logits[id] -= params.frequency_penalty * static_cast<float>(count) + params.presence_penalty;
    }
  }
}

void apply_top_k(std::span<float> logits, int32_t top_k) {
  if (top_k <= 0 || static_cast<size_t>(top_k) >= logits.size()) return;
  std::vector<float> sorted(logits.begin(), logits.end());
  std::nth_element(sorted.begin(), sorted.begin() + (top_k - 1), sorted.end(), std::greater<>());
  const float kth = sorted[top_k - 1];
  for (float& x : logits) {
    if (x < kth) x = kNegInf;
  }
}

void apply_top_p(std::span<float> logits, float top_p) {
  if (top_p >= 1.0f) return;
  // HF: sort ascending, drop the tokens whose cumulative probability is <= 1 - top_p, always
  // keeping the most likely one.
  std::vector<int32_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return logits[a] < logits[b]; });
  const std::vector<double> p = softmax(logits);
  double cumulative = 0;
  const double threshold = 1.0 - static_cast<double>(top_p);
  for (size_t i = 0; i + 1 < order.size(); ++i) {
    cumulative += p[order[i]];
    if (cumulative > threshold) break;
    logits[order[i]] = kNegInf;
  }
}

void apply_typical_p(std::span<float> logits, float mass) {
  if (mass >= 1.0f) return;
  std::vector<float> normalized;
  log_softmax(logits, normalized);
  double entropy = 0;
  for (float lp : normalized) {
    if (lp != kNegInf) entropy -= static_cast<double>(lp) * std::exp(static_cast<double>(lp));
  }
  const size_t n = logits.size();
  std::vector<double> shifted(n);
  for (size_t i = 0; i < n; ++i) {
    shifted[i] = normalized[i] == kNegInf ? std::numeric_limits<double>::infinity()
                                          : std::abs(-static_cast<double>(normalized[i]) - entropy);
  }
  std::vector<int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return shifted[a] < shifted[b]; });
  const std::vector<double> p = softmax(logits);
  // last_ind = number of sorted entries whose cumulative probability is below the mass.
  size_t last = 0;
  double cumulative = 0;
  for (size_t i = 0; i < n; ++i) {
    cumulative += p[order[i]];
    if (cumulative < mass) ++last;
  }
  last = std::min(last, n - 1);
  const double limit = shifted[order[last]];
  for (size_t i = 1; i < n; ++i) {  // the first sorted entry always stays
    if (shifted[order[i]] > limit) logits[order[i]] = kNegInf;
  }
}

void log_softmax(std::span<const float> logits, std::vector<float>& out) {
  const float max = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (float x : logits) {
    if (x != kNegInf) sum += std::exp(static_cast<double>(x) - max);
  }
  const double log_sum = std::log(sum) + max;
  out.resize(logits.size());
  for (size_t i = 0; i < logits.size(); ++i) {
    out[i] = logits[i] == kNegInf ? kNegInf
                                  : static_cast<float>(static_cast<double>(logits[i]) - log_sum);
  }
}

int32_t argmax(std::span<const float> values) {
  return static_cast<int32_t>(std::max_element(values.begin(), values.end()) - values.begin());
}

int32_t sample_from_logits(std::span<const float> logits, double u) {
  const std::vector<double> p = softmax(logits);
  double cumulative = 0;
  int32_t last_possible = argmax(logits);
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] <= 0) continue;
    cumulative += p[i];
    last_possible = static_cast<int32_t>(i);
    if (u < cumulative) return last_possible;
  }
  return last_possible;  // rounding left u above the total
}

std::vector<std::pair<int32_t, float>> top_entries(std::span<const float> logprobs, int32_t n) {
  std::vector<std::pair<int32_t, float>> out;
  if (n <= 0) return out;
  const size_t k = std::min(static_cast<size_t>(n), logprobs.size());
  std::vector<int32_t> ids(logprobs.size());
  std::iota(ids.begin(), ids.end(), 0);
  auto better = [&](int32_t a, int32_t b) {
    return logprobs[a] > logprobs[b] || (logprobs[a] == logprobs[b] && a < b);
  };
  std::partial_sort(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(k), ids.end(), better);
  for (size_t i = 0; i < k; ++i) out.emplace_back(ids[i], logprobs[ids[i]]);
  return out;
}

int32_t draw(std::span<const float> logits, const SamplingParams& params, float u) {
  // One CPU backend per thread: its sample op keeps scratch buffers of the vocabulary's size,
  // which per-sequence choosers (thousands of streams) should not each hold.
  thread_local const std::unique_ptr<Ops> ops = make_cpu_ops(1);
  const Tensor row = Tensor::contiguous(DType::F32, 1, static_cast<int64_t>(logits.size()),
                                        const_cast<float*>(logits.data()));
  int32_t token = 0;
  ops->sample(row, &params, &u, &token);
  return token;
}

TokenChoice TokenChooser::choose(std::span<const float> logits, const RequestParams& params,
                                 std::span<const int32_t> context,
                                 std::span<const int32_t> generated) {
  work_.assign(logits.begin(), logits.end());
  apply_penalties(work_, params, context, generated);
  // The reported distribution: penalised logits over the temperature (divided in f32, as
  // Ops::token_logprobs does on the device path).
  scaled_ = work_;
  if (params.do_sample && params.temperature != 1.0f) {
    const float t = params.temperature;
    for (float& x : scaled_) x /= t;
  }
  log_softmax(scaled_, logprobs_);
  TokenChoice c;
  c.top = top_entries(logprobs_, params.top_n_tokens);
  if (params.do_sample) {
    const float u = next_uniform();
    if (params.typical_p < 1.0f) {
      apply_top_k(scaled_, params.top_k);
      apply_top_p(scaled_, params.top_p);
      apply_typical_p(scaled_, params.typical_p);
      c.token = draw(scaled_, SamplingParams{1.0f, 0, 1.0f}, u);
    } else {
      c.token = draw(work_, SamplingParams{params.temperature, params.top_k, params.top_p}, u);
    }
  } else {
    c.token = argmax(work_);
  }
  c.logprob = logprobs_[c.token];
  return c;
}

}  // namespace mil
