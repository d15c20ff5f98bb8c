// Multi-LoRA against PEFT: for each tiny base model, every adapter of its fixture folder is
// registered, and ONE forward step holds every sequence under every adapter and under the
// base model, rows interleaved. Each row's logits must be PEFT's for that row's adapter;
// then greedy continuations of all of them run as one batch. Fixtures:
// scripts/make_lora_golden.py (GPU machine, transformers + peft).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "backends/cpu/cpu_ops.h"
#include "engine/generator.h"
#include "lora/adapter.h"
#include "lora/adapter_store.h"
#include "model/llama.h"

namespace mil {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const fs::path kRoot = fs::path(MIL_FIXTURES_DIR);
constexpr const char* kBase = "__base__";

std::vector<fs::path> lora_fixtures() {
  std::vector<fs::path> out;
  if (!fs::exists(kRoot / "lora")) return out;
  for (const auto& d : fs::directory_iterator(kRoot / "lora")) {
    if (fs::exists(d.path() / "golden.json")) out.push_back(d.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

double max_diff(const Tensor& got, const json& expected) {
  double worst = 0;
  for (int64_t pos = 0; pos < got.rows; ++pos) {
    for (int64_t v = 0; v < got.cols; ++v) {
      const double d = std::abs(got.row<float>(pos)[v] - expected[pos][v].get<double>());
      worst = std::max(worst, std::isnan(d) ? INFINITY : d);
    }
  }
  return worst;
}

class LoraGolden : public testing::TestWithParam<fs::path> {
 protected:
  void SetUp() override {
    std::ifstream in(GetParam() / "golden.json");
    golden_ = json::parse(in);
    weights_ = std::make_unique<LlamaWeights>(
        open_weight_source((kRoot / golden_.at("base").get<std::string>()).string()), ShardSpec{});
    store_ = std::make_unique<AdapterStore>(weights_->config(), ShardSpec{},
                                            AdapterStore::Limits{16, size_t{1} << 30});
    for (const auto& [name, _] : golden_.at("outputs").items()) {
      if (name != kBase) store_->add(name, adapter_path(name));
    }
    ops_ = make_cpu_ops(2);
    model_ = std::make_unique<LlamaModel>(*weights_, *ops_, 1024, store_.get());
  }
  std::string adapter_path(const std::string& name) const {
    return (kRoot / golden_.at("adapters").at(name).get<std::string>()).string();
  }
  std::vector<std::string> names() const {
    std::vector<std::string> n;
    for (const auto& [name, _] : golden_.at("outputs").items()) n.push_back(name);
    return n;
  }
  double tolerance() const { return golden_.at("tolerance").at("logits_max_abs").get<double>(); }

  json golden_;
  std::unique_ptr<LlamaWeights> weights_;
  std::unique_ptr<AdapterStore> store_;
  std::unique_ptr<Ops> ops_;
  std::unique_ptr<LlamaModel> model_;
};

TEST_P(LoraGolden, OneMixedStepMatchesPeftForEveryRow) {
  const auto adapter_names = names();
  ASSERT_GE(adapter_names.size(), 2u);
  // Sequence-major with the adapter rotating, so neighbouring rows use different adapters.
  std::vector<GenerationRequest> requests;
  std::vector<std::pair<std::string, size_t>> which;
  const json& seqs = golden_.at("sequences");
  for (size_t s = 0; s < seqs.size(); ++s) {
    for (size_t k = 0; k < adapter_names.size(); ++k) {
      const std::string& name = adapter_names[(s + k) % adapter_names.size()];
      GenerationRequest r{seqs[s].at("ids").get<std::vector<int32_t>>(), {}};
      r.params.adapter = name == kBase ? "" : name;
      requests.push_back(r);
      which.emplace_back(name, s);
    }
  }
  Generator gen(*model_, 4096, 4);
  const std::vector<OwnedTensor> logits = gen.prompt_logits_batch(requests);
  for (size_t i = 0; i < requests.size(); ++i) {
    const auto& [name, s] = which[i];
    const double d = max_diff(logits[i].view(), golden_["outputs"][name]["logits"][s]);
    EXPECT_LE(d, tolerance()) << GetParam().filename() << ": adapter " << name << ", sequence " << s;
  }
}

TEST_P(LoraGolden, GreedyContinuationsAsOneBatch) {
  std::vector<GenerationRequest> requests;
  std::vector<std::vector<int32_t>> expected;
  for (const std::string& name : names()) {
    for (const json& g : golden_["outputs"][name]["greedy"]) {
      GenerationRequest r{g.at("prompt").get<std::vector<int32_t>>(), {}};
      expected.push_back(g.at("tokens").get<std::vector<int32_t>>());
      r.params.max_new_tokens = static_cast<int32_t>(expected.back().size());
      r.params.stop_at_eos = false;
      r.params.adapter = name == kBase ? "" : name;
      requests.push_back(r);
    }
  }
  Generator gen(*model_, 4096, 4);
  const std::vector<GenerationResult> results = gen.generate_batch(requests);
  for (size_t i = 0; i < requests.size(); ++i) {
    EXPECT_EQ(results[i].tokens, expected[i]) << "adapter '" << requests[i].params.adapter << "'";
  }
  EXPECT_EQ(store_->resident_count(), static_cast<int64_t>(names().size()) - 1);
}

TEST_P(LoraGolden, MergedAdapterAgreesWithUnmerged) {
  std::string name;
  for (const std::string& n : names()) {
    if (n != kBase) name = n;
  }
  const json& seq = golden_.at("sequences")[0];
  const auto ids = seq.at("ids").get<std::vector<int32_t>>();
  GenerationRequest r{ids, {}};
  r.params.adapter = name;
  Generator gen(*model_, 1024, 4);
  const OwnedTensor unmerged = std::move(gen.prompt_logits_batch({r})[0]);

  LlamaWeights merged(open_weight_source((kRoot / golden_.at("base").get<std::string>()).string()),
                      ShardSpec{});
  merged.merge_lora(load_lora_adapter(name, adapter_path(name), merged.config(), ShardSpec{}));
  LlamaModel merged_model(merged, *ops_, 1024);
  Generator merged_gen(merged_model, 1024, 4);
  const Tensor m = merged_gen.prompt_logits(ids);
  EXPECT_LE(max_diff(m, golden_["outputs"][name]["logits"][0]), tolerance());
  double d = 0;
  for (int64_t p = 0; p < m.rows; ++p) {
    for (int64_t v = 0; v < m.cols; ++v) {
      d = std::max<double>(d, std::abs(m.row<float>(p)[v] - unmerged.view().row<float>(p)[v]));
    }
  }
  EXPECT_LE(d, tolerance()) << "merged vs unmerged, adapter " << name;
}

TEST_P(LoraGolden, UnknownAdapterIsAnError) {
  Generator gen(*model_, 256, 4);
  GenerationParams p;
  p.adapter = "no-such-adapter";
  EXPECT_THROW(gen.generate({1, 2, 3}, p), Error);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, LoraGolden, testing::ValuesIn(lora_fixtures()),
                         [](const testing::TestParamInfo<fs::path>& p) {
                           return p.param.filename().string();
                         });

// The suite above is only as good as its fixtures: every base must be there.
TEST(LoraGoldenFixtures, EveryBaseIsPresent) {
  std::vector<std::string> names;
  for (const fs::path& p : lora_fixtures()) names.push_back(p.filename().string());
  EXPECT_EQ(names, (std::vector<std::string>{"gguf_F32", "gguf_Q8_0", "llama_gqa", "qwen2_bias"}));
}

}  // namespace
}  // namespace mil
