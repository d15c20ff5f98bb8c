// PEFT adapter folders -> LoraAdapter: values, scales, TP shards, the GGUF q/k row order, and
// every refusal (each message must name the file and the field or tensor at fault).
#include <gtest/gtest.h>

#include <cmath>

#include "lora/adapter.h"
#include "lora/adapter_writer.h"

namespace mil::test {
namespace {

// Element (r, c) of the tensor written with `seed` and `cols` columns.
float written(uint32_t seed, int64_t cols, int64_t r, int64_t c) { return test_value(seed, r * cols + c); }
uint32_t seed_of(int64_t layer, LoraTarget t, char ab) {
  return static_cast<uint32_t>(layer * 100 + static_cast<int>(t) * 10 + (ab == 'A' ? 1 : 2));
}

TEST(LoraAdapter, LoadsEveryModuleWithAlphaOverRank) {
  const ModelConfig base = tiny_base();
  AdapterDir dir;
  dir.standard(base, 4, 8);
  const LoraAdapter a = load_lora_adapter("x", dir.path(), base, ShardSpec{});
  EXPECT_EQ(a.name(), "x");
  EXPECT_EQ(a.max_rank(), 4);
  size_t expected_bytes = 0;
  for (int64_t layer = 0; layer < base.num_layers; ++layer) {
    for (LoraTarget t : all_targets()) {
      const LoraModule* m = a.module(layer, t);
      ASSERT_NE(m, nullptr);
      const int64_t in = lora_in_features(base, t), out = lora_out_features(base, t);
      EXPECT_EQ(m->rank, 4);
      EXPECT_FLOAT_EQ(m->scale, 2.0f);
      ASSERT_EQ(m->a.rows, 4);
      ASSERT_EQ(m->a.cols, in);
      ASSERT_EQ(m->b.rows, out);
      ASSERT_EQ(m->b.cols, 4);
      EXPECT_TRUE(m->a.is_contiguous() && m->b.is_contiguous());
      EXPECT_EQ(m->a.dtype, DType::F32);
      for (int64_t r = 0; r < 4; ++r) {
        for (int64_t c = 0; c < in; ++c) ASSERT_EQ(m->a.row<float>(r)[c], written(seed_of(layer, t, 'A'), in, r, c));
      }
      for (int64_t r = 0; r < out; ++r) {
        for (int64_t c = 0; c < 4; ++c) ASSERT_EQ(m->b.row<float>(r)[c], written(seed_of(layer, t, 'B'), 4, r, c));
      }
      expected_bytes += (m->a.bytes() + m->b.bytes());
    }
  }
  EXPECT_EQ(a.bytes(), expected_bytes);
  EXPECT_EQ(a.module(2, LoraTarget::Q), nullptr);
  EXPECT_EQ(a.module(-1, LoraTarget::Q), nullptr);
}

TEST(LoraAdapter, HalfPrecisionTensorsBecomeF32) {
  const ModelConfig base = tiny_base();
  for (const char* dtype : {"F16", "BF16"}) {
    AdapterDir dir;
    dir.standard(base, 2, 2, {LoraTarget::V}, dtype);
    const LoraAdapter a = load_lora_adapter("x", dir.path(), base, ShardSpec{});
    const LoraModule* m = a.module(1, LoraTarget::V);
    ASSERT_NE(m, nullptr);
    EXPECT_EQ(m->b.row<float>(3)[1], written(seed_of(1, LoraTarget::V, 'B'), 2, 3, 1)) << dtype;
    EXPECT_EQ(m->a.row<float>(1)[5], written(seed_of(1, LoraTarget::V, 'A'), 16, 1, 5)) << dtype;
    EXPECT_EQ(a.module(1, LoraTarget::Q), nullptr);
  }
}

TEST(LoraAdapter, RsLoraScalesByAlphaOverSqrtRank) {
  const ModelConfig base = tiny_base();
  AdapterDir dir;
  dir.standard(base, 4, 8, {LoraTarget::Q});
  json cfg = lora_config(4, 8, json::array({"q_proj"}));
  cfg["use_rslora"] = true;
  dir.config(cfg);
  const LoraAdapter a = load_lora_adapter("x", dir.path(), base, ShardSpec{});
  EXPECT_FLOAT_EQ(a.module(0, LoraTarget::Q)->scale, 4.0f);  // 8 / sqrt(4)
}

TEST(LoraAdapter, RankAndAlphaPatternsMatchModulePathSuffixesFirstKeyWins) {
  const ModelConfig base = tiny_base();
  AdapterDir dir;
  std::vector<TensorSpec> specs;
  add_module(specs, base, 0, LoraTarget::Q, 2);     // "q_proj": 2
  add_module(specs, base, 1, LoraTarget::Q, 6);     // "layers.1.self_attn.q_proj": 6 listed first
  add_module(specs, base, 0, LoraTarget::Down, 4);  // default r
  add_module(specs, base, 1, LoraTarget::Down, 3);  // full path key
  dir.tensors(specs);
  dir.write("adapter_config.json", R"({
      "peft_type": "LORA", "r": 4, "lora_alpha": 16, "target_modules": ["q_proj", "down_proj"],
      "rank_pattern": {"layers.1.self_attn.q_proj": 6, "q_proj": 2, "model.layers.1.mlp.down_proj": 3},
      "alpha_pattern": {"layers.0.self_attn.q_proj": 32}})");
  const LoraAdapter a = load_lora_adapter("x", dir.path(), base, ShardSpec{});
  EXPECT_EQ(a.module(0, LoraTarget::Q)->rank, 2);
  EXPECT_FLOAT_EQ(a.module(0, LoraTarget::Q)->scale, 16.0f);  // 32 / 2
  EXPECT_EQ(a.module(1, LoraTarget::Q)->rank, 6);
  EXPECT_FLOAT_EQ(a.module(1, LoraTarget::Q)->scale, 16.0f / 6);
  EXPECT_EQ(a.module(0, LoraTarget::Down)->rank, 4);
  EXPECT_FLOAT_EQ(a.module(0, LoraTarget::Down)->scale, 4.0f);
  EXPECT_EQ(a.module(1, LoraTarget::Down)->rank, 3);
  EXPECT_EQ(a.max_rank(), 6);
}

TEST(LoraAdapter, PatternKeyOrderIsTheFilesOrder) {
  // "q_proj" first: it matches layer 1's q too, so the later, more specific key never applies.
  const ModelConfig base = tiny_base();
  AdapterDir dir;
  std::vector<TensorSpec> specs;
  add_module(specs, base, 0, LoraTarget::Q, 2);
  add_module(specs, base, 1, LoraTarget::Q, 2);
  dir.tensors(specs);
  dir.write("adapter_config.json",
            R"({"peft_type": "LORA", "r": 8, "lora_alpha": 8, "target_modules": ["q_proj"],
                "rank_pattern": {"q_proj": 2, "model.layers.1.self_attn.q_proj": 6}})");
  const LoraAdapter a = load_lora_adapter("x", dir.path(), base, ShardSpec{});
  EXPECT_EQ(a.module(1, LoraTarget::Q)->rank, 2);
}

