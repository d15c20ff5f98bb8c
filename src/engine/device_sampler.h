// The engine's device path of token choice: the same choice as TokenChooser
// (logits_processor.h) made on the backend's own logits, so that a step downloads only the
// chosen ids and their logprobs instead of every row of logits. Per row it applies the
// repetition penalty (Ops::repetition_penalty over the sequence's distinct seen ids), then
// argmax or the seeded draw (Ops::sample, with the uniform drawn from the request's own
// TokenChooser exactly as the host path draws it), then the chosen token's logprob
// (Ops::token_logprobs). On the CPU backend the ops are the very code the host path runs, so
// both paths give the same tokens and logprobs bit for bit; CUDA's ops match the CPU's
// (tests/cuda). Requests that need more than this (device_sampling_supports) take the host path.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "backends/ops.h"
#include "core/buffer.h"
#include "engine/logits_processor.h"
#include "engine/request.h"

namespace mil {

// Whether the device path chooses exactly what TokenChooser would for these parameters:
// greedy, temperature, top_k, top_p, repetition_penalty and the seed. top_n_tokens,
// frequency/presence penalties and typical_p need the host's row (prompt logprobs too: the
// engine asks for every prompt row then, and keeps those steps on the host).
bool device_sampling_supports(const RequestParams& params);

// The distinct ids of `ids`, increasing: a sequence's seen set, built once from its prompt.
std::vector<int32_t> distinct_ids(std::span<const int32_t> ids);
// Adds `id` to `seen` (distinct ids in increasing order) unless it is there already.
void insert_seen(std::vector<int32_t>& seen, int32_t id);

// What one row of a step needs. temperature 0 in `sampling` means greedy.
struct DeviceSampleRow {
  SamplingParams sampling;
  float uniform = 0.0f;      // the row's draw in [0, 1) (unused when greedy)
  float temperature = 1.0f;  // of the reported logprob (1 when greedy, as on the host)
  float repetition_penalty = 1.0f;
  // The distinct ids the sequence has seen (prompt and generated), increasing; read only
  // when repetition_penalty != 1.
  std::span<const int32_t> seen;
};

// The row that makes TokenChooser's choice for `params`: argmax without do_sample, else the
// draw under temperature, top_k and top_p with one uniform from `chooser` (drawn here, as
// the host path draws it: one per sampled token).
DeviceSampleRow device_row(const RequestParams& params, std::span<const int32_t> seen,
                           TokenChooser& chooser);

class DeviceSampler {
 public:
  explicit DeviceSampler(Ops& ops) : ops_(ops) {}
  DeviceSampler(const DeviceSampler&) = delete;
  DeviceSampler& operator=(const DeviceSampler&) = delete;

  // Row i of `logits` (f32 [rows.size(), vocab] in the ops' memory) -> out[i] (the token and
  // its logprob after the penalty and temperature; no alternatives). Penalises `logits` in
  // place. Waits for the device. Buffers grow to the largest step seen and are reused: no
  // allocation per step once sized.
  void choose(const Tensor& logits, std::span<const DeviceSampleRow> rows,
              std::vector<TokenChoice>& out);
  // Sizes the buffers for steps of up to max_rows rows and max_seen_ids penalised seen ids
  // in all (engine start-up: no allocation on the step path afterwards).
  void reserve(int64_t max_rows, int64_t max_seen_ids);

 private:
  void grow(int64_t words);

  Ops& ops_;
  // int32 words, host staging and device copy: the per-row inputs, the seen ids, then the
  // outputs (tokens, logprobs).
  OwnedTensor host_, device_;
};

}  // namespace mil
