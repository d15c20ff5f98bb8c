// What the route files (api.cpp, tgi_routes.cpp, openai_routes.cpp) share: Api::Impl (options,
// engine, tokenizer, adapters, metrics, the blocking pool, admission), the error answers of
// both dialects, and Generation: one HTTP request's engine requests in flight (submission,
// per-prompt accumulation of events, cancellation on disconnect, metrics, releasing the
// request's admission slot exactly once).
#pragma once

#include <atomic>
#include <boost/asio/thread_pool.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine/request.h"
#include "server/adapter_resolver.h"
#include "server/api.h"
#include "server/http.h"
#include "server/metrics.h"
#include "server/validation.h"
#include "tokenizer/model_tokenizer.h"

namespace mil::server {

// "tgi" and "dummy" are the placeholders TGI's clients send as `model` to a one-model server
// (text_generation's Client.chat, huggingface_hub's InferenceClient with a base_url); TGI
// ignores `model`, so for MIL they name the base model, as "" does.
inline bool is_model_placeholder(const std::string& model) {
  return model.empty() || model == "tgi" || model == "dummy";
}

inline constexpr const char* kMilVersion = "0.1.0";

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

enum class Dialect { Tgi, OpenAi };

// The error body of a dialect: TGI `{error, error_type}`, OpenAI `{error:{message, type,
// param, code}}`.
HttpResponse error_response(Dialect dialect, int status, const std::string& type,
                            const std::string& message);
// The SSE event for an error after a stream started.
std::string error_event(Dialect dialect, const std::string& type, const std::string& message);
// SSE framing: TGI writes `data:{json}` (axum's json_data), OpenAI `data: {json}`.
std::string sse_event(Dialect dialect, const nlohmann::json& payload);

// TGI's finish reason names.
const char* tgi_finish_reason(FinishReason reason);

// The Responder the routes see: forwards to the transport's and remembers whether (and how) the
// request was answered, so that an error escaping a route after it answered or opened a stream
// (Api::Impl::guarded) ends that answer instead of answering twice.
class TrackedResponder final : public Responder {
 public:
  explicit TrackedResponder(std::shared_ptr<Responder> inner) : inner_(std::move(inner)) {}

  void respond(HttpResponse response) override {
    if (!claim(kResponded)) throw std::logic_error("Responder: respond/stream called twice");
    inner_->respond(std::move(response));
  }
  std::shared_ptr<StreamWriter> stream(
      std::vector<std::pair<std::string, std::string>> headers = {}) override {
    if (!claim(kStreaming)) throw std::logic_error("Responder: respond/stream called twice");
    std::shared_ptr<StreamWriter> writer = inner_->stream(std::move(headers));
    const std::lock_guard lock(mu_);
    writer_ = writer;
    return writer;
  }
  void on_disconnect(std::function<void()> callback) override {
    inner_->on_disconnect(std::move(callback));
  }

  // Responds unless the request was answered already; false then.
  bool respond_if_unanswered(HttpResponse response) {
    if (!claim(kResponded)) return false;
    inner_->respond(std::move(response));
    return true;
  }
  // The stream stream() opened, or null (not streaming, or stream() failed).
  std::shared_ptr<StreamWriter> open_stream() const {
    const std::lock_guard lock(mu_);
    return writer_;
  }

 private:
  static constexpr int kUnanswered = 0, kResponded = 1, kStreaming = 2;
  bool claim(int how) {
    int expected = kUnanswered;
    return state_.compare_exchange_strong(expected, how);
  }

  const std::shared_ptr<Responder> inner_;
  std::atomic<int> state_{kUnanswered};
  mutable std::mutex mu_;
  std::shared_ptr<StreamWriter> writer_;
};

// A held slot of max_concurrent_requests; released when destroyed or by release(). The
// counter is shared so that a slot held by an engine sink stays valid whatever dies first.
class Admission {
 public:
  Admission() = default;
  explicit Admission(std::shared_ptr<std::atomic<int64_t>> counter)
      : counter_(std::move(counter)) {}
  Admission(Admission&& other) noexcept = default;
  Admission& operator=(Admission&& other) noexcept {
    if (this != &other) {
      release();
      counter_ = std::move(other.counter_);
    }
    return *this;
  }
  ~Admission() { release(); }
  void release() {
    if (counter_ != nullptr) counter_->fetch_sub(1, std::memory_order_acq_rel);
    counter_.reset();
  }

 private:
  std::shared_ptr<std::atomic<int64_t>> counter_;
};

// Everything the engine sent for one prompt.
struct PromptResult {
  std::vector<TokenInfo> tokens;  // TGI text convention: see Generation::stream_text
  std::vector<std::vector<TokenInfo>> top_tokens;
  std::string text;          // with stop sequences (TGI)
  std::string visible_text;  // without (OpenAI)
  RequestEvent final;        // the last event (its token, if any, moved into `tokens`)
  bool finished = false;
};

// One HTTP request's generations in flight. Created by a route once validation passed; hooks
// run on the engine thread (or the thread that ends the run) under the generation's lock, in
// event order.
class Generation : public std::enable_shared_from_this<Generation> {
 public:
  struct Hooks {
    // Every event, after it was added to prompts()[prompt]. For streaming routes.
    std::function<void(Generation&, size_t prompt, const RequestEvent& event)> on_event;
    // Once: every prompt finished, or one failed (error() set; the others are cancelled), or
    // the client went away (cancelled() true). Not called after cancel().
    std::function<void(Generation&)> on_done;
  };

