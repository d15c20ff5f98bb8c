#include "engine/device_sampler.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"

namespace mil {

static_assert(sizeof(SamplingParams) == 3 * sizeof(int32_t) && alignof(SamplingParams) == 4,
              "SamplingParams travel as three 32-bit words");

bool device_sampling_supports(const RequestParams& params) {
  return params.top_n_tokens == 0 && params.typical_p >= 1.0f && params.frequency_penalty == 0.0f &&
         params.presence_penalty == 0.0f;
}

std::vector<int32_t> distinct_ids(std::span<const int32_t> ids) {
  std::vector<int32_t> out(ids.begin(), ids.end());
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

void insert_seen(std::vector<int32_t>& seen, int32_t id) {
  const auto at = std::lower_bound(seen.begin(), seen.end(), id);
  if (at == seen.end() || *at != id) seen.insert(at, id);
}

DeviceSampleRow device_row(const RequestParams& params, std::span<const int32_t> seen,
                           TokenChooser& chooser) {
  MIL_CHECK(device_sampling_supports(params), "device sampling: the request needs the host path");
  DeviceSampleRow r;
  if (params.do_sample) {
    r.sampling = {params.temperature, params.top_k, params.top_p};
    r.uniform = chooser.next_uniform();
    r.temperature = params.temperature;
  } else {
    r.sampling = {0.0f, 0, 1.0f};
  }
  r.repetition_penalty = params.repetition_penalty;
  r.seen = seen;
  return r;
}

void DeviceSampler::grow(int64_t words) {
  if (host_.view().cols >= words) return;
  const int64_t cap = std::max<int64_t>(words + words / 2, 4096);
  host_ = ops_.allocate_host(DType::I32, 1, cap);
  device_ = ops_.allocate(DType::I32, 1, cap);
}

void DeviceSampler::reserve(int64_t max_rows, int64_t max_seen_ids) {
  // The layout of choose(): 7 words per row + 1, the seen ids, then 2 words per row out.
  const int64_t words = 9 * max_rows + 1 + max_seen_ids;
  if (host_.view().cols >= words) return;
  host_ = ops_.allocate_host(DType::I32, 1, words);
  device_ = ops_.allocate(DType::I32, 1, words);
}

void DeviceSampler::choose(const Tensor& logits, std::span<const DeviceSampleRow> rows,
                           std::vector<TokenChoice>& out) {
  const auto m = static_cast<int64_t>(rows.size());
  MIL_CHECK(logits.rows == m, "device sampling: {} logit rows for {} sequences", logits.rows, m);
  MIL_CHECK(logits.dtype == DType::F32, "device sampling: logits {} are not F32",
            shape_string(logits));
  out.resize(rows.size());
  if (m == 0) return;
  int64_t total_ids = 0;
  for (const DeviceSampleRow& r : rows) {
    if (r.repetition_penalty != 1.0f) total_ids += static_cast<int64_t>(r.seen.size());
  }
  MIL_CHECK(total_ids < INT32_MAX, "device sampling: {} seen ids are too many", total_ids);
  // Word layout: params (3 per row), uniforms, temperatures, penalties, offsets (m + 1), the
  // seen ids; then the outputs, tokens and logprobs. One upload, one download.
  const int64_t at_uniforms = 3 * m, at_temps = 4 * m, at_penalties = 5 * m, at_offsets = 6 * m;
  const int64_t at_ids = 7 * m + 1, in_words = at_ids + total_ids;
  const int64_t at_tokens = in_words, at_logprobs = in_words + m, words = in_words + 2 * m;
  grow(words);
  auto* h = host_.ptr<int32_t>();
  auto* params = reinterpret_cast<SamplingParams*>(h);
  auto* uniforms = reinterpret_cast<float*>(h + at_uniforms);
  auto* temps = reinterpret_cast<float*>(h + at_temps);
  auto* penalties = reinterpret_cast<float*>(h + at_penalties);
  int32_t* offsets = h + at_offsets;
  bool any_sampled = false, any_penalty = false;
  int64_t next_id = 0;
  for (int64_t i = 0; i < m; ++i) {
    const DeviceSampleRow& r = rows[i];
    params[i] = r.sampling;
    uniforms[i] = r.uniform;
    temps[i] = r.temperature;
    penalties[i] = r.repetition_penalty;
    any_sampled |= r.sampling.temperature > 0.0f;
    offsets[i] = static_cast<int32_t>(next_id);
    if (r.repetition_penalty != 1.0f) {
      any_penalty = true;
      if (!r.seen.empty()) std::memcpy(h + at_ids + next_id, r.seen.data(), r.seen.size() * 4);
      next_id += static_cast<int64_t>(r.seen.size());
    }
  }
  offsets[m] = static_cast<int32_t>(next_id);

  const Tensor dev = device_.view();
  const auto* d = dev.ptr<int32_t>();
  ops_.upload(h, dev.slice_cols(0, in_words));
  if (any_penalty) {
    ops_.repetition_penalty(logits, d + at_ids, d + at_offsets,
                            reinterpret_cast<const float*>(d + at_penalties));
  }
  auto* d_tokens = const_cast<int32_t*>(d + at_tokens);
  if (any_sampled) {
    ops_.sample(logits, reinterpret_cast<const SamplingParams*>(d),
                reinterpret_cast<const float*>(d + at_uniforms), d_tokens);
  } else {
    ops_.argmax(logits, d_tokens);
  }
  ops_.token_logprobs(logits, reinterpret_cast<const float*>(d + at_temps), d_tokens,
                      reinterpret_cast<float*>(const_cast<int32_t*>(d + at_logprobs)));
  ops_.download(dev.slice_cols(at_tokens, 2 * m), h + at_tokens);
  ops_.synchronize();
  for (int64_t i = 0; i < m; ++i) {
    out[i].token = h[at_tokens + i];
    std::memcpy(&out[i].logprob, h + at_logprobs + i, sizeof(float));
    out[i].top.clear();
  }
}

}  // namespace mil
