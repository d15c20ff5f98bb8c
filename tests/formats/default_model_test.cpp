// Opens the real default model (SmolLM2-135M-Instruct, Q4_1 GGUF) when MIL_DEFAULT_MODEL
// names it; the expectations are that file's.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>

#include "formats/gguf.h"

namespace mil {
namespace {

TEST(DefaultModel, SmolLM2Gguf) {
  const char* path = std::getenv("MIL_DEFAULT_MODEL");
  if (path == nullptr || !std::filesystem::is_regular_file(path)) {
    GTEST_SKIP() << "set MIL_DEFAULT_MODEL to SmolLM2-135M-Instruct.Q4_1.gguf to run";
  }
  const auto start = std::chrono::steady_clock::now();
  GGUFFile g(path);
  const auto tokens = g.get_string_array("tokenizer.ggml.tokens");
  const auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_LT(elapsed, std::chrono::seconds(2));  // opening must not copy the vocab around

  EXPECT_EQ(g.tensors().size(), 272u);
  EXPECT_EQ(g.get_string("general.architecture"), "llama");
  EXPECT_EQ(g.get_int("llama.block_count"), 30);
  EXPECT_EQ(g.get_int("llama.embedding_length"), 576);
  ASSERT_TRUE(tokens.has_value());
  EXPECT_EQ(tokens->size(), 49152u);
  const auto merges = g.get_string_array("tokenizer.ggml.merges");
  ASSERT_TRUE(merges.has_value());
  EXPECT_EQ(merges->size(), 48900u);

  const TensorInfo* embd = g.find("token_embd.weight");
  ASSERT_NE(embd, nullptr);
  EXPECT_EQ(embd->dtype, DType::Q8_0);
  EXPECT_EQ(embd->shape, (std::vector<int64_t>{49152, 576}));
  EXPECT_EQ(embd->data.size(), row_bytes(DType::Q8_0, 576) * 49152);

  const TensorInfo* down = g.find("blk.0.ffn_down.weight");
  ASSERT_NE(down, nullptr);
  EXPECT_EQ(down->dtype, DType::Q4_1);
  EXPECT_EQ(down->dtype_name, "Q4_1");
  EXPECT_EQ(down->shape, (std::vector<int64_t>{576, 1536}));
  EXPECT_EQ(down->data.size(), row_bytes(DType::Q4_1, 1536) * 576);

  for (const TensorInfo& t : g.tensors()) {
    EXPECT_TRUE(t.dtype.has_value()) << t.name << " is " << t.dtype_name;
  }
}

}  // namespace
}  // namespace mil
