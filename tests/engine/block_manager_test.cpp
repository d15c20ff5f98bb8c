// KV block bookkeeping: reference counts, the prefix cache keyed by adapter, LRU eviction.
#include "engine/block_manager.h"

#include <gtest/gtest.h>

#include <numeric>
#include <random>
#include <set>

namespace mil {
namespace {

std::vector<int32_t> iota_tokens(int n, int start = 100) {
  std::vector<int32_t> v(n);
  std::iota(v.begin(), v.end(), start);
  return v;
}

// A sequence that computed `tokens` entirely.
SequenceBlocks run(BlockManager& m, const std::string& adapter, const std::vector<int32_t>& tokens,
                   int64_t* cached = nullptr) {
  SequenceBlocks s;
  const int64_t hit = m.acquire_prefix(adapter, tokens, static_cast<int64_t>(tokens.size()) - 1, s);
  if (cached) *cached = hit;
  EXPECT_TRUE(m.allocate(m.blocks_for(static_cast<int64_t>(tokens.size())) -
                             static_cast<int64_t>(s.blocks.size()), s));
  m.commit(adapter, tokens, static_cast<int64_t>(tokens.size()), s);
  return s;
}

TEST(BlockManager, AllocatesAndReleasesWithoutCaching) {
  BlockManager m(4, 4, false);
  SequenceBlocks a, b;
  ASSERT_TRUE(m.allocate(3, a));
  EXPECT_FALSE(m.allocate(2, b));
  EXPECT_TRUE(b.blocks.empty());
  m.commit("", iota_tokens(12), 12, a);
  m.release(a);
  EXPECT_EQ(m.free_blocks(), 4);
  EXPECT_EQ(m.cached_blocks(), 0);
  EXPECT_EQ(m.lookup("", iota_tokens(12), 12).tokens, 0);
}

TEST(BlockManager, ReusesFullPrefixBlocksAndCountsReferences) {
  BlockManager m(16, 4, true);
  const auto prompt = iota_tokens(10);  // 2 full blocks + 2 tokens
  SequenceBlocks a = run(m, "", prompt);
  EXPECT_EQ(m.lookup("", prompt, 9).tokens, 8);
  EXPECT_EQ(m.lookup("", prompt, 9).evictable_blocks, 0);  // a still holds them
  int64_t cached = 0;
  SequenceBlocks b = run(m, "", prompt, &cached);
  EXPECT_EQ(cached, 8);
  EXPECT_EQ(b.blocks[0], a.blocks[0]);
  EXPECT_EQ(b.blocks[1], a.blocks[1]);
  EXPECT_NE(b.blocks[2], a.blocks[2]);
  EXPECT_EQ(m.ref_count(a.blocks[0]), 2);
  EXPECT_EQ(m.exclusive_blocks(a), 1);
  m.release(a);
  EXPECT_EQ(m.ref_count(b.blocks[0]), 1);
  m.release(b);
  // Both full blocks stay cached (evictable); the partial ones went back to the free list.
  EXPECT_EQ(m.cached_blocks(), 2);
  EXPECT_EQ(m.free_blocks(), 14);
  EXPECT_EQ(m.available_blocks(), 16);
  EXPECT_EQ(m.lookup("", prompt, 9).evictable_blocks, 2);
}

TEST(BlockManager, TheAdapterIsPartOfTheKey) {
  BlockManager m(16, 4, true);
  const auto prompt = iota_tokens(9);
  SequenceBlocks a = run(m, "caps", prompt);
  EXPECT_EQ(m.lookup("caps", prompt, 8).tokens, 8);
  EXPECT_EQ(m.lookup("", prompt, 8).tokens, 0);
  EXPECT_EQ(m.lookup("pirate", prompt, 8).tokens, 0);
  // A different first block breaks the chain even when the second block's tokens match.
  auto other = prompt;
  other[0] = 7;
  EXPECT_EQ(m.lookup("caps", other, 8).tokens, 0);
  m.release(a);
}

TEST(BlockManager, EvictsLeastRecentlyReleasedTailsFirst) {
  BlockManager m(4, 2, true);
  const auto p = iota_tokens(5);  // 2 full blocks + 1
  SequenceBlocks a = run(m, "", p);
  m.release(a);
  EXPECT_EQ(m.cached_blocks(), 2);
  EXPECT_EQ(m.free_blocks(), 2);
  SequenceBlocks x;
  ASSERT_TRUE(m.allocate(3, x));  // 2 free + 1 evicted: the tail block (positions 2-3)
  EXPECT_EQ(m.cached_blocks(), 1);
  EXPECT_EQ(m.lookup("", p, 4).tokens, 2);  // the head block is still there
  EXPECT_FALSE(m.allocate(2, x));
  m.release(x);
  EXPECT_EQ(m.available_blocks(), 4);
}

TEST(BlockManager, DuplicateComputedBlocksAreNotCachedTwice) {
  BlockManager m(8, 2, true);
  const auto p = iota_tokens(4);
  SequenceBlocks a, b;
  ASSERT_TRUE(m.allocate(2, a));
  ASSERT_TRUE(m.allocate(2, b));
  m.commit("", p, 4, a);
  m.commit("", p, 4, b);  // computed the same tokens concurrently
  m.release(a);
  m.release(b);
  EXPECT_EQ(m.cached_blocks(), 2);
  EXPECT_EQ(m.free_blocks(), 6);
}

TEST(BlockManager, RandomWorkloadKeepsEveryBlockAccountedFor) {
  BlockManager m(32, 4, true);
  std::mt19937 rng(3);
  std::vector<SequenceBlocks> live;
  for (int i = 0; i < 2000; ++i) {
    if (!live.empty() && (rng() % 3 == 0 || m.available_blocks() < 8)) {
      const size_t k = rng() % live.size();
      m.release(live[k]);
      live.erase(live.begin() + static_cast<std::ptrdiff_t>(k));
    } else {
      // Prompts from a few shared stems under two adapters.
      std::vector<int32_t> p = iota_tokens(4 + static_cast<int>(rng() % 12), 10 * (rng() % 3));
      p.back() = static_cast<int32_t>(rng() % 50);
      live.push_back(run(m, rng() % 2 ? "a" : "", p));
    }
    std::set<int32_t> used;
    int64_t referenced = 0;
    for (const auto& s : live) used.insert(s.blocks.begin(), s.blocks.end());
    for (int32_t b : used) referenced += m.ref_count(b) > 0 ? 1 : 0;
    ASSERT_EQ(referenced + m.free_blocks() + m.cached_blocks(), 32) << i;
  }
  for (auto& s : live) m.release(s);
  EXPECT_EQ(m.available_blocks(), 32);
}

}  // namespace
}  // namespace mil
