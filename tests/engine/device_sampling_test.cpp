// The device path of token choice (engine/device_sampler.h) on the CPU backend, which runs
// the same ops on host memory: it must choose exactly what the host path (TokenChooser)
// chooses, token and logprob bit for bit, for greedy, seeded sampling under temperature,
// top-k and top-p, and the repetition penalty; first directly on random logits, then
// through the serving engine on the tiny GGUF fixture (SampleOnDevice::On against Off),
// where a request that needs the host path (logprob alternatives) moves its steps there.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <random>

#include "backends/cpu/cpu_ops.h"
#include "engine/device_sampler.h"
#include "engine/engine.h"
#include "engine/logits_processor.h"
#include "model/llama.h"
#include "model/weight_source.h"
#include "tokenizer/model_tokenizer.h"

namespace mil {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

RequestParams sampled(float t, int32_t k, float p, float penalty) {
  RequestParams r;
  r.do_sample = true;
  r.temperature = t;
  r.top_k = k;
  r.top_p = p;
  r.repetition_penalty = penalty;
  r.max_new_tokens = 12;
  return r;
}

// The parameter sets both tests run: greedy with and without a penalty, and seeded
// sampling under each filter, with penalties above and below 1.
std::vector<RequestParams> kinds() {
  RequestParams greedy, greedy_penalty;
  greedy.max_new_tokens = greedy_penalty.max_new_tokens = 12;
  greedy_penalty.repetition_penalty = 1.5f;
  return {greedy,
          greedy_penalty,
          sampled(0.9f, 20, 1.0f, 1.0f),
          sampled(1.3f, 0, 0.8f, 1.0f),
          sampled(0.7f, 50, 0.9f, 1.2f),
          sampled(1.0f, 0, 1.0f, 0.8f),
          sampled(2.0f, 5, 0.5f, 1.3f)};
}

TEST(DeviceSampler, ChoosesWhatTheHostPathChooses) {
  const auto ops = make_cpu_ops(2);
  const int64_t vocab = 3000;
  const std::vector<RequestParams> params = kinds();
  const auto rows = static_cast<int64_t>(params.size());
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> logit(-5.0f, 5.0f);
  // Contexts with many repeats, over the low ids, which the logits below favour.
  std::vector<std::vector<int32_t>> context(rows);
  std::vector<size_t> prompt_len(rows);
  for (auto& c : context) {
    for (int i = 0; i < 150; ++i) c.push_back(static_cast<int32_t>(rng() % 200));
  }
  for (int64_t r = 0; r < rows; ++r) prompt_len[r] = context[r].size();
  std::vector<TokenChooser> host, device;
  for (int64_t r = 0; r < rows; ++r) {
    host.emplace_back(100 + r);
    device.emplace_back(100 + r);
  }
  DeviceSampler sampler(*ops);
  std::vector<TokenChoice> chosen;
  int penalised_differs = 0;
  for (int step = 0; step < 30; ++step) {
    OwnedTensor logits(DType::F32, rows, vocab);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t i = 0; i < vocab; ++i) {
        logits.ptr<float>()[r * vocab + i] = logit(rng) + (i < 200 ? 3.0f : 0.0f);
      }
    }
    // Row 1 is greedy with a penalty: count the steps where the penalty moves its argmax.
    const int32_t plain_argmax =
        argmax(std::span<const float>(logits.ptr<float>() + vocab, static_cast<size_t>(vocab)));
    std::vector<TokenChoice> want;
    std::vector<std::vector<int32_t>> seen(rows);
    std::vector<DeviceSampleRow> dev_rows;
    for (int64_t r = 0; r < rows; ++r) {
      const std::span<const float> row(logits.ptr<float>() + r * vocab, static_cast<size_t>(vocab));
      const std::span<const int32_t> all(context[r]);
      want.push_back(host[r].choose(row, params[r], all, all.subspan(prompt_len[r])));
      for (int32_t id : context[r]) insert_seen(seen[r], id);
    }
    for (int64_t r = 0; r < rows; ++r) {
      dev_rows.push_back(device_row(params[r], seen[r], device[r]));
    }
    sampler.choose(logits, dev_rows, chosen);
    ASSERT_EQ(chosen.size(), want.size());
    for (int64_t r = 0; r < rows; ++r) {
      EXPECT_EQ(chosen[r].token, want[r].token) << "step " << step << " row " << r;
      EXPECT_EQ(chosen[r].logprob, want[r].logprob) << "step " << step << " row " << r;
      context[r].push_back(want[r].token);
    }
    penalised_differs += chosen[1].token != plain_argmax;
  }
  EXPECT_GT(penalised_differs, 0);
}