  Generation(Metrics& metrics, Admission admission, Clock::time_point received, Hooks hooks);

  // Submits every request; events start flowing at once. Throws mil::Error when the engine
  // refuses one (the ones already submitted are cancelled and the run ends without on_done),
  // unless the run had already ended (an earlier prompt failed: on_done answered; or cancel()).
  void start(Engine& engine, std::vector<EngineRequest> requests);
  // A whole (non-streaming) response's run: the client going away cancels it (at once if it is
  // gone already; nothing is answered then), and an engine refusal is a 422 (ApiError).
  void start_answering(Responder& responder, Engine& engine, std::vector<EngineRequest> requests);
  // The client went away: cancels the engine requests, ends the run, releases the slot (counted
  // as the failure "cancelled"); on_done is not called, so nothing is answered afterwards.
  void cancel();
  // A callback for Responder/StreamWriter::on_disconnect that cancel()s this run (it holds the
  // generation weakly: the generation's hooks may hold the responder).
  std::function<void()> canceller() {
    return [weak = weak_from_this()] {
      if (auto self = weak.lock()) self->cancel();
    };
  }

  const std::vector<PromptResult>& prompts() const { return prompts_; }
  const std::string& error() const { return error_; }
  bool cancelled() const { return cancelled_.load(); }
  Clock::time_point received() const { return received_; }
  // The text TGI shows for a token: the decoded text that became final with it, or for a
  // special token its own text (TGI decodes with special tokens; clients skip them).
  static std::string stream_text(const RequestEvent& event);

 private:
  void on_event(size_t prompt, RequestEvent&& event);
  void end_locked(bool success, const char* failure);

  Metrics& metrics_;
  Admission admission_;
  const Clock::time_point received_;
  Hooks hooks_;

  std::recursive_mutex mu_;  // recursive: a hook's write may report a disconnect at once
  std::vector<PromptResult> prompts_;
  size_t finished_ = 0;
  bool ended_ = false;
  std::string error_;

  std::mutex handles_mu_;
  std::vector<std::shared_ptr<RequestHandle>> handles_;
  std::atomic<bool> cancelled_{false};
};

struct Api::Impl {
  Impl(Engine& engine_ref, const ModelTokenizer& tokenizer_ref, AdapterResolver& adapters_ref,
       Metrics& metrics_ref, ApiOptions options_value);

  Engine& engine;
  const ModelTokenizer& tokenizer;
  AdapterResolver& adapters;
  Metrics& metrics;
  const ApiOptions options;
  const int64_t created_unix;  // /v1/models `created`
  boost::asio::thread_pool blocking;
  std::shared_ptr<std::atomic<int64_t>> in_flight = std::make_shared<std::atomic<int64_t>>(0);
  std::atomic<bool> draining{false};

  LengthLimits limits() const { return {options.max_input_tokens, options.max_total_tokens}; }

  // Takes a max_concurrent_requests slot (counts the request in the metrics); throws 429.
  Admission admit();
  // Answers an error in `dialect` and counts the failure.
  void fail(Responder& responder, Dialect dialect, const ApiError& error);
  // Runs `body`, turning ApiError/AdapterError/mil::Error/any other exception into error
  // answers (counted in tgi_request_failure when `generation`). Never throws (it runs tasks of
  // the blocking pool, where an exception would end the process). Answers only what was not
  // answered yet: with `responder` a TrackedResponder (Api::handle makes one), an error after
  // stream() becomes an SSE error event that ends the stream, and one after respond() is only
  // logged.
  void guarded(const std::shared_ptr<Responder>& responder, Dialect dialect,
               const std::function<void()>& body, bool generation = false);
  // Resolves `spec` to the adapter name to run: at once for the base model, else on the
  // blocking pool (downloads). `then` runs on that thread, inside guarded(generation=true).
  void with_adapter(AdapterSpec spec, std::shared_ptr<Responder> responder, Dialect dialect,
                    std::function<void(const std::string& adapter)> then);

  // Routes (tgi_routes.cpp).
  void tgi_generate(const HttpRequest& request, std::shared_ptr<Responder> responder, bool compat,
                    bool stream_route);
  void tgi_tokenize(const HttpRequest& request, Responder& responder);
  HttpResponse tgi_info();
  // Routes (openai_routes.cpp).
  void openai_completions(const HttpRequest& request, std::shared_ptr<Responder> responder);
  void openai_chat(const HttpRequest& request, std::shared_ptr<Responder> responder);
  HttpResponse openai_models();
  // The adapter an OpenAI `model` names: the base for the served name, "" or absent.
  AdapterSpec adapter_of_model(const std::string& model) const;
  bool names_base_model(const std::string& model) const;
};

}  // namespace mil::server
