// Api: routing, auth, draining, admission (max_concurrent_requests), error answers of both
// dialects, and the small routes (/health, /metrics, adapter management). The generation
// routes live in tgi_routes.cpp and openai_routes.cpp; Generation in generation.cpp.
#include "server/api.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio/post.hpp>
#include <cctype>
#include <chrono>
#include <optional>

#include "core/error.h"
#include "server/api_internal.h"

namespace mil::server {

using nlohmann::json;

namespace {

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string_view header_of(const HttpRequest& request, std::string_view name) {
  const auto it = request.headers.find(name);
  return it == request.headers.end() ? std::string_view() : std::string_view(it->second);
}

HttpResponse json_response(int status, const json& body) {
  HttpResponse response;
  response.status = status;
  response.body = body.dump(-1, ' ', false, json::error_handler_t::replace);
  return response;
}

HttpResponse text_response(int status, std::string body) {
  HttpResponse response;
  response.status = status;
  response.content_type = "text/plain; charset=utf-8";
  response.body = std::move(body);
  return response;
}

enum class Route {
  Health,
  Info,
  Metrics,
  Generate,
  GenerateStream,
  Compat,
  Tokenize,
  Completions,
  Chat,
  Models,
  LoadAdapter,
  UnloadAdapter,
  ListAdapters
};

struct RouteEntry {
  std::string_view method;
  std::string_view path;
  Route route;
};

constexpr RouteEntry kRoutes[] = {
    {"GET", "/health", Route::Health},
    {"GET", "/ping", Route::Health},
    {"GET", "/", Route::Health},
    {"GET", "/info", Route::Info},
    {"GET", "/metrics", Route::Metrics},
    {"POST", "/generate", Route::Generate},
    {"POST", "/generate_stream", Route::GenerateStream},
    {"POST", "/", Route::Compat},
    {"POST", "/tokenize", Route::Tokenize},
    {"POST", "/v1/completions", Route::Completions},
    {"POST", "/v1/chat/completions", Route::Chat},
    {"GET", "/v1/models", Route::Models},
    {"POST", "/v1/load_lora_adapter", Route::LoadAdapter},
    {"POST", "/v1/unload_lora_adapter", Route::UnloadAdapter},
    {"GET", "/v1/adapters", Route::ListAdapters},
};

bool is_open(Route route) {
  return route == Route::Health || route == Route::Info || route == Route::Metrics;
}

bool is_generation(Route route) {
  return route == Route::Generate || route == Route::GenerateStream || route == Route::Compat ||
         route == Route::Completions || route == Route::Chat;
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) !=
        std::tolower(static_cast<unsigned char>(b[i]))) {
      return false;
    }
  }
  return true;
}

}  // namespace

HttpResponse error_response(Dialect dialect, int status, const std::string& type,
                            const std::string& message) {
  if (dialect == Dialect::Tgi) {
    return json_response(status, {{"error", message}, {"error_type", type}});
  }
  return json_response(
      status,
      {{"error", {{"message", message}, {"type", type}, {"param", nullptr}, {"code", status}}}});
}

std::string sse_event(Dialect dialect, const json& payload) {
  return (dialect == Dialect::Tgi ? "data:" : "data: ") +
         payload.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
}

std::string error_event(Dialect dialect, const std::string& type, const std::string& message) {
  if (dialect == Dialect::Tgi) {
    return sse_event(dialect, {{"error", message}, {"error_type", type}});
  }
  return sse_event(dialect, {{"error", {{"message", message}, {"type", type}}}});
}

const char* tgi_finish_reason(FinishReason reason) {
  switch (reason) {
    case FinishReason::Length:
      return "length";
    case FinishReason::EndOfSequence:
      return "eos_token";
    case FinishReason::StopSequence:
      return "stop_sequence";
    case FinishReason::Cancelled:
      return "cancelled";
    case FinishReason::Error:
      return "error";
  }
  return "error";
}

Api::Impl::Impl(Engine& engine_ref, const ModelTokenizer& tokenizer_ref,
                AdapterResolver& adapters_ref, Metrics& metrics_ref, ApiOptions options_value)
    : engine(engine_ref),
      tokenizer(tokenizer_ref),
      adapters(adapters_ref),
      metrics(metrics_ref),
      options(std::move(options_value)),
      created_unix(unix_now()),
      blocking(static_cast<size_t>(std::max(1, options.blocking_threads))) {}

