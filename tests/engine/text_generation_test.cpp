// Text in, text out on the default model: the chat template and tokenizer read from the GGUF
// alone give transformers' prompt ids, and the greedy answer names Paris.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "backends/cpu/cpu_ops.h"
#include "engine/generator.h"
#include "tokenizer/model_tokenizer.h"

namespace mil {
namespace {

TEST(TextGeneration, DefaultModelAnswersParis) {
  const char* path = std::getenv("MIL_DEFAULT_MODEL");
  if (path == nullptr) GTEST_SKIP() << "MIL_DEFAULT_MODEL is not set (make test sets it)";
  ASSERT_TRUE(std::filesystem::exists(path)) << path;

  const ModelTokenizer text = ModelTokenizer::load(path);
  const std::vector<int32_t> prompt =
      text.encode_chat({{"user", "What is the capital of France?"}}, true);
  // The same ids transformers' apply_chat_template gives (the golden's first sequence).
  std::ifstream in(std::filesystem::path(MIL_FIXTURES_DIR) / "smollm2" / "golden.json");
  const nlohmann::json golden = nlohmann::json::parse(in);
  ASSERT_EQ(golden["sequences"][0]["kind"], "chat");
  EXPECT_EQ(prompt, golden["sequences"][0]["ids"].get<std::vector<int32_t>>());

  auto ops = make_cpu_ops(2);
  LlamaWeights weights(open_weight_source(path), ShardSpec{});
  LlamaModel model(weights, *ops, 64);
  Generator generator(model, 256);
  GenerationParams params;
  params.max_new_tokens = 48;
  IncrementalDecoder decoder(text.tokenizer(), true);
  std::string answer;
  const GenerationResult r = generator.generate(prompt, params, [&](int32_t token) {
    answer += decoder.push(token);
    return true;
  });
  answer += decoder.flush();
  EXPECT_EQ(r.finish, FinishReason::EndOfSequence);
  EXPECT_EQ(answer, text.tokenizer().decode(r.tokens, true));
  EXPECT_NE(answer.find("Paris"), std::string::npos) << answer;
}

}  // namespace
}  // namespace mil
