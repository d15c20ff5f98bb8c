// The fixture that the engine's tests on the tiny model share: the tiny F32 GGUF model and
// its tokenizer, an adapter store holding "g" and "g2" (one rank-8 q/k adapter under two
// names), and two models over the same weights: `model_` for the code under test and
// `ref_model_` for the reference each request is compared with (the request run alone).
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "backends/cpu/cpu_ops.h"
#include "engine/generator.h"
#include "lora/adapter_store.h"
#include "model/llama.h"
#include "tokenizer/model_tokenizer.h"

namespace mil::test {

class TinyEngineTest : public testing::Test {
 protected:
  // max_tokens: the tested model's tokens per step.
  void load(int64_t max_tokens) {
    const std::filesystem::path fixtures = MIL_FIXTURES_DIR;
    const std::string path = (fixtures / "tiny_gguf" / "F32.gguf").string();
    text_ = std::make_unique<ModelTokenizer>(ModelTokenizer::load(path));
    weights_ = std::make_unique<LlamaWeights>(open_weight_source(path), ShardSpec{});
    store_ = std::make_unique<AdapterStore>(weights_->config(), ShardSpec{},
                                            AdapterStore::Limits{4, size_t{1} << 30});
    const std::string adapter = (fixtures / "lora" / "gguf_F32" / "g_r8_qk").string();
    store_->add("g", adapter);
    store_->add("g2", adapter);  // the same weights under another name
    ref_ops_ = make_cpu_ops(1);
    ops_ = make_cpu_ops(1);
    ref_model_ = std::make_unique<LlamaModel>(*weights_, *ref_ops_, 256, store_.get());
    model_ = std::make_unique<LlamaModel>(*weights_, *ops_, max_tokens, store_.get());
    vocab_ = static_cast<int32_t>(weights_->config().vocab_size);
  }

  std::vector<int32_t> random_prompt(std::mt19937& rng, int len) const {
    std::vector<int32_t> p(static_cast<size_t>(len));
    for (auto& t : p) t = 3 + static_cast<int32_t>(rng() % static_cast<uint32_t>(vocab_ - 3));
    return p;
  }

  // Greedy tokens of `prompt` alone on the reference model (no EOS stop).
  std::vector<int32_t> alone(const std::vector<int32_t>& prompt, int max_new,
                             const std::string& adapter = "") const {
    Generator gen(*ref_model_, 256, 4);
    GenerationParams p;
    p.max_new_tokens = max_new;
    p.stop_at_eos = false;
    p.adapter = adapter;
    return gen.generate(prompt, p).tokens;
  }

  std::unique_ptr<ModelTokenizer> text_;
  std::unique_ptr<LlamaWeights> weights_;
  std::unique_ptr<AdapterStore> store_;
  std::unique_ptr<Ops> ref_ops_, ops_;
  std::unique_ptr<LlamaModel> ref_model_, model_;
  int32_t vocab_ = 0;
};

}  // namespace mil::test
