// Hands out KV cache blocks. A free list: allocation and release are O(1) per block.
#pragma once

#include <cstdint>
#include <vector>

namespace mil {

class BlockAllocator {
 public:
  explicit BlockAllocator(int64_t num_blocks);

  int64_t free_blocks() const { return static_cast<int64_t>(free_.size()); }
  // Appends `count` blocks to `blocks`; false (and nothing taken) when too few are free.
  bool allocate(int64_t count, std::vector<int32_t>& blocks);
  void release(std::vector<int32_t>& blocks);

 private:
  std::vector<int32_t> free_;
};

}  // namespace mil