TEST(LoraAdapter, TargetModuleForms) {
  const ModelConfig base = tiny_base();
  auto targeted = [&](const json& cfg, const std::vector<std::pair<int64_t, LoraTarget>>& modules) {
    AdapterDir dir;
    std::vector<TensorSpec> specs;
    for (auto [layer, t] : modules) add_module(specs, base, layer, t, 2);
    dir.tensors(specs);
    dir.config(cfg);
    const LoraAdapter a = load_lora_adapter("x", dir.path(), base, ShardSpec{});
    int n = 0;
    for (int64_t layer = 0; layer < 2; ++layer) {
      for (LoraTarget t : all_targets()) n += a.module(layer, t) != nullptr;
    }
    return n;
  };
  EXPECT_EQ(targeted(lora_config(2, 2, "all-linear"), {{0, LoraTarget::Down}, {1, LoraTarget::Q}}), 2);
  EXPECT_EQ(targeted(lora_config(2, 2, R"(.*\.(q_proj|v_proj))"), {{0, LoraTarget::V}, {1, LoraTarget::Q}}), 2);
  EXPECT_EQ(targeted(lora_config(2, 2, json::array({"self_attn.k_proj"})), {{1, LoraTarget::K}}), 1);
  json layers = lora_config(2, 2, json::array({"q_proj"}));
  layers["layers_to_transform"] = json::array({1});
  layers["layers_pattern"] = "layers";
  EXPECT_EQ(targeted(layers, {{1, LoraTarget::Q}}), 1);
  json excluded = lora_config(2, 2, json::array({"q_proj", "v_proj"}));
  excluded["exclude_modules"] = json::array({"model.layers.0.self_attn.v_proj"});
  EXPECT_EQ(targeted(excluded, {{0, LoraTarget::Q}, {1, LoraTarget::V}}), 2);
}

