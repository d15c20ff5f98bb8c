// The model against transformers: tiny random-weight models of every supported variant
// (HF directories and GGUF files of every tensor type), logits at every position and
// greedy continuations. Fixtures: scripts/make_golden.py (run on the GPU machine).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "backends/cpu/cpu_ops.h"
#include "engine/generator.h"
#include "model/llama.h"

namespace mil {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

json read_json(const fs::path& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in) << path;
  return json::parse(in);
}

struct Case {
  std::string name;
  fs::path model;   // HF directory or .gguf file
  fs::path golden;  // golden.json
};

std::vector<Case> tiny_cases() {
  std::vector<Case> cases;
  const fs::path root = fs::path(MIL_FIXTURES_DIR);
  if (fs::exists(root / "tiny")) {
    for (const auto& dir : fs::directory_iterator(root / "tiny")) {
      if (fs::exists(dir.path() / "golden.json")) {
        cases.push_back({"hf_" + dir.path().filename().string(), dir.path(), dir.path() / "golden.json"});
      }
    }
  }
  if (fs::exists(root / "tiny_gguf")) {
    for (const auto& f : fs::directory_iterator(root / "tiny_gguf")) {
      if (f.path().extension() != ".gguf") continue;
      fs::path golden = f.path();
      golden.replace_extension(".golden.json");
      cases.push_back({"gguf_" + f.path().stem().string(), f.path(), golden});
    }
  }
  std::sort(cases.begin(), cases.end(), [](const Case& a, const Case& b) { return a.name < b.name; });
  return cases;
}

class TinyGolden : public testing::TestWithParam<Case> {};

TEST_P(TinyGolden, LogitsAndGreedyTokensMatchTransformers) {
  const Case& c = GetParam();
  const json golden = read_json(c.golden);
  const double tol = golden.at("tolerance").at("logits_max_abs").get<double>();
  ASSERT_LE(tol, 1e-3) << "the issue fixes f32 tiny-model tolerance at 1e-3";

  auto ops = make_cpu_ops_exact(2);
  LlamaWeights weights(open_weight_source(c.model.string()), ShardSpec{});
  // A small step size forces chunked prefill through the paged cache on longer prompts.
  LlamaModel model(weights, *ops, 16);
  const int64_t vocab = weights.config().vocab_size;

  for (const json& seq : golden.at("sequences")) {
    const std::vector<int32_t> ids = seq.at("ids").get<std::vector<int32_t>>();
    const json& expected = seq.at("logits");
    // Long sequences store logits at a subset of positions ("positions"), else at every one.
    std::vector<int64_t> positions;
    if (seq.contains("positions")) {
      positions = seq.at("positions").get<std::vector<int64_t>>();
    } else {
      for (size_t pos = 0; pos < ids.size(); ++pos) positions.push_back(static_cast<int64_t>(pos));
    }
    ASSERT_EQ(expected.size(), positions.size());
    Generator gen(model, static_cast<int64_t>(ids.size()) + 8, 4);
    const Tensor logits = gen.prompt_logits(ids);
    ASSERT_EQ(logits.rows, static_cast<int64_t>(ids.size()));
    double max_diff = 0;
    for (size_t i = 0; i < positions.size(); ++i) {
      const int64_t pos = positions[i];
      ASSERT_TRUE(pos >= 0 && pos < logits.rows) << c.name << ": position " << pos;
      ASSERT_EQ(expected[i].size(), static_cast<size_t>(vocab));
      for (int64_t v = 0; v < vocab; ++v) {
        const double d = std::abs(logits.row<float>(pos)[v] - expected[i][v].get<double>());
        max_diff = std::max(max_diff, std::isnan(d) ? INFINITY : d);
      }
    }
    EXPECT_LE(max_diff, tol) << c.name << ": sequence of " << ids.size() << " tokens";
  }

  for (const json& g : golden.at("greedy")) {
    const std::vector<int32_t> prompt = g.at("prompt").get<std::vector<int32_t>>();
    const std::vector<int32_t> expected = g.at("tokens").get<std::vector<int32_t>>();
    Generator gen(model, static_cast<int64_t>(prompt.size() + expected.size()) + 4, 4);
    GenerationParams params;
    params.max_new_tokens = static_cast<int32_t>(expected.size());
    params.stop_at_eos = false;  // random tiny models have no meaningful EOS
    const GenerationResult r = gen.generate(prompt, params);
    EXPECT_EQ(r.tokens, expected) << c.name;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TinyGolden, testing::ValuesIn(tiny_cases()),
                         [](const testing::TestParamInfo<Case>& p) { return p.param.name; });

// The suite above is only as good as its fixtures: every variant must be there.
TEST(TinyGoldenFixtures, EveryVariantIsPresent) {
  std::set<std::string> names;
  for (const Case& c : tiny_cases()) names.insert(c.name);
  for (const char* want : {"hf_llama_gqa", "hf_llama_mha_tied", "hf_llama3_rope", "hf_linear_rope",
                           "hf_qwen2_bias", "hf_head_dim_explicit", "hf_mistral", "hf_bf16_sharded",
                           "hf_f16", "hf_long_context_rope", "gguf_F32", "gguf_F16", "gguf_BF16", "gguf_Q8_0", "gguf_Q4_0",
                           "gguf_Q4_1"}) {
    EXPECT_TRUE(names.count(want)) << "missing fixture " << want;
  }
}

}  // namespace
}  // namespace mil
