// Shared pieces of the model-on-CUDA tests: the backend under test (the GPU; with
// MIL_CUDA_MODEL_ON_CPU=1 and no GPU, the CPU backend running the device form of the weights:
// fused BF16 projections), loading, error measures and top-1 margins.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "backends/cpu/cpu_ops.h"
#include "backends/cuda/cuda_ops.h"
#include "engine/generator.h"
#include "model/llama.h"

namespace mil::test::cuda_model {

namespace fs = std::filesystem;
using nlohmann::json;

inline std::unique_ptr<Ops> device_ops() {
  if (cuda_device_count() > 0) return make_cuda_ops(0);
  const char* on_cpu = std::getenv("MIL_CUDA_MODEL_ON_CPU");
  if (on_cpu != nullptr && std::string(on_cpu) == "1") return make_cpu_ops(2);
  return nullptr;
}

inline json read_json(const fs::path& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in) << path;
  return json::parse(in);
}

// A model on one backend: the device one (weights in their device form) or the CPU reference.
struct Loaded {
  std::unique_ptr<Ops> ops;
  std::unique_ptr<LlamaWeights> weights;
  std::unique_ptr<AdapterStore> store;
  std::unique_ptr<LlamaModel> model;
};

inline Loaded load(const std::string& path, bool device, int64_t max_tokens,
                   const std::vector<std::pair<std::string, std::string>>& adapters = {}) {
  Loaded l;
  l.ops = device ? device_ops() : make_cpu_ops(2);
  l.weights = std::make_unique<LlamaWeights>(open_weight_source(path), ShardSpec{});
  if (!adapters.empty()) {
    l.store = std::make_unique<AdapterStore>(l.weights->config(), ShardSpec{},
                                             AdapterStore::Limits{16, size_t{1} << 30});
    l.store->use_backend(*l.ops);
    for (const auto& [name, dir] : adapters) l.store->add(name, dir);
  }
  if (device) l.weights->copy_to(*l.ops);
  l.model = std::make_unique<LlamaModel>(*l.weights, *l.ops, max_tokens, l.store.get());
  return l;
}

struct Diff {
  double max_abs = 0, rel_l2 = 0;
};
inline Diff diff(const float* got, const float* want, size_t n) {
  double num = 0, den = 0, mx = 0;
  for (size_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(got[i]) - want[i];
    mx = std::max(mx, std::isnan(d) ? INFINITY : std::abs(d));
    num += d * d;
    den += static_cast<double>(want[i]) * want[i];
  }
  return {mx, std::sqrt(num / std::max(den, 1e-30))};
}

inline int32_t argmax(const float* row, int64_t n) {
  return static_cast<int32_t>(std::max_element(row, row + n) - row);
}
// top-1 minus top-2.
inline double margin(const float* row, int64_t n) {
  float a = -INFINITY, b = -INFINITY;
  for (int64_t i = 0; i < n; ++i) {
    if (row[i] > a) {
      b = a;
      a = row[i];
    } else if (row[i] > b) {
      b = row[i];
    }
  }
  return static_cast<double>(a) - b;
}

}  // namespace mil::test::cuda_model
