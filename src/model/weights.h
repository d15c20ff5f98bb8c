// The weights of a Llama-family model, as views into the memory-mapped files (matrices)
// plus small owned f32 copies of the vectors (norms, biases). Loading is tensor-parallel
// aware: rank r of w reads only its slice — column-parallel matrices (q/k/v, gate/up,
// lm_head) split their output rows, row-parallel ones (o, down) split their input columns.
#pragma once

#include <memory>
#include <vector>

#include "core/buffer.h"
#include "core/shard.h"
#include "core/tensor.h"
#include "model/weight_source.h"

namespace mil {
class LoraAdapter;
}

namespace mil {

struct LayerWeights {
  Tensor attn_norm;            // f32 [1, hidden]
  Tensor q, k, v, o;           // [out, in], storage dtype
  Tensor q_bias, k_bias, v_bias, o_bias;  // f32 [1, out], empty when absent
  Tensor ffn_norm;
  Tensor gate, up, down;
  Tensor gate_bias, up_bias, down_bias;
};

// Per-rank sizes after sharding.
struct ShardedDims {
  int64_t num_heads = 0;     // this rank's query heads
  int64_t num_kv_heads = 0;  // this rank's key/value heads
  int64_t intermediate = 0;  // this rank's MLP width
  int64_t vocab = 0;         // this rank's lm_head rows
};

class LlamaWeights {
 public:
  LlamaWeights(std::unique_ptr<WeightSource> source, ShardSpec shard);

  const ModelConfig& config() const { return source_->config(); }
  const ShardSpec& shard() const { return shard_; }
  const ShardedDims& dims() const { return dims_; }

  Tensor embedding;  // [vocab, hidden], replicated
  Tensor lm_head;    // [vocab / world, hidden]; the embedding when tied
  Tensor final_norm;
  Tensor rope_freq_factors;  // f32 [1, head_dim/2] from GGUF rope_freqs.weight, else empty
  std::vector<LayerWeights> layers;

  // Folds a LoRA adapter into the weights it targets: W += scale * B A, each such matrix
  // becoming an owned f32 copy. For serving one adapter only (`--merge-adapter`); the
  // multi-adapter path keeps the base weights shared and applies adapters per row.
  void merge_lora(const LoraAdapter& adapter);

 private:
  enum class Split { None, Rows, Cols };
  Tensor matrix(const std::string& name, int64_t rows, int64_t cols, Split split);
  Tensor vector(const std::string& name, int64_t size, Split split, bool required);
  SourceTensor require(const std::string& name) const;

  std::unique_ptr<WeightSource> source_;
  ShardSpec shard_;
  ShardedDims dims_;
  std::vector<HostBuffer> owned_;  // f32 copies of vectors
};

}  // namespace mil
