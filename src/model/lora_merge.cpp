// LlamaWeights::merge_lora: the single-adapter alternative to per-row LoRA.
#include <cstring>

#include "backends/cpu/dequant.h"
#include "core/error.h"
#include "lora/adapter.h"
#include "model/weights.h"

namespace mil {

void LlamaWeights::merge_lora(const LoraAdapter& adapter) {
  for (int64_t layer = 0; layer < static_cast<int64_t>(layers.size()); ++layer) {
    LayerWeights& l = layers[layer];
    const std::pair<LoraTarget, Tensor*> targets[] = {
        {LoraTarget::Q, &l.q},       {LoraTarget::K, &l.k},   {LoraTarget::V, &l.v},
        {LoraTarget::O, &l.o},       {LoraTarget::Gate, &l.gate}, {LoraTarget::Up, &l.up},
        {LoraTarget::Down, &l.down}};
    for (const auto& [target, weight] : targets) {
      const LoraModule* m = adapter.module(layer, target);
      if (m == nullptr) continue;
      const Tensor& w = *weight;
      MIL_CHECK(m->b.rows == w.rows && m->a.cols == w.cols,
                "adapter '{}': layer {} module does not fit the weight {}", adapter.name(), layer,
                shape_string(w));
      HostBuffer& buf = owned_.emplace_back(static_cast<size_t>(w.rows * w.cols) * sizeof(float));
      const Tensor merged = Tensor::contiguous(DType::F32, w.rows, w.cols, buf.data());
      for (int64_t r = 0; r < w.rows; ++r) {
        float* out = merged.row<float>(r);
        cpu::dequant_row(w.dtype, w.row<const std::byte>(r), w.cols, out);
        // out += scale * sum_k B[r, k] * A[k, :]
        for (int32_t k = 0; k < m->rank; ++k) {
          const float coef = m->scale * m->b.row<const float>(r)[k];
          const float* a = m->a.row<const float>(k);
          for (int64_t c = 0; c < w.cols; ++c) out[c] += coef * a[c];
        }
      }
      *weight = merged;
    }
  }
}

}  // namespace mil
