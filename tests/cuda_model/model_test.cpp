// The model on CUDA (bf16 activations and KV cache, bf16 weights for float models, fused
// qkv/gate_up, adapters in device memory) against transformers' goldens and the CPU backend
// (f32). Stated bf16 tolerances, on logits of magnitude ~10 (tiny models) and ~25 (default),
// with what an H100 gave (2026-11-25):
// - tiny models: rel L2 <= 2.5e-2 and max |diff| <= 0.3 against the golden and the CPU
//   (H100: rel 0.007-0.019, max 0.07-0.27; bf16 weights alone, on the CPU: rel ~0.01, max ~0.18);
// - top-1 (teacher-forced over the golden greedy continuations): the same token wherever the
//   f32 CPU's top-1 margin exceeds kSureMargin; flips below it and free greedy generations
//   are reported (H100: flips only at margins <= 0.17, where the logit error reaches 0.17);
// - LoRA mixes: rel L2 <= 3e-2 and max |diff| <= 0.4 per row against PEFT (H100: rel <= 0.023,
//   max <= 0.33 on llama_gqa's rank-16 rsLoRA rows);
// - default model (30 layers, Q4_1): rel L2 <= 4e-2 on the last position (H100: 0.005-0.027,
//   max |diff| 0.28-0.41); top-1 of the golden continuations where the f32 margin exceeds 0.5
//   (H100: all; flips at f32 margins 0.08 and 0.045 only).
#include "cuda_model/cuda_model_common.h"

#include <cstdio>
#include <set>

namespace mil::test::cuda_model {
namespace {

const fs::path kRoot = fs::path(MIL_FIXTURES_DIR);
// Top-1 must agree where the f32 top-1 margin exceeds this: about twice the largest logit
// error the tiny models show on CUDA (0.27 on prompts; 0.17 on gguf_Q8_0, whose one flip at
// an f32 margin above 0.1 motivated it), since both top logits may move.
constexpr double kSureMargin = 0.35;

struct Case {
  std::string name;
  fs::path model, golden;
};

std::vector<Case> tiny_cases() {
  std::vector<Case> cases;
  for (const auto& dir : fs::directory_iterator(kRoot / "tiny")) {
    if (fs::exists(dir.path() / "golden.json"))
      cases.push_back({"hf_" + dir.path().filename().string(), dir.path(), dir.path() / "golden.json"});
  }
  for (const auto& f : fs::directory_iterator(kRoot / "tiny_gguf")) {
    if (f.path().extension() != ".gguf") continue;
    fs::path golden = f.path();
    golden.replace_extension(".golden.json");
    cases.push_back({"gguf_" + f.path().stem().string(), f.path(), golden});
  }
  std::sort(cases.begin(), cases.end(), [](const Case& a, const Case& b) { return a.name < b.name; });
  return cases;
}

class TinyOnCuda : public testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    if (!device_ops()) GTEST_SKIP() << "no CUDA GPU";
  }
};