TEST(DeviceSampler, SeenIdsStaySortedAndDistinct) {
  std::vector<int32_t> seen;
  for (int32_t id : {5, 3, 5, 9, 0, 3, 9, 1}) insert_seen(seen, id);
  EXPECT_EQ(seen, (std::vector<int32_t>{0, 1, 3, 5, 9}));
  const std::vector<int32_t> prompt{7, 7, 2, 9, 2};
  EXPECT_EQ(distinct_ids(prompt), (std::vector<int32_t>{2, 7, 9}));
}

TEST(DeviceSampler, SupportsOnlyWhatTheDeviceOpsDo) {
  EXPECT_TRUE(device_sampling_supports(RequestParams{}));
  for (const RequestParams& p : kinds()) EXPECT_TRUE(device_sampling_supports(p));
  RequestParams p;
  p.top_n_tokens = 2;
  EXPECT_FALSE(device_sampling_supports(p));
  p = {};
  p.typical_p = 0.9f;
  EXPECT_FALSE(device_sampling_supports(p));
  p = {};
  p.frequency_penalty = 0.5f;
  EXPECT_FALSE(device_sampling_supports(p));
  p = {};
  p.presence_penalty = 0.5f;
  EXPECT_FALSE(device_sampling_supports(p));
}

// One request's events; thread-safe.
class Events {
 public:
  EventSink sink() {
    return [this](RequestEvent&& e) {
      std::lock_guard lock(mu_);
      if (e.finished) done_ = true;
      events_.push_back(std::move(e));
      cv_.notify_all();
    };
  }
  bool wait() {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, 60s, [&] { return done_; });
  }
  std::vector<RequestEvent> events() {
    std::lock_guard lock(mu_);
    return events_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<RequestEvent> events_;
  bool done_ = false;
};

struct Outcome {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;
  std::vector<size_t> alternatives;  // top_tokens per event
  FinishReason finish = FinishReason::Error;
};

class EngineDeviceSampling : public testing::Test {
 protected:
  void SetUp() override {
    const std::string path = (fs::path(MIL_FIXTURES_DIR) / "tiny_gguf" / "F32.gguf").string();
    text_ = std::make_unique<ModelTokenizer>(ModelTokenizer::load(path));
    weights_ = std::make_unique<LlamaWeights>(open_weight_source(path), ShardSpec{});
    ops_ = make_cpu_ops(1);
    model_ = std::make_unique<LlamaModel>(*weights_, *ops_, 16);
    const auto vocab = static_cast<uint32_t>(weights_->config().vocab_size);
    std::mt19937 rng(11);
    for (int len : {7, 23, 3}) {  // 23 runs in chunks of the 16-row step
      std::vector<int32_t> p(static_cast<size_t>(len));
      for (auto& t : p) t = 3 + static_cast<int32_t>(rng() % (vocab - 3));
      prompts_.push_back(p);
    }
  }

