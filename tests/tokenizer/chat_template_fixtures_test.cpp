// Renders every case of every fixture in tests/fixtures/tokenizer/chat (produced with
// transformers' apply_chat_template) and requires byte-identical output, or a failure where
// transformers failed.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "tokenizer/chat_template.h"

namespace {

using nlohmann::ordered_json;

const std::filesystem::path kChatFixtures = std::filesystem::path(MIL_FIXTURES_DIR) / "tokenizer" / "chat";

std::vector<std::filesystem::path> fixture_files() {
  std::vector<std::filesystem::path> files;
  if (!std::filesystem::is_directory(kChatFixtures)) return files;
  for (const auto& entry : std::filesystem::directory_iterator(kChatFixtures)) {
    if (entry.path().extension() == ".json") files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  return files;
}

ordered_json load(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return ordered_json::parse(buffer.str());
}

// What apply_chat_template passes: the case's extra kwargs, then messages, tools and
// documents (None unless given), add_generation_prompt and the special tokens.
ordered_json context_for(const ordered_json& fixture, const ordered_json& c) {
  ordered_json context = c.contains("extra") ? c["extra"] : ordered_json::object();
  context["messages"] = c["messages"];
  if (!context.contains("tools")) context["tools"] = nullptr;
  if (!context.contains("documents")) context["documents"] = nullptr;
  context["add_generation_prompt"] = c.value("add_generation_prompt", false);
  context["bos_token"] = fixture["bos_token"];
  context["eos_token"] = fixture["eos_token"];
  return context;
}

class ChatTemplateFixture : public testing::TestWithParam<std::filesystem::path> {};

TEST_P(ChatTemplateFixture, MatchesTransformers) {
  ordered_json fixture = load(GetParam());
  const std::string name = GetParam().filename().string();
  mil::ChatTemplate tmpl(fixture["template"].get<std::string>(), name);
  ASSERT_FALSE(fixture["cases"].empty());
  for (size_t i = 0; i < fixture["cases"].size(); ++i) {
    const ordered_json& c = fixture["cases"][i];
    SCOPED_TRACE(name + " case " + std::to_string(i));
    ordered_json context = context_for(fixture, c);
    if (c.value("error", false)) {
      EXPECT_THROW(tmpl.render(context), mil::Error);
      continue;
    }
    try {
      EXPECT_EQ(tmpl.render(context), c["rendered"].get<std::string>());
    } catch (const mil::Error& e) {
      ADD_FAILURE() << e.what();
    }
  }
}

std::string fixture_name(const testing::TestParamInfo<std::filesystem::path>& param_info) {
  std::string name = param_info.param.stem().string();
  for (char& ch : name) {
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  }
  return name;
}

INSTANTIATE_TEST_SUITE_P(Chat, ChatTemplateFixture, testing::ValuesIn(fixture_files()), fixture_name);
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(ChatTemplateFixture);

}  // namespace