TEST(LoraAdapter, TensorParallelShardsAreSlicesOfTheFullAdapter) {
  const ModelConfig base = tiny_base();
  AdapterDir dir;
  dir.standard(base, 4, 8);
  const LoraAdapter full = load_lora_adapter("x", dir.path(), base, ShardSpec{});
  for (int rank = 0; rank < 2; ++rank) {
    const LoraAdapter part = load_lora_adapter("x", dir.path(), base, ShardSpec{rank, 2});
    for (int64_t layer = 0; layer < 2; ++layer) {
      for (LoraTarget t : all_targets()) {
        const LoraModule& f = *full.module(layer, t);
        const LoraModule& p = *part.module(layer, t);
        const bool row_parallel = t == LoraTarget::O || t == LoraTarget::Down;
        // Column-parallel: B keeps this rank's output rows; row-parallel: A keeps its input columns.
        const Tensor fa = row_parallel ? f.a.slice_cols(rank * f.a.cols / 2, f.a.cols / 2) : f.a;
        const Tensor fb = row_parallel ? f.b : f.b.slice_rows(rank * f.b.rows / 2, f.b.rows / 2);
        ASSERT_EQ(p.a.rows, fa.rows);
        ASSERT_EQ(p.a.cols, fa.cols);
        ASSERT_EQ(p.b.rows, fb.rows);
        ASSERT_EQ(p.b.cols, fb.cols);
        EXPECT_EQ(p.scale, f.scale);
        for (int64_t r = 0; r < fa.rows; ++r) {
          for (int64_t c = 0; c < fa.cols; ++c) ASSERT_EQ(p.a.row<float>(r)[c], fa.row<float>(r)[c]);
        }
        for (int64_t r = 0; r < fb.rows; ++r) {
          for (int64_t c = 0; c < fb.cols; ++c) ASSERT_EQ(p.b.row<float>(r)[c], fb.row<float>(r)[c]);
        }
      }
    }
    EXPECT_LT(part.bytes(), full.bytes());
  }
}

TEST(LoraAdapter, GgufBasePermutesQAndKRowsOfBLikeTheConverter) {
  ModelConfig base = tiny_base();
  AdapterDir dir;
  dir.standard(base, 3, 3);
  const LoraAdapter hf = load_lora_adapter("x", dir.path(), base, ShardSpec{});
  base.rope.interleaved = true;
  const LoraAdapter gguf = load_lora_adapter("x", dir.path(), base, ShardSpec{});
  const int64_t d = base.head_dim;
  for (LoraTarget t : all_targets()) {
    const LoraModule& h = *hf.module(1, t);
    const LoraModule& g = *gguf.module(1, t);
    const bool permuted = t == LoraTarget::Q || t == LoraTarget::K;
    for (int64_t row = 0; row < h.b.rows; ++row) {
      // Hand-written permutation: within each head, HF rows [0, d/2) go to even rows and
      // [d/2, d) to odd rows.
      const int64_t head = row / d, j = row % d;
      const int64_t dst = permuted ? head * d + (j < d / 2 ? 2 * j : 2 * (j - d / 2) + 1) : row;
      for (int64_t k = 0; k < 3; ++k) ASSERT_EQ(g.b.row<float>(dst)[k], h.b.row<float>(row)[k]);
    }
    for (int64_t r = 0; r < 3; ++r) {
      for (int64_t c = 0; c < h.a.cols; ++c) ASSERT_EQ(g.a.row<float>(r)[c], h.a.row<float>(r)[c]);
    }
  }
  // With TP, rank 1 holds the second half of the permuted rows (whole heads).
  const LoraAdapter part = load_lora_adapter("x", dir.path(), base, ShardSpec{1, 2});
  const LoraModule& k_full = *gguf.module(0, LoraTarget::K);
  const LoraModule& k_part = *part.module(0, LoraTarget::K);
  for (int64_t r = 0; r < k_part.b.rows; ++r) {
    for (int64_t c = 0; c < 3; ++c) ASSERT_EQ(k_part.b.row<float>(r)[c], k_full.b.row<float>(r + 4)[c]);
  }
}