  // Every request of `params` (on prompt i % 3, seed 1000 + i) at once; counts the steps
  // that chose tokens on the device and on the host.
  std::vector<Outcome> run(SampleOnDevice where, const std::vector<RequestParams>& params) {
    EngineOptions o;
    o.kv_blocks = 64;
    o.block_size = 4;
    o.sample_on_device = where;
    auto e = make_engine(*model_, *text_, o);
    device_steps_ = host_steps_ = 0;
    e->set_step_observer([this](const StepReport& r, const EngineStats&) {
      (r.sampled_on_device ? device_steps_ : host_steps_)++;
    });
    std::vector<Events> events(params.size());
    for (size_t i = 0; i < params.size(); ++i) {
      EngineRequest r;
      r.prompt = prompts_[i % prompts_.size()];
      r.params = params[i];
      r.params.ignore_eos = true;
      r.params.seed = 1000 + i;
      e->submit(r, events[i].sink());
    }
    std::vector<Outcome> out(params.size());
    for (size_t i = 0; i < params.size(); ++i) {
      EXPECT_TRUE(events[i].wait()) << i;
      for (const RequestEvent& ev : events[i].events()) {
        if (ev.token) {
          out[i].tokens.push_back(ev.token->id);
          out[i].logprobs.push_back(ev.token->logprob);
          out[i].alternatives.push_back(ev.top_tokens.size());
        }
        if (ev.finished) out[i].finish = ev.finish;
      }
    }
    e->shutdown();
    return out;
  }

  std::unique_ptr<ModelTokenizer> text_;
  std::unique_ptr<LlamaWeights> weights_;
  std::unique_ptr<Ops> ops_;
  std::unique_ptr<LlamaModel> model_;
  std::vector<std::vector<int32_t>> prompts_;
  std::atomic<int> device_steps_{0}, host_steps_{0};
};

TEST_F(EngineDeviceSampling, ForcedOnTheCpuGivesTheHostPathsTokensAndLogprobs) {
  // Each kind twice, so that every prompt meets a penalty and plain greedy.
  std::vector<RequestParams> params = kinds();
  const std::vector<RequestParams> again = kinds();
  params.insert(params.end(), again.begin(), again.end());
  const std::vector<Outcome> host = run(SampleOnDevice::Off, params);
  EXPECT_EQ(device_steps_, 0);
  EXPECT_GT(host_steps_, 0);
  const std::vector<Outcome> device = run(SampleOnDevice::On, params);
  EXPECT_GT(device_steps_, 0);
  EXPECT_EQ(host_steps_, 0);
  for (size_t i = 0; i < params.size(); ++i) {
    ASSERT_EQ(host[i].finish, FinishReason::Length) << i;
    EXPECT_EQ(device[i].finish, FinishReason::Length) << i;
    EXPECT_EQ(device[i].tokens, host[i].tokens) << "request " << i;
    EXPECT_EQ(device[i].logprobs, host[i].logprobs) << "request " << i;
  }
  // The cases mean something: on the same prompt, the penalty changes the distribution (the
  // tiny model's greedy tokens avoid the prompt's ids anyway, so the logprobs show it) and
  // sampling the tokens. Requests 1 (penalised greedy) and 7 (greedy) share prompt 1; 0
  // (greedy) and 3 (sampled) prompt 0.
  EXPECT_NE(host[1].logprobs, host[7].logprobs);
  EXPECT_NE(host[3].tokens, host[0].tokens);
}

TEST_F(EngineDeviceSampling, AHostOnlyRequestMovesItsStepsToTheHost) {
  std::vector<RequestParams> params = kinds();
  RequestParams alternatives = sampled(0.8f, 30, 0.95f, 1.1f);
  alternatives.top_n_tokens = 3;
  alternatives.max_new_tokens = 4;  // shorter: later steps return to the device
  params.push_back(alternatives);
  const std::vector<Outcome> host = run(SampleOnDevice::Off, params);
  const std::vector<Outcome> mixed = run(SampleOnDevice::On, params);
  EXPECT_GT(device_steps_, 0);
  EXPECT_GT(host_steps_, 0);
  for (size_t i = 0; i < params.size(); ++i) {
    EXPECT_EQ(mixed[i].tokens, host[i].tokens) << "request " << i;
    EXPECT_EQ(mixed[i].logprobs, host[i].logprobs) << "request " << i;
  }
  EXPECT_EQ(mixed.back().tokens.size(), 4u);
  EXPECT_EQ(mixed.back().alternatives, std::vector<size_t>(4, 3));
}

}  // namespace
}  // namespace mil
