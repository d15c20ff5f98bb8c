// The serving engine (continuous batching, paged KV, mixed adapters) on CUDA against the same
// engine on the CPU, on the default model and its demo adapters: greedy tokens of a batch of
// chat prompts. bf16 may flip near-ties, so the test reports the agreement and, at every
// difference, the CPU's (f32) top-1 margin there, which must be small (< 0.5).
#include <condition_variable>
#include <cstdio>
#include <mutex>

#include "cuda_model/cuda_model_common.h"
#include "engine/engine.h"
#include "tokenizer/model_tokenizer.h"

namespace mil::test::cuda_model {
namespace {

std::vector<std::vector<int32_t>> run_engine(LlamaModel& model, const ModelTokenizer& text,
                                             const std::vector<std::vector<int32_t>>& prompts,
                                             const std::vector<std::string>& adapters,
                                             int max_new) {
  EngineOptions o;
  o.kv_blocks = 256;
  o.max_batch_prefill_tokens = 96;  // prompts are prefilled in chunks beside decode rows
  auto engine = make_engine(model, text, o);
  std::mutex mu;
  std::vector<std::vector<int32_t>> tokens(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    EngineRequest r;
    r.prompt = prompts[i];
    r.params.max_new_tokens = max_new;
    r.params.adapter = adapters[i % adapters.size()];
    engine->submit(r, [&, i](RequestEvent&& e) {
      std::lock_guard lock(mu);
      if (e.token) tokens[i].push_back(e.token->id);
    });
  }
  engine->drain();
  std::lock_guard lock(mu);
  return tokens;
}

TEST(EngineOnCuda, GreedyTokensAgreeWithTheCpuEngine) {
  const char* path = std::getenv("MIL_DEFAULT_MODEL");
  if (path == nullptr) GTEST_SKIP() << "MIL_DEFAULT_MODEL is not set";
  if (!device_ops()) GTEST_SKIP() << "no CUDA GPU";
  const fs::path examples = fs::path(MIL_FIXTURES_DIR).parent_path().parent_path() / "examples" / "adapters";
  const std::vector<std::pair<std::string, std::string>> adapters = {
      {"caps", (examples / "smollm2-caps").string()}, {"pirate", (examples / "smollm2-pirate").string()}};
  const ModelTokenizer text = ModelTokenizer::load(path);
  const std::vector<std::string> questions = {
      "What is the capital of France?", "Name three primary colors.", "What is 12 times 7?",
      "Write a haiku about the sea.", "Who wrote Romeo and Juliet?", "How many legs does a spider have?",
      "Explain photosynthesis in one sentence.", "What is the boiling point of water?",
      "Translate 'good morning' into Spanish.", "Give me a synonym for happy.",
      "What is the largest planet in the solar system?", "List the days of the week."};
  std::vector<std::vector<int32_t>> prompts;
  for (const auto& q : questions) prompts.push_back(text.encode_chat({{"user", q}}));
  const std::vector<std::string> which = {"", "caps", "pirate"};
  const int max_new = 24;

  Loaded gpu = load(path, true, 256, adapters);
  Loaded cpu = load(path, false, 256, adapters);
  const auto got = run_engine(*gpu.model, text, prompts, which, max_new);
  const auto want = run_engine(*cpu.model, text, prompts, which, max_new);

  int same_seqs = 0, same_tokens = 0, total = 0;
  const int64_t vocab = cpu.weights->config().vocab_size;
  for (size_t i = 0; i < prompts.size(); ++i) {
    size_t k = 0;
    while (k < got[i].size() && k < want[i].size() && got[i][k] == want[i][k]) ++k;
    same_tokens += static_cast<int>(k);
    total += static_cast<int>(want[i].size());
    if (got[i] == want[i]) {
      ++same_seqs;
      continue;
    }
    // The CPU's margin where the two first differ.
    std::vector<int32_t> prefix = prompts[i];
    prefix.insert(prefix.end(), want[i].begin(), want[i].begin() + static_cast<int64_t>(k));
    GenerationRequest r{prefix, {}};
    r.params.adapter = which[i % which.size()];
    Generator h(*cpu.model, static_cast<int64_t>(prefix.size()) + 8);
    const auto logits = h.prompt_logits_batch({r});
    const Tensor t = logits[0].view();
    const double m = margin(t.row<float>(t.rows - 1), vocab);
    std::printf("prompt %zu (%s): differs at token %zu of %zu; f32 top-1 margin there %.3f\n", i,
                which[i % which.size()].c_str(), k, want[i].size(), m);
    EXPECT_LT(m, 0.5) << "prompt " << i;
  }
  std::printf("engine on CUDA vs CPU: %d/%zu sequences identical, %d/%d tokens before the first "
              "difference\n", same_seqs, prompts.size(), same_tokens, total);
}

}  // namespace
}  // namespace mil::test::cuda_model
