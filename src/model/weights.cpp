#include "model/weights.h"

#include <cstring>

#include "core/error.h"
#include "core/half.h"

namespace mil {
namespace {

std::string shape_of(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

int64_t shard_size(int64_t total, int world, const std::string& what, const std::string& origin) {
  if (total % world != 0) {
    fail("{}: {} ({}) does not split evenly over {} ranks", origin, what, total, world);
  }
  return total / world;
}

}  // namespace

LlamaWeights::LlamaWeights(std::unique_ptr<WeightSource> source, ShardSpec shard)
    : source_(std::move(source)), shard_(shard) {
  const ModelConfig& c = config();
  MIL_CHECK(shard.world >= 1 && shard.rank >= 0 && shard.rank < shard.world,
            "invalid shard rank {} of {}", shard.rank, shard.world);
  dims_.num_heads = shard_size(c.num_heads, shard.world, "num_attention_heads", source_->origin());
  dims_.num_kv_heads = shard_size(c.num_kv_heads, shard.world, "num_key_value_heads", source_->origin());
  dims_.intermediate = shard_size(c.intermediate_size, shard.world, "intermediate_size", source_->origin());
  dims_.vocab = shard_size(c.vocab_size, shard.world, "vocab_size", source_->origin());

  const int64_t hidden = c.hidden_size;
  const int64_t q_out = c.num_heads * c.head_dim;
  const int64_t kv_out = c.num_kv_heads * c.head_dim;
  embedding = matrix("model.embed_tokens.weight", c.vocab_size, hidden, Split::None);
  final_norm = vector("model.norm.weight", hidden, Split::None, true);
  if (c.tie_word_embeddings) {
    lm_head = embedding.slice_rows(shard.rank * dims_.vocab, dims_.vocab);
  } else {
    lm_head = matrix("lm_head.weight", c.vocab_size, hidden, Split::Rows);
  }
  if (source_->find("rope_freqs.weight").info != nullptr) {
    rope_freq_factors = vector("rope_freqs.weight", c.head_dim / 2, Split::None, true);
  }

  layers.resize(c.num_layers);
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    LayerWeights& l = layers[i];
    l.attn_norm = vector(p + "input_layernorm.weight", hidden, Split::None, true);
    l.ffn_norm = vector(p + "post_attention_layernorm.weight", hidden, Split::None, true);
    l.q = matrix(p + "self_attn.q_proj.weight", q_out, hidden, Split::Rows);
    l.k = matrix(p + "self_attn.k_proj.weight", kv_out, hidden, Split::Rows);
    l.v = matrix(p + "self_attn.v_proj.weight", kv_out, hidden, Split::Rows);
    l.o = matrix(p + "self_attn.o_proj.weight", hidden, q_out, Split::Cols);
    l.gate = matrix(p + "mlp.gate_proj.weight", c.intermediate_size, hidden, Split::Rows);
    l.up = matrix(p + "mlp.up_proj.weight", c.intermediate_size, hidden, Split::Rows);
    l.down = matrix(p + "mlp.down_proj.weight", hidden, c.intermediate_size, Split::Cols);
    if (c.qkv_bias) {
      l.q_bias = vector(p + "self_attn.q_proj.bias", q_out, Split::Rows, true);
      l.k_bias = vector(p + "self_attn.k_proj.bias", kv_out, Split::Rows, true);
      l.v_bias = vector(p + "self_attn.v_proj.bias", kv_out, Split::Rows, true);
    }
    // A row-parallel bias is added once, on rank 0, before the all-reduce sums the ranks.
    if (c.o_proj_bias && shard.rank == 0) {
      l.o_bias = vector(p + "self_attn.o_proj.bias", hidden, Split::None, true);
    }
    if (c.mlp_bias) {
      l.gate_bias = vector(p + "mlp.gate_proj.bias", c.intermediate_size, Split::Rows, true);
      l.up_bias = vector(p + "mlp.up_proj.bias", c.intermediate_size, Split::Rows, true);
      if (shard.rank == 0) l.down_bias = vector(p + "mlp.down_proj.bias", hidden, Split::None, true);
    }
  }
}

SourceTensor LlamaWeights::require(const std::string& name) const {
  SourceTensor t = source_->find(name);
  if (t.info == nullptr) fail("{}: missing tensor '{}'", *t.file, t.name);
  return t;
}

Tensor LlamaWeights::matrix(const std::string& name, int64_t rows, int64_t cols, Split split) {
  const SourceTensor t = require(name);
  const TensorInfo& info = *t.info;
  if (info.shape.size() != 2 || info.shape[0] != rows || info.shape[1] != cols) {
    fail("{}: tensor '{}' has shape {} but the config needs [{}, {}]", *t.file, t.name,
         shape_of(info.shape), rows, cols);
  }
  if (!info.dtype || *info.dtype == DType::I32) {
    fail("{}: tensor '{}' has dtype {}, which MIL does not compute with (F32, F16, BF16, Q8_0, "
         "Q4_0, Q4_1)", *t.file, t.name, info.dtype_name);
  }
  const DType dtype = *info.dtype;
  // Kernels read elements (and the f16 fields of blocks) in place.
  const size_t align = block_bytes(dtype) == 4 ? 4 : 2;
  if (reinterpret_cast<uintptr_t>(info.data.data()) % align != 0) {
    fail("{}: tensor '{}': data is not aligned to {} bytes", *t.file, t.name, align);
  }
  if (cols % block_elems(dtype) != 0) {
    fail("{}: tensor '{}': {} columns do not fill whole {} blocks", *t.file, t.name, cols,
         dtype_name(dtype));
  }
  // Views into the mapping: a shard touches only its own pages.
  Tensor full = Tensor::contiguous(dtype, rows, cols, const_cast<std::byte*>(info.data.data()));
  MIL_CHECK(full.bytes() == info.data.size(), "{}: tensor '{}' holds {} bytes, expected {}",
            *t.file, t.name, info.data.size(), full.bytes());
  switch (split) {
    case Split::None:
      return full;
    case Split::Rows: {
      const int64_t n = shard_size(rows, shard_.world, "tensor '" + t.name + "' rows", *t.file);
      return full.slice_rows(shard_.rank * n, n);
    }
    case Split::Cols: {
      const int64_t n = shard_size(cols, shard_.world, "tensor '" + t.name + "' columns", *t.file);
      if (n % block_elems(dtype) != 0) {
        fail("{}: tensor '{}': a {}-column shard splits {} blocks", *t.file, t.name, n,
             dtype_name(dtype));
      }
      return full.slice_cols(shard_.rank * n, n);
    }
  }
  return full;
}

Tensor LlamaWeights::vector(const std::string& name, int64_t size, Split split, bool required) {
  SourceTensor t = source_->find(name);
  if (t.info == nullptr) {
    if (required) fail("{}: missing tensor '{}'", *t.file, t.name);
    return {};
  }
  const TensorInfo& info = *t.info;
  if (info.shape.size() != 1 || info.shape[0] != size) {
    fail("{}: tensor '{}' has shape {} but the config needs [{}]", *t.file, t.name,
         shape_of(info.shape), size);
  }
  if (!info.dtype || (*info.dtype != DType::F32 && *info.dtype != DType::F16 &&
                      *info.dtype != DType::BF16)) {
    fail("{}: tensor '{}' has dtype {}; vectors must be F32, F16 or BF16", *t.file, t.name,
         info.dtype_name);
  }
  int64_t begin = 0, count = size;
  if (split == Split::Rows) {
    count = shard_size(size, shard_.world, "tensor '" + t.name + "'", *t.file);
    begin = shard_.rank * count;
  }
  HostBuffer& buf = owned_.emplace_back(count * sizeof(float));
  float* out = static_cast<float*>(buf.data());
  const std::byte* src = info.data.data();
  for (int64_t i = 0; i < count; ++i) {
    const int64_t j = begin + i;
    switch (*info.dtype) {
      case DType::F32: std::memcpy(&out[i], src + 4 * j, 4); break;
      case DType::F16: {
        uint16_t h;
        std::memcpy(&h, src + 2 * j, 2);
        out[i] = f16_to_f32(h);
        break;
      }
      default: {
        uint16_t h;
        std::memcpy(&h, src + 2 * j, 2);
        out[i] = bf16_to_f32(h);
      }
    }
  }
  return Tensor::contiguous(DType::F32, 1, count, out);
}

}  // namespace mil
