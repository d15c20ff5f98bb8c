// The serving engine on the tiny GGUF fixture (model + tokenizer) and its LoRA fixture:
// continuous batching gives each request what it gets alone (Generator), with adapters mixed,
// the prefix cache, preemption, seeded sampling, stop sequences, prompt logprobs, random
// cancellation, drain and shutdown.
#include "engine/engine.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <random>
#include <thread>

#include "backends/cpu/cpu_ops.h"
#include "engine/tiny_engine_test_base.h"
#include "core/error.h"
#include "engine/generator.h"
#include "engine/logits_processor.h"
#include "lora/adapter_store.h"
#include "tokenizer/model_tokenizer.h"

namespace mil {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

const fs::path kFixtures = MIL_FIXTURES_DIR;

// Collects one request's events; thread-safe.
class Collector {
 public:
  EventSink sink() {
    return [this](RequestEvent&& e) {
      std::lock_guard lock(mu_);
      if (cancelled_) ++after_cancel_;
      if (e.finished) done_ = true;
      events_.push_back(std::move(e));
      cv_.notify_all();
    };
  }
  void mark_cancelled() {
    std::lock_guard lock(mu_);
    cancelled_ = true;
  }
  bool wait(std::chrono::milliseconds timeout = 30s) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return done_; });
  }
  size_t count() {
    std::lock_guard lock(mu_);
    return events_.size();
  }
  bool done() {
    std::lock_guard lock(mu_);
    return done_;
  }
  int after_cancel() {
    std::lock_guard lock(mu_);
    return after_cancel_;
  }
  std::vector<RequestEvent> events() {
    std::lock_guard lock(mu_);
    return events_;
  }
  std::vector<int32_t> tokens() {
    std::vector<int32_t> t;
    for (const auto& e : events()) {
      if (e.token) t.push_back(e.token->id);
    }
    return t;
  }
  std::string text() {
    std::string s;
    for (const auto& e : events()) s += e.text;
    return s;
  }
  std::string visible() {
    std::string s;
    for (const auto& e : events()) s += e.visible_text;
    return s;
  }
  RequestEvent last() {
    std::lock_guard lock(mu_);
    return events_.back();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<RequestEvent> events_;
  bool done_ = false;
  bool cancelled_ = false;
  int after_cancel_ = 0;
};

class EngineTest : public test::TinyEngineTest {
 protected:
  void SetUp() override { load(16); }

  std::unique_ptr<Engine> engine(EngineOptions o = {}) {
    if (o.kv_blocks == 0) o.kv_blocks = 64;
    o.block_size = o.block_size == 16 ? 4 : o.block_size;
    return make_engine(*model_, *text_, o);
  }

  static EngineRequest greedy(std::vector<int32_t> prompt, int max_new, std::string adapter = "") {
    EngineRequest r;
    r.prompt = std::move(prompt);
    r.params.max_new_tokens = max_new;
    r.params.ignore_eos = true;
    r.params.adapter = std::move(adapter);
    return r;
  }

  void expect_all_blocks_back(Engine& e) {
    // Stats are published after each step; wait for the idle engine's last one.
    EngineStats s;
    for (int i = 0; i < 200; ++i) {
      s = e.stats();
      if (s.running == 0 && s.queue_size == 0 && s.free_blocks + s.cached_blocks == s.kv_blocks) break;
      std::this_thread::sleep_for(5ms);
    }
    EXPECT_EQ(s.running, 0);
    EXPECT_EQ(s.queue_size, 0);
    EXPECT_EQ(s.free_blocks + s.cached_blocks, s.kv_blocks);
    EXPECT_EQ(store_->pins("g"), 0);
    EXPECT_EQ(store_->pins("g2"), 0);
  }
};

