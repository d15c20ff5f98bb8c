#include "engine/block_allocator.h"

#include <gtest/gtest.h>

#include <set>

#include "engine/sampler.h"

namespace mil {
namespace {

TEST(BlockAllocator, AllocatesDistinctBlocksAndRefusesWhenFull) {
  BlockAllocator a(4);
  std::vector<int32_t> x, y;
  ASSERT_TRUE(a.allocate(3, x));
  EXPECT_EQ(std::set<int32_t>(x.begin(), x.end()).size(), 3u);
  EXPECT_FALSE(a.allocate(2, y));
  EXPECT_TRUE(y.empty());  // nothing taken on failure
  ASSERT_TRUE(a.allocate(1, y));
  EXPECT_EQ(a.free_blocks(), 0);
  a.release(x);
  EXPECT_TRUE(x.empty());
  EXPECT_EQ(a.free_blocks(), 3);
  for (int32_t b : y) EXPECT_TRUE(b >= 0 && b < 4);
}

TEST(Sampler, SameSeedSameDrawsAndUniformRange) {
  Sampler a({0.7f, 0, 1.0f}, 42), b({0.7f, 0, 1.0f}, 42), c({0.7f, 0, 1.0f}, 43);
  bool differs = false;
  for (int i = 0; i < 1000; ++i) {
    const float u = a.next_uniform();
    EXPECT_EQ(u, b.next_uniform());
    differs |= u != c.next_uniform();
    EXPECT_GE(u, 0.0f);
    EXPECT_LT(u, 1.0f);
  }
  EXPECT_TRUE(differs);
  EXPECT_FALSE(a.greedy());
  EXPECT_TRUE(Sampler({}, 0).greedy());
}

}  // namespace
}  // namespace mil