Admission Api::Impl::admit() {
  metrics.request_received();
  const int64_t previous = in_flight->fetch_add(1, std::memory_order_acq_rel);
  Admission slot(in_flight);
  if (previous >= options.max_concurrent_requests) {
    throw ApiError(429, "overloaded", "Model is overloaded");
  }
  return slot;
}

void Api::Impl::fail(Responder& responder, Dialect dialect, const ApiError& error) {
  responder.respond(error_response(dialect, error.status(), error.type(), error.what()));
}

void Api::Impl::guarded(const std::shared_ptr<Responder>& responder, Dialect dialect,
                        const std::function<void()>& body, bool generation) {
  std::optional<ApiError> error;
  try {
    body();
    return;
  } catch (const ApiError& e) {
    error.emplace(e);
  } catch (const AdapterError& e) {
    error.emplace(e.status(), e.type(), e.what());
  } catch (const Error& e) {
    error.emplace(422, "validation", e.what());
  } catch (const std::exception& e) {
    spdlog::error("request failed: {}", e.what());
    error.emplace(500, "internal", "internal error");
  } catch (...) {
    spdlog::error("request failed: unknown exception");
    error.emplace(500, "internal", "internal error");
  }
  // Nothing below may throw: this runs on I/O threads and on the blocking pool.
  try {
    auto* tracked = dynamic_cast<TrackedResponder*>(responder.get());
    bool answered = false;
    if (tracked == nullptr) {
      fail(*responder, dialect, *error);
      answered = true;
    } else if (tracked->respond_if_unanswered(
                   error_response(dialect, error->status(), error->type(), error->what()))) {
      answered = true;
    } else if (const std::shared_ptr<StreamWriter> writer = tracked->open_stream()) {
      // The stream is open (a failure after stream()): end it with an error event. Writes after
      // its finish() are dropped, so this is harmless if it had ended meanwhile.
      writer->write(error_event(dialect, error->type(), error->what()));
      writer->finish();
      answered = true;
    } else {
      spdlog::error("request failed after it was answered: {}", error->what());
    }
    if (answered && generation) metrics.request_failed(error->type());
  } catch (const std::exception& e) {
    spdlog::error("could not answer a failed request: {}", e.what());
  } catch (...) {
    spdlog::error("could not answer a failed request");
  }
}

void Api::Impl::with_adapter(AdapterSpec spec, std::shared_ptr<Responder> responder,
                             Dialect dialect,
                             std::function<void(const std::string& adapter)> then) {
  if (spec.id.empty() && spec.merge_ids.empty()) {
    then("");
    return;
  }
  // Resolution may download from the Hub: never on an I/O thread.
  boost::asio::post(
      blocking, [this, spec = std::move(spec), responder, dialect, then = std::move(then)] {
        guarded(
            responder, dialect, [&] { then(adapters.resolve(spec)); }, /*generation=*/true);
      });
}

bool Api::Impl::names_base_model(const std::string& model) const {
  return is_model_placeholder(model) || model == options.served_model_name;
}

AdapterSpec Api::Impl::adapter_of_model(const std::string& model) const {
  AdapterSpec spec;
  if (!names_base_model(model)) spec.id = model;
  return spec;
}

Api::Api(Engine& engine, const ModelTokenizer& tokenizer, AdapterResolver& adapters,
         Metrics& metrics, ApiOptions options)
    : impl_(std::make_unique<Impl>(engine, tokenizer, adapters, metrics, std::move(options))) {
  Metrics* m = &metrics;
  engine.set_step_observer(
      [m](const StepReport& step, const EngineStats& stats) { m->observe_step(step, stats); });
}

Api::~Api() { impl_->blocking.join(); }

void Api::start_draining() { impl_->draining.store(true); }

int64_t Api::in_flight() const { return impl_->in_flight->load(); }