TEST_F(EngineTest, ContinuousBatchingGivesWhatEachRequestGetsAlone) {
  std::mt19937 rng(1);
  struct Case {
    std::vector<int32_t> prompt;
    int max_new;
    std::vector<int32_t> expected;
  };
  std::vector<Case> cases;
  for (int len : {5, 37, 12, 1, 23, 9, 50}) {  // 37, 23 and 50 run in chunks of the 16-row step
    Case c{random_prompt(rng, len), 4 + static_cast<int>(rng() % 12), {}};
    c.expected = alone(c.prompt, c.max_new);
    cases.push_back(c);
  }
  auto e = engine();
  std::vector<Collector> out(cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    e->submit(greedy(cases[i].prompt, cases[i].max_new), out[i].sink());
    if (i % 2 == 1) std::this_thread::sleep_for(2ms);  // arrive while others run
  }
  for (size_t i = 0; i < cases.size(); ++i) {
    ASSERT_TRUE(out[i].wait()) << i;
    EXPECT_EQ(out[i].tokens(), cases[i].expected) << i;
    const RequestEvent last = out[i].last();
    EXPECT_EQ(last.finish, FinishReason::Length);
    EXPECT_EQ(last.generated_tokens, cases[i].max_new);
    EXPECT_EQ(last.prompt_tokens, static_cast<int32_t>(cases[i].prompt.size()));
    const auto events = out[i].events();
    for (size_t k = 0; k < events.size(); ++k) EXPECT_EQ(events[k].index, static_cast<int32_t>(k + 1));
  }
  expect_all_blocks_back(*e);
}

TEST_F(EngineTest, AdaptersMixedInOneBatchEachMatchTheirOwnRun) {
  std::mt19937 rng(2);
  const std::vector<int32_t> prompt = random_prompt(rng, 14);
  const std::vector<std::string> adapters{"", "g", "g2", "", "g"};
  std::vector<std::vector<int32_t>> expected;
  for (const auto& a : adapters) expected.push_back(alone(prompt, 10, a));
  EXPECT_NE(expected[0], expected[1]);  // the adapter changes the output
  EXPECT_EQ(expected[1], expected[2]);

  EngineOptions o;
  o.prefix_caching = false;
  auto e = engine(o);
  std::vector<Collector> out(adapters.size());
  for (size_t i = 0; i < adapters.size(); ++i) e->submit(greedy(prompt, 10, adapters[i]), out[i].sink());
  for (size_t i = 0; i < adapters.size(); ++i) {
    ASSERT_TRUE(out[i].wait());
    EXPECT_EQ(out[i].tokens(), expected[i]) << adapters[i];
  }
  expect_all_blocks_back(*e);
}

TEST_F(EngineTest, RequestsWaitForAnAdapterSlotAndThenRun) {
  std::mt19937 rng(13);
  const std::vector<int32_t> prompt = random_prompt(rng, 9);
  const std::vector<int32_t> expected_g = alone(prompt, 8, "g");
  const std::vector<int32_t> expected_base = alone(prompt, 8);
  // One adapter slot: "g2" must wait until the "g" requests let go of it.
  AdapterStore one_slot(weights_->config(), ShardSpec{}, AdapterStore::Limits{1, size_t{1} << 30});
  const std::string adapter = (kFixtures / "lora" / "gguf_F32" / "g_r8_qk").string();
  one_slot.add("g", adapter);
  one_slot.add("g2", adapter);
  LlamaModel model(*weights_, *ops_, 16, &one_slot);
  EngineOptions o;
  o.kv_blocks = 64;
  o.block_size = 4;
  auto e = make_engine(model, *text_, o);
  std::vector<Collector> out(4);
  std::atomic<int> g_done_when_g2_began{-1};
  e->submit(greedy(prompt, 8, "g"), out[0].sink());
  EventSink g2_sink = out[1].sink();
  e->submit(greedy(prompt, 8, "g2"), [&](RequestEvent&& ev) {
    if (ev.index == 1) g_done_when_g2_began = out[0].done() ? 1 : 0;
    g2_sink(std::move(ev));
  });
  e->submit(greedy(prompt, 8, ""), out[2].sink());  // FIFO: behind g2
  e->submit(greedy(prompt, 8, "g"), out[3].sink());
  e->drain();
  EXPECT_EQ(out[0].tokens(), expected_g);
  EXPECT_EQ(out[1].tokens(), expected_g);
  EXPECT_EQ(out[2].tokens(), expected_base);
  EXPECT_EQ(out[3].tokens(), expected_g);
  EXPECT_EQ(g_done_when_g2_began, 1);  // g2 got the slot only once g let go of it
  EXPECT_EQ(one_slot.pins("g"), 0);
  EXPECT_EQ(one_slot.pins("g2"), 0);
}

