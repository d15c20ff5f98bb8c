// OpenAI's routes: /v1/completions, /v1/chat/completions and /v1/models. Objects follow the
// shapes of the `openai` Python client's models; generated text is RequestEvent.visible_text
// (stop sequences removed, as OpenAI does). `model` picks the adapter
// (Api::Impl::adapter_of_model).
#include <fmt/format.h>

#include <cmath>

#include "core/error.h"
#include "server/api_internal.h"

namespace mil::server {

using nlohmann::json;

namespace {

// What both OpenAI routes share.
struct OpenAiRequest {
  std::string model;  // echoed back: the request's, or the served name
  RequestParams params;
  std::optional<int64_t> max_tokens;
  bool stream = false;
  bool include_usage = false;
  AdapterSpec adapter;
  std::string id;  // "cmpl-..." / "chatcmpl-..."
  int64_t created = 0;
  // Completions.
  bool echo = false;
  std::optional<int64_t> logprobs;  // completions: top alternatives per token
  std::vector<std::string> prompt_texts;
  std::vector<std::vector<int32_t>> prompt_ids;
  // Chat.
  bool chat = false;
  bool chat_logprobs = false;
};

std::string random_id(std::string_view prefix) {
  return fmt::format("{}{:016x}{:08x}", prefix, random_u64(), static_cast<uint32_t>(random_u64()));
}

int64_t unix_seconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

void parse_common(const json& body, const ApiOptions& options, OpenAiRequest& r) {
  r.model = string_field(body, "model").value_or("");
  if (is_model_placeholder(r.model)) r.model = options.served_model_name;
  r.stream = bool_field(body, "stream").value_or(false);
  if (const json* so = object_field(body, "stream_options")) {
    r.include_usage = bool_field(*so, "include_usage").value_or(false);
  }

  if (const auto n = int_field(body, "n")) {
    if (*n <= 0) throw_validation("`n` must be strictly positive");
    if (*n > 1) throw_validation("`n` > 1 is not supported");
  }
  if (const auto best_of = int_field(body, "best_of"); best_of && *best_of != 1) {
    throw_validation("`best_of` != 1 is not supported");
  }
  if (const json* bias = object_field(body, "logit_bias"); bias != nullptr && !bias->empty()) {
    throw_validation("`logit_bias` is not supported");
  }

  RequestParams& p = r.params;
  // As a float: the engine divides by it (1e-50 is 0 and 1e300 inf as floats).
  const auto temperature = float_field(body, "temperature");
  if (temperature && *temperature < 0) throw_validation("`temperature` must be non-negative");
  // OpenAI samples by default; temperature 0 means greedy (TGI's mapping).
  p.do_sample = !temperature || *temperature > 0;
  p.temperature = temperature && *temperature > 0 ? *temperature : 1.0f;

  const auto top_p = number_field(body, "top_p");
  if (top_p && (*top_p <= 0.0 || *top_p > 1.0))
    throw_validation("`top_p` must be > 0.0 and <= 1.0");
  p.top_p = static_cast<float>(top_p.value_or(1.0));

  const auto top_k = int_field(body, "top_k");  // vLLM's extension: -1 or 0 is off
  if (top_k && (*top_k < -1 || *top_k > std::numeric_limits<int32_t>::max())) {
    throw_validation("`top_k` must be -1 (off) or positive");
  }
  p.top_k = top_k && *top_k > 0 ? static_cast<int32_t>(*top_k) : 0;

  for (const char* name : {"frequency_penalty", "presence_penalty"}) {
    const auto value = number_field(body, name);
    if (value && (*value < -2.0 || *value > 2.0)) {
      throw_validation(fmt::format("`{}` must be >= -2.0 and <= 2.0", name));
    }
  }
  p.frequency_penalty = static_cast<float>(number_field(body, "frequency_penalty").value_or(0.0));
  p.presence_penalty = static_cast<float>(number_field(body, "presence_penalty").value_or(0.0));

  const auto repetition_penalty = float_field(body, "repetition_penalty");
  if (repetition_penalty && !(*repetition_penalty > 0)) {
    throw_validation("`repetition_penalty` must be strictly positive");
  }
  p.repetition_penalty = repetition_penalty.value_or(1.0f);

  const auto seed = int_field(body, "seed");
  p.seed = seed ? static_cast<uint64_t>(*seed) : random_u64();

  p.stop = string_list_field(body, "stop", /*allow_single=*/true);
  if (static_cast<int64_t>(p.stop.size()) > options.max_stop_sequences) {
    throw_validation(fmt::format("`stop` supports up to {} stop sequences. Given: {}",
                                 options.max_stop_sequences, p.stop.size()));
  }
  for (const std::string& s : p.stop) {
    if (s.empty()) throw_validation("`stop` sequences must not be empty");
  }
  p.ignore_eos = bool_field(body, "ignore_eos").value_or(false);
  r.created = unix_seconds();
}

std::optional<int64_t> positive_int(const json& body, const char* name) {
  const auto value = int_field(body, name);
  if (value && *value <= 0) throw_validation(fmt::format("`{}` must be strictly positive", name));
  return value;
}

const char* openai_finish_reason(FinishReason reason) {
  return reason == FinishReason::Length ? "length" : "stop";
}

// A stream chunk's finish_reason: null until the last chunk.
json chunk_finish_reason(const RequestEvent& event) {
  return event.finished ? json(openai_finish_reason(event.finish)) : json(nullptr);
}

// Log-probabilities clamped to what JSON (and pydantic's float) can carry.
double finite_logprob(float logprob) {
  if (std::isnan(logprob)) return -9999.0;
  return std::max(static_cast<double>(logprob), -9999.0);
}

size_t utf8_length(std::string_view text) {
  size_t n = 0;
  for (const char c : text) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80 ? 1 : 0;
  return n;
}

json utf8_bytes(std::string_view text) {
  json out = json::array();
  for (const char c : text) out.push_back(static_cast<unsigned char>(c));
  return out;
}

json usage_json(const std::vector<PromptResult>& prompts) {
  int64_t prompt_tokens = 0, completion_tokens = 0;
  for (const PromptResult& p : prompts) {
    prompt_tokens += p.final.prompt_tokens;
    completion_tokens += p.final.generated_tokens;
  }
  return {{"prompt_tokens", prompt_tokens},
          {"completion_tokens", completion_tokens},
          {"total_tokens", prompt_tokens + completion_tokens}};
}

// ---- completions ----

// Completions' logprobs object for a run of tokens; `offset` is the text offset (in code points)
// of the first one within the choice's text and advances past them.
struct CompletionLogprobs {
  json tokens = json::array(), token_logprobs = json::array(), top_logprobs = json::array(),
       text_offset = json::array();
  size_t offset = 0;

