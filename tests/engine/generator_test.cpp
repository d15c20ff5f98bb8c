// The generation loop on a tiny fixture model: limits, stop tokens, seeded sampling, and
// that KV blocks are returned after each request.
#include "engine/generator.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "backends/cpu/cpu_ops.h"
#include "core/error.h"

namespace mil {
namespace {

class GeneratorTest : public testing::Test {
 protected:
  void SetUp() override {
    ops_ = make_cpu_ops(1);
    weights_ = std::make_unique<LlamaWeights>(
        open_weight_source((std::filesystem::path(MIL_FIXTURES_DIR) / "tiny" / "llama_gqa").string()),
        ShardSpec{});
    model_ = std::make_unique<LlamaModel>(*weights_, *ops_, 8);
  }
  std::unique_ptr<Ops> ops_;
  std::unique_ptr<LlamaWeights> weights_;
  std::unique_ptr<LlamaModel> model_;
  const std::vector<int32_t> prompt_{5, 17, 42, 99, 3, 250, 7, 8, 9, 10, 11};
};

TEST_F(GeneratorTest, GreedyStopsAtTheLimitAndIsRepeatable) {
  Generator gen(*model_, 64, 4);
  GenerationParams p;
  p.max_new_tokens = 12;
  p.stop_at_eos = false;
  const GenerationResult a = gen.generate(prompt_, p);
  EXPECT_EQ(a.tokens.size(), 12u);
  EXPECT_EQ(a.finish, FinishReason::Length);
  // Every block went back: the same request runs again in the same cache, same tokens.
  const GenerationResult b = gen.generate(prompt_, p);
  EXPECT_EQ(a.tokens, b.tokens);
}

TEST_F(GeneratorTest, StopTokenEndsGenerationAndIsIncluded) {
  Generator gen(*model_, 64, 4);
  GenerationParams p;
  p.max_new_tokens = 12;
  p.stop_at_eos = false;
  const std::vector<int32_t> greedy = gen.generate(prompt_, p).tokens;
  p.stop_token_ids = {greedy[3]};
  const GenerationResult r = gen.generate(prompt_, p);
  const size_t first = std::find(greedy.begin(), greedy.end(), greedy[3]) - greedy.begin();
  EXPECT_EQ(r.finish, FinishReason::EndOfSequence);
  EXPECT_EQ(r.tokens, std::vector<int32_t>(greedy.begin(), greedy.begin() + first + 1));
}

TEST_F(GeneratorTest, CallbackCanCancel) {
  Generator gen(*model_, 64, 4);
  GenerationParams p;
  p.max_new_tokens = 12;
  p.stop_at_eos = false;
  int seen = 0;
  const GenerationResult r = gen.generate(prompt_, p, [&](int32_t) { return ++seen < 5; });
  EXPECT_EQ(r.finish, FinishReason::Cancelled);
  EXPECT_EQ(r.tokens.size(), 5u);
}

TEST_F(GeneratorTest, SeededSamplingIsReproducibleAndSeedDependent) {
  Generator gen(*model_, 64, 4);
  GenerationParams p;
  p.max_new_tokens = 16;
  p.stop_at_eos = false;
  p.sampling = {1.5f, 0, 1.0f};
  p.seed = 7;
  const auto a = gen.generate(prompt_, p).tokens;
  EXPECT_EQ(a, gen.generate(prompt_, p).tokens);
  p.seed = 8;
  EXPECT_NE(a, gen.generate(prompt_, p).tokens);
  // top_k = 1 leaves only the argmax, whatever the temperature and seed.
  GenerationParams greedy = p;
  greedy.sampling = {};
  p.sampling = {1.5f, 1, 1.0f};
  EXPECT_EQ(gen.generate(prompt_, p).tokens, gen.generate(prompt_, greedy).tokens);
  // A tiny top_p likewise keeps only the most likely token.
  p.sampling = {1.0f, 0, 1e-6f};
  EXPECT_EQ(gen.generate(prompt_, p).tokens, gen.generate(prompt_, greedy).tokens);
}

TEST_F(GeneratorTest, ABatchGivesEachSequenceItsOwnTokens) {
  // Different prompt lengths, limits and sampling in one batch; steps of 8 tokens force the
  // prompts to be read in chunks interleaved with other sequences' decoding.
  std::vector<GenerationRequest> requests(4);
  requests[0].prompt = prompt_;
  requests[1].prompt = {7, 7, 7};
  requests[2].prompt = {300, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18};
  requests[3].prompt = {42};
  for (size_t i = 0; i < requests.size(); ++i) {
    requests[i].params.max_new_tokens = 5 + 3 * static_cast<int32_t>(i);
    requests[i].params.stop_at_eos = false;
  }
  requests[2].params.sampling = {0.8f, 20, 0.9f};
  requests[2].params.seed = 11;
  Generator batch(*model_, 256, 4);
  std::vector<std::vector<int32_t>> streamed(requests.size());
  const auto results = batch.generate_batch(requests, [&](size_t i, int32_t t) {
    streamed[i].push_back(t);
    return true;
  });
  Generator single(*model_, 256, 4);
  for (size_t i = 0; i < requests.size(); ++i) {
    const GenerationResult alone = single.generate(requests[i].prompt, requests[i].params);
    EXPECT_EQ(results[i].tokens, alone.tokens) << "request " << i;
    EXPECT_EQ(results[i].tokens.size(), static_cast<size_t>(requests[i].params.max_new_tokens));
    EXPECT_EQ(streamed[i], results[i].tokens);
  }
}

TEST_F(GeneratorTest, DeviceSamplingGivesTheHostPathsTokens) {
  // The device path forced on the CPU backend against the host path: greedy and seeded
  // sampling under each filter, prompts read in chunks between other sequences' decoding.
  std::vector<GenerationRequest> requests(5);
  const SamplingParams kinds[] = {
      {0.0f, 0, 1.0f}, {0.8f, 20, 1.0f}, {1.3f, 0, 0.8f}, {0.7f, 50, 0.9f}, {1.0f, 0, 1.0f}};
  for (size_t i = 0; i < requests.size(); ++i) {
    requests[i].prompt = std::vector<int32_t>(prompt_.begin(), prompt_.begin() + 3 + 2 * i);
    requests[i].params.max_new_tokens = 10;
    requests[i].params.stop_at_eos = false;
    requests[i].params.sampling = kinds[i];
    requests[i].params.seed = 20 + i;
  }
  Generator host(*model_, 256, 4);
  host.set_sample_on_device(SampleOnDevice::Off);
  Generator device(*model_, 256, 4);
  device.set_sample_on_device(SampleOnDevice::On);
  const auto want = host.generate_batch(requests);
  const auto got = device.generate_batch(requests);
  for (size_t i = 0; i < requests.size(); ++i) {
    EXPECT_EQ(got[i].tokens, want[i].tokens) << "request " << i;
    EXPECT_EQ(got[i].tokens.size(), 10u);
  }
  // Sampling means something here: the same prompt sampled differs from greedy.
  GenerationRequest greedy = requests[1];
  greedy.params.sampling = {};
  EXPECT_NE(host.generate_batch({greedy})[0].tokens, want[1].tokens);
}

TEST_F(GeneratorTest, RejectsWhatDoesNotFit) {
  Generator gen(*model_, 16, 4);
  GenerationParams p;
  p.max_new_tokens = 8;
  EXPECT_THROW(gen.generate(prompt_, p), Error);  // 11 + 8 > 16
  EXPECT_THROW(gen.generate({}, p), Error);
  EXPECT_THROW(gen.generate({5, 100000}, p), Error);  // outside the vocabulary
}

}  // namespace
}  // namespace mil