TEST_F(EngineTest, PrefixCacheReusesBlocksPerAdapterAndChangesNothing) {
  std::mt19937 rng(3);
  const std::vector<int32_t> prompt = random_prompt(rng, 30);
  auto e = engine();
  auto run = [&](const std::vector<int32_t>& p, const std::string& adapter) {
    Collector c;
    e->submit(greedy(p, 6, adapter), c.sink());
    EXPECT_TRUE(c.wait());
    return std::make_pair(c.tokens(), c.last().cached_prompt_tokens);
  };
  const auto first = run(prompt, "");
  EXPECT_EQ(first.second, 0);
  EXPECT_EQ(first.first, alone(prompt, 6));
  EXPECT_EQ(e->stats().prefix_cache_hits, 0);

  const auto again = run(prompt, "");
  EXPECT_EQ(again.first, first.first);
  EXPECT_EQ(again.second, 28);  // 7 full blocks of 4; the last prompt token is recomputed
  EXPECT_EQ(e->stats().prefix_cache_hits, 28);

  // A longer prompt sharing the first 30 tokens reuses them too.
  std::vector<int32_t> longer = prompt;
  longer.insert(longer.end(), {5, 6, 7, 8, 9});
  const auto extended = run(longer, "");
  EXPECT_GE(extended.second, 28);
  EXPECT_EQ(extended.first, alone(longer, 6));

  // Under an adapter the same prompt has other keys and values: no sharing.
  const auto with_g = run(prompt, "g");
  EXPECT_EQ(with_g.second, 0);
  EXPECT_EQ(with_g.first, alone(prompt, 6, "g"));
  const auto with_g2 = run(prompt, "g2");
  EXPECT_EQ(with_g2.second, 0);
  const auto g_again = run(prompt, "g");
  EXPECT_EQ(g_again.second, 28);
  EXPECT_EQ(g_again.first, with_g.first);
  expect_all_blocks_back(*e);
}

TEST_F(EngineTest, PrefixCacheNeverReusesBlocksOfAnUnloadedAdapterUnderTheSameName) {
  // vLLM's /v1/unload_lora_adapter then /v1/load_lora_adapter may put other weights under the
  // same name: the blocks cached under the old registration hold the old adapter's keys and
  // values and must not be reused.
  std::mt19937 rng(31);
  const std::vector<int32_t> prompt = random_prompt(rng, 30);
  auto e = engine();
  auto run = [&](const std::string& adapter) {
    Collector c;
    e->submit(greedy(prompt, 4, adapter), c.sink());
    EXPECT_TRUE(c.wait());
    return c.last().cached_prompt_tokens;
  };
  EXPECT_EQ(run("g"), 0);
  EXPECT_EQ(run("g"), 28);
  expect_all_blocks_back(*e);
  const uint64_t before = store_->registration("g");
  store_->remove("g");
  EXPECT_EQ(store_->registration("g"), 0u);
  store_->add("g", (kFixtures / "lora" / "gguf_F32" / "g_r8_qk").string());
  EXPECT_NE(store_->registration("g"), before);
  EXPECT_EQ(run("g"), 0);   // a new registration: nothing cached yet
  EXPECT_EQ(run("g"), 28);  // and its own blocks are reused
  expect_all_blocks_back(*e);

  // Re-registered while a request for it waits in the queue (submitted under the old one).
  EngineOptions o;
  o.max_batch_size = 1;
  auto one = engine(o);
  Collector seed, busy, waiting;
  one->submit(greedy(prompt, 4, "g"), seed.sink());
  ASSERT_TRUE(seed.wait());
  one->submit(greedy(random_prompt(rng, 8), 150), busy.sink());  // holds the only batch place
  one->submit(greedy(prompt, 4, "g"), waiting.sink());
  store_->remove("g");
  store_->add("g", (kFixtures / "lora" / "gguf_F32" / "g_r8_qk").string());
  ASSERT_TRUE(waiting.wait());
  ASSERT_TRUE(busy.wait());
  EXPECT_EQ(waiting.last().finish, FinishReason::Length);
  EXPECT_EQ(waiting.last().cached_prompt_tokens, 0);
  EXPECT_EQ(waiting.tokens(), alone(prompt, 4, "g"));
  expect_all_blocks_back(*one);
}

