// TGI's routes: /generate, /generate_stream, / (compat), /tokenize and /info. Parameters are
// validated with TGI's rules and messages (router/src/validation.rs) except where
// docs/SERVING.md says otherwise (top_p = 1.0 accepted as "off"). Unlike TGI, /generate_stream
// answers errors known before submission (400/401/404/422/429/503) with their HTTP status
// instead of a 200 stream holding one error event; errors after the stream opened (the engine
// refusing the request, a generation failure) are SSE events `data:{"error":..,"error_type":..}`.
#include <fmt/format.h>

#include <cmath>

#include "core/error.h"
#include "server/api_internal.h"

namespace mil::server {

using nlohmann::json;

namespace {

struct TgiRequest {
  std::string inputs;
  bool stream = false;
  RequestParams params;  // adapter and max_new_tokens are filled in later
  bool sampling = false;
  std::optional<int64_t> max_new_tokens;
  std::optional<int64_t> truncate;
  bool details = false;
  bool decoder_input_details = false;
  bool return_full_text = false;
  AdapterSpec adapter;
  std::vector<int32_t> ids;  // the prompt after truncation
};

AdapterSpec parse_lorax_adapter(const json& params) {
  AdapterSpec spec;
  spec.id = string_field(params, "adapter_id").value_or("");
  spec.source = string_field(params, "adapter_source").value_or("");
  if (!spec.source.empty() && spec.source != "local" && spec.source != "hub") {
    throw_validation(
        fmt::format("`adapter_source` must be \"local\" or \"hub\". Given: \"{}\"", spec.source));
  }
  spec.api_token = string_field(params, "api_token").value_or("");
  if (const json* merged = object_field(params, "merged_adapters")) {
    spec.merge_ids = string_list_field(*merged, "ids", false);
    if (spec.merge_ids.empty()) throw_validation("`merged_adapters.ids` must not be empty");
    if (const json* weights = field(*merged, "weights")) {
      if (!weights->is_array()) throw_bad_request("`merged_adapters.weights` must be a list");
      for (const json& w : *weights) {
        if (!w.is_number()) throw_bad_request("`merged_adapters.weights` must hold numbers");
        const auto weight = static_cast<float>(w.get<double>());
        if (!std::isfinite(weight)) throw_validation("`merged_adapters.weights` are out of range");
        spec.merge_weights.push_back(weight);
      }
      if (spec.merge_weights.size() != spec.merge_ids.size()) {
        throw_validation(fmt::format(
            "`merged_adapters.weights` must have one weight per id. Given: {} ids and {} weights",
            spec.merge_ids.size(), spec.merge_weights.size()));
      }
    }  // absent: LoRAX weighs every adapter 1.0 (the resolver's default)
    spec.merge_strategy = string_field(*merged, "merge_strategy").value_or("linear");
  }
  return spec;
}

// TGI's GenerateParameters, validated in validation.rs's order.
TgiRequest parse_tgi_request(const json& body, const ApiOptions& options, bool compat,
                             bool stream_route) {
  TgiRequest r;
  const std::optional<std::string> inputs = string_field(body, "inputs");
  if (!inputs) throw_validation("`inputs` is required");
  r.inputs = *inputs;
  r.stream = stream_route || (compat && bool_field(body, "stream").value_or(false));

  const json* params_ptr = object_field(body, "parameters");
  const json empty = json::object();
  const json& p = params_ptr != nullptr ? *params_ptr : empty;
  // TGI's quirk: a request without `parameters` samples (default_parameters() has do_sample).
  const bool do_sample = bool_field(p, "do_sample").value_or(params_ptr == nullptr);

  if (const auto best_of = int_field(p, "best_of")) {
    if (*best_of <= 0)
      throw_validation(fmt::format("`best_of` must be > 0 and <= 1. Given: {}", *best_of));
    if (*best_of > 1) throw_validation("`best_of` != 1 is not allowed for this endpoint");
  }
  if (bool_field(p, "watermark").value_or(false)) throw_validation("`watermark` is not supported");
  if (field(p, "grammar") != nullptr) throw_validation("grammar is not supported");

  RequestParams& rp = r.params;
  // As floats: the engine divides by these, and 1e-50 is 0 (and 1e300 inf) as a float.
  const auto temperature = float_field(p, "temperature");
  if (temperature && !(*temperature > 0)) throw_validation("`temperature` must be strictly positive");
  rp.temperature = temperature.value_or(1.0f);

  const auto repetition_penalty = float_field(p, "repetition_penalty");
  if (repetition_penalty && !(*repetition_penalty > 0)) {
    throw_validation("`repetition_penalty` must be strictly positive");
  }
  rp.repetition_penalty = repetition_penalty.value_or(1.0f);

  const auto frequency_penalty = number_field(p, "frequency_penalty");
  if (frequency_penalty && (*frequency_penalty < -2.0 || *frequency_penalty > 2.0)) {
    throw_validation("`frequency_penalty` must be >= -2.0 and <= 2.0");
  }
  rp.frequency_penalty = static_cast<float>(frequency_penalty.value_or(0.0));

  const auto top_p = number_field(p, "top_p");
  if (top_p && (*top_p <= 0.0 || *top_p > 1.0)) throw_validation("`top_p` must be > 0.0 and < 1.0");
  rp.top_p = static_cast<float>(top_p.value_or(1.0));

  const auto typical_p = number_field(p, "typical_p");
  if (typical_p && (*typical_p <= 0.0 || *typical_p >= 1.0)) {
    throw_validation("`typical_p` must be > 0.0 and < 1.0");
  }
  rp.typical_p = static_cast<float>(typical_p.value_or(1.0));

  const auto top_k = int_field(p, "top_k");
  if (top_k && *top_k <= 0) throw_validation("`top_k` must be strictly positive");
  if (top_k && *top_k > std::numeric_limits<int32_t>::max())
    throw_validation("`top_k` is too large");
  rp.top_k = static_cast<int32_t>(top_k.value_or(0));

  r.max_new_tokens = int_field(p, "max_new_tokens");
  if (r.max_new_tokens && *r.max_new_tokens <= 0) {
    throw_validation("`max_new_tokens` must be strictly positive");
  }

  rp.stop = string_list_field(p, "stop", false);
  if (static_cast<int64_t>(rp.stop.size()) > options.max_stop_sequences) {
    throw_validation(fmt::format("`stop` supports up to {} stop sequences. Given: {}",
                                 options.max_stop_sequences, rp.stop.size()));
  }
  for (const std::string& s : rp.stop) {
    if (s.empty()) throw_validation("`stop` sequences must not be empty");
  }

  // Sampling as TGI's shard decides it: asked for, or implied by a warper that is not a no-op.
  r.sampling =
      do_sample || rp.temperature != 1.0f || rp.top_k > 0 || rp.top_p < 1.0f || rp.typical_p < 1.0f;
  rp.do_sample = r.sampling;
  // LoRAX's ignore_eos_token: generate max_new_tokens whatever the model says.
  rp.ignore_eos = bool_field(p, "ignore_eos_token").value_or(false);
  rp.seed = uint_field(p, "seed").value_or(0);
  if (!uint_field(p, "seed")) rp.seed = random_u64();

  const auto top_n_tokens = int_field(p, "top_n_tokens");
  if (top_n_tokens && (*top_n_tokens < 0 || *top_n_tokens > options.max_top_n_tokens)) {
    throw_validation(fmt::format("`top_n_tokens` must be >= 0 and <= {}. Given: {}",
                                 options.max_top_n_tokens, *top_n_tokens));
  }
  rp.top_n_tokens = static_cast<int32_t>(top_n_tokens.value_or(0));

  if (r.inputs.empty()) throw_validation("`inputs` cannot be empty");

  r.truncate = int_field(p, "truncate");
  if (r.truncate && (*r.truncate <= 0 || *r.truncate > options.max_input_tokens)) {
    throw_validation(fmt::format("`truncate` must be strictly positive and less than {}. Given: {}",
                                 options.max_input_tokens, *r.truncate));
  }

  r.details = bool_field(p, "details").value_or(false);
  r.decoder_input_details = bool_field(p, "decoder_input_details").value_or(false);
  if (r.decoder_input_details && r.stream) {
    throw_validation("`decoder_input_details` == true is not supported when streaming tokens");
  }
  rp.prompt_logprobs = r.decoder_input_details;
  // TGI's compat route defaults to the text-generation pipeline's full text.
  r.return_full_text = bool_field(p, "return_full_text").value_or(compat);
  r.adapter = parse_lorax_adapter(p);
  return r;
}

json token_json(const TokenInfo& t) {
  return {{"id", t.id}, {"text", t.text}, {"logprob", t.logprob}, {"special", t.special}};
}

json tokens_json(const std::vector<TokenInfo>& tokens) {
  json out = json::array();
  for (const TokenInfo& t : tokens) out.push_back(token_json(t));
  return out;
}

json seed_json(const TgiRequest& r) { return r.sampling ? json(r.params.seed) : json(nullptr); }

std::string ms(double seconds) { return fmt::format("{}", static_cast<int64_t>(seconds * 1000)); }

HttpResponse generate_response(const TgiRequest& r, const Generation& gen, bool compat,
                               double validation_seconds) {
  const PromptResult& result = gen.prompts().front();
  const RequestEvent& last = result.final;
  json response = {{"generated_text", (r.return_full_text ? r.inputs : "") + result.text}};
  if (r.details) {
    json prefill = json::array();
    for (const TokenInfo& t : last.prefill) {
      prefill.push_back({{"id", t.id}, {"text", t.text}, {"logprob", t.logprob}});
    }
    json details = {{"finish_reason", tgi_finish_reason(last.finish)},
                    {"generated_tokens", last.generated_tokens},
                    {"seed", seed_json(r)},
                    {"prompt_tokens", last.prompt_tokens},  // LoRAX's field; its client needs it
                    {"prefill", std::move(prefill)},
                    {"tokens", tokens_json(result.tokens)}};
    if (r.params.top_n_tokens > 0) {
      json top = json::array();
      for (const auto& alternatives : result.top_tokens) top.push_back(tokens_json(alternatives));
      details["top_tokens"] = std::move(top);
    }
    response["details"] = std::move(details);
  }
  HttpResponse http;
  http.body = (compat ? json::array({response}) : response)
                  .dump(-1, ' ', false, json::error_handler_t::replace);
  const double total = seconds_since(gen.received());
  const double per_token =
      last.generated_tokens > 0 ? last.inference_seconds / last.generated_tokens : 0.0;
  http.headers = {{"x-compute-type", "mil"},
                  {"x-compute-time", fmt::format("{:.6f}", total)},
                  {"x-compute-characters", std::to_string(r.inputs.size())},
                  {"x-total-time", ms(total)},
                  {"x-validation-time", ms(validation_seconds)},
                  {"x-queue-time", ms(last.queue_seconds)},
                  {"x-inference-time", ms(last.inference_seconds)},
                  {"x-time-per-token", ms(per_token)},
                  {"x-prompt-tokens", std::to_string(last.prompt_tokens)},
                  {"x-generated-tokens", std::to_string(last.generated_tokens)}};
  return http;
}

// One SSE event of /generate_stream (TGI's StreamResponse).
std::string stream_event(const TgiRequest& r, const Generation& gen, const RequestEvent& event) {
  const PromptResult& result = gen.prompts().front();
  json token = result.tokens.empty()
                   ? json({{"id", 0}, {"text", ""}, {"logprob", 0.0}, {"special", true}})
                   : token_json(result.tokens.back());
  json payload = {{"index", event.index}, {"token", std::move(token)}};
  if (r.params.top_n_tokens > 0) payload["top_tokens"] = tokens_json(event.top_tokens);
  if (event.finished) {
    payload["generated_text"] = (r.return_full_text ? r.inputs : "") + result.text;
    payload["details"] = {{"finish_reason", tgi_finish_reason(event.finish)},
                          {"generated_tokens", event.generated_tokens},
                          {"seed", seed_json(r)},
                          {"input_length", event.prompt_tokens},
                          {"prompt_tokens", event.prompt_tokens}};  // LoRAX's spelling
  } else {
    payload["generated_text"] = nullptr;
    payload["details"] = nullptr;
  }
  return sse_event(Dialect::Tgi, payload);
}

}  // namespace

void Api::Impl::tgi_generate(const HttpRequest& request, std::shared_ptr<Responder> responder,
                             bool compat, bool stream_route) {
  const Clock::time_point received = Clock::now();
  guarded(
      responder, Dialect::Tgi,
      [&] {
        auto slot = std::make_shared<Admission>(admit());
        auto r = std::make_shared<TgiRequest>(
            parse_tgi_request(parse_json_object(request.body), options, compat, stream_route));
        r->ids = tokenizer.tokenizer().encode(r->inputs, /*add_special_tokens=*/true);
        if (r->ids.empty()) throw_validation("`inputs` cannot be empty");
        r->params.max_new_tokens =
            apply_length_limits(limits(), r->ids, r->truncate, r->max_new_tokens);
        const double validation_seconds = seconds_since(received);
        metrics.request_validated(validation_seconds, static_cast<int64_t>(r->ids.size()),
                                  r->params.max_new_tokens);

        with_adapter(
            r->adapter, responder, Dialect::Tgi,
            [this, r, slot, responder, received, compat,
             validation_seconds](const std::string& adapter) {
              r->params.adapter = adapter;
              metrics.adapter_request(adapter);
              std::vector<EngineRequest> requests(1);
              requests[0].prompt = r->ids;
              requests[0].params = r->params;

              if (!r->stream) {
                Generation::Hooks hooks;
                hooks.on_done = [r, responder, compat, validation_seconds](Generation& gen) {
                  if (!gen.error().empty()) {
                    responder->respond(
                        error_response(Dialect::Tgi, 424, "generation", gen.error()));
                  } else {
                    responder->respond(generate_response(*r, gen, compat, validation_seconds));
                  }
                };
                auto gen = std::make_shared<Generation>(metrics, std::move(*slot), received,
                                                        std::move(hooks));
                gen->start_answering(*responder, engine, std::move(requests));
                return;
              }

              // Streaming: everything known before submission was answered with its status above;
              // from here on errors are SSE events.
              std::shared_ptr<StreamWriter> writer = responder->stream({{"x-compute-type", "mil"}});
              Generation::Hooks hooks;
              hooks.on_event = [r, writer](Generation& gen, size_t, const RequestEvent& event) {
                writer->write(stream_event(*r, gen, event));
              };
              hooks.on_done = [writer](Generation& gen) {
                if (!gen.error().empty()) {
                  writer->write(error_event(Dialect::Tgi, "generation", gen.error()));
                }
                writer->finish();
              };
              auto gen = std::make_shared<Generation>(metrics, std::move(*slot), received,
                                                      std::move(hooks));
              writer->on_disconnect(gen->canceller());
              try {
                gen->start(engine, std::move(requests));
              } catch (const Error& e) {
                metrics.request_failed("validation");
                writer->write(error_event(Dialect::Tgi, "validation",
                                          std::string("Input validation error: ") + e.what()));
                writer->finish();
              }
            });
      },
      /*generation=*/true);
}

void Api::Impl::tgi_tokenize(const HttpRequest& request, Responder& responder) {
  const json body = parse_json_object(request.body);
  const std::optional<std::string> inputs = string_field(body, "inputs");
  if (!inputs) throw_validation("`inputs` is required");
  if (inputs->empty()) throw_validation("`inputs` cannot be empty");
  std::optional<int64_t> truncate;
  if (const json* p = object_field(body, "parameters")) {
    truncate = int_field(*p, "truncate");
    if (truncate && (*truncate <= 0 || *truncate > options.max_input_tokens)) {
      throw_validation(
          fmt::format("`truncate` must be strictly positive and less than {}. Given: {}",
                      options.max_input_tokens, *truncate));
    }
  }
  const Tokenizer& tok = tokenizer.tokenizer();
  const std::vector<int32_t> ids = tok.encode(*inputs, /*add_special_tokens=*/true);

  // Byte offsets: each token's decoded text is matched against the input from where the
  // previous one ended; tokens whose text is not there (a BOS the post-processor added, a
  // normalizer's leading space) get an empty span at the current position.
  json out = json::array();
  IncrementalDecoder decoder(tok, /*skip_special_tokens=*/false);
  size_t position = 0;
  const size_t first = truncate && static_cast<int64_t>(ids.size()) > *truncate
                           ? ids.size() - static_cast<size_t>(*truncate)
                           : 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    const std::string piece = decoder.push(ids[i]);
    size_t start = position, stop = position;
    std::string text = piece;
    if (!piece.empty()) {
      std::string_view match = piece;
      if (inputs->compare(position, match.size(), match) != 0 && match.front() == ' ') {
        match.remove_prefix(1);  // a normalizer's leading space ("▁Hello" for "Hello")
      }
      if (!match.empty() && inputs->compare(position, match.size(), match) == 0) {
        start = position;
        stop = position + match.size();
        position = stop;
        text = std::string(match);
      }
    }
    if (i < first) continue;
    out.push_back({{"id", ids[i]}, {"text", text}, {"start", start}, {"stop", stop}});
  }
  HttpResponse response;
  response.body = out.dump(-1, ' ', false, json::error_handler_t::replace);
  responder.respond(std::move(response));
}