TEST_P(TinyOnCuda, LogitsAndTop1MatchTransformersAndCpu) {
  const Case& c = GetParam();
  const json golden = read_json(c.golden);
  Loaded gpu = load(c.model.string(), true, 16);  // 16: chunked prefill through the cache
  Loaded cpu = load(c.model.string(), false, 16);
  const int64_t vocab = gpu.weights->config().vocab_size;
  for (const json& seq : golden.at("sequences")) {
    const auto ids = seq.at("ids").get<std::vector<int32_t>>();
    Generator g(*gpu.model, static_cast<int64_t>(ids.size()) + 8, 4);
    Generator h(*cpu.model, static_cast<int64_t>(ids.size()) + 8, 4);
    const Tensor got = g.prompt_logits(ids);
    const Tensor ref = h.prompt_logits(ids);
    // Long sequences store golden logits at a subset of positions ("positions").
    std::vector<int64_t> positions;
    if (seq.contains("positions")) {
      positions = seq.at("positions").get<std::vector<int64_t>>();
    } else {
      for (int64_t pos = 0; pos < got.rows; ++pos) positions.push_back(pos);
    }
    std::vector<float> want, got_rows, ref_rows;
    for (const json& row : seq.at("logits"))
      for (const json& v : row) want.push_back(v.get<float>());
    ASSERT_EQ(want.size(), positions.size() * static_cast<size_t>(vocab));
    for (const int64_t pos : positions) {
      ASSERT_TRUE(pos >= 0 && pos < got.rows) << c.name << ": position " << pos;
      got_rows.insert(got_rows.end(), got.row<float>(pos), got.row<float>(pos) + vocab);
      ref_rows.insert(ref_rows.end(), ref.row<float>(pos), ref.row<float>(pos) + vocab);
    }
    const Diff dg = diff(got_rows.data(), want.data(), want.size());
    const Diff dc = diff(got_rows.data(), ref_rows.data(), want.size());
    std::printf("[%s] %zu tokens: vs golden max %.4f rel %.5f; vs CPU max %.4f rel %.5f\n",
                c.name.c_str(), ids.size(), dg.max_abs, dg.rel_l2, dc.max_abs, dc.rel_l2);
    EXPECT_LE(dg.rel_l2, 2.5e-2) << c.name;
    EXPECT_LE(dg.max_abs, 0.3) << c.name;
    EXPECT_LE(dc.rel_l2, 2.5e-2) << c.name;
    EXPECT_LE(dc.max_abs, 0.3) << c.name;
  }
  // Teacher-forced top-1 over prompt + golden greedy tokens, and free greedy generation.
  int agree = 0, total = 0, sure = 0, sure_agree = 0, gen_same = 0, gen_total = 0;
  double min_flip_margin = INFINITY, min_margin = INFINITY;
  for (const json& gr : golden.at("greedy")) {
    const auto prompt = gr.at("prompt").get<std::vector<int32_t>>();
    const auto expected = gr.at("tokens").get<std::vector<int32_t>>();
    std::vector<int32_t> all = prompt;
    all.insert(all.end(), expected.begin(), expected.end() - 1);
    Generator g(*gpu.model, static_cast<int64_t>(all.size()) + 8, 4);
    Generator h(*cpu.model, static_cast<int64_t>(all.size()) + 8, 4);
    const Tensor got = g.prompt_logits(all);
    const Tensor ref = h.prompt_logits(all);
    for (size_t i = 0; i < expected.size(); ++i) {
      const int64_t pos = static_cast<int64_t>(prompt.size() + i) - 1;
      const bool same = argmax(got.row<float>(pos), vocab) == expected[i];
      agree += same;
      ++total;
      const double m = margin(ref.row<float>(pos), vocab);
      if (!same) min_flip_margin = std::min(min_flip_margin, m);
      if (m > 0.1) min_margin = std::min(min_margin, m);
      if (m > kSureMargin) {
        ++sure;
        sure_agree += same;
      }
    }
    GenerationParams p;
    p.max_new_tokens = static_cast<int32_t>(expected.size());
    p.stop_at_eos = false;
    Generator gen(*gpu.model, static_cast<int64_t>(all.size()) + 8, 4);
    const auto tokens = gen.generate(prompt, p).tokens;
    for (size_t i = 0; i < expected.size(); ++i) {
      if (tokens[i] != expected[i]) break;
      ++gen_same;
    }
    gen_total += static_cast<int>(expected.size());
  }
  std::printf("[%s] top-1: %d/%d teacher-forced, %d/%d where the f32 margin > %.2f (smallest "
              "f32 margin at a flip %.3f; smallest above 0.1: %.3f); greedy generation: %d/%d "
              "tokens before the first difference\n",
              c.name.c_str(), agree, total, sure_agree, sure, kSureMargin, min_flip_margin,
              min_margin, gen_same, gen_total);
  EXPECT_EQ(sure_agree, sure) << c.name;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TinyOnCuda, testing::ValuesIn(tiny_cases()),
                         [](const testing::TestParamInfo<Case>& p) { return p.param.name; });

