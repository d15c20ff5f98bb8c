// What the server hands the engine (token ids and validated parameters, never JSON) and what
// the engine hands back, one event at a time, for each request.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace mil {

// Per-request generation parameters, already validated by the server. The processing order
// is HF's / TGI's: repetition_penalty, frequency_penalty -> temperature -> top_k -> top_p ->
// typical_p -> sample (or argmax when !do_sample).
struct RequestParams {
  int32_t max_new_tokens = 20;
  bool do_sample = false;
  float temperature = 1.0f;        // > 0; only used when do_sample
  int32_t top_k = 0;               // 0 = off
  float top_p = 1.0f;              // 1 = off
  float typical_p = 1.0f;          // 1 = off
  float repetition_penalty = 1.0f; // 1 = off (HF's: divide positive logits, multiply negative)
  float frequency_penalty = 0.0f;  // 0 = off (OpenAI's: logit -= penalty * count in output)
  float presence_penalty = 0.0f;   // 0 = off (OpenAI's: logit -= penalty if seen in output)
  uint64_t seed = 0;               // the sampler's seed (the server draws one when absent)
  std::vector<std::string> stop;   // stop sequences, matched on the decoded output text
  std::vector<int32_t> stop_token_ids;  // in addition to the model's EOS ids
  bool ignore_eos = false;
  int32_t top_n_tokens = 0;        // alternatives reported per generated token
  bool prompt_logprobs = false;    // report logprobs of the prompt tokens (TGI decoder_input_details)
  bool skip_special_tokens = true; // in the decoded text
  std::string adapter;             // registered AdapterStore name; "" = the base model
};

struct EngineRequest {
  std::vector<int32_t> prompt;  // already truncated; never empty
  RequestParams params;
};

enum class FinishReason { Length, EndOfSequence, StopSequence, Cancelled, Error };
// TGI's spelling: "length", "eos_token", "stop_sequence" ("cancelled", "error" otherwise).
const char* finish_reason_name(FinishReason reason);

struct TokenInfo {
  int32_t id = 0;
  float logprob = 0.0f;  // log-softmax of the logits after penalties and temperature
  std::string text;      // this token's text alone (tokenizer decode of [id])
  bool special = false;
};

// One event per generated token; the last one of a request has `finished` set. A request
// that fails before producing a token gets a single event with finish == Error.
struct RequestEvent {
  // Set on token events.
  std::optional<TokenInfo> token;
  std::vector<TokenInfo> top_tokens;  // top_n_tokens alternatives, best first
  int32_t index = 0;                  // 1-based index of the generated token
  // Decoded output text that became final with this token (UTF-8 safe, special tokens per
  // skip_special_tokens). Concatenated over events, it is the full output text including a
  // matched stop sequence (TGI keeps it).
  std::string text;
  // The same stream with stop sequences removed, for OpenAI: text that could still be the
  // start of a stop sequence is held back until it cannot be; a matched stop sequence and
  // everything after it never appear.
  std::string visible_text;

  // Set on the last event.
  bool finished = false;
  FinishReason finish = FinishReason::Length;
  std::string error;                 // when finish == Error
  int32_t generated_tokens = 0;
  int32_t prompt_tokens = 0;
  std::vector<TokenInfo> prefill;    // prompt tokens with logprobs (first has logprob NaN), if asked
  double queue_seconds = 0;          // submit -> first scheduled
  double inference_seconds = 0;      // first scheduled -> finished
  double first_token_seconds = 0;    // submit -> first token
  int32_t cached_prompt_tokens = 0;  // prompt tokens served from the prefix cache
};

// Called on the engine thread; it must not block (post the event to the connection's executor).
using EventSink = std::function<void(RequestEvent&&)>;

}  // namespace mil
