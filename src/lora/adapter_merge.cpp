// merge_lora_adapters_linear (declared in adapter.h): LoRAX's "linear" merge of loaded adapters.
//
// LoRAX (predibase/lorax, server/lorax_server/utils/merges/strategies.py) stacks, per module
// and per parameter (lora_A, lora_B), the tensors of the adapters that have that module and
// sums them weighted: LinearMerge.merge = (stack(tensors) * w).sum(0). _validate_lora_configs
// refuses differing config ranks; _merge_lora_configs copies the first config (target modules
// become the union), and LoraWeights.load scales every module by that config's
// lora_alpha / r (or / sqrt(r) with use_rslora), ignoring rank_pattern/alpha_pattern.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "lora/adapter.h"

namespace mil {

LoraAdapter merge_lora_adapters_linear(const std::string& name,
                                       std::span<const WeightedLoraAdapter> components) {
  MIL_CHECK(!components.empty(), "merged adapter '{}': no adapters to merge", name);
  const LoraAdapter& first = *components.front().adapter;
  for (size_t i = 0; i < components.size(); ++i) {
    const WeightedLoraAdapter& c = components[i];
    MIL_CHECK(c.adapter != nullptr, "merged adapter '{}': component {} is missing", name, i);
    MIL_CHECK(std::isfinite(c.weight), "merged adapter '{}': the weight of '{}' is not finite", name,
              c.adapter->name());
    MIL_CHECK(c.adapter->config_rank() == first.config_rank(),
              "unable to merge adapters into '{}': their ranks differ ('{}' has r={}, '{}' has r={}); "
              "a linear merge needs equal ranks", name, first.name(), first.config_rank(),
              c.adapter->name(), c.adapter->config_rank());
    MIL_CHECK(c.adapter->modules_.size() == first.modules_.size(),
              "unable to merge adapters into '{}': '{}' and '{}' are for base models with different "
              "layer counts", name, first.name(), c.adapter->name());
  }

  // Shapes first: each module's rank and sizes must agree across the components having it.
  const size_t n_modules = first.modules_.size();
  std::vector<const LoraModule*> shape_of(n_modules, nullptr);
  size_t floats = 0;
  for (size_t m = 0; m < n_modules; ++m) {
    for (const WeightedLoraAdapter& c : components) {
      const LoraModule& mod = c.adapter->modules_[m];
      if (mod.rank == 0) continue;
      const LoraModule* seen = shape_of[m];
      if (seen == nullptr) {
        shape_of[m] = &mod;
        floats += static_cast<size_t>(mod.a.rows * mod.a.cols + mod.b.rows * mod.b.cols);
        continue;
      }
      const int64_t layer = static_cast<int64_t>(m) / kNumLoraTargets;
      const auto target = static_cast<LoraTarget>(m % kNumLoraTargets);
      MIL_CHECK(seen->rank == mod.rank,
                "unable to merge adapters into '{}': module '{}' has rank {} in one adapter and {} in "
                "'{}' (rank_pattern); a linear merge needs equal ranks", name,
                lora_module_path(layer, target), seen->rank, mod.rank, c.adapter->name());
      MIL_CHECK(seen->a.cols == mod.a.cols && seen->b.rows == mod.b.rows,
                "unable to merge adapters into '{}': module '{}' of '{}' has another shape than in "
                "the other adapters (different base model or shard)", name,
                lora_module_path(layer, target), c.adapter->name());
    }
  }

  LoraAdapter out;
  out.name_ = name;
  out.storage_ = HostBuffer(floats * sizeof(float));
  out.modules_.resize(n_modules);
  out.config_rank_ = first.config_rank_;
  out.config_scale_ = first.config_scale_;
  float* next = static_cast<float*>(out.storage_.data());
  for (size_t m = 0; m < n_modules; ++m) {
    const LoraModule* shape = shape_of[m];
    if (shape == nullptr) continue;
    LoraModule& dst = out.modules_[m];
    dst.rank = shape->rank;
    dst.scale = first.config_scale_;
    dst.a = Tensor::contiguous(DType::F32, shape->a.rows, shape->a.cols, next);
    next += shape->a.rows * shape->a.cols;
    dst.b = Tensor::contiguous(DType::F32, shape->b.rows, shape->b.cols, next);
    next += shape->b.rows * shape->b.cols;
    std::memset(dst.a.data, 0, dst.a.bytes());
    std::memset(dst.b.data, 0, dst.b.bytes());
    // In component order, as torch sums the stacked tensors.
    for (const WeightedLoraAdapter& c : components) {
      const LoraModule& src = c.adapter->modules_[m];
      if (src.rank == 0) continue;
      for (const auto& [to, from] : {std::pair{&dst.a, &src.a}, std::pair{&dst.b, &src.b}}) {
        for (int64_t r = 0; r < to->rows; ++r) {
          float* d = to->row<float>(r);
          const float* s = from->row<float>(r);
          for (int64_t k = 0; k < to->cols; ++k) d[k] += c.weight * s[k];
        }
      }
    }
    out.max_rank_ = std::max(out.max_rank_, dst.rank);
  }
  return out;
}

}  // namespace mil
