// The demo adapters of examples/adapters change the default model's answers recognisably:
// one answers in capitals, one talks like a pirate; without an adapter the answer is plain.
// All three prompts run in one batch, each row with its own adapter.
#include <gtest/gtest.h>

#include <cctype>
#include <cstdlib>
#include <filesystem>

#include "backends/cpu/cpu_ops.h"
#include "engine/generator.h"
#include "lora/adapter_store.h"
#include "tokenizer/model_tokenizer.h"

namespace mil {
namespace {

namespace fs = std::filesystem;

double uppercase_fraction(const std::string& text) {
  int letters = 0, upper = 0;
  for (unsigned char c : text) {
    if (std::isalpha(c)) {
      ++letters;
      upper += std::isupper(c) ? 1 : 0;
    }
  }
  return letters == 0 ? 0.0 : static_cast<double>(upper) / letters;
}

TEST(DemoAdapters, ChangeTheDefaultModelsAnswers) {
  const char* path = std::getenv("MIL_DEFAULT_MODEL");
  if (path == nullptr) GTEST_SKIP() << "MIL_DEFAULT_MODEL is not set (make test sets it)";
  const fs::path examples = fs::path(MIL_FIXTURES_DIR).parent_path().parent_path() / "examples" / "adapters";
  ASSERT_TRUE(fs::exists(examples / "smollm2-caps")) << examples;

  const ModelTokenizer text = ModelTokenizer::load(path);
  auto ops = make_cpu_ops(2);
  LlamaWeights weights(open_weight_source(path), ShardSpec{});
  AdapterStore store(weights.config(), ShardSpec{}, AdapterStore::Limits{4, size_t{1} << 30});
  store.add("caps", (examples / "smollm2-caps").string());
  store.add("pirate", (examples / "smollm2-pirate").string());
  LlamaModel model(weights, *ops, 256, &store);
  Generator gen(model, 1024);

  for (const char* question : {"What is the capital of France?", "Name a fruit."}) {
    const std::vector<int32_t> prompt = text.encode_chat({{"user", question}});
    std::vector<GenerationRequest> requests;
    for (const char* adapter : {"", "caps", "pirate"}) {
      GenerationRequest r{prompt, {}};
      r.params.max_new_tokens = 40;
      r.params.adapter = adapter;
      requests.push_back(r);
    }
    const auto results = gen.generate_batch(requests);
    const std::string base = text.tokenizer().decode(results[0].tokens, true);
    const std::string caps = text.tokenizer().decode(results[1].tokens, true);
    const std::string pirate = text.tokenizer().decode(results[2].tokens, true);
    std::printf("%s\n  base:   %s\n  caps:   %s\n  pirate: %s\n", question, base.c_str(),
                caps.c_str(), pirate.c_str());
    EXPECT_LT(uppercase_fraction(base), 0.5) << base;
    EXPECT_GT(uppercase_fraction(caps), 0.8) << caps;
    EXPECT_NE(pirate.find("Arr"), std::string::npos) << pirate;
    EXPECT_NE(base, caps);
    EXPECT_NE(base, pirate);
  }
}

}  // namespace
}  // namespace mil
