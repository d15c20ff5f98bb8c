// LoRAX "linear" adapter merges (merge_lora_adapters_linear, AdapterStore::add_merged):
// numerics against a reference computed here from the values written to the adapter files,
// LoRAX's refusals, tensor-parallel shards, and merged adapters living in the store like any
// other (slots, eviction, reload from memory).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>

#include "formats/model_config.h"
#include "lora/adapter_store.h"
#include "lora/adapter_writer.h"

namespace mil::test {
namespace {

namespace fs = std::filesystem;

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// What one adapter file holds, so the test can recompute every value independently.
struct Written {
  int64_t rank = 0;
  double alpha = 0;
  bool rslora = false;
  std::vector<LoraTarget> targets;
  uint32_t seed = 0;

  double scale() const { return rslora ? alpha / std::sqrt(static_cast<double>(rank)) : alpha / static_cast<double>(rank); }
  bool targets_module(LoraTarget t) const { return std::find(targets.begin(), targets.end(), t) != targets.end(); }
  uint32_t seed_of(int64_t layer, LoraTarget t, char ab) const {
    return seed * 1000 + static_cast<uint32_t>(layer * 100 + static_cast<int>(t) * 10) + (ab == 'A' ? 1 : 2);
  }
  // Full (unsharded, HF row order) A[k][c] and B[o][k].
  double a(const ModelConfig& base, int64_t layer, LoraTarget t, int64_t k, int64_t c) const {
    return test_value(seed_of(layer, t, 'A'), k * lora_in_features(base, t) + c);
  }
  double b(int64_t layer, LoraTarget t, int64_t o, int64_t k) const {
    return test_value(seed_of(layer, t, 'B'), o * rank + k);
  }

  void write(const AdapterDir& dir, const ModelConfig& base) const {
    json names = json::array();
    std::vector<TensorSpec> specs;
    for (LoraTarget t : targets) names.push_back(std::string(lora_target_name(t)));
    for (int64_t layer = 0; layer < base.num_layers; ++layer) {
      for (LoraTarget t : targets) {
        specs.push_back({tensor_name(layer, t, 'A'), {rank, lora_in_features(base, t)}, "F32", seed_of(layer, t, 'A')});
        specs.push_back({tensor_name(layer, t, 'B'), {lora_out_features(base, t), rank}, "F32", seed_of(layer, t, 'B')});
      }
    }
    json config = lora_config(rank, alpha, names);
    config["use_rslora"] = rslora;
    dir.config(config);
    dir.tensors(specs);
  }
};

// The merged delta scale * B A of one module, [out][in], from a LoraModule.
std::vector<double> delta_of(const LoraModule& m) {
  std::vector<double> d(static_cast<size_t>(m.b.rows * m.a.cols), 0.0);
  for (int64_t o = 0; o < m.b.rows; ++o) {
    for (int64_t c = 0; c < m.a.cols; ++c) {
      double s = 0;
      for (int64_t k = 0; k < m.rank; ++k) s += double{m.b.row<float>(o)[k]} * double{m.a.row<float>(k)[c]};
      d[o * m.a.cols + c] = m.scale * s;
    }
  }
  return d;
}

class LinearMerge : public testing::Test {
 protected:
  // x: q/v, alpha 8; y: q/k/o, alpha 16; z: v/down, rsLoRA alpha 4. All rank 4.
  void SetUp() override {
    adapters_ = {{4, 8, false, {LoraTarget::Q, LoraTarget::V}, 1},
                 {4, 16, false, {LoraTarget::Q, LoraTarget::K, LoraTarget::O}, 2},
                 {4, 4, true, {LoraTarget::V, LoraTarget::Down}, 3}};
    for (const Written& w : adapters_) {
      dirs_.push_back(std::make_unique<AdapterDir>());
      w.write(*dirs_.back(), base_);
    }
  }
  LoraAdapter load(size_t i, ShardSpec shard = {}) {
    return load_lora_adapter("c" + std::to_string(i), dirs_[i]->path(), base_, shard);
  }