TEST_F(EngineTest, PreemptionUnderATinyCacheKeepsGreedyOutputsAndStreams) {
  std::mt19937 rng(4);
  std::vector<std::vector<int32_t>> prompts, expected;
  for (int i = 0; i < 5; ++i) {
    prompts.push_back(random_prompt(rng, 6 + i * 3));
    expected.push_back(alone(prompts.back(), 24));
  }
  EngineOptions o;
  o.kv_blocks = 14;  // 56 tokens; each request grows to 30..42
  auto e = engine(o);
  int64_t preempted = 0;
  e->set_step_observer([&](const StepReport& r, const EngineStats&) { preempted += r.preempted; });
  std::vector<Collector> out(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) e->submit(greedy(prompts[i], 24), out[i].sink());
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_TRUE(out[i].wait());
    EXPECT_EQ(out[i].tokens(), expected[i]) << i;
    const auto events = out[i].events();
    ASSERT_EQ(events.size(), 24u);
    for (size_t k = 0; k < events.size(); ++k) EXPECT_EQ(events[k].index, static_cast<int32_t>(k + 1));
  }
  EXPECT_GT(e->stats().preemptions, 0);
  EXPECT_EQ(e->stats().preemptions, preempted);
  expect_all_blocks_back(*e);
}

TEST_F(EngineTest, SeededSamplingIsReproducibleWhateverTheBatch) {
  std::mt19937 rng(5);
  const std::vector<int32_t> prompt = random_prompt(rng, 10);
  auto sampled = [&](uint64_t seed) {
    EngineRequest r = greedy(prompt, 20);
    r.params.do_sample = true;
    r.params.temperature = 1.3f;
    r.params.top_k = 40;
    r.params.top_p = 0.95f;
    r.params.typical_p = 0.98f;
    r.params.repetition_penalty = 1.1f;
    r.params.frequency_penalty = 0.2f;
    r.params.presence_penalty = 0.1f;
    r.params.top_n_tokens = 3;
    r.params.seed = seed;
    return r;
  };
  auto e = engine();
  Collector alone_run;
  e->submit(sampled(7), alone_run.sink());
  ASSERT_TRUE(alone_run.wait());
  // Again, this time among other requests arriving around it.
  std::vector<Collector> others(4);
  e->submit(greedy(random_prompt(rng, 20), 15), others[0].sink());
  e->submit(sampled(99), others[1].sink());
  Collector batched, other_seed;
  e->submit(sampled(7), batched.sink());
  e->submit(greedy(random_prompt(rng, 3), 30), others[2].sink());
  e->submit(sampled(8), other_seed.sink());
  ASSERT_TRUE(batched.wait());
  ASSERT_TRUE(other_seed.wait());
  for (auto& c : others) {
    if (c.count() > 0) {
      EXPECT_TRUE(c.wait());
    }
  }
  EXPECT_EQ(batched.tokens(), alone_run.tokens());
  EXPECT_NE(other_seed.tokens(), alone_run.tokens());
  // Logprobs and alternatives: the chosen token's logprob is finite and <= 0; alternatives
  // are sorted, best first.
  for (const auto& ev : batched.events()) {
    ASSERT_TRUE(ev.token);
    EXPECT_LE(ev.token->logprob, 0.0f);
    ASSERT_EQ(ev.top_tokens.size(), 3u);
    EXPECT_GE(ev.top_tokens[0].logprob, ev.top_tokens[1].logprob);
    EXPECT_GE(ev.top_tokens[1].logprob, ev.top_tokens[2].logprob);
  }
  expect_all_blocks_back(*e);
}

