#include "lora/adapter.h"

#include <cstring>

#include "core/error.h"
#include "core/half.h"

namespace mil {
namespace {

bool column_parallel(LoraTarget t) { return t != LoraTarget::O && t != LoraTarget::Down; }

// The rows/columns of one module this rank keeps, and where they start in the full tensor.
struct ModuleShard {
  int64_t out_begin = 0, out = 0;  // B rows
  int64_t in_begin = 0, in = 0;    // A columns
};

void check_shard(const ModelConfig& base, ShardSpec shard, const std::string& name) {
  MIL_CHECK(shard.world >= 1 && shard.rank >= 0 && shard.rank < shard.world,
            "adapter '{}': invalid shard rank {} of {}", name, shard.rank, shard.world);
  MIL_CHECK(base.num_heads % shard.world == 0 && base.num_kv_heads % shard.world == 0 &&
                base.intermediate_size % shard.world == 0,
            "adapter '{}': the base model does not split over {} ranks", name, shard.world);
}

ModuleShard shard_of(const ModelConfig& base, ShardSpec shard, LoraTarget t) {
  ModuleShard s;
  s.out = lora_out_features(base, t);
  s.in = lora_in_features(base, t);
  // Whole heads per rank, as the base weights are split, so the per-head GGUF permutation
  // of q/k never crosses a shard boundary.
  if (column_parallel(t)) {
    s.out /= shard.world;
    s.out_begin = shard.rank * s.out;
  } else {
    s.in /= shard.world;
    s.in_begin = shard.rank * s.in;
  }
  return s;
}

// Element `index` of a tensor in the mapped file; spans there need not be aligned.
float element(const TensorInfo& t, int64_t index) {
  const std::byte* p = t.data.data();
  switch (*t.dtype) {
    case DType::F32: {
      float f;
      std::memcpy(&f, p + 4 * index, 4);
      return f;
    }
    case DType::F16: {
      uint16_t h;
      std::memcpy(&h, p + 2 * index, 2);
      return f16_to_f32(h);
    }
    default: {
      uint16_t h;
      std::memcpy(&h, p + 2 * index, 2);
      return bf16_to_f32(h);
    }
  }
}

// llama.cpp's converter stores each q/k head with its rotation pairs adjacent: row 2j of a
// head is HF row j and row 2j+1 is HF row j + d/2. A GGUF base's q/k rows are in that order,
// so B's output rows must be too.
int64_t hf_row_of_gguf_row(int64_t row, int64_t head_dim) {
  const int64_t head = row / head_dim, r = row % head_dim;
  return head * head_dim + (r % 2 == 0 ? r / 2 : r / 2 + head_dim / 2);
}

}  // namespace

const LoraModule* LoraAdapter::module(int64_t layer, LoraTarget target) const {
  const int64_t i = layer * kNumLoraTargets + static_cast<int>(target);
  if (layer < 0 || i >= static_cast<int64_t>(modules_.size())) return nullptr;
  return modules_[i].rank > 0 ? &modules_[i] : nullptr;
}

size_t lora_adapter_bytes(const PeftAdapter& adapter, const ModelConfig& base, ShardSpec shard) {
  size_t elems = 0;
  for (const PeftModule& m : adapter.modules()) {
    const ModuleShard s = shard_of(base, shard, m.target);
    elems += static_cast<size_t>(m.rank) * static_cast<size_t>(s.in + s.out);
  }
  return elems * sizeof(float);
}

LoraAdapter load_lora_adapter(const std::string& name, const std::string& path,
                              const ModelConfig& base, ShardSpec shard) {
  check_shard(base, shard, name);
  const PeftAdapter peft(path, base);
  LoraAdapter out;
  out.name_ = name;
  out.storage_ = HostBuffer(lora_adapter_bytes(peft, base, shard));
  out.modules_.resize(base.num_layers * kNumLoraTargets);
  out.max_rank_ = peft.max_rank();
  out.config_rank_ = peft.config_rank();
  out.config_scale_ = peft.config_scale();
  const bool permute_qk = base.rope.interleaved;

  float* next = static_cast<float*>(out.storage_.data());
  for (const PeftModule& m : peft.modules()) {
    const ModuleShard s = shard_of(base, shard, m.target);
    const int64_t full_in = lora_in_features(base, m.target);
    LoraModule& dst = out.modules_[m.layer * kNumLoraTargets + static_cast<int>(m.target)];
    dst.rank = m.rank;
    dst.scale = m.scale;
    dst.a = Tensor::contiguous(DType::F32, m.rank, s.in, next);
    next += m.rank * s.in;
    dst.b = Tensor::contiguous(DType::F32, s.out, m.rank, next);
    next += s.out * m.rank;

    for (int64_t k = 0; k < m.rank; ++k) {
      float* row = dst.a.row<float>(k);
      for (int64_t c = 0; c < s.in; ++c) row[c] = element(*m.a, k * full_in + s.in_begin + c);
    }
    const bool permute = permute_qk && (m.target == LoraTarget::Q || m.target == LoraTarget::K);
    for (int64_t r = 0; r < s.out; ++r) {
      const int64_t g = s.out_begin + r;  // row in the full (GGUF-ordered when permuting) B
      const int64_t src = permute ? hf_row_of_gguf_row(g, base.head_dim) : g;
      float* row = dst.b.row<float>(r);
      for (int64_t k = 0; k < m.rank; ++k) row[k] = element(*m.b, src * m.rank + k);
    }
  }
  return out;
}

}  // namespace mil
