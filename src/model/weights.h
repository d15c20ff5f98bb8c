// The weights of a Llama-family model, as views into the memory-mapped files (matrices)
// plus small owned f32 copies of the vectors (norms, biases). Loading is tensor-parallel
// aware: rank r of w reads only its slice — column-parallel matrices (q/k/v, gate/up,
// lm_head) split their output rows, row-parallel ones (o, down) split their input columns.
#pragma once

#include <memory>
#include <vector>

#include "backends/ops.h"
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
  // Fused projections (to_device builds them where the parts share a dtype; empty
  // otherwise): qkv = [q; k; v] rows, gate_up = [gate; up] rows, and their biases. q, k, v,
  // gate and up are then row views of them.
  Tensor qkv, qkv_bias;
  Tensor gate_up, gate_up_bias;
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

  // Moves every weight into the memory of `ops`'s backend, in the form its matmul is fastest
  // with: F32/F16/BF16 matrices as BF16, Q8_0/Q4_0/Q4_1 as they are, vectors as F32; and
  // builds the fused qkv and gate_up projections. Nothing happens when the weights already
  // live in that memory (the CPU backend computes on the mapped file). Merge adapters first.
  // `ops` must outlive the weights' use; the host views are dropped (rope_freq_factors stays
  // on the host: it only feeds the RoPE table).
  void to_device(Ops& ops);
  // to_device without that check: copies even into host memory, so that the fused and
  // BF16 form runs on the CPU backend too (tests of the device path on machines without one).
  void copy_to(Ops& ops);

 private:
  enum class Split { None, Rows, Cols };
  Tensor matrix(const std::string& name, int64_t rows, int64_t cols, Split split);
  Tensor vector(const std::string& name, int64_t size, Split split, bool required);
  SourceTensor require(const std::string& name) const;

  std::unique_ptr<WeightSource> source_;
  ShardSpec shard_;
  ShardedDims dims_;
  std::vector<HostBuffer> owned_;  // f32 copies of vectors
  std::vector<OwnedTensor> device_;  // to_device's copies
};

}  // namespace mil