TEST_F(EngineTest, StopSequencesSpanTokensAndVisibleTextHoldsBack) {
  std::mt19937 rng(6);
  const std::vector<int32_t> prompt = random_prompt(rng, 8);
  auto e = engine();
  Collector full;
  e->submit(greedy(prompt, 30), full.sink());
  ASSERT_TRUE(full.wait());
  const std::string all = full.text();
  EXPECT_EQ(full.visible(), all);  // no stop sequences: nothing held back
  // A stop string starting one byte before a token boundary and ending inside the next token.
  const auto events = full.events();
  size_t boundary = 0, token_index = 0;
  for (size_t k = 0, at = 0; k < events.size(); ++k) {
    at += events[k].text.size();
    if (at >= 4 && k + 1 < events.size() && events[k + 1].text.size() >= 3 &&
        static_cast<unsigned char>(all[at - 1]) < 0x80 &&
        static_cast<unsigned char>(all[at]) < 0x80 && static_cast<unsigned char>(all[at + 1]) < 0x80) {
      boundary = at;
      token_index = k + 1;
      break;
    }
  }
  ASSERT_GT(boundary, 0u) << "no suitable token boundary in: " << all;
  const std::string stop = all.substr(boundary - 1, 3);
  const size_t first = all.find(stop);

  EngineRequest r = greedy(prompt, 30);
  r.params.stop = {"never-in-output-\x01", stop};
  Collector c;
  e->submit(r, c.sink());
  ASSERT_TRUE(c.wait());
  const RequestEvent last = c.last();
  EXPECT_EQ(last.finish, FinishReason::StopSequence);
  EXPECT_LE(static_cast<size_t>(last.generated_tokens), token_index + 1);
  EXPECT_EQ(c.visible(), all.substr(0, first));
  const std::string text = c.text();
  EXPECT_EQ(text, all.substr(0, text.size()));  // TGI's text keeps the stop string
  EXPECT_GE(text.size(), first + stop.size());
  // Visible text never ran ahead of what could still be a stop sequence.
  std::string visible;
  for (const auto& ev : c.events()) {
    visible += ev.visible_text;
    EXPECT_EQ(visible, all.substr(0, visible.size()));
    EXPECT_LE(visible.size(), first);
  }

  // Stop token ids (and EOS) end the request as EndOfSequence, the token included.
  const std::vector<int32_t> tokens = full.tokens();
  EngineRequest s = greedy(prompt, 30);
  s.params.stop_token_ids = {tokens[5]};
  Collector stopped;
  e->submit(s, stopped.sink());
  ASSERT_TRUE(stopped.wait());
  const size_t at = std::find(tokens.begin(), tokens.end(), tokens[5]) - tokens.begin();
  EXPECT_EQ(stopped.tokens(), std::vector<int32_t>(tokens.begin(), tokens.begin() + at + 1));
  EXPECT_EQ(stopped.last().finish, FinishReason::EndOfSequence);
  expect_all_blocks_back(*e);
}

