// A model's text side loaded whole: tokenizer, chat template and special tokens, from an HF
// directory (tokenizer.json + tokenizer_config.json) and from the default model's GGUF. Both
// must render the SmolLM2 conversations exactly as transformers' apply_chat_template did.
#include "tokenizer/model_tokenizer.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace mil {
namespace {

namespace fs = std::filesystem;
const fs::path kFixtures = fs::path(MIL_FIXTURES_DIR) / "tokenizer";

nlohmann::json smollm2_chat_cases() {
  std::ifstream in(kFixtures / "chat" / "smollm2.json");
  return nlohmann::json::parse(in);
}

std::vector<ChatMessage> messages_of(const nlohmann::json& c) {
  std::vector<ChatMessage> messages;
  for (const auto& m : c.at("messages")) messages.push_back({m.at("role"), m.at("content")});
  return messages;
}

void expect_renders_fixture(const ModelTokenizer& text) {
  const nlohmann::json fixture = smollm2_chat_cases();
  EXPECT_EQ(text.bos_token(), fixture.at("bos_token"));
  EXPECT_EQ(text.eos_token(), fixture.at("eos_token"));
  ASSERT_TRUE(text.has_chat_template());
  int checked = 0;
  for (const auto& c : fixture.at("cases")) {
    if (c.contains("error") || !c.at("extra").empty()) continue;
    const auto messages = messages_of(c);
    const bool gen = c.at("add_generation_prompt");
    const std::string rendered = text.render_chat(messages, gen);
    EXPECT_EQ(rendered, c.at("rendered").get<std::string>());
    // Tokenizing the rendered text adds no special tokens: they are in the text already.
    EXPECT_EQ(text.encode_chat(messages, gen), text.tokenizer().encode(rendered, false));
    ++checked;
  }
  EXPECT_GE(checked, 6);
}

TEST(ModelTokenizer, HfDirectoryWithTokenizerConfig) {
  expect_renders_fixture(ModelTokenizer::load((kFixtures / "smollm2").string()));
}

TEST(ModelTokenizer, GgufAloneMatchesTheHfDirectory) {
  const char* path = std::getenv("MIL_DEFAULT_MODEL");
  if (path == nullptr) GTEST_SKIP() << "MIL_DEFAULT_MODEL is not set (make test sets it)";
  const ModelTokenizer gguf = ModelTokenizer::load(path);
  expect_renders_fixture(gguf);
  const ModelTokenizer hf = ModelTokenizer::load((kFixtures / "smollm2").string());
  const std::vector<ChatMessage> chat = {{"system", "Be brief."}, {"user", "2+2=? ünïcödé 🚀"}};
  EXPECT_EQ(gguf.encode_chat(chat), hf.encode_chat(chat));
}

TEST(ModelTokenizer, ModelWithoutTemplateSaysSo) {
  const fs::path dir = fs::temp_directory_path() / "mil_no_template";
  fs::remove_all(dir);
  fs::create_directories(dir);
  fs::copy_file(kFixtures / "bytelevel_llama3" / "tokenizer.json", dir / "tokenizer.json");
  const ModelTokenizer text = ModelTokenizer::load(dir.string());
  EXPECT_FALSE(text.has_chat_template());
  EXPECT_THROW(text.render_chat({{"user", "hi"}}, true), Error);
  std::ofstream(dir / "tokenizer_config.json") << R"({"chat_template": 5})";
  try {
    ModelTokenizer::load(dir.string());
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer_config.json: field 'chat_template'"),
              std::string::npos) << e.what();
  }
  std::ofstream(dir / "tokenizer_config.json", std::ios::trunc) << R"({"chat_template": "{% include 'x' %}"})";
  try {
    ModelTokenizer::load(dir.string());
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("include"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace mil