// ---- refusals ----

void expect_refusal(const AdapterDir& dir, std::initializer_list<std::string_view> needles,
                    const ModelConfig& base = tiny_base()) {
  try {
    load_lora_adapter("x", dir.path(), base, ShardSpec{});
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    const std::string message = e.what();
    for (std::string_view needle : needles) {
      EXPECT_NE(message.find(needle), std::string::npos) << "'" << needle << "' not in: " << message;
    }
  }
}

TEST(LoraAdapterRefuses, MissingConfigAndPickleWeights) {
  AdapterDir dir;
  dir.standard(tiny_base(), 2, 2);
  std::filesystem::remove(dir.path() + "/adapter_config.json");
  expect_refusal(dir, {"adapter_config.json", "missing"});

  AdapterDir pickle;
  pickle.config(lora_config(2, 2, json::array({"q_proj"})));
  pickle.write("adapter_model.bin", std::string("\x80\x02}q\x00.", 6));
  expect_refusal(pickle, {"adapter_model.bin", "never unpickles"});

  AdapterDir none;
  none.config(lora_config(2, 2, json::array({"q_proj"})));
  expect_refusal(none, {"adapter_model.safetensors", "missing"});

  expect_refusal(AdapterDir(), {"adapter_config.json"});
}

TEST(LoraAdapterRefuses, ConfigFieldsThatChangeTheMath) {
  const ModelConfig base = tiny_base();
  const std::vector<std::pair<json, std::vector<std::string_view>>> cases = {
      {{{"use_dora", true}}, {"'use_dora'", "DoRA"}},
      {{{"modules_to_save", {"lm_head"}}}, {"'modules_to_save'"}},
      {{{"fan_in_fan_out", true}}, {"'fan_in_fan_out'"}},
      {{{"bias", "all"}}, {"'bias'"}},
      {{{"lora_bias", true}}, {"'lora_bias'"}},
      {{{"peft_type", "PREFIX_TUNING"}}, {"'peft_type'", "PREFIX_TUNING"}},
      {{{"target_modules", {"q_proj", "lm_head"}}}, {"'target_modules'", "lm_head"}},
      {{{"target_modules", {"embed_tokens"}}}, {"'target_modules'", "embed_tokens"}},
      {{{"target_modules", R"(.*(q_proj|lm_head))"}}, {"'target_modules'", "lm_head"}},
      {{{"target_modules", "(q_proj"}}, {"'target_modules'", "regular expression"}},
      {{{"target_modules", R"(.*\.nothing)"}}, {"'target_modules'", "matches no"}},
      {{{"target_modules", {"self_attn"}}}, {"'target_modules'", "self_attn"}},
      {{{"target_modules", nullptr}}, {"'target_modules'"}},
      {{{"r", 0}}, {"'r'"}},
      {{{"lora_alpha", "x"}}, {"'lora_alpha'"}},
      {{{"rank_pattern", {{"(", 2}}}}, {"'rank_pattern.('"}},
      {{{"layers_pattern", "layers"}}, {"'layers_pattern'"}},
      {{{"target_modules", ".*q_proj"}, {"layers_to_transform", {0}}}, {"'layers_to_transform'"}},
  };
  for (const auto& [patch, needles] : cases) {
    AdapterDir dir;
    dir.standard(base, 2, 2, {LoraTarget::Q});
    json cfg = lora_config(2, 2, json::array({"q_proj"}));
    for (const auto& [k, v] : patch.items()) cfg[k] = v;
    dir.config(cfg);
    SCOPED_TRACE(patch.dump());
    std::vector<std::string_view> all = needles;
    all.push_back("adapter_config.json");
    try {
      load_lora_adapter("x", dir.path(), base, ShardSpec{});
      ADD_FAILURE() << "expected an error";
    } catch (const Error& e) {
      const std::string message = e.what();
      for (std::string_view needle : all) {
        EXPECT_NE(message.find(needle), std::string::npos) << "'" << needle << "' not in: " << message;
      }
    }
  }
  AdapterDir bad_json;
  bad_json.standard(base, 2, 2);
  bad_json.write("adapter_config.json", "{\"peft_type\": ");
  expect_refusal(bad_json, {"adapter_config.json", "JSON"});
}