void Api::handle(const HttpRequest& request, std::shared_ptr<Responder> transport_responder) {
  Impl& impl = *impl_;
  // Remembers what was answered, for guarded().
  const std::shared_ptr<Responder> responder =
      std::make_shared<TrackedResponder>(std::move(transport_responder));
  const bool openai = request.path.starts_with("/v1/");
  const Dialect dialect = openai ? Dialect::OpenAi : Dialect::Tgi;

  const RouteEntry* entry = nullptr;
  bool path_known = false;
  for (const RouteEntry& candidate : kRoutes) {
    if (candidate.path != request.path) continue;
    path_known = true;
    if (candidate.method == request.method) entry = &candidate;
  }
  if (entry == nullptr) {
    if (path_known) {
      HttpResponse response =
          error_response(dialect, 405, "method_not_allowed", "method not allowed");
      responder->respond(std::move(response));
    } else {
      responder->respond(error_response(dialect, 404, "not_found", "not found"));
    }
    return;
  }
  const Route route = entry->route;

  if (!is_open(route) && !impl.options.api_key.empty()) {
    const std::string_view authorization = header_of(request, "authorization");
    constexpr std::string_view kScheme = "bearer ";
    const bool ok = authorization.size() >= kScheme.size() &&
                    iequals(authorization.substr(0, kScheme.size()), kScheme) &&
                    constant_time_equal(authorization.substr(kScheme.size()), impl.options.api_key);
    if (!ok) {
      HttpResponse response = error_response(dialect, 401, "unauthorized", "Unauthorized");
      response.headers.emplace_back("WWW-Authenticate", "Bearer");
      responder->respond(std::move(response));
      return;
    }
  }

  if (impl.draining.load()) {
    if (route == Route::Health) {
      responder->respond(error_response(Dialect::Tgi, 503, "healthcheck", "unhealthy"));
      return;
    }
    if (is_generation(route)) {
      responder->respond(
          error_response(dialect, 503, "unavailable", "the server is shutting down"));
      return;
    }
  }

  switch (route) {
    case Route::Health:
      responder->respond(text_response(200, ""));
      return;
    case Route::Info:
      responder->respond(impl.tgi_info());
      return;
    case Route::Metrics: {
      impl.metrics.set_engine_stats(impl.engine.stats());
      impl.guarded(responder, Dialect::Tgi, [&] {
        int64_t resident = 0;
        const std::vector<AdapterInfo> adapters = impl.adapters.list();
        for (const AdapterInfo& a : adapters) resident += a.resident ? 1 : 0;
        impl.metrics.set_adapters(static_cast<int64_t>(adapters.size()), resident);
        HttpResponse response = text_response(200, impl.metrics.render());
        response.content_type = "text/plain; version=0.0.4; charset=utf-8";
        responder->respond(std::move(response));
      });
      return;
    }
    case Route::Generate:
    case Route::GenerateStream:
    case Route::Compat:
      impl.tgi_generate(request, responder, route == Route::Compat, route == Route::GenerateStream);
      return;
    case Route::Tokenize:
      impl.guarded(responder, dialect, [&] { impl.tgi_tokenize(request, *responder); });
      return;
    case Route::Completions:
      impl.openai_completions(request, responder);
      return;
    case Route::Chat:
      impl.openai_chat(request, responder);
      return;
    case Route::Models:
      impl.guarded(responder, dialect, [&] { responder->respond(impl.openai_models()); });
      return;
    case Route::ListAdapters:
      impl.guarded(responder, dialect, [&] {
        json list = json::array();
        for (const AdapterInfo& a : impl.adapters.list()) {
          list.push_back(
              {{"name", a.name}, {"source", a.source}, {"resident", a.resident}, {"pins", a.pins}});
        }
        responder->respond(json_response(200, list));
      });
      return;
    case Route::LoadAdapter:
    case Route::UnloadAdapter: {
      const bool load = route == Route::LoadAdapter;
      // Loading reads (and validates) adapter files: off the I/O thread.
      boost::asio::post(impl.blocking, [&impl, load, body = request.body, responder] {
        impl.guarded(responder, Dialect::OpenAi, [&] {
          const json parsed = parse_json_object(body);
          const std::optional<std::string> name = string_field(parsed, "lora_name");
          if (!name || name->empty()) throw_bad_request("`lora_name` is required");
          if (load) {
            const std::optional<std::string> path = string_field(parsed, "lora_path");
            if (!path || path->empty()) throw_bad_request("`lora_path` is required");
            impl.adapters.load(*name, *path);
            spdlog::info("loaded LoRA adapter '{}'", *name);
            responder->respond(text_response(
                200, fmt::format("Success: LoRA adapter '{}' added successfully.", *name)));
          } else {
            impl.adapters.unload(*name);
            spdlog::info("unloaded LoRA adapter '{}'", *name);
            responder->respond(text_response(
                200, fmt::format("Success: LoRA adapter '{}' removed successfully.", *name)));
          }
        });
      });
      return;
    }
  }
}

}  // namespace mil::server
