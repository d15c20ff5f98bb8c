// The serving engine's internals (engine.h's make_engine builds an EngineImpl): the inbox
// shared with request handles, a running sequence, and the engine itself. engine.cpp holds
// the engine thread, admission and the step; engine_tokens.cpp token choice (host and device
// paths), prompt logprobs and the events a new token sends.
#pragma once

#include "engine/engine.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <limits>
#include <mutex>
#include <optional>
#include <thread>

#include "core/error.h"
#include "engine/block_manager.h"
#include "engine/device_sampler.h"
#include "engine/logits_processor.h"
#include "engine/scheduler.h"
#include "engine/stop_matcher.h"
#include "engine/warmup.h"
#include "model/llama.h"
#include "tokenizer/model_tokenizer.h"

namespace mil::engine_internal {

using Clock = std::chrono::steady_clock;

// The prefix cache's adapter key: the name and its registration ("" for the base model).
inline std::string prefix_cache_key(const std::string& adapter, uint64_t registration) {
  return adapter.empty() ? std::string() : fmt::format("{}#{}", adapter, registration);
}

inline double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Rows of prompt logits (prompt_logprobs) one step may ask the model for: the logits buffer
// grows to the rows asked, so this bounds it (64 MiB of f32).
constexpr int64_t kPromptLogitBytes = int64_t{64} << 20;
// How long an engine with waiting requests but nothing it can run (say, every adapter slot
// pinned by another user of the store) sleeps before planning again.
constexpr auto kBlockedPoll = std::chrono::milliseconds(5);

// Shared by the engine and the handles (which may outlive it).
struct Inbox {
  std::mutex mu;
  std::condition_variable wake;  // the engine thread waits here
  std::condition_variable idle_cv;  // drain() waits here
  bool poked = false;            // a cancel() since the engine last looked
  bool stop = false;
  bool draining = false;
  bool idle = true;              // no request submitted, queued or running
  bool stopped = false;          // the engine thread has ended
};

struct HandleState {
  // Held while delivering an event and while cancelling, so that after cancel() returns no
  // event is delivered. Recursive: a sink may cancel its own request.
  std::recursive_mutex mu;
  std::atomic<bool> cancelled{false};
};

class Handle final : public RequestHandle {
 public:
  Handle(uint64_t id, std::shared_ptr<HandleState> state, std::weak_ptr<Inbox> inbox)
      : id_(id), state_(std::move(state)), inbox_(std::move(inbox)) {}
  void cancel() override {
    {
      std::lock_guard lock(state_->mu);
      if (state_->cancelled.exchange(true)) return;
    }
    if (auto inbox = inbox_.lock()) {
      std::lock_guard lock(inbox->mu);
      inbox->poked = true;
      inbox->wake.notify_all();
    }
  }
  uint64_t id() const override { return id_; }

 private:
  uint64_t id_;
  std::shared_ptr<HandleState> state_;
  std::weak_ptr<Inbox> inbox_;
};

struct Sequence {
  uint64_t id = 0;
  std::shared_ptr<HandleState> handle;
  EventSink sink;
  RequestParams params;
  int32_t prompt_len = 0;          // of the request
  std::vector<int32_t> tokens;     // prompt, then generated tokens
  std::vector<int32_t> seen;       // distinct ids of tokens, increasing (device path, penalty)
  int32_t generated = 0;
  int64_t computed = 0;            // tokens whose keys and values are in the cache
  SequenceBlocks kv;
  int32_t slot = -1;               // pinned adapter slot while running; -1 = none / base
  // The adapter registration (AdapterStore::registration) its KV is computed with, and the
  // prefix-cache key naming it: a name unloaded and loaded again is another adapter.
  uint64_t registration = 0;
  std::string cache_key;           // "" for the base model
  bool decoding = false;           // sampled since its last admission
  std::string admission_error;     // its adapter can never be made resident
  TokenChooser chooser;
  std::optional<IncrementalDecoder> decoder;
  StopMatcher stop;
  std::vector<TokenInfo> prefill;  // prompt logprobs, while asked and being computed
  bool prefill_done = false;       // prompt logprobs complete (or not asked)
  int32_t cached_prompt_tokens = 0;
  bool scheduled_once = false;
  bool finished = false;           // its last event went out (or it failed): leaves the batch
  Clock::time_point submitted, first_scheduled, first_token;

