// The paged KV cache storage of one rank: for every layer a key and a value tensor of
// [num_blocks * block_size slots, num_kv_heads * head_dim] in the backend's memory and KV
// dtype (f32 on the CPU, bf16 on CUDA). Which sequence owns which block is the engine's
// business (engine/block_allocator.h).
#pragma once

#include <vector>

#include "backends/ops.h"
#include "core/buffer.h"
#include "core/tensor.h"

namespace mil {

class KVCache {
 public:
  // Allocated through `ops` in ops.kv_dtype().
  KVCache(Ops& ops, int64_t num_layers, int64_t num_blocks, int32_t block_size, int64_t kv_width);

  // Bytes one block takes over all layers (keys and values).
  static int64_t bytes_per_block(DType dtype, int64_t num_layers, int32_t block_size,
                                 int64_t kv_width);

  int64_t num_blocks() const { return num_blocks_; }
  int32_t block_size() const { return block_size_; }
  DType dtype() const { return dtype_; }
  const Tensor& keys(int64_t layer) const { return keys_[layer]; }
  const Tensor& values(int64_t layer) const { return values_[layer]; }

 private:
  int64_t num_blocks_;
  int32_t block_size_;
  DType dtype_;
  // One allocation for every layer's keys and values: the cache is sized to the block from
  // the memory left after warm-up, and one allocation rounds up (to the device's allocation
  // granularity) once instead of 2 x layers times.
  OwnedTensor storage_;
  std::vector<Tensor> keys_, values_;  // row ranges of storage_
};

}  // namespace mil