TEST_F(EngineTest, PromptLogprobsMatchTheModelsPromptLogits) {
  std::mt19937 rng(7);
  const std::vector<int32_t> prompt = random_prompt(rng, 40);  // chunked: 16-row steps
  Generator gen(*ref_model_, 256, 4);
  const Tensor logits = gen.prompt_logits(prompt);
  std::vector<float> expected(prompt.size(), NAN);
  std::vector<float> lp;
  for (size_t i = 1; i < prompt.size(); ++i) {
    log_softmax(std::span<const float>(logits.row<float>(static_cast<int64_t>(i) - 1), logits.cols), lp);
    expected[i] = lp[prompt[i]];
  }
  auto e = engine();
  for (int round = 0; round < 2; ++round) {  // the second finds the prompt cached, unused
    EngineRequest r = greedy(prompt, 3);
    r.params.prompt_logprobs = true;
    Collector c;
    e->submit(r, c.sink());
    ASSERT_TRUE(c.wait());
    const RequestEvent last = c.last();
    ASSERT_EQ(last.prefill.size(), prompt.size());
    EXPECT_TRUE(std::isnan(last.prefill[0].logprob));
    for (size_t i = 0; i < prompt.size(); ++i) {
      EXPECT_EQ(last.prefill[i].id, prompt[i]);
      if (i > 0) {
        EXPECT_NEAR(last.prefill[i].logprob, expected[i], 1e-4) << i;
      }
    }
    EXPECT_EQ(last.cached_prompt_tokens, 0);
    EXPECT_EQ(c.tokens(), alone(prompt, 3));
  }
  expect_all_blocks_back(*e);
}

TEST_F(EngineTest, RandomCancellationsLeakNoBlocksOrPins) {
  EngineOptions o;
  o.kv_blocks = 40;  // tight: preemption and waiting happen too
  auto e = engine(o);
  std::mt19937 rng(8);
  const int n = 60;
  std::vector<Collector> out(n);
  std::mutex handles_mu;
  std::vector<std::shared_ptr<RequestHandle>> handles(n);
  std::vector<std::atomic<bool>> cancelled(n);
  std::atomic<bool> submitted_all{false};
  std::thread canceller([&] {
    std::mt19937 r(9);
    while (!submitted_all.load() || r() % 4 != 0) {
      std::this_thread::sleep_for(std::chrono::microseconds(200 + r() % 2000));
      const size_t k = r() % n;
      std::shared_ptr<RequestHandle> h;
      {
        std::lock_guard lock(handles_mu);
        h = handles[k];
      }
      if (h && r() % 2 == 0) {
        out[k].mark_cancelled();  // before cancel(): events after it would be counted
        cancelled[k] = true;
        h->cancel();
        h->cancel();  // twice is harmless
      }
    }
  });
  const std::vector<std::string> adapters{"", "g", "g2"};
  for (int i = 0; i < n; ++i) {
    EngineRequest r = greedy(random_prompt(rng, 1 + static_cast<int>(rng() % 40)),
                             1 + static_cast<int>(rng() % 30), adapters[rng() % 3]);
    std::shared_ptr<RequestHandle> h = e->submit(r, out[i].sink());
    {
      std::lock_guard lock(handles_mu);
      handles[i] = h;
    }
    if (rng() % 3 == 0) std::this_thread::sleep_for(std::chrono::microseconds(rng() % 3000));
  }
  submitted_all = true;
  canceller.join();
  e->drain();
  int finished = 0;
  for (int i = 0; i < n; ++i) {
    EXPECT_EQ(out[i].after_cancel(), 0) << i;
    if (!cancelled[i]) {
      EXPECT_TRUE(out[i].done()) << i;
      ++finished;
    }
  }
  EXPECT_GT(finished, 0);
  expect_all_blocks_back(*e);
}

TEST_F(EngineTest, SubmitRejectsRequestsItCanNeverRun) {
  EngineOptions o;
  o.kv_blocks = 8;  // 32 tokens
  auto e = engine(o);
  Collector c;
  EXPECT_THROW(e->submit(greedy({}, 4), c.sink()), Error);
  EXPECT_THROW(e->submit(greedy({1, vocab_}, 4), c.sink()), Error);
  EXPECT_THROW(e->submit(greedy({1, -1}, 4), c.sink()), Error);
  EXPECT_THROW(e->submit(greedy({1, 2}, 4, "nope"), c.sink()), Error);
  EXPECT_THROW(e->submit(greedy({1, 2}, 31), c.sink()), Error);  // over the cache
  EXPECT_THROW(e->submit(greedy({1, 2},
                                static_cast<int>(weights_->config().max_position_embeddings)),
                         c.sink()),
               Error);
  EXPECT_THROW(e->submit(greedy({1, 2}, 0), c.sink()), Error);
  EXPECT_NO_THROW(e->submit(greedy({1, 2}, 30), c.sink()));
  EXPECT_TRUE(c.wait());
}

