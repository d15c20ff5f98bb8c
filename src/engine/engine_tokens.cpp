// Token choice and what a new token sends (engine_impl.h): prompt logprobs and the next
// token on the host (logits_processor.h), the device path (device_sampler.h), then stop
// conditions, detokenized text and the request's events.
#include <algorithm>
#include <cmath>

#include "engine/engine_impl.h"

namespace mil::engine_internal {

void EngineImpl::fill_final(Sequence& s, RequestEvent& e, Clock::time_point now) const {
  e.generated_tokens = s.generated;
  e.prompt_tokens = s.prompt_len;
  if (s.params.prompt_logprobs) e.prefill = std::move(s.prefill);
  if (s.scheduled_once) {
    e.queue_seconds = seconds_between(s.submitted, s.first_scheduled);
    e.inference_seconds = seconds_between(s.first_scheduled, now);
  } else {
    e.queue_seconds = seconds_between(s.submitted, now);
  }
  if (s.generated > 0) e.first_token_seconds = seconds_between(s.submitted, s.first_token);
  e.cached_prompt_tokens = s.cached_prompt_tokens;
}

TokenInfo EngineImpl::token_info(int32_t id, float logprob) const {
  TokenInfo t;
  t.id = id;
  t.logprob = logprob;
  const Tokenizer& tok = tokenizer_.tokenizer();
  if (id >= 0 && id < tok.vocab_size()) {
    const int32_t one[1] = {id};
    t.text = tok.decode(one, false);
    t.special = tok.is_special(id);
  }
  return t;
}

void EngineImpl::process_logits(Scheduled& c, const Tensor& logits) {
  Sequence& s = *c.seq;
  const int64_t vocab = logits.cols;
  auto row = [&](int32_t i) {
    return std::span<const float>(logits.row<float>(c.first_logit + i), static_cast<size_t>(vocab));
  };
  try {
    if (c.all_logits) {
      // Row p holds the distribution of token p + 1.
      std::vector<float> lp;
      const int64_t first_pos = s.computed - c.tokens;
      for (int32_t i = 0; i < c.logit_rows; ++i) {
        const int64_t pos = first_pos + i;
        if (pos == 0) s.prefill.push_back(token_info(s.tokens[0], std::nanf("")));
        if (pos + 1 >= s.prompt_len) break;
        log_softmax(row(i), lp);
        const int32_t next = s.tokens[pos + 1];
        s.prefill.push_back(token_info(next, lp[next]));
      }
      if (s.computed >= s.prompt_len) s.prefill_done = true;
    }
    if (s.computed != static_cast<int64_t>(s.tokens.size())) return;  // mid-prompt
    const std::span<const int32_t> all(s.tokens);
    const TokenChoice choice =
        s.chooser.choose(row(c.logit_rows - 1), s.params, all,
                         all.subspan(static_cast<size_t>(s.prompt_len)));
    emit_token(s, choice);
  } catch (const std::exception& e) {
    fail(s, fmt::format("request {}: {}", s.id, e.what()));
  }
}

std::string EngineImpl::choose_on_device(const std::vector<Scheduled>& work, const Tensor& logits) {
  // Without prompt logprobs a sequence has a logit row only when its chunk completes it, so
  // every row of `logits` asks for one token.
  device_rows_.assign(static_cast<size_t>(logits.rows), DeviceSampleRow{});
  try {
    for (const Scheduled& c : work) {
      if (c.logit_rows == 0) continue;
      Sequence& s = *c.seq;
      device_rows_[static_cast<size_t>(c.first_logit)] = device_row(s.params, s.seen, s.chooser);
    }
    device_sampler_.choose(logits, device_rows_, device_choices_);
  } catch (const std::exception& e) {
    return fmt::format("sampling on the device failed: {}", e.what());
  }
  return {};
}

void EngineImpl::emit_token(Sequence& s, const TokenChoice& choice) {
  const Clock::time_point now = Clock::now();
  const int32_t id = choice.token;
  s.tokens.push_back(id);
  if (device_sampling_ && s.params.repetition_penalty != 1.0f) insert_seen(s.seen, id);
  ++s.generated;
  s.decoding = true;
  if (s.generated == 1) s.first_token = now;

  RequestEvent e;
  e.token = token_info(id, choice.logprob);
  for (const auto& [alt, lp] : choice.top) e.top_tokens.push_back(token_info(alt, lp));
  e.index = s.generated;

  const bool eos = (!s.params.ignore_eos &&
                    std::find(eos_ids_.begin(), eos_ids_.end(), id) != eos_ids_.end()) ||
                   std::find(s.params.stop_token_ids.begin(), s.params.stop_token_ids.end(), id) !=
                       s.params.stop_token_ids.end();
  const bool length = s.generated >= s.params.max_new_tokens;
  e.text = s.decoder->push(id);
  if (eos || length) e.text += s.decoder->flush();
  const bool stop = s.stop.append(e.text);
  const bool finished = eos || length || stop;
  if (stop && !eos && !length) {
    const std::string rest = s.decoder->flush();
    e.text += rest;
  }
  e.visible_text = s.stop.take_visible(finished);
  if (finished) {
    e.finished = true;
    s.finished = true;
    e.finish = stop ? FinishReason::StopSequence
                    : eos ? FinishReason::EndOfSequence : FinishReason::Length;
    retire(s);
    fill_final(s, e, now);
  }
  emit(s, std::move(e));
}

}  // namespace mil::engine_internal
