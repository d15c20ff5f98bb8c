#include "engine/block_manager.h"

#include <algorithm>

#include "core/error.h"

namespace mil {
namespace {

// splitmix64's finalizer: a cheap, well-mixing step for combining 64-bit words.
uint64_t mix(uint64_t h, uint64_t v) {
  uint64_t z = h ^ (v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2));
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

}  // namespace

BlockManager::BlockManager(int64_t num_blocks, int32_t block_size, bool prefix_caching)
    : num_blocks_(num_blocks), block_size_(block_size), prefix_caching_(prefix_caching) {
  MIL_CHECK(num_blocks > 0 && num_blocks <= INT32_MAX && block_size > 0,
            "block manager: invalid cache of {} blocks of {} tokens", num_blocks, block_size);
  meta_.resize(num_blocks);
  free_.reserve(num_blocks);
  for (int64_t i = num_blocks - 1; i >= 0; --i) free_.push_back(static_cast<int32_t>(i));
}

uint64_t BlockManager::block_hash(const std::string& adapter, uint64_t parent,
                                  std::span<const int32_t> tokens) const {
  uint64_t h = mix(0x6d696c2d6b76ULL, parent);
  h = mix(h, adapter.size());
  for (unsigned char c : adapter) h = mix(h, c);
  for (int32_t t : tokens) h = mix(h, static_cast<uint32_t>(t));
  return h;
}

int32_t BlockManager::find(const std::string& adapter, uint64_t parent, uint64_t hash,
                           std::span<const int32_t> tokens) const {
  auto it = index_.find(hash);
  if (it == index_.end()) return -1;
  // The hash only finds the candidate; the key itself decides (no silent collisions).
  const Meta& m = meta_[it->second];
  if (m.parent != parent || m.adapter != adapter ||
      !std::equal(tokens.begin(), tokens.end(), m.tokens.begin(), m.tokens.end())) {
    return -1;
  }
  return it->second;
}

template <typename OnBlock>
void BlockManager::walk_cached_prefix(const std::string& adapter, std::span<const int32_t> tokens,
                                      int64_t max_tokens, OnBlock on_block) const {
  if (!prefix_caching_) return;
  const int64_t limit = std::min<int64_t>(max_tokens, static_cast<int64_t>(tokens.size()));
  uint64_t parent = 0;
  for (int64_t start = 0; start + block_size_ <= limit; start += block_size_) {
    const auto block_tokens = tokens.subspan(start, block_size_);
    const uint64_t h = block_hash(adapter, parent, block_tokens);
    const int32_t b = find(adapter, parent, h, block_tokens);
    if (b < 0) break;
    on_block(b, h);
    parent = h;
  }
}

PrefixHit BlockManager::lookup(const std::string& adapter, std::span<const int32_t> tokens,
                               int64_t max_tokens) const {
  PrefixHit hit;
  walk_cached_prefix(adapter, tokens, max_tokens, [&](int32_t b, uint64_t) {
    hit.tokens += block_size_;
    if (meta_[b].refs == 0) ++hit.evictable_blocks;
  });
  return hit;
}

int64_t BlockManager::acquire_prefix(const std::string& adapter, std::span<const int32_t> tokens,
                                     int64_t max_tokens, SequenceBlocks& seq) {
  MIL_CHECK(seq.blocks.empty(), "block manager: a prefix goes into an empty sequence");
  int64_t covered = 0;
  walk_cached_prefix(adapter, tokens, max_tokens, [&](int32_t b, uint64_t h) {
    take_reference(b);
    seq.blocks.push_back(b);
    seq.hashes.push_back(h);
    covered += block_size_;
  });
  return covered;
}

void BlockManager::take_reference(int32_t block) {
  Meta& m = meta_[block];
  if (m.refs == 0 && m.cached) lru_.erase(m.lru);
  ++m.refs;
}

void BlockManager::uncache(int32_t block) {
  Meta& m = meta_[block];
  if (!m.cached) return;
  index_.erase(m.hash);
  m.cached = false;
  m.adapter.clear();
  m.tokens.clear();
}

bool BlockManager::allocate(int64_t count, SequenceBlocks& seq) {
  if (count > available_blocks()) return false;
  for (int64_t i = 0; i < count; ++i) {
    int32_t b;
    if (!free_.empty()) {
      b = free_.back();
      free_.pop_back();
    } else {
      b = lru_.front();
      lru_.pop_front();
      uncache(b);
    }
    meta_[b].refs = 1;
    seq.blocks.push_back(b);
  }
  return true;
}

void BlockManager::commit(const std::string& adapter, std::span<const int32_t> tokens,
                          int64_t computed, SequenceBlocks& seq) {
  if (!prefix_caching_) return;
  const int64_t full = std::min<int64_t>(computed / block_size_,
                                         static_cast<int64_t>(seq.blocks.size()));
  for (auto i = static_cast<int64_t>(seq.hashes.size()); i < full; ++i) {
    const uint64_t parent = i == 0 ? 0 : seq.hashes[i - 1];
    const auto block_tokens = tokens.subspan(i * block_size_, block_size_);
    const uint64_t h = block_hash(adapter, parent, block_tokens);
    seq.hashes.push_back(h);
    const int32_t b = seq.blocks[i];
    Meta& m = meta_[b];
    if (m.cached || index_.contains(h)) continue;  // already findable (maybe another copy)
    m.cached = true;
    m.hash = h;
    m.parent = parent;
    m.adapter = adapter;
    m.tokens.assign(block_tokens.begin(), block_tokens.end());
    index_.emplace(h, b);
  }
}

void BlockManager::release(SequenceBlocks& seq) {
  for (auto it = seq.blocks.rbegin(); it != seq.blocks.rend(); ++it) {
    Meta& m = meta_[*it];
    MIL_CHECK(m.refs > 0, "block manager: block {} released more often than taken", *it);
    if (--m.refs > 0) continue;
    if (m.cached) {
      m.lru = lru_.insert(lru_.end(), *it);
    } else {
      free_.push_back(*it);
    }
  }
  seq.blocks.clear();
  seq.hashes.clear();
}

int64_t BlockManager::exclusive_blocks(const SequenceBlocks& seq) const {
  int64_t n = 0;
  for (int32_t b : seq.blocks) n += meta_[b].refs == 1 ? 1 : 0;
  return n;
}

}  // namespace mil