TEST_F(EngineTest, DrainWaitsForEverythingThenRefuses) {
  auto e = engine();
  std::mt19937 rng(10);
  std::vector<Collector> out(6);
  for (auto& c : out) e->submit(greedy(random_prompt(rng, 10), 12), c.sink());
  e->drain();
  for (auto& c : out) {
    EXPECT_TRUE(c.done());
    EXPECT_EQ(c.last().finish, FinishReason::Length);
  }
  Collector late;
  EXPECT_THROW(e->submit(greedy({1, 2}, 2), late.sink()), Error);
  e->drain();  // nothing left: returns at once
  e->shutdown();
}

TEST_F(EngineTest, ShutdownEndsUnfinishedRequestsWithAnError) {
  auto e = engine();
  std::mt19937 rng(11);
  std::vector<Collector> out(8);
  for (auto& c : out) e->submit(greedy(random_prompt(rng, 30), 40), c.sink());
  e->shutdown();
  int errors = 0;
  for (auto& c : out) {
    ASSERT_TRUE(c.done());
    const RequestEvent last = c.last();
    if (last.finish == FinishReason::Error) {
      ++errors;
      EXPECT_FALSE(last.error.empty());
    }
  }
  EXPECT_GT(errors, 0);
  Collector late;
  EXPECT_THROW(e->submit(greedy({1, 2}, 2), late.sink()), Error);
  e->shutdown();  // twice is fine
  EXPECT_EQ(store_->pins("g"), 0);
}

TEST_F(EngineTest, StatsAndStepReportsAddUp) {
  EngineOptions o;
  o.max_batch_prefill_tokens = 1000;  // capped by the model's 16 rows a step
  auto e = engine(o);
  const EngineStats s0 = e->stats();
  EXPECT_EQ(s0.kv_blocks, 64);
  EXPECT_EQ(s0.block_size, 4);
  EXPECT_EQ(s0.max_batch_prefill_tokens, 16);
  EXPECT_EQ(s0.max_batch_total_tokens, 256);
  EXPECT_GT(s0.kv_bytes, 0);
  std::mutex mu;
  int64_t prefill_tokens = 0, decode_rows = 0, admitted = 0;
  e->set_step_observer([&](const StepReport& r, const EngineStats& st) {
    std::lock_guard lock(mu);
    EXPECT_LE(r.prefill_tokens + r.decode_sequences, 16);
    EXPECT_LE(st.running_tokens, 256);
    prefill_tokens += r.prefill_tokens;
    decode_rows += r.decode_sequences;
    admitted += r.admitted;
  });
  std::mt19937 rng(12);
  std::vector<Collector> out(3);
  int64_t prompt_total = 0;
  for (auto& c : out) {
    const int len = 10 + static_cast<int>(rng() % 20);
    prompt_total += len;
    e->submit(greedy(random_prompt(rng, len), 5), c.sink());
  }
  e->drain();
  std::lock_guard lock(mu);
  EXPECT_EQ(admitted, 3);
  EXPECT_EQ(prefill_tokens, prompt_total);
  EXPECT_EQ(decode_rows, 3 * 4);  // the first token comes from the prefill
}

TEST_F(EngineTest, KvCacheIsSizedFromMemoryWhenNoBlockCountIsGiven) {
  EngineOptions o;
  o.block_size = 8;
  o.kv_memory_bytes = 1 << 20;
  auto e = make_engine(*model_, *text_, o);
  const EngineStats s = e->stats();
  // 2 layers x (K + V) x 8 slots x 2 kv heads x 16 dims x 4 bytes = 4096 bytes a block.
  EXPECT_EQ(s.kv_blocks, (1 << 20) / 4096);
  EXPECT_EQ(s.kv_bytes, s.kv_blocks * 4096);
}

}  // namespace
}  // namespace mil
