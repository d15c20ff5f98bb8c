// Generation: one HTTP request's engine requests in flight; see api_internal.h.
#include <utility>

#include "core/error.h"
#include "server/api_internal.h"

namespace mil::server {

Generation::Generation(Metrics& metrics, Admission admission, Clock::time_point received,
                       Hooks hooks)
    : metrics_(metrics),
      admission_(std::move(admission)),
      received_(received),
      hooks_(std::move(hooks)) {}

std::string Generation::stream_text(const RequestEvent& event) {
  if (event.token && event.token->special && event.text.empty()) return event.token->text;
  return event.text;
}

void Generation::start(Engine& engine, std::vector<EngineRequest> requests) {
  {
    const std::lock_guard lock(mu_);
    prompts_.resize(requests.size());
  }
  for (size_t i = 0; i < requests.size(); ++i) {
    if (cancelled_.load()) return;  // cancel() already ended the run
    std::shared_ptr<RequestHandle> handle;
    try {
      handle = engine.submit(std::move(requests[i]),
                             [self = shared_from_this(), i](RequestEvent&& event) {
                               self->on_event(i, std::move(event));
                             });
    } catch (...) {  // mil::Error (a refusal) or anything else (bad_alloc): the same clean-up
      std::vector<std::shared_ptr<RequestHandle>> submitted;
      {
        const std::lock_guard lock(handles_mu_);
        submitted.swap(handles_);
      }
      for (const auto& h : submitted) h->cancel();
      const std::lock_guard lock(mu_);
      // An earlier prompt may have failed meanwhile (on_done answered and counted it), or the
      // client left (cancel()): the run is over and answered; throwing would answer twice.
      if (ended_) return;
      ended_ = true;  // the caller answers (and counts) the error
      admission_.release();
      throw;
    }
    {
      const std::lock_guard lock(handles_mu_);
      handles_.push_back(handle);
    }
    // cancel() sets the flag before it collects the handles: one of the two sees this one.
    if (cancelled_.load()) handle->cancel();
  }
}

void Generation::cancel() {
  cancelled_.store(true);
  std::vector<std::shared_ptr<RequestHandle>> handles;
  {
    const std::lock_guard lock(handles_mu_);
    handles = handles_;
  }
  for (const auto& h : handles) h->cancel();
  const std::lock_guard lock(mu_);
  if (!ended_) end_locked(false, "cancelled");
}

void Generation::start_answering(Responder& responder, Engine& engine,
                                 std::vector<EngineRequest> requests) {
  responder.on_disconnect(canceller());
  try {
    start(engine, std::move(requests));
  } catch (const Error& e) {
    throw_validation(e.what());
  }
}

void Generation::on_event(size_t prompt, RequestEvent&& event) {
  const std::lock_guard lock(mu_);
  if (ended_ || prompt >= prompts_.size()) return;
  PromptResult& result = prompts_[prompt];
  if (result.finished) return;

  const bool failed = event.finished && (event.finish == FinishReason::Error ||
                                         event.finish == FinishReason::Cancelled);
  if (!failed) {
    if (event.token) {
      TokenInfo token = *event.token;
      token.text = stream_text(event);
      result.tokens.push_back(std::move(token));
      result.top_tokens.push_back(event.top_tokens);
    }
    result.text += event.text;
    result.visible_text += event.visible_text;
    if (hooks_.on_event) hooks_.on_event(*this, prompt, event);
    if (ended_) return;  // the hook's write reported a disconnect
  }
  if (!event.finished) return;

  result.finished = true;
  ++finished_;
  event.token.reset();
  result.final = std::move(event);
  const RequestEvent& last = result.final;
  if (failed) {
    error_ = !last.error.empty()                      ? last.error
             : last.finish == FinishReason::Cancelled ? std::string("the request was cancelled")
                                                      : std::string("generation failed");
    std::vector<std::shared_ptr<RequestHandle>> handles;
    {
      const std::lock_guard handles_lock(handles_mu_);
      handles = handles_;
    }
    for (const auto& h : handles) h->cancel();  // the other prompts of this request
    end_locked(false, "generation");
    return;
  }
  metrics_.request_generated(seconds_since(received_), last.queue_seconds, last.inference_seconds,
                             last.generated_tokens);
  if (finished_ == prompts_.size()) end_locked(true, nullptr);
}

void Generation::end_locked(bool success, const char* failure) {
  ended_ = true;
  admission_.release();
  if (success) {
    metrics_.request_succeeded();
  } else {
    metrics_.request_failed(failure);
  }
  // on_done runs once; moved out so that what it holds (the responder) goes with it.
  if (auto on_done = std::move(hooks_.on_done); on_done && !cancelled_.load()) on_done(*this);
}

}  // namespace mil::server
