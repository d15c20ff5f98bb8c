// The engine on the default model with the demo adapters of examples/adapters: one batch
// mixing the base model, "caps" and "pirate" gives each request the tokens the Generator
// gives it, and the streamed text is the tokenizer's decode of those tokens.
#include <gtest/gtest.h>

#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <mutex>

#include "backends/cpu/cpu_ops.h"
#include "engine/engine.h"
#include "engine/generator.h"
#include "lora/adapter_store.h"
#include "tokenizer/model_tokenizer.h"

namespace mil {
namespace {

namespace fs = std::filesystem;

TEST(EngineDefaultModel, DemoAdaptersInOneBatchMatchTheGenerator) {
  const char* path = std::getenv("MIL_DEFAULT_MODEL");
  if (path == nullptr) GTEST_SKIP() << "MIL_DEFAULT_MODEL is not set (make test sets it)";
  const fs::path examples =
      fs::path(MIL_FIXTURES_DIR).parent_path().parent_path() / "examples" / "adapters";
  const ModelTokenizer text = ModelTokenizer::load(path);
  auto ops = make_cpu_ops(2);
  LlamaWeights weights(open_weight_source(path), ShardSpec{});
  AdapterStore store(weights.config(), ShardSpec{}, AdapterStore::Limits{4, size_t{1} << 30});
  store.add("caps", (examples / "smollm2-caps").string());
  store.add("pirate", (examples / "smollm2-pirate").string());
  LlamaModel model(weights, *ops, 64, &store);

  const std::vector<int32_t> prompt = text.encode_chat({{"user", "What is the capital of France?"}});
  const std::vector<std::string> adapters{"", "caps", "pirate"};
  const int max_new = 12;
  std::vector<std::vector<int32_t>> expected;
  {
    Generator gen(model, 512);
    std::vector<GenerationRequest> requests;
    for (const auto& a : adapters) {
      GenerationRequest r{prompt, {}};
      r.params.max_new_tokens = max_new;
      r.params.adapter = a;
      requests.push_back(r);
    }
    for (const auto& r : gen.generate_batch(requests)) expected.push_back(r.tokens);
  }

  EngineOptions o;
  o.kv_blocks = 32;
  auto engine = make_engine(model, text, o);
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::vector<int32_t>> tokens(adapters.size());
  std::vector<std::string> streamed(adapters.size()), visible(adapters.size());
  int finished = 0;
  for (size_t i = 0; i < adapters.size(); ++i) {
    EngineRequest r;
    r.prompt = prompt;
    r.params.max_new_tokens = max_new;
    r.params.adapter = adapters[i];
    engine->submit(r, [&, i](RequestEvent&& e) {
      std::lock_guard lock(mu);
      if (e.token) tokens[i].push_back(e.token->id);
      streamed[i] += e.text;
      visible[i] += e.visible_text;
      if (e.finished) {
        ++finished;
        cv.notify_all();
      }
    });
  }
  engine->drain();
  std::lock_guard lock(mu);
  ASSERT_EQ(finished, 3);
  for (size_t i = 0; i < adapters.size(); ++i) {
    EXPECT_EQ(tokens[i], expected[i]) << adapters[i];
    EXPECT_EQ(streamed[i], text.tokenizer().decode(tokens[i], true)) << adapters[i];
    EXPECT_EQ(visible[i], streamed[i]);
    std::printf("%-7s %s\n", adapters[i].empty() ? "base" : adapters[i].c_str(), streamed[i].c_str());
  }
  EXPECT_NE(tokens[0], tokens[1]);
  EXPECT_NE(tokens[0], tokens[2]);
  EXPECT_EQ(store.pins("caps"), 0);
  EXPECT_EQ(store.pins("pirate"), 0);
}

}  // namespace
}  // namespace mil