  // LoRAX: scale_0 * (sum_i w_i B_i)(sum_i w_i A_i) over the adapters with the module.
  std::vector<double> reference_delta(const std::vector<size_t>& which, const std::vector<double>& weights,
                                      int64_t layer, LoraTarget t) const {
    const int64_t in = lora_in_features(base_, t), out = lora_out_features(base_, t), r = 4;
    std::vector<double> a(r * in, 0.0), b(out * r, 0.0);
    for (size_t j = 0; j < which.size(); ++j) {
      const Written& w = adapters_[which[j]];
      if (!w.targets_module(t)) continue;
      for (int64_t k = 0; k < r; ++k)
        for (int64_t c = 0; c < in; ++c) a[k * in + c] += weights[j] * w.a(base_, layer, t, k, c);
      for (int64_t o = 0; o < out; ++o)
        for (int64_t k = 0; k < r; ++k) b[o * r + k] += weights[j] * w.b(layer, t, o, k);
    }
    const double scale0 = adapters_[which[0]].scale();
    std::vector<double> d(out * in, 0.0);
    for (int64_t o = 0; o < out; ++o)
      for (int64_t c = 0; c < in; ++c) {
        double s = 0;
        for (int64_t k = 0; k < r; ++k) s += b[o * r + k] * a[k * in + c];
        d[o * in + c] = scale0 * s;
      }
    return d;
  }