// Multi-LoRA: one step mixing every adapter and the base model, rows interleaved.
std::vector<fs::path> lora_fixtures() {
  std::vector<fs::path> out;
  for (const auto& d : fs::directory_iterator(kRoot / "lora")) {
    if (fs::exists(d.path() / "golden.json")) out.push_back(d.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

class LoraOnCuda : public testing::TestWithParam<fs::path> {
 protected:
  void SetUp() override {
    if (!device_ops()) GTEST_SKIP() << "no CUDA GPU";
  }
};

TEST_P(LoraOnCuda, OneMixedStepMatchesPeft) {
  const json golden = read_json(GetParam() / "golden.json");
  std::vector<std::pair<std::string, std::string>> adapters;
  std::vector<std::string> names;
  for (const auto& [name, _] : golden.at("outputs").items()) {
    names.push_back(name);
    if (name != "__base__")
      adapters.emplace_back(name, (kRoot / golden.at("adapters").at(name).get<std::string>()).string());
  }
  const std::string base = (kRoot / golden.at("base").get<std::string>()).string();
  Loaded gpu = load(base, true, 1024, adapters);
  const json& seqs = golden.at("sequences");
  std::vector<GenerationRequest> requests;
  std::vector<std::pair<std::string, size_t>> which;
  for (size_t s = 0; s < seqs.size(); ++s) {
    for (size_t k = 0; k < names.size(); ++k) {
      const std::string& name = names[(s + k) % names.size()];
      GenerationRequest r{seqs[s].at("ids").get<std::vector<int32_t>>(), {}};
      r.params.adapter = name == "__base__" ? "" : name;
      requests.push_back(r);
      which.emplace_back(name, s);
    }
  }
  Generator g(*gpu.model, 4096, 4);
  const std::vector<OwnedTensor> logits = g.prompt_logits_batch(requests);
  double worst_max = 0, worst_rel = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    const auto& [name, s] = which[i];
    std::vector<float> want;
    for (const json& row : golden["outputs"][name]["logits"][s])
      for (const json& v : row) want.push_back(v.get<float>());
    ASSERT_EQ(want.size(), static_cast<size_t>(logits[i].view().rows * logits[i].view().cols));
    const Diff d = diff(logits[i].ptr<float>(), want.data(), want.size());
    worst_max = std::max(worst_max, d.max_abs);
    worst_rel = std::max(worst_rel, d.rel_l2);
    EXPECT_LE(d.rel_l2, 3e-2) << name << " sequence " << s;
    EXPECT_LE(d.max_abs, 0.4) << name << " sequence " << s;
  }
  // Greedy continuations of every adapter as one batch: tokens before the first difference.
  std::vector<GenerationRequest> gen_requests;
  std::vector<std::vector<int32_t>> expected;
  for (const std::string& name : names) {
    for (const json& gr : golden["outputs"][name]["greedy"]) {
      GenerationRequest r{gr.at("prompt").get<std::vector<int32_t>>(), {}};
      expected.push_back(gr.at("tokens").get<std::vector<int32_t>>());
      r.params.max_new_tokens = static_cast<int32_t>(expected.back().size());
      r.params.stop_at_eos = false;
      r.params.adapter = name == "__base__" ? "" : name;
      gen_requests.push_back(r);
    }
  }
  const auto results = g.generate_batch(gen_requests);
  int same = 0, total = 0, exact = 0;
  for (size_t i = 0; i < results.size(); ++i) {
    size_t k = 0;
    while (k < expected[i].size() && results[i].tokens[k] == expected[i][k]) ++k;
    same += static_cast<int>(k);
    total += static_cast<int>(expected[i].size());
    exact += k == expected[i].size();
  }
  std::printf("[lora %s] %zu rows: worst max %.4f rel %.5f; greedy: %d/%zu sequences exact, "
              "%d/%d tokens before the first difference\n",
              GetParam().filename().c_str(), requests.size(), worst_max, worst_rel, exact,
              results.size(), same, total);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, LoraOnCuda, testing::ValuesIn(lora_fixtures()),
                         [](const testing::TestParamInfo<fs::path>& p) {
                           return p.param.filename().string();
                         });

// The default model (SmolLM2-135M-Instruct Q4_1): the CUDA dequantizing matmul, bf16
// activations, 30 layers.
TEST(DefaultModelOnCuda, LogitsAndTop1OfGoldenContinuations) {
  const char* path = std::getenv("MIL_DEFAULT_MODEL");
  if (path == nullptr) GTEST_SKIP() << "MIL_DEFAULT_MODEL is not set";
  if (!device_ops()) GTEST_SKIP() << "no CUDA GPU";
  const fs::path fixture = kRoot / "smollm2";
  const json golden = read_json(fixture / "golden.json");
  const auto shape = golden.at("logits_last").at("shape").get<std::vector<int64_t>>();
  std::vector<float> last(static_cast<size_t>(shape[0] * shape[1]));
  std::ifstream bin(fixture / golden.at("logits_last").at("file").get<std::string>(), std::ios::binary);
  bin.read(reinterpret_cast<char*>(last.data()), static_cast<std::streamsize>(last.size() * 4));
  ASSERT_TRUE(bin);
  const int64_t vocab = shape[1];
  Loaded gpu = load(path, true, 256);
  Loaded cpu = load(path, false, 256);
  for (const json& seq : golden.at("sequences")) {
    const auto ids = seq.at("ids").get<std::vector<int32_t>>();
    const auto greedy = seq.at("greedy").at("tokens").get<std::vector<int32_t>>();
    const std::string kind = seq.at("kind");
    std::vector<int32_t> all = ids;
    all.insert(all.end(), greedy.begin(), greedy.end());
    Generator g(*gpu.model, static_cast<int64_t>(all.size()) + 8);
    Generator h(*cpu.model, static_cast<int64_t>(all.size()) + 8);
    const Tensor got = g.prompt_logits(all);
    const Tensor ref = h.prompt_logits(all);
    const float* want = &last[seq.at("last_logits_index").get<int64_t>() * vocab];
    const Diff d = diff(got.row<float>(static_cast<int64_t>(ids.size()) - 1), want, vocab);
    EXPECT_LE(d.rel_l2, 4e-2) << kind;
    int agree = 0, sure = 0, sure_agree = 0;
    double min_flip_margin = INFINITY;
    for (size_t i = 0; i < greedy.size(); ++i) {
      const int64_t pos = static_cast<int64_t>(ids.size() + i) - 1;
      const bool same = argmax(got.row<float>(pos), vocab) == greedy[i];
      agree += same;
      const double m = margin(ref.row<float>(pos), vocab);
      if (!same) min_flip_margin = std::min(min_flip_margin, m);
      if (m > 0.5) {
        ++sure;
        sure_agree += same;
      }
    }
    GenerationParams p;
    p.max_new_tokens = static_cast<int32_t>(greedy.size());
    p.stop_at_eos = seq.at("greedy").at("stop_on_eos").get<bool>();
    Generator gen(*gpu.model, static_cast<int64_t>(all.size()) + 8);
    const auto tokens = gen.generate(ids, p).tokens;
    size_t k = 0;
    while (k < tokens.size() && k < greedy.size() && tokens[k] == greedy[k]) ++k;
    std::printf("[default %s] last position vs golden: max %.4f rel %.5f; top-1 %d/%zu "
                "teacher-forced (%d/%d where the f32 margin > 0.5; smallest f32 margin at a "
                "flip %.3f); greedy: %zu/%zu tokens before the first difference\n",
                kind.c_str(), d.max_abs, d.rel_l2, agree, greedy.size(), sure_agree, sure,
                min_flip_margin, k, greedy.size());
    EXPECT_EQ(sure_agree, sure) << kind;
  }
}

}  // namespace
}  // namespace mil::test::cuda_model
