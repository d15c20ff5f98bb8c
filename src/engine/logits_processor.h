// Per-request token choice for the serving engine, on one host row of logits: penalties,
// warpers and the draw, in HF's / TGI's order (request.h):
//   repetition_penalty (HF, over prompt + generated ids), frequency and presence penalties
//   (OpenAI, over generated ids) -> temperature -> top_k -> top_p -> typical_p -> sample,
//   or argmax when !do_sample.
// The chosen token's logprob (and the top-n alternatives) come from the log-softmax after
// penalties and temperature, before top-k/p filtering, as TGI reports them.
// The draw uses the request's own mt19937_64 (sampler.h's style), one draw per sampled token,
// so a seed gives the same tokens whatever else shares the batch. The draw itself is the op
// interface's (Ops::sample: inverse CDF over the candidates sorted by decreasing probability,
// a 24-bit float uniform), run by the CPU backend on the host row, so that the device path
// (device_sampler.h), which runs the same op on the device's logits with the same uniform,
// chooses the same token. Only typical_p, which the op lacks, filters with HF's warpers here
// (top_k/top_p/typical_p to -inf) and then draws over what is left.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "backends/ops.h"
#include "engine/request.h"

namespace mil {

// In place on `logits` (one row): HF's RepetitionPenaltyLogitsProcessor over the distinct ids
// of `context`, then logit -= frequency * count + presence * (count > 0) over `generated`.
void apply_penalties(std::span<float> logits, const RequestParams& params,
                     std::span<const int32_t> context, std::span<const int32_t> generated);
// HF's TopKLogitsWarper, TopPLogitsWarper and TypicalLogitsWarper (min_tokens_to_keep 1):
// filtered entries become -inf.
void apply_top_k(std::span<float> logits, int32_t top_k);
void apply_top_p(std::span<float> logits, float top_p);
void apply_typical_p(std::span<float> logits, float mass);
// log-softmax of `logits` into `out`.
void log_softmax(std::span<const float> logits, std::vector<float>& out);
// The highest entry (the lowest index among ties).
int32_t argmax(std::span<const float> values);
// Inverse CDF over softmax(logits) in index order, `u` in [0, 1).
int32_t sample_from_logits(std::span<const float> logits, double u);
// Ops::sample of the CPU backend on one host row with uniform `u`: the token choice both the
// host and the device path make (temperature, top_k, top_p in `params`).
int32_t draw(std::span<const float> logits, const SamplingParams& params, float u);
// The `n` best entries of `logprobs`, best first (ties: lower id first).
std::vector<std::pair<int32_t, float>> top_entries(std::span<const float> logprobs, int32_t n);

struct TokenChoice {
  int32_t token = 0;
  float logprob = 0.0f;
  std::vector<std::pair<int32_t, float>> top;  // top_n_tokens alternatives, best first
};

// The whole pipeline on one row. `scratch` and `logprobs` are reusable work buffers.
class TokenChooser {
 public:
  explicit TokenChooser(uint64_t seed) : rng_(seed) {}
  TokenChoice choose(std::span<const float> logits, const RequestParams& params,
                     std::span<const int32_t> context, std::span<const int32_t> generated);
  // The uniform one sampled token consumes: 24 random bits, exactly a float in [0, 1).
  float next_uniform() { return static_cast<float>(rng_() >> 40) * 0x1.0p-24f; }

 private:
  std::mt19937_64 rng_;
  std::vector<float> work_, scaled_, logprobs_;
};

}  // namespace mil