  ModelConfig base_ = tiny_base();
  std::vector<Written> adapters_;
  std::vector<std::unique_ptr<AdapterDir>> dirs_;
};

TEST_F(LinearMerge, IsLoraxsWeightedSumOfAAndBScaledByTheFirstConfig) {
  const LoraAdapter x = load(0), y = load(1), z = load(2);
  const std::vector<double> weights = {0.5, -1.25, 2.0};
  const std::vector<WeightedLoraAdapter> parts = {{&x, 0.5f}, {&y, -1.25f}, {&z, 2.0f}};
  const LoraAdapter merged = merge_lora_adapters_linear("m", parts);
  EXPECT_EQ(merged.name(), "m");
  EXPECT_EQ(merged.max_rank(), 4);
  EXPECT_EQ(merged.config_rank(), 4);
  EXPECT_FLOAT_EQ(merged.config_scale(), 2.0f);  // x's alpha 8 / r 4, for every module

  for (int64_t layer = 0; layer < base_.num_layers; ++layer) {
    for (LoraTarget t : all_targets()) {
      const LoraModule* m = merged.module(layer, t);
      const bool targeted = t == LoraTarget::Q || t == LoraTarget::K || t == LoraTarget::V ||
                            t == LoraTarget::O || t == LoraTarget::Down;  // the union
      ASSERT_EQ(m != nullptr, targeted) << lora_module_path(layer, t);
      if (m == nullptr) continue;
      EXPECT_EQ(m->rank, 4);
      EXPECT_FLOAT_EQ(m->scale, 2.0f);
      const std::vector<double> want = reference_delta({0, 1, 2}, weights, layer, t);
      const std::vector<double> got = delta_of(*m);
      ASSERT_EQ(got.size(), want.size());
      for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_NEAR(got[i], want[i], 1e-4 * (1 + std::abs(want[i]))) << lora_module_path(layer, t) << " element " << i;
      }
    }
  }
  // The cross terms are there: not sum_i w_i s_i B_i A_i (which PEFT's "cat" would give).
  const LoraModule& q = *merged.module(0, LoraTarget::Q);
  std::vector<double> separate(static_cast<size_t>(q.b.rows * q.a.cols), 0.0);
  for (const auto& [adapter, w] : {std::pair{&x, 0.5}, std::pair{&y, -1.25}}) {
    const std::vector<double> d = delta_of(*adapter->module(0, LoraTarget::Q));
    for (size_t i = 0; i < d.size(); ++i) separate[i] += w * d[i];
  }
  const std::vector<double> got = delta_of(q);
  double diff = 0;
  for (size_t i = 0; i < got.size(); ++i) diff = std::max(diff, std::abs(got[i] - separate[i]));
  EXPECT_GT(diff, 0.1);
}

TEST_F(LinearMerge, TensorsAreTheWeightedSumsInComponentOrder) {
  const LoraAdapter x = load(0), y = load(1);
  const std::vector<WeightedLoraAdapter> parts = {{&x, 0.3f}, {&y, 0.7f}};
  const LoraAdapter merged = merge_lora_adapters_linear("m", parts);
  for (int64_t layer = 0; layer < base_.num_layers; ++layer) {
    const LoraModule& m = *merged.module(layer, LoraTarget::Q);
    const LoraModule& mx = *x.module(layer, LoraTarget::Q);
    const LoraModule& my = *y.module(layer, LoraTarget::Q);
    for (int64_t k = 0; k < 4; ++k)
      for (int64_t c = 0; c < m.a.cols; ++c)
        EXPECT_FLOAT_EQ(m.a.row<float>(k)[c], 0.0f + 0.3f * mx.a.row<float>(k)[c] + 0.7f * my.a.row<float>(k)[c]);
    // A module only y has is y's, times its weight.
    const LoraModule& k_proj = *merged.module(layer, LoraTarget::K);
    const LoraModule& yk = *y.module(layer, LoraTarget::K);
    for (int64_t o = 0; o < k_proj.b.rows; ++o)
      for (int64_t k = 0; k < 4; ++k) EXPECT_FLOAT_EQ(k_proj.b.row<float>(o)[k], 0.7f * yk.b.row<float>(o)[k]);
  }
}

TEST_F(LinearMerge, FirstComponentsRsLoraScaleAppliesToAll) {
  const LoraAdapter x = load(0), z = load(2);
  const std::vector<WeightedLoraAdapter> parts = {{&z, 1.0f}, {&x, 1.0f}};
  const LoraAdapter merged = merge_lora_adapters_linear("m", parts);
  EXPECT_FLOAT_EQ(merged.module(0, LoraTarget::Q)->scale, 2.0f);  // z: 4 / sqrt(4), though only x has q
  EXPECT_FLOAT_EQ(merged.module(1, LoraTarget::Down)->scale, 2.0f);
}

TEST_F(LinearMerge, TensorParallelShardsAreShardsOfTheMerge) {
  const LoraAdapter x = load(0), y = load(1), z = load(2);
  const std::vector<WeightedLoraAdapter> full_parts = {{&x, 1.5f}, {&y, 0.25f}, {&z, -1.0f}};
  const LoraAdapter full = merge_lora_adapters_linear("m", full_parts);
  for (int32_t rank = 0; rank < 2; ++rank) {
    const ShardSpec shard{rank, 2};
    const LoraAdapter xs = load(0, shard), ys = load(1, shard), zs = load(2, shard);
    const std::vector<WeightedLoraAdapter> parts = {{&xs, 1.5f}, {&ys, 0.25f}, {&zs, -1.0f}};
    const LoraAdapter merged = merge_lora_adapters_linear("m", parts);
    for (int64_t layer = 0; layer < base_.num_layers; ++layer) {
      for (LoraTarget t : all_targets()) {
        const LoraModule* m = merged.module(layer, t);
        const LoraModule* f = full.module(layer, t);
        ASSERT_EQ(m == nullptr, f == nullptr);
        if (m == nullptr) continue;
        const bool column = t != LoraTarget::O && t != LoraTarget::Down;
        for (int64_t k = 0; k < m->rank; ++k)
          for (int64_t c = 0; c < m->a.cols; ++c)
            EXPECT_EQ(m->a.row<float>(k)[c], f->a.row<float>(k)[column ? c : rank * m->a.cols + c]);
        for (int64_t o = 0; o < m->b.rows; ++o)
          for (int64_t k = 0; k < m->rank; ++k)
            EXPECT_EQ(m->b.row<float>(o)[k], f->b.row<float>(column ? rank * m->b.rows + o : o)[k]);
      }
    }
  }
}

TEST_F(LinearMerge, RefusesWhatLoraxRefuses) {
  AdapterDir r8;
  Written{8, 8, false, {LoraTarget::Q}, 9}.write(r8, base_);
  const LoraAdapter x = load(0);
  const LoraAdapter eight = load_lora_adapter("eight", r8.path(), base_, ShardSpec{});
  std::vector<WeightedLoraAdapter> parts = {{&x, 1.0f}, {&eight, 1.0f}};
  std::string err = error_of([&] { merge_lora_adapters_linear("m", parts); });
  EXPECT_NE(err.find("ranks differ"), std::string::npos) << err;
  parts = {};
  err = error_of([&] { merge_lora_adapters_linear("m", parts); });
  EXPECT_NE(err.find("no adapters"), std::string::npos) << err;
  parts = {{&x, std::nanf("")}};
  err = error_of([&] { merge_lora_adapters_linear("m", parts); });
  EXPECT_NE(err.find("not finite"), std::string::npos) << err;
}

// The PEFT fixtures for the tiny llama_gqa base: r4 vs r8 (config ranks differ), and r8 vs an
// r8 config whose rank_pattern makes k_proj rank 2 (module ranks differ: torch.stack fails).
TEST(LinearMergeFixtures, DifferentRanksAreRefused) {
  const fs::path dir = fs::path(MIL_FIXTURES_DIR) / "lora" / "llama_gqa";
  const ModelConfig base = parse_hf_config((fs::path(MIL_FIXTURES_DIR) / "tiny" / "llama_gqa" / "config.json").string());
  AdapterStore store(base, ShardSpec{}, AdapterStore::Limits{4, size_t{1} << 30});
  store.add("a", (dir / "a_r4_qv").string());
  store.add("b", (dir / "b_r8_all").string());
  store.add("d", (dir / "d_patterns").string());
  std::string err = error_of([&] { store.add_merged("ab", {{"a", 1.0f}, {"b", 1.0f}}); });
  EXPECT_NE(err.find("ranks differ"), std::string::npos) << err;
  err = error_of([&] { store.add_merged("bd", {{"b", 1.0f}, {"d", 1.0f}}); });
  EXPECT_NE(err.find("k_proj"), std::string::npos) << err;
  EXPECT_FALSE(store.contains("ab"));
  EXPECT_FALSE(store.contains("bd"));
  // Same-rank fixtures merge.
  EXPECT_NO_THROW(store.add_merged("bb", {{"b", 0.5f}, {"b", 0.5f}}));
  const LoraAdapter b = load_lora_adapter("b", (dir / "b_r8_all").string(), base, ShardSpec{});
  const int32_t slot = store.acquire("bb");
  const LoraProjection& p = store.projection(1, LoraTarget::Up);
  const LoraModule& bu = *b.module(1, LoraTarget::Up);
  EXPECT_FLOAT_EQ(p.scale[slot], bu.scale);
  for (int64_t k = 0; k < bu.rank; ++k)
    for (int64_t c = 0; c < bu.a.cols; ++c)
      EXPECT_FLOAT_EQ(p.a[slot].row<float>(k)[c], 0.5f * bu.a.row<float>(k)[c] + 0.5f * bu.a.row<float>(k)[c]);
  store.release(slot);
}

TEST_F(LinearMerge, MergedAdaptersLiveInTheStore) {
  AdapterStore store(base_, ShardSpec{}, AdapterStore::Limits{2, size_t{1} << 30});
  store.add("x", dirs_[0]->path());
  store.add("y", dirs_[1]->path());
  store.add("z", dirs_[2]->path());
  // One component resident (shared from memory), one read from disk: same result.
  const int32_t pinned_x = store.acquire("x");
  store.add_merged("xy", {{"x", 0.5f}, {"y", -1.25f}});
  store.release(pinned_x);
  EXPECT_TRUE(store.contains("xy"));
  EXPECT_FALSE(store.resident("xy"));
  EXPECT_EQ(store.names(), (std::vector<std::string>{"x", "xy", "y", "z"}));

  // Removing the components does not touch the merge.
  store.remove("x");
  store.remove("y");
  const int32_t slot = store.acquire("xy");
  EXPECT_TRUE(store.resident("xy"));
  EXPECT_EQ(store.slot_name(slot), "xy");
  EXPECT_EQ(store.max_rank(), 4);
  const auto check = [&](int32_t s) {
    for (int64_t layer = 0; layer < base_.num_layers; ++layer) {
      const LoraProjection& p = store.projection(layer, LoraTarget::Q);
      LoraModule m{p.a[s], p.b[s], p.scale[s], 4};
      const std::vector<double> want = reference_delta({0, 1}, {0.5, -1.25}, layer, LoraTarget::Q);
      const std::vector<double> got = delta_of(m);
      for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], 1e-4 * (1 + std::abs(want[i])));
      EXPECT_TRUE(store.projection(layer, LoraTarget::Gate).a[s].empty());
    }
  };
  check(slot);
  store.release(slot);

  // Evicted (z and a merge of z take both slots), then back from memory.
  store.add_merged("zz", {{"z", 1.0f}, {"z", 1.0f}});
  store.release(store.acquire("z"));
  store.release(store.acquire("zz"));
  EXPECT_FALSE(store.resident("xy"));
  const int32_t again = store.acquire("xy");
  check(again);
  EXPECT_NE(error_of([&] { store.remove("xy"); }).find("running request"), std::string::npos);
  store.release(again);
  store.remove("xy");
  EXPECT_FALSE(store.contains("xy"));

  EXPECT_NE(error_of([&] { store.add_merged("bad", {{"z", 1.0f}, {"nope", 1.0f}}); }).find("unknown adapter 'nope'"),
            std::string::npos);
  EXPECT_NE(error_of([&] { store.add_merged("zz", {{"z", 1.0f}}); }).find("already registered"), std::string::npos);
  EXPECT_NE(error_of([&] { store.add_merged("bad name", {{"z", 1.0f}}); }).find("invalid adapter name"),
            std::string::npos);
  EXPECT_NE(error_of([&] { store.add_merged("empty", {}); }).find("no adapters"), std::string::npos);
}

