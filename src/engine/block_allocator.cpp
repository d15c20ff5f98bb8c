#include "engine/block_allocator.h"

#include "core/error.h"

namespace mil {

BlockAllocator::BlockAllocator(int64_t num_blocks) {
  free_.reserve(num_blocks);
  // Lowest ids handed out first, which keeps small runs compact in memory.
  for (int64_t i = num_blocks - 1; i >= 0; --i) free_.push_back(static_cast<int32_t>(i));
}

bool BlockAllocator::allocate(int64_t count, std::vector<int32_t>& blocks) {
  if (count > free_blocks()) return false;
  for (int64_t i = 0; i < count; ++i) {
    blocks.push_back(free_.back());
    free_.pop_back();
  }
  return true;
}

void BlockAllocator::release(std::vector<int32_t>& blocks) {
  for (int32_t b : blocks) free_.push_back(b);
  blocks.clear();
}

}  // namespace mil