  void add(const TokenInfo& token, const std::vector<TokenInfo>* top, bool first_of_prompt) {
    tokens.push_back(token.text);
    text_offset.push_back(offset);
    offset += utf8_length(token.text);
    if (first_of_prompt) {
      token_logprobs.push_back(nullptr);
      top_logprobs.push_back(nullptr);
      return;
    }
    token_logprobs.push_back(finite_logprob(token.logprob));
    json alternatives = json::object();
    if (top != nullptr) {
      for (const TokenInfo& t : *top) alternatives[t.text] = finite_logprob(t.logprob);
    }
    if (!alternatives.contains(token.text))
      alternatives[token.text] = finite_logprob(token.logprob);
    top_logprobs.push_back(std::move(alternatives));
  }
  json to_json() const {
    return {{"tokens", tokens},
            {"token_logprobs", token_logprobs},
            {"top_logprobs", top_logprobs},
            {"text_offset", text_offset}};
  }
};

OpenAiRequest parse_completions(const json& body, const ApiOptions& options,
                                const Tokenizer& tokenizer) {
  OpenAiRequest r;
  parse_common(body, options, r);
  if (const auto suffix = string_field(body, "suffix"); suffix && !suffix->empty()) {
    throw_validation("Suffix is not supported and can be achieved by preprocessing the prompt.");
  }
  r.max_tokens = positive_int(body, "max_tokens").value_or(16);
  r.echo = bool_field(body, "echo").value_or(false);
  r.logprobs = int_field(body, "logprobs");
  if (r.logprobs && (*r.logprobs < 0 || *r.logprobs > options.max_top_n_tokens)) {
    throw_validation(fmt::format("`logprobs` must be >= 0 and <= {}. Given: {}",
                                 options.max_top_n_tokens, *r.logprobs));
  }
  r.params.top_n_tokens = static_cast<int32_t>(r.logprobs.value_or(0));
  r.params.prompt_logprobs = r.echo && r.logprobs.has_value();

  // prompt: a string, a list of strings, a list of token ids, or a list of those lists.
  const json* prompt = field(body, "prompt");
  if (prompt == nullptr) throw_validation("`prompt` is required");
  auto add_ids = [&](const json& list) {
    std::vector<int32_t> ids;
    for (const json& id : list) {
      if (!id.is_number_integer()) throw_bad_request("`prompt` token ids must be integers");
      const int64_t v = id.get<int64_t>();
      if (v < 0 || v >= tokenizer.vocab_size()) {
        throw_validation(fmt::format("token id {} is outside the vocabulary (size {})", v,
                                     tokenizer.vocab_size()));
      }
      ids.push_back(static_cast<int32_t>(v));
    }
    r.prompt_texts.push_back(tokenizer.decode(ids, /*skip_special_tokens=*/false));
    r.prompt_ids.push_back(std::move(ids));
  };
  auto add_text = [&](const std::string& text) {
    r.prompt_texts.push_back(text);
    r.prompt_ids.push_back(tokenizer.encode(text, /*add_special_tokens=*/true));
  };
  if (prompt->is_string()) {
    add_text(prompt->get<std::string>());
  } else if (prompt->is_array()) {
    if (prompt->empty()) throw_validation("`prompt` must not be empty");
    if (static_cast<int64_t>(prompt->size()) > options.max_client_batch_size &&
        !(*prompt)[0].is_number()) {
      throw_validation(
          fmt::format("Number of prompts exceeds the maximum allowed batch size of {}. Given: {}",
                      options.max_client_batch_size, prompt->size()));
    }
    if ((*prompt)[0].is_number()) {
      add_ids(*prompt);
    } else {
      for (const json& item : *prompt) {
        if (item.is_string()) {
          add_text(item.get<std::string>());
        } else if (item.is_array()) {
          add_ids(item);
        } else {
          throw_bad_request("`prompt` must be a string, a list of strings or of token ids");
        }
      }
    }
  } else {
    throw_bad_request("`prompt` must be a string, a list of strings or of token ids");
  }
  for (const auto& ids : r.prompt_ids) {
    if (ids.empty()) throw_validation("`inputs` cannot be empty");
  }
  r.adapter = AdapterSpec{};
  r.id = random_id("cmpl-");
  return r;
}

json completion_logprobs(const OpenAiRequest& r, const PromptResult& result) {
  CompletionLogprobs lp;
  if (r.echo) {
    for (size_t i = 0; i < result.final.prefill.size(); ++i) {
      lp.add(result.final.prefill[i], nullptr, i == 0);
    }
  }
  for (size_t i = 0; i < result.tokens.size(); ++i) {
    lp.add(result.tokens[i], i < result.top_tokens.size() ? &result.top_tokens[i] : nullptr, false);
  }
  return lp.to_json();
}

// A response or stream chunk object of `object` type around `choices`.
json openai_object(const OpenAiRequest& r, const char* object, json choices) {
  return {{"id", r.id},
          {"object", object},
          {"created", r.created},
          {"model", r.model},
          {"system_fingerprint", std::string("mil-") + kMilVersion},
          {"choices", std::move(choices)}};
}

json completion_chunk(const OpenAiRequest& r, json choices) {
  return openai_object(r, "text_completion", std::move(choices));
}

// ---- chat ----

std::vector<ChatMessage> parse_messages(const json& body) {
  const json* messages = field(body, "messages");
  if (messages == nullptr) throw_validation("`messages` is required");
  if (!messages->is_array()) throw_bad_request("`messages` must be a list");
  if (messages->empty()) throw_validation("`messages` must not be empty");
  std::vector<ChatMessage> out;
  for (const json& m : *messages) {
    if (!m.is_object()) throw_bad_request("`messages` must hold objects");
    ChatMessage message;
    const auto role = string_field(m, "role");
    if (!role) throw_validation("every message needs a `role`");
    message.role = *role;
    if (const json* content = field(m, "content")) {
      if (content->is_string()) {
        message.content = content->get<std::string>();
      } else if (content->is_array()) {
        for (const json& part : *content) {
          if (!part.is_object()) throw_bad_request("message content parts must be objects");
          const auto type = string_field(part, "type");
          if (type != "text") throw_validation("only text message content is supported");
          message.content += string_field(part, "text").value_or("");
        }
      } else {
        throw_bad_request("message `content` must be a string or a list of parts");
      }
    }
    out.push_back(std::move(message));
  }
  return out;
}

json chat_token_logprob(const TokenInfo& token, const std::vector<TokenInfo>& top) {
  json alternatives = json::array();
  for (const TokenInfo& t : top) {
    alternatives.push_back(
        {{"token", t.text}, {"logprob", finite_logprob(t.logprob)}, {"bytes", utf8_bytes(t.text)}});
  }
  return {{"token", token.text},
          {"logprob", finite_logprob(token.logprob)},
          {"bytes", utf8_bytes(token.text)},
          {"top_logprobs", std::move(alternatives)}};
}

json chat_chunk(const OpenAiRequest& r, json choices) {
  return openai_object(r, "chat.completion.chunk", std::move(choices));
}

// Starts the generation of an OpenAI request whose prompts are validated and whose adapter is
// resolved. Non-streaming: `respond_done` builds the answer. Streaming: `stream_start` writes
// what comes before the first token, `stream_event` turns each event into chunks ("" = none).
struct OpenAiLaunch {
  std::function<HttpResponse(const Generation&)> respond_done;
  std::function<void(StreamWriter&)> stream_start;
  std::function<std::string(const Generation&, size_t prompt, const RequestEvent&)> stream_event;
};

void launch_openai(Engine& engine, Metrics& metrics, const std::shared_ptr<OpenAiRequest>& r,
                   std::shared_ptr<Admission> slot, std::shared_ptr<Responder> responder,
                   Clock::time_point received, const std::string& adapter, OpenAiLaunch launch) {
  r->params.adapter = adapter;
  metrics.adapter_request(adapter);
  std::vector<EngineRequest> requests;
  for (size_t i = 0; i < r->prompt_ids.size(); ++i) {
    EngineRequest request;
    request.prompt = r->prompt_ids[i];
    request.params = r->params;
    requests.push_back(std::move(request));
  }

  if (!r->stream) {
    Generation::Hooks hooks;
    hooks.on_done = [responder, respond = std::move(launch.respond_done)](Generation& gen) {
      if (!gen.error().empty()) {
        responder->respond(error_response(Dialect::OpenAi, 424, "generation", gen.error()));
      } else {
        responder->respond(respond(gen));
      }
    };
    auto gen = std::make_shared<Generation>(metrics, std::move(*slot), received, std::move(hooks));
    gen->start_answering(*responder, engine, std::move(requests));
    return;
  }

  std::shared_ptr<StreamWriter> writer = responder->stream();
  Generation::Hooks hooks;
  hooks.on_event = [writer, event_chunks = std::move(launch.stream_event)](
                       Generation& gen, size_t prompt, const RequestEvent& event) {
    std::string chunks = event_chunks(gen, prompt, event);
    if (!chunks.empty()) writer->write(std::move(chunks));
  };
  hooks.on_done = [writer, r](Generation& gen) {
    if (!gen.error().empty()) {
      writer->write(error_event(Dialect::OpenAi, "generation", gen.error()));
      writer->finish();
      return;
    }
    if (r->include_usage) {
      json chunk = {{"id", r->id},
                    {"object", r->chat ? "chat.completion.chunk" : "text_completion"},
                    {"created", r->created},
                    {"model", r->model},
                    {"choices", json::array()},
                    {"usage", usage_json(gen.prompts())}};
      writer->write(sse_event(Dialect::OpenAi, chunk));
    }
    writer->write("data: [DONE]\n\n");
    writer->finish();
  };
  auto gen = std::make_shared<Generation>(metrics, std::move(*slot), received, std::move(hooks));
  writer->on_disconnect(gen->canceller());
  if (launch.stream_start) launch.stream_start(*writer);
  try {
    gen->start(engine, std::move(requests));
  } catch (const Error& e) {
    metrics.request_failed("validation");
    writer->write(error_event(Dialect::OpenAi, "validation",
                              std::string("Input validation error: ") + e.what()));
    writer->finish();
  }
}

}  // namespace

void Api::Impl::openai_completions(const HttpRequest& request,
                                   std::shared_ptr<Responder> responder) {
  const Clock::time_point received = Clock::now();
  guarded(
      responder, Dialect::OpenAi,
      [&] {
        auto slot = std::make_shared<Admission>(admit());
        const json body = parse_json_object(request.body);
        auto r = std::make_shared<OpenAiRequest>(
            parse_completions(body, options, tokenizer.tokenizer()));
        for (auto& ids : r->prompt_ids) {
          r->params.max_new_tokens =
              apply_length_limits(limits(), ids, std::nullopt, r->max_tokens);
          metrics.request_validated(seconds_since(received), static_cast<int64_t>(ids.size()),
                                    r->params.max_new_tokens);
        }
        OpenAiLaunch launch;
        launch.respond_done = [r](const Generation& gen) {
          json choices = json::array();
          for (size_t i = 0; i < gen.prompts().size(); ++i) {
            const PromptResult& result = gen.prompts()[i];
            choices.push_back(
                {{"index", i},
                 {"text", (r->echo ? r->prompt_texts[i] : "") + result.visible_text},
                 {"logprobs", r->logprobs ? completion_logprobs(*r, result) : json(nullptr)},
                 {"finish_reason", openai_finish_reason(result.final.finish)}});
          }
          json body_out = completion_chunk(*r, std::move(choices));
          body_out["usage"] = usage_json(gen.prompts());
          HttpResponse http;
          http.body = body_out.dump(-1, ' ', false, json::error_handler_t::replace);
          return http;
        };
        launch.stream_start = [r](StreamWriter& writer) {
          if (!r->echo) return;
          for (size_t i = 0; i < r->prompt_texts.size(); ++i) {
            writer.write(
                sse_event(Dialect::OpenAi,
                          completion_chunk(*r, json::array({{{"index", i},
                                                             {"text", r->prompt_texts[i]},
                                                             {"logprobs", nullptr},
                                                             {"finish_reason", nullptr}}}))));
          }
        };
        // Text offsets per prompt, advanced as chunks go out (engine thread, under the lock).
        auto offsets = std::make_shared<std::vector<size_t>>(r->prompt_texts.size(), 0);
        for (size_t i = 0; r->echo && i < offsets->size(); ++i) {
          (*offsets)[i] = utf8_length(r->prompt_texts[i]);
        }
        launch.stream_event = [r, offsets](const Generation& gen, size_t prompt,
                                           const RequestEvent& event) -> std::string {
          const PromptResult& result = gen.prompts()[prompt];
          json logprobs = nullptr;
          if (r->logprobs && event.token && !result.tokens.empty()) {
            CompletionLogprobs lp;
            lp.offset = (*offsets)[prompt];
            lp.add(result.tokens.back(), &event.top_tokens, false);
            (*offsets)[prompt] = lp.offset;
            logprobs = lp.to_json();
          }
          if (event.visible_text.empty() && logprobs.is_null() && !event.finished) return "";
          return sse_event(
              Dialect::OpenAi,
              completion_chunk(
                  *r, json::array({{{"index", prompt},
                                    {"text", event.visible_text},
                                    {"logprobs", std::move(logprobs)},
                                    {"finish_reason", chunk_finish_reason(event)}}})));
        };
        with_adapter(
            adapter_of_model(string_field(body, "model").value_or("")), responder, Dialect::OpenAi,
            [this, r, slot, responder, received, launch](const std::string& adapter) {
              launch_openai(engine, metrics, r, slot, responder, received, adapter, launch);
            });
      },
      /*generation=*/true);
}

void Api::Impl::openai_chat(const HttpRequest& request, std::shared_ptr<Responder> responder) {
  const Clock::time_point received = Clock::now();
  guarded(
      responder, Dialect::OpenAi,
      [&] {
        auto slot = std::make_shared<Admission>(admit());
        const json body = parse_json_object(request.body);
        auto r = std::make_shared<OpenAiRequest>();
        parse_common(body, options, *r);
        r->chat = true;
        r->id = random_id("chatcmpl-");
        const auto max_tokens = positive_int(body, "max_tokens");
        const auto max_completion_tokens = positive_int(body, "max_completion_tokens");
        r->max_tokens = max_completion_tokens ? max_completion_tokens : max_tokens;
        r->chat_logprobs = bool_field(body, "logprobs").value_or(false);
        const auto top_logprobs = int_field(body, "top_logprobs");
        if (top_logprobs && (*top_logprobs < 0 || *top_logprobs > options.max_top_n_tokens)) {
          throw_validation(fmt::format("`top_logprobs` must be >= 0 and <= {}. Given: {}",
                                       options.max_top_n_tokens, *top_logprobs));
        }
        if (top_logprobs && *top_logprobs > 0 && !r->chat_logprobs) {
          throw_validation("`top_logprobs` requires `logprobs` to be true");
        }
        r->params.top_n_tokens = static_cast<int32_t>(top_logprobs.value_or(0));
        if (const json* tools = field(body, "tools");
            tools != nullptr && !(tools->is_array() && tools->empty())) {
          throw_validation("`tools` are not supported");
        }
        if (const json* format = object_field(body, "response_format")) {
          if (string_field(*format, "type").value_or("text") != "text") {
            throw_validation("`response_format` other than text is not supported");
          }
        }
        const std::vector<ChatMessage> messages = parse_messages(body);
        if (!tokenizer.has_chat_template()) {
          throw ApiError(422, "template_error", "the model has no chat template");
        }
        std::vector<int32_t> ids;
        try {
          ids = tokenizer.encode_chat(messages, /*add_generation_prompt=*/true);
        } catch (const Error& e) {
          throw ApiError(422, "template_error", e.what());
        }
        if (ids.empty()) throw_validation("`inputs` cannot be empty");
        r->params.max_new_tokens = apply_length_limits(limits(), ids, std::nullopt, r->max_tokens);
        metrics.request_validated(seconds_since(received), static_cast<int64_t>(ids.size()),
                                  r->params.max_new_tokens);
        r->prompt_ids.push_back(std::move(ids));

        OpenAiLaunch launch;
        launch.respond_done = [r](const Generation& gen) {
          const PromptResult& result = gen.prompts().front();
          json logprobs = nullptr;
          if (r->chat_logprobs) {
            json content = json::array();
            for (size_t i = 0; i < result.tokens.size(); ++i) {
              content.push_back(chat_token_logprob(result.tokens[i], result.top_tokens[i]));
            }
            logprobs = {{"content", std::move(content)}};
          }
          json body_out = openai_object(
              *r, "chat.completion",
              json::array({{{"index", 0},
                            {"message", {{"role", "assistant"}, {"content", result.visible_text}}},
                            {"logprobs", std::move(logprobs)},
                            {"finish_reason", openai_finish_reason(result.final.finish)}}}));
          body_out["usage"] = usage_json(gen.prompts());
          HttpResponse http;
          http.body = body_out.dump(-1, ' ', false, json::error_handler_t::replace);
          return http;
        };
        launch.stream_start = [r](StreamWriter& writer) {
          writer.write(sse_event(
              Dialect::OpenAi,
              chat_chunk(*r, json::array({{{"index", 0},
                                           {"delta", {{"role", "assistant"}, {"content", ""}}},
                                           {"logprobs", nullptr},
                                           {"finish_reason", nullptr}}}))));
        };
        launch.stream_event = [r](const Generation& gen, size_t,
                                  const RequestEvent& event) -> std::string {
          const PromptResult& result = gen.prompts().front();
          json logprobs = nullptr;
          if (r->chat_logprobs && event.token && !result.tokens.empty()) {
            logprobs = {{"content", json::array({chat_token_logprob(result.tokens.back(),
                                                                    event.top_tokens)})}};
          }
          if (event.visible_text.empty() && logprobs.is_null() && !event.finished) return "";
          json delta = json::object();
          if (!event.visible_text.empty() || !event.finished) delta["content"] = event.visible_text;
          return sse_event(
              Dialect::OpenAi,
              chat_chunk(
                  *r, json::array({{{"index", 0},
                                    {"delta", std::move(delta)},
                                    {"logprobs", std::move(logprobs)},
                                    {"finish_reason", chunk_finish_reason(event)}}})));
        };
        with_adapter(
            adapter_of_model(string_field(body, "model").value_or("")), responder, Dialect::OpenAi,
            [this, r, slot, responder, received, launch](const std::string& adapter) {
              launch_openai(engine, metrics, r, slot, responder, received, adapter, launch);
            });
      },
      /*generation=*/true);
}

HttpResponse Api::Impl::openai_models() {
  json data = json::array();
  data.push_back({{"id", options.served_model_name},
                  {"object", "model"},
                  {"created", created_unix},
                  {"owned_by", "mil"},
                  {"root", options.model_id},
                  {"parent", nullptr},
                  {"max_model_len", options.max_total_tokens}});
  for (const AdapterInfo& a : adapters.list()) {
    data.push_back({{"id", a.name},
                    {"object", "model"},
                    {"created", created_unix},
                    {"owned_by", "mil"},
                    {"root", a.name},
                    {"parent", options.served_model_name},
                    {"max_model_len", options.max_total_tokens}});
  }
  HttpResponse response;
  response.body = json({{"object", "list"}, {"data", std::move(data)}})
                      .dump(-1, ' ', false, json::error_handler_t::replace);
  return response;
}

}  // namespace mil::server
