#include "model/kv_cache.h"

#include "core/error.h"

namespace mil {

KVCache::KVCache(int64_t num_layers, int64_t num_blocks, int32_t block_size, int64_t kv_width)
    : num_blocks_(num_blocks), block_size_(block_size) {
  MIL_CHECK(num_blocks > 0 && block_size > 0, "KV cache needs blocks (got {} x {})", num_blocks,
            block_size);
  keys_.reserve(num_layers);
  values_.reserve(num_layers);
  for (int64_t i = 0; i < num_layers; ++i) {
    keys_.emplace_back(DType::F32, num_blocks * block_size, kv_width);
    values_.emplace_back(DType::F32, num_blocks * block_size, kv_width);
  }
}

}  // namespace mil