HttpResponse Api::Impl::tgi_info() {
  const EngineStats stats = engine.stats();
  json adapter_names = json::array();
  try {
    for (const AdapterInfo& a : adapters.list()) adapter_names.push_back(a.name);
  } catch (const std::exception&) {
    // /info stays available whatever the adapter store says.
  }
  const json info = {
      {"model_id", options.model_id},
      {"model_sha", nullptr},
      {"model_dtype", nullptr},
      {"model_device_type", "cpu"},
      {"model_pipeline_tag", "text-generation"},
      {"served_model_name", options.served_model_name},
      {"max_concurrent_requests", options.max_concurrent_requests},
      {"max_best_of", 1},
      {"max_stop_sequences", options.max_stop_sequences},
      {"max_input_tokens", options.max_input_tokens},
      {"max_input_length", options.max_input_tokens},
      {"max_total_tokens", options.max_total_tokens},
      {"max_top_n_tokens", options.max_top_n_tokens},
      {"validation_workers", options.blocking_threads},
      {"max_client_batch_size", options.max_client_batch_size},
      {"router", "mil"},
      {"version", kMilVersion},
      {"sha", nullptr},
      {"docker_label", nullptr},
      {"kv_blocks", stats.kv_blocks},
      {"block_size", stats.block_size},
      {"kv_bytes", stats.kv_bytes},
      {"max_batch_prefill_tokens", stats.max_batch_prefill_tokens},
      {"max_batch_total_tokens", stats.max_batch_total_tokens},
      {"adapters", std::move(adapter_names)},
  };
  HttpResponse response;
  response.body = info.dump(-1, ' ', false, json::error_handler_t::replace);
  return response;
}

}  // namespace mil::server