TEST(LoraAdapterRefuses, TensorsThatDoNotFit) {
  const ModelConfig base = tiny_base();
  const json q_only = lora_config(2, 2, json::array({"q_proj"}));
  auto with = [&](const std::vector<TensorSpec>& specs, const json& cfg,
                  std::initializer_list<std::string_view> needles) {
    AdapterDir dir;
    dir.config(cfg);
    dir.tensors(specs);
    expect_refusal(dir, needles);
  };
  std::vector<TensorSpec> good;
  add_module(good, base, 0, LoraTarget::Q, 2);

  // lora_A without lora_B
  with({good[0]}, q_only, {"adapter_model.safetensors", "model.layers.0.self_attn.q_proj", "no lora_B"});
  // rank 2 tensors, config says 4 / rank_pattern says 3
  with(good, lora_config(4, 4, json::array({"q_proj"})), {"adapter_model.safetensors", "rank 2", "'r' says 4"});
  json pattern = q_only;
  pattern["rank_pattern"] = {{"q_proj", 3}};
  with(good, pattern, {"adapter_model.safetensors", "'rank_pattern.q_proj' says 3"});
  // A and B ranks disagree
  std::vector<TensorSpec> ranks = good;
  ranks[1].shape = {16, 3};
  with(ranks, q_only, {"adapter_model.safetensors", "rank 3"});
  // shapes of another base model
  std::vector<TensorSpec> other;
  ModelConfig wider = base;
  wider.hidden_size = 32;
  add_module(other, wider, 0, LoraTarget::Q, 2);
  with(other, q_only, {"adapter_model.safetensors", "q_proj", "base model"});
  // unknown extras
  std::vector<TensorSpec> extra = good;
  extra.push_back({"base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector", {16}});
  with(extra, q_only, {"adapter_model.safetensors", "unexpected tensor", "lora_magnitude_vector"});
  std::vector<TensorSpec> head = good;
  head.push_back({"base_model.model.lm_head.lora_A.weight", {2, 16}});
  with(head, q_only, {"adapter_model.safetensors", "lm_head", "not a q/k/v/o"});
  std::vector<TensorSpec> layer = good;
  add_module(layer, base, 5, LoraTarget::Q, 2);
  with(layer, q_only, {"adapter_model.safetensors", "model.layers.5.self_attn.q_proj"});
  // a module the config does not target
  std::vector<TensorSpec> untargeted = good;
  add_module(untargeted, base, 0, LoraTarget::V, 2);
  with(untargeted, q_only, {"adapter_model.safetensors", "v_proj", "not targeted"});
  // dtype and rank of the tensors
  std::vector<TensorSpec> ints = good;
  ints[0].dtype = "I64";
  with(ints, q_only, {"adapter_model.safetensors", "I64"});
  std::vector<TensorSpec> flat = good;
  flat[0].shape = {32};
  with(flat, q_only, {"adapter_model.safetensors", "2-D"});
  // no tensors at all
  with({}, q_only, {"adapter_model.safetensors", "no LoRA tensors"});

  // truncated file: the safetensors parser's own error
  AdapterDir truncated;
  truncated.config(q_only);
  Bytes bytes = adapter_safetensors(good);
  bytes.resize(bytes.size() - 10);
  truncated.write("adapter_model.safetensors", bytes);
  expect_refusal(truncated, {"adapter_model.safetensors"});
}

TEST(LoraAdapterRefuses, BaseThatDoesNotSplitOverTheRanks) {
  AdapterDir dir;
  dir.standard(tiny_base(), 2, 2);
  EXPECT_THROW(load_lora_adapter("x", dir.path(), tiny_base(), ShardSpec{0, 3}), Error);
  EXPECT_THROW(load_lora_adapter("x", dir.path(), tiny_base(), ShardSpec{2, 2}), Error);
}

}  // namespace
}  // namespace mil::test
