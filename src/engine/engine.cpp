// The real Engine (engine.h): the engine thread and its mechanism. Policy is scheduler.h's,
// KV block bookkeeping block_manager.h's, token choice logits_processor.h's and stop
// sequences stop_matcher.h's; this file wires them to the model, the adapter store and the
// requests' event sinks (the engine's types: engine_impl.h; token choice and the events of a
// new token: engine_tokens.cpp).
//
// Threads: submit(), stats(), drain(), shutdown() and RequestHandle::cancel() come from any
// thread and meet the engine thread only under Inbox::mu (new requests, flags) and the
// handle's own mutex (cancellation versus event delivery). Everything else (sequences,
// blocks, the KV cache, adapter pins) belongs to the engine thread alone.
#include "engine/engine_impl.h"

#include <algorithm>
#include <cmath>
#include <mutex>
#include <thread>

#include "core/error.h"
#include "engine/warmup.h"
#include "model/llama.h"

namespace mil::engine_internal {

// Rows of prompt logits one step may ask for (see kPromptLogitBytes).
int64_t prompt_logit_rows(const LlamaModel& model) {
  return std::max<int64_t>(1, kPromptLogitBytes / (model.config().vocab_size * 4));
}

EngineImpl::EngineImpl(LlamaModel& model, const ModelTokenizer& tokenizer, EngineOptions options)
    : model_(model),
      tokenizer_(tokenizer),
      options_(options),
      adapters_(model.adapters()),
      device_sampling_(samples_on_device(options.sample_on_device, model.ops())),
      device_sampler_(model.ops()),
      sizing_(warm_up_and_size_kv(model, options, prompt_logit_rows(model),
                                   device_sampling_ ? &device_sampler_ : nullptr)),
      cache_(model.make_kv_cache(sizing_.blocks, options.block_size)),
      blocks_(cache_.num_blocks(), options.block_size, options.prefix_caching) {
  kv_bytes_ = sizing_.bytes_per_block * cache_.num_blocks();
  const int64_t cache_tokens = cache_.num_blocks() * options.block_size;
  MIL_CHECK(options.max_batch_prefill_tokens > 0, "engine: max_batch_prefill_tokens must be positive");
  budgets_.block_size = options.block_size;
  budgets_.step_tokens = std::min(options.max_batch_prefill_tokens, model.max_tokens_per_step());
  budgets_.total_tokens = options.max_batch_total_tokens > 0
                              ? std::min(options.max_batch_total_tokens, cache_tokens)
                              : cache_tokens;
  budgets_.max_batch_size = options.max_batch_size;
  budgets_.step_logit_rows = prompt_logit_rows(model);

  eos_ids_ = model.config().eos_token_ids;
  if (!tokenizer.eos_token().empty()) {
    if (auto id = tokenizer.tokenizer().token_to_id(tokenizer.eos_token())) eos_ids_.push_back(*id);
  }

  stats_.kv_blocks = cache_.num_blocks();
  stats_.block_size = options.block_size;
  stats_.kv_bytes = kv_bytes_;
  stats_.max_batch_prefill_tokens = budgets_.step_tokens;
  stats_.max_batch_total_tokens = budgets_.total_tokens;
  stats_.free_blocks = blocks_.free_blocks();
  fill_memory_stats(stats_);
  if (!options.decode_graph_batch_sizes.empty()) {
    const int64_t most_blocks = std::min<int64_t>(
        cache_.num_blocks(),
        (model.config().max_position_embeddings + options.block_size - 1) / options.block_size);
    model_.capture_decode_graphs(cache_, options.decode_graph_batch_sizes,
                                 static_cast<int32_t>(most_blocks));
  }
  thread_ = std::thread([this] { run(); });
}

std::shared_ptr<RequestHandle> EngineImpl::submit(EngineRequest request, EventSink sink) {
  const ModelConfig& c = model_.config();
  const RequestParams& p = request.params;
  MIL_CHECK(!request.prompt.empty(), "the prompt is empty");
  for (int32_t id : request.prompt) {
    MIL_CHECK(id >= 0 && id < c.vocab_size, "prompt token id {} is outside the vocabulary ({})",
              id, c.vocab_size);
  }
  MIL_CHECK(p.max_new_tokens >= 1, "max_new_tokens must be at least 1, got {}", p.max_new_tokens);
  uint64_t registration = 0;
  if (!p.adapter.empty()) {
    if (adapters_ != nullptr) registration = adapters_->registration(p.adapter);
    MIL_CHECK(registration != 0, "unknown adapter '{}'", p.adapter);
  }
  const int64_t total = static_cast<int64_t>(request.prompt.size()) + p.max_new_tokens;
  MIL_CHECK(total <= c.max_position_embeddings,
            "prompt ({} tokens) + max_new_tokens ({}) exceed the model's {} positions",
            request.prompt.size(), p.max_new_tokens, c.max_position_embeddings);
  MIL_CHECK(blocks_.blocks_for(total) <= blocks_.num_blocks() && total <= budgets_.total_tokens,
            "prompt ({} tokens) + max_new_tokens ({}) exceed the KV cache ({} tokens)",
            request.prompt.size(), p.max_new_tokens,
            std::min(blocks_.num_blocks() * blocks_.block_size(), budgets_.total_tokens));
  MIL_CHECK(static_cast<bool>(sink), "submit needs an event sink");

  auto s = std::make_unique<Sequence>(p.seed, p.stop);
  s->id = next_id_.fetch_add(1);
  s->handle = std::make_shared<HandleState>();
  s->sink = std::move(sink);
  s->params = std::move(request.params);
  s->registration = registration;
  s->cache_key = prefix_cache_key(s->params.adapter, registration);
  s->prompt_len = static_cast<int32_t>(request.prompt.size());
  s->tokens = std::move(request.prompt);
  s->tokens.reserve(s->tokens.size() + s->params.max_new_tokens);
  s->prefill_done = !s->params.prompt_logprobs;
  if (device_sampling_ && s->params.repetition_penalty != 1.0f) {
    s->seen = distinct_ids(s->tokens);
  }
  s->decoder.emplace(tokenizer_.tokenizer(), s->params.skip_special_tokens);
  s->submitted = Clock::now();
  auto handle = std::make_shared<Handle>(s->id, s->handle, inbox_);
  {
    std::lock_guard lock(inbox_->mu);
    MIL_CHECK(!inbox_->stop && !inbox_->stopped, "the engine is shut down");
    MIL_CHECK(!inbox_->draining, "the engine is draining and admits no new requests");
    submitted_.push_back(std::move(s));
    inbox_->idle = false;
    inbox_->wake.notify_all();
  }
  return handle;
}

void EngineImpl::drain() {
  std::unique_lock lock(inbox_->mu);
  inbox_->draining = true;
  inbox_->wake.notify_all();
  inbox_->idle_cv.wait(lock, [&] { return inbox_->idle || inbox_->stopped; });
}

void EngineImpl::shutdown() {
  {
    std::lock_guard lock(inbox_->mu);
    inbox_->stop = true;
    inbox_->wake.notify_all();
  }
  // From a sink (the engine thread itself) it can only ask; the thread ends after this step.
  if (std::this_thread::get_id() == thread_.get_id()) return;
  std::lock_guard guard(shutdown_mu_);
  if (thread_.joinable()) thread_.join();
}

void EngineImpl::take_submitted() {
  while (!submitted_.empty()) {
    waiting_.push_back(std::move(submitted_.front()));
    submitted_.pop_front();
  }
}

void EngineImpl::run() {
  bool blocked = false;  // the last step could run nothing
  for (;;) {
    {
      std::unique_lock lock(inbox_->mu);
      take_submitted();
      if (inbox_->stop) break;
      if (waiting_.empty() && running_.empty()) {
        inbox_->idle = true;
        inbox_->idle_cv.notify_all();
        inbox_->wake.wait(lock, [&] { return inbox_->stop || !submitted_.empty() || inbox_->poked; });
        inbox_->poked = false;
        continue;
      }
      if (blocked) {
        inbox_->wake.wait_for(lock, kBlockedPoll,
                              [&] { return inbox_->stop || !submitted_.empty() || inbox_->poked; });
        take_submitted();
        if (inbox_->stop) break;
      }
      inbox_->poked = false;
    }
    drop_cancelled();
    blocked = !step();
  }
  // Shut down: every unfinished request that still listens gets a final Error event.
  {
    std::lock_guard lock(inbox_->mu);
    take_submitted();
  }
  for (auto& s : running_) fail(*s, "the engine shut down");
  for (auto& s : waiting_) fail(*s, "the engine shut down");
  running_.clear();
  waiting_.clear();
  publish_stats(nullptr);
  std::lock_guard lock(inbox_->mu);
  inbox_->stopped = true;
  inbox_->idle = true;
  inbox_->idle_cv.notify_all();
}

void EngineImpl::drop_cancelled() {
  for (auto it = running_.begin(); it != running_.end();) {
    if ((*it)->cancelled()) {
      retire(**it);
      it = running_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto it = waiting_.begin(); it != waiting_.end();) {
    if ((*it)->cancelled()) {
      retire(**it);
      it = waiting_.erase(it);
    } else {
      ++it;
    }
  }
}

void EngineImpl::retire(Sequence& s) {
  blocks_.release(s.kv);
  if (s.slot >= 0) adapters_->release(s.slot);
  s.slot = -1;
  s.computed = 0;
}

void EngineImpl::fail(Sequence& s, const std::string& error) {
  retire(s);
  s.finished = true;
  RequestEvent e;
  e.finished = true;
  e.finish = FinishReason::Error;
  e.error = error;
  fill_final(s, e, Clock::now());
  emit(s, std::move(e));
}

void EngineImpl::emit(Sequence& s, RequestEvent&& event) {
  std::lock_guard lock(s.handle->mu);
  if (s.handle->cancelled.load()) return;
  try {
    s.sink(std::move(event));
  } catch (...) {
    // A sink must not throw; one that does loses its event, not the engine.
  }
}

bool EngineImpl::adapter_fits(Sequence& s, size_t waiting_index) {
  if (s.params.adapter.empty()) return true;
  try {
    s.slot = adapters_->acquire(s.params.adapter);
    const uint64_t registration = adapters_->slot_registration(s.slot);
    if (registration != s.registration) {
      // Unloaded and registered again since its prefix was looked up under the old key: not
      // admitted this step; the next plan looks its prefix up under the new registration.
      adapters_->release(s.slot);
      s.slot = -1;
      s.registration = registration;
      s.cache_key = prefix_cache_key(s.params.adapter, registration);
      return false;
    }
    return true;
  } catch (const Error& e) {
    // Another request's pin may be what keeps it out: then it waits for that to end. With
    // nothing pinned by this engine, waiting cannot help.
    bool pinned = false;
    for (const auto& r : running_) pinned |= r->slot >= 0;
    for (size_t i = 0; i < waiting_index; ++i) pinned |= waiting_[i]->slot >= 0;
    // An adapter unloaded since submit can never come back under this request: fail it now
    // instead of holding up the queue behind it.
    if (!pinned || adapters_->registration(s.params.adapter) == 0) s.admission_error = e.what();
    return false;
  }
}

void EngineImpl::preempt(Sequence& s) {
  // Recompute: the tokens so far become the prompt of its next admission; the sampler,
  // decoder and stop state stay, so the stream goes on where it stopped.
  retire(s);
  s.decoding = false;
  if (!s.prefill_done) s.prefill.clear();  // its prompt logprobs are recomputed from the start
  ++preemptions_;
}

bool EngineImpl::step() {
  const Clock::time_point step_start = Clock::now();
  StepReport report;

  std::vector<RunningSeq> running_info;
  running_info.reserve(running_.size());
  for (const auto& s : running_) {
    running_info.push_back({static_cast<int64_t>(s->tokens.size()), s->computed,
                            static_cast<int64_t>(s->kv.blocks.size()),
                            blocks_.exclusive_blocks(s->kv), s->wants_prompt_logprobs()});
  }
  std::vector<WaitingSeq> waiting_info;
  waiting_info.reserve(waiting_.size());
  for (const auto& s : waiting_) {
    waiting_info.push_back({static_cast<int64_t>(s->tokens.size()),
                            !s->wants_prompt_logprobs(), s->wants_prompt_logprobs()});
  }
  SchedulerState state;
  state.running = &running_info;
  state.waiting = &waiting_info;
  state.available_blocks = blocks_.available_blocks();
  state.prefix = [&](size_t i, int64_t max_tokens) {
    const Sequence& s = *waiting_[i];
    return blocks_.lookup(s.cache_key, s.tokens, max_tokens);
  };
  state.adapter_fits = [&](size_t i) { return adapter_fits(*waiting_[i], i); };
  const StepPlan plan = plan_step(state, budgets_);

  // A request whose adapter can never be loaded fails instead of blocking the queue.
  if (plan.admit.size() < waiting_.size() && !waiting_[plan.admit.size()]->admission_error.empty()) {
    auto it = waiting_.begin() + static_cast<std::ptrdiff_t>(plan.admit.size());
    fail(**it, (*it)->admission_error);
    waiting_.erase(it);
  }

  std::vector<Scheduled> work;
  for (const StepPlan::Chunk& c : plan.run) {
    Sequence* s = running_[c.index].get();
    work.push_back({s, c.tokens, -1, 0, s->wants_prompt_logprobs(), !s->decoding});
  }
  // Preemptions: out of the batch, back to the front of the queue, older ones first.
  if (!plan.preempt.empty()) {
    std::vector<bool> out(running_.size(), false);
    for (size_t i : plan.preempt) out[i] = true;
    std::vector<std::unique_ptr<Sequence>> keep;
    std::vector<std::unique_ptr<Sequence>> preempted;
    for (size_t i = 0; i < running_.size(); ++i) {
      (out[i] ? preempted : keep).push_back(std::move(running_[i]));
    }
    running_ = std::move(keep);
    for (auto it = preempted.rbegin(); it != preempted.rend(); ++it) {
      preempt(**it);
      waiting_.push_front(std::move(*it));
    }
    report.preempted = static_cast<int32_t>(preempted.size());
  }
  // Admissions: waiting_[0 .. admit.size()) in order, their adapters already pinned.
  const Clock::time_point now = Clock::now();
  for (const StepPlan::Chunk& c : plan.admit) {
    Sequence& s = *waiting_[c.index];
    const int64_t got = blocks_.acquire_prefix(s.cache_key, s.tokens, c.cached_tokens, s.kv);
    MIL_CHECK(got == c.cached_tokens, "engine: prefix cache gave {} tokens, planned {}", got,
              c.cached_tokens);
    s.computed = got;
    prefix_hits_ += got;
    if (!s.scheduled_once) {
      s.scheduled_once = true;
      s.first_scheduled = now;
      s.cached_prompt_tokens = static_cast<int32_t>(got);
    }
    s.decoding = false;
    work.push_back({&s, c.tokens, -1, 0, s.wants_prompt_logprobs(), true});
  }
  for (size_t i = 0; i < plan.admit.size(); ++i) {
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
  }
  report.admitted = static_cast<int32_t>(plan.admit.size());
  if (work.empty()) {
    publish_stats(nullptr);
    return false;
  }

  // The step: rows grouped by adapter slot (stable, so oldest first within a slot).
  std::stable_sort(work.begin(), work.end(),
                   [](const Scheduled& a, const Scheduled& b) { return a.seq->slot < b.seq->slot; });
  const int32_t bs = blocks_.block_size();
  StepBatch batch;
  batch.query_start.push_back(0);
  size_t max_blocks = 0;
  for (Scheduled& c : work) {
    Sequence& s = *c.seq;
    const int64_t context = s.computed + c.tokens;
    const int64_t need = blocks_.blocks_for(context) - static_cast<int64_t>(s.kv.blocks.size());
    MIL_CHECK(need <= 0 || blocks_.allocate(need, s.kv), "engine: KV blocks ran out (planned)");
    const auto row0 = static_cast<int32_t>(batch.token_ids.size());
    const bool completes = context == static_cast<int64_t>(s.tokens.size());
    for (int64_t t = 0; t < c.tokens; ++t) {
      const auto pos = static_cast<int32_t>(s.computed + t);
      batch.token_ids.push_back(s.tokens[pos]);
      batch.positions.push_back(pos);
      batch.slots.push_back(s.kv.blocks[pos / bs] * bs + pos % bs);
    }
    if (c.all_logits) {
      c.first_logit = static_cast<int32_t>(batch.logit_rows.size());
      c.logit_rows = static_cast<int32_t>(c.tokens);
      for (int64_t t = 0; t < c.tokens; ++t) batch.logit_rows.push_back(row0 + static_cast<int32_t>(t));
    } else if (completes) {
      c.first_logit = static_cast<int32_t>(batch.logit_rows.size());
      c.logit_rows = 1;
      batch.logit_rows.push_back(row0 + static_cast<int32_t>(c.tokens) - 1);
    }
    const auto rows_end = static_cast<int32_t>(batch.token_ids.size());
    batch.query_start.push_back(rows_end);
    batch.context_len.push_back(static_cast<int32_t>(context));
    if (!batch.lora_segments.empty() && batch.lora_segments.back().slot == s.slot) {
      batch.lora_segments.back().row_end = rows_end;
    } else {
      batch.lora_segments.push_back({row0, rows_end, s.slot});
    }
    max_blocks = std::max(max_blocks, s.kv.blocks.size());
    if (c.prefill) {
      ++report.prefill_sequences;
      report.prefill_tokens += static_cast<int32_t>(c.tokens);
    } else {
      ++report.decode_sequences;
    }
  }
  batch.max_blocks_per_seq = static_cast<int32_t>(max_blocks);
  for (const Scheduled& c : work) {
    const auto& b = c.seq->kv.blocks;
    batch.block_table.insert(batch.block_table.end(), b.begin(), b.end());
    batch.block_table.resize(batch.block_table.size() + (max_blocks - b.size()), b[0]);
  }
  const bool any_adapter = std::any_of(batch.lora_segments.begin(), batch.lora_segments.end(),
                                       [](const LoraSegment& g) { return g.slot >= 0; });
  if (!any_adapter) batch.lora_segments.clear();

  const Clock::time_point forward_start = Clock::now();
  Tensor logits;
  // Tokens are chosen on the device when every row can be (prompt logprobs need the host).
  const bool on_device =
      device_sampling_ && std::all_of(work.begin(), work.end(), [](const Scheduled& c) {
        return !c.all_logits && device_sampling_supports(c.seq->params);
      });
  try {
    logits = model_.forward(batch, cache_, on_device ? LogitsOn::Device : LogitsOn::Host);
  } catch (const std::exception& e) {
    // The step is lost; so are its requests (their cache contents are unknown now).
    for (Scheduled& c : work) c.seq->computed = 0;
    for (auto it = running_.begin(); it != running_.end();) {
      const bool in_step = std::any_of(work.begin(), work.end(),
                                       [&](const Scheduled& c) { return c.seq == it->get(); });
      if (in_step) {
        fail(**it, fmt::format("forward step failed: {}", e.what()));
        it = running_.erase(it);
      } else {
        ++it;
      }
    }
    publish_stats(nullptr);
    return true;
  }
  const Clock::time_point sample_start = Clock::now();
  report.forward_seconds = seconds_between(forward_start, sample_start);

  const std::string device_error = on_device ? choose_on_device(work, logits) : std::string();
  report.sampled_on_device = on_device;
  for (Scheduled& c : work) {
    Sequence& s = *c.seq;
    s.computed += c.tokens;
    blocks_.commit(s.cache_key, s.tokens, s.computed, s.kv);
    if (c.logit_rows == 0) continue;
    if (!on_device) {
      process_logits(c, logits);
    } else if (!device_error.empty()) {
      fail(s, fmt::format("request {}: {}", s.id, device_error));
    } else {
      emit_token(s, device_choices_[c.first_logit]);
    }
  }
  // Finished requests leave the batch (their sequences were retired in emit_token).
  std::erase_if(running_, [](const std::unique_ptr<Sequence>& s) { return s->finished; });
  const Clock::time_point end = Clock::now();
  report.sample_seconds = seconds_between(sample_start, end);
  report.step_seconds = seconds_between(step_start, end);
  publish_stats(&report);
  return true;
}

void EngineImpl::publish_stats(const StepReport* report) {
  EngineStats st;
  st.kv_blocks = cache_.num_blocks();
  st.block_size = blocks_.block_size();
  st.kv_bytes = kv_bytes_;
  st.free_blocks = blocks_.free_blocks();
  st.cached_blocks = blocks_.cached_blocks();
  st.max_batch_prefill_tokens = budgets_.step_tokens;
  st.max_batch_total_tokens = budgets_.total_tokens;
  {
    std::lock_guard lock(inbox_->mu);
    st.queue_size = static_cast<int64_t>(waiting_.size() + submitted_.size());
  }
  st.running = static_cast<int64_t>(running_.size());
  for (const auto& s : running_) st.running_tokens += s->computed;
  st.preemptions = preemptions_;
  st.prefix_cache_hits = prefix_hits_;
  fill_memory_stats(st);
  StepObserver observer;
  {
    std::lock_guard lock(stats_mu_);
    stats_ = st;
    if (report != nullptr) observer = observer_;
  }
  if (observer) observer(*report, st);
}

}  // namespace mil::engine_internal

namespace mil {

std::unique_ptr<Engine> make_engine(LlamaModel& model, const ModelTokenizer& tokenizer,
                                    EngineOptions options) {
  return std::make_unique<engine_internal::EngineImpl>(model, tokenizer, options);
}

}  // namespace mil