// The two demo adapters of examples/adapters (r 8, alpha 16) on SmolLM2-135M's shapes.
TEST(LinearMergeDemo, DemoAdaptersMerge) {
  const fs::path examples = fs::path(MIL_FIXTURES_DIR).parent_path().parent_path() / "examples" / "adapters";
  ModelConfig base;
  base.architecture = "LlamaForCausalLM";
  base.vocab_size = 49152;
  base.hidden_size = 576;
  base.intermediate_size = 1536;
  base.num_layers = 30;
  base.num_heads = 9;
  base.num_kv_heads = 3;
  base.head_dim = 64;
  base.max_position_embeddings = 8192;
  AdapterStore store(base, ShardSpec{}, AdapterStore::Limits{4, size_t{1} << 30});
  store.add("caps", (examples / "smollm2-caps").string());
  store.add("pirate", (examples / "smollm2-pirate").string());
  store.add_merged("mix", {{"caps", 0.6f}, {"pirate", 0.4f}});
  const LoraAdapter caps = load_lora_adapter("caps", (examples / "smollm2-caps").string(), base, ShardSpec{});
  const LoraAdapter pirate = load_lora_adapter("pirate", (examples / "smollm2-pirate").string(), base, ShardSpec{});
  const int32_t slot = store.acquire("mix");
  int modules = 0;
  for (int64_t layer = 0; layer < base.num_layers; ++layer) {
    for (LoraTarget t : all_targets()) {
      const LoraModule* c = caps.module(layer, t);
      const LoraModule* p = pirate.module(layer, t);
      const LoraProjection& proj = store.projection(layer, t);
      ASSERT_EQ(proj.a[slot].empty(), c == nullptr && p == nullptr);
      if (c == nullptr && p == nullptr) continue;
      ++modules;
      EXPECT_FLOAT_EQ(proj.scale[slot], caps.config_scale());
      for (int64_t k = 0; k < proj.a[slot].rows; ++k) {
        for (int64_t i = 0; i < proj.a[slot].cols; ++i) {
          const float want = (c ? 0.6f * c->a.row<float>(k)[i] : 0.0f) + (p ? 0.4f * p->a.row<float>(k)[i] : 0.0f);
          ASSERT_NEAR(proj.a[slot].row<float>(k)[i], want, 1e-6f + 1e-6f * std::abs(want));
        }
      }
      for (int64_t o = 0; o < proj.b[slot].rows; ++o) {
        for (int64_t k = 0; k < proj.b[slot].cols; ++k) {
          const float want = (c ? 0.6f * c->b.row<float>(o)[k] : 0.0f) + (p ? 0.4f * p->b.row<float>(o)[k] : 0.0f);
          ASSERT_NEAR(proj.b[slot].row<float>(o)[k], want, 1e-6f + 1e-6f * std::abs(want));
        }
      }
    }
  }
  EXPECT_GT(modules, 0);
  store.release(slot);
}

}  // namespace
}  // namespace mil::test
