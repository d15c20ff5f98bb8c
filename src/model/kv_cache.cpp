#include "model/kv_cache.h"

#include "core/error.h"

namespace mil {

KVCache::KVCache(Ops& ops, int64_t num_layers, int64_t num_blocks, int32_t block_size,
                 int64_t kv_width)
    : num_blocks_(num_blocks), block_size_(block_size), dtype_(ops.kv_dtype()) {
  MIL_CHECK(num_blocks > 0 && block_size > 0, "KV cache needs blocks (got {} x {})", num_blocks,
            block_size);
  const int64_t slots = num_blocks * block_size;
  storage_ = ops.allocate(dtype_, 2 * num_layers * slots, kv_width);
  keys_.reserve(num_layers);
  values_.reserve(num_layers);
  for (int64_t i = 0; i < num_layers; ++i) {
    keys_.push_back(storage_.view().slice_rows(2 * i * slots, slots));
    values_.push_back(storage_.view().slice_rows((2 * i + 1) * slots, slots));
  }
}

int64_t KVCache::bytes_per_block(DType dtype, int64_t num_layers, int32_t block_size,
                                 int64_t kv_width) {
  return 2 * num_layers * block_size * static_cast<int64_t>(row_bytes(dtype, kv_width));
}

}  // namespace mil