  Sequence(uint64_t seed, const std::vector<std::string>& stops) : chooser(seed), stop(stops) {}
  bool wants_prompt_logprobs() const { return params.prompt_logprobs && !prefill_done; }
  bool cancelled() const { return handle->cancelled.load(std::memory_order_relaxed); }
};

class EngineImpl final : public Engine {
 public:
  EngineImpl(LlamaModel& model, const ModelTokenizer& tokenizer, EngineOptions options);
  ~EngineImpl() override {
    shutdown();
    model_.release_decode_graphs(cache_);
  }

  std::shared_ptr<RequestHandle> submit(EngineRequest request, EventSink sink) override;
  EngineStats stats() const override {
    std::lock_guard lock(stats_mu_);
    return stats_;
  }
  void set_step_observer(StepObserver observer) override {
    std::lock_guard lock(stats_mu_);
    observer_ = std::move(observer);
  }
  void drain() override;
  void shutdown() override;

 private:
  struct Scheduled {
    Sequence* seq;
    int64_t tokens;
    int32_t first_logit = -1;  // index into the step's logits
    int32_t logit_rows = 0;
    bool all_logits = false;
    bool prefill = false;
  };

  void run();
  // One iteration; false when nothing could run.
  bool step();
  void take_submitted();  // under inbox_->mu
  void drop_cancelled();
  bool adapter_fits(Sequence& s, size_t waiting_index);
  void preempt(Sequence& s);
  // Prompt logprobs of the chunk's rows, then the next token when the chunk completes it.
  void process_logits(Scheduled& c, const Tensor& logits);
  void emit_token(Sequence& s, const TokenChoice& choice);
  // The device path: the chosen token of every logit row into device_choices_; an error
  // message where it failed (the step's sequences with a logit row fail with it).
  std::string choose_on_device(const std::vector<Scheduled>& work, const Tensor& logits);
  // Frees `s`'s KV blocks and adapter pin (end, cancellation or preemption).
  void retire(Sequence& s);
  void fail(Sequence& s, const std::string& error);
  void emit(Sequence& s, RequestEvent&& event);
  void fill_final(Sequence& s, RequestEvent& event, Clock::time_point now) const;
  TokenInfo token_info(int32_t id, float logprob) const;
  void publish_stats(const StepReport* report);
  void fill_memory_stats(EngineStats& st) const {
    st.device_total_bytes = sizing_.device_total;
    st.free_before_warmup = sizing_.free_before;
    st.free_after_warmup = sizing_.free_after;
    st.graph_reserve_bytes = sizing_.graph_reserve;
  }

  LlamaModel& model_;
  const ModelTokenizer& tokenizer_;
  EngineOptions options_;
  AdapterStore* adapters_;
  bool device_sampling_ = false;
  DeviceSampler device_sampler_;  // reserved before the KV cache is sized (warmup.h)
  KvSizing sizing_;  // filled by warm_up_and_size_kv before cache_ is made
  KVCache cache_;
  BlockManager blocks_;
  SchedulerBudgets budgets_;
  std::vector<int32_t> eos_ids_;
  int64_t kv_bytes_ = 0;
  std::vector<DeviceSampleRow> device_rows_;
  std::vector<TokenChoice> device_choices_;

  std::shared_ptr<Inbox> inbox_ = std::make_shared<Inbox>();
  std::deque<std::unique_ptr<Sequence>> submitted_;  // under inbox_->mu
  std::atomic<uint64_t> next_id_{1};

  // Engine thread only.
  std::deque<std::unique_ptr<Sequence>> waiting_;
  std::vector<std::unique_ptr<Sequence>> running_;  // in admission order
  int64_t preemptions_ = 0;
  int64_t prefix_hits_ = 0;

  mutable std::mutex stats_mu_;
  EngineStats stats_;
  StepObserver observer_;

  std::mutex shutdown_mu_;
  std::thread thread_;
};

// Rows of prompt logits one step may ask for (see kPromptLogitBytes).
int64_t prompt_logit_rows(const LlamaModel& model);

}  // namespace mil::engine_internal
