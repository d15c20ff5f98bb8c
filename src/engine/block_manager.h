// KV block bookkeeping of the serving engine, kept apart from the memory (model/kv_cache.h
// holds the keys and values; this file only decides which block holds what):
//   - reference-counted blocks and a free list;
//   - the prefix cache: every full block of computed tokens is keyed by a chain hash of
//     (adapter name, parent block's hash, the block's token ids), so a later sequence whose
//     tokens start the same way under the same adapter reuses those blocks instead of
//     recomputing them. The adapter is part of the key: the same prompt under another adapter
//     has other keys and values and never shares.
//   - cached blocks that no sequence references stay cached ("evictable") until blocks run
//     short; then the least recently released go first (a sequence releases its last block
//     first, so the tails of cached prefixes are evicted before their heads).
// Single-threaded: the engine thread owns it.
#pragma once

#include <cstdint>
#include <list>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

namespace mil {

// One sequence's blocks, in position order, and the chain hashes of its leading full blocks.
struct SequenceBlocks {
  std::vector<int32_t> blocks;
  std::vector<uint64_t> hashes;  // hashes[i]: key of blocks[i], for every full, computed block
};

// What the prefix cache holds for a token sequence, without taking it.
struct PrefixHit {
  int64_t tokens = 0;            // cached tokens (a whole number of blocks)
  int64_t evictable_blocks = 0;  // of those blocks, how many no sequence references now
};

class BlockManager {
 public:
  BlockManager(int64_t num_blocks, int32_t block_size, bool prefix_caching);

  int64_t num_blocks() const { return num_blocks_; }
  int32_t block_size() const { return block_size_; }
  bool prefix_caching() const { return prefix_caching_; }
  int64_t free_blocks() const { return static_cast<int64_t>(free_.size()); }  // neither used nor cached
  int64_t cached_blocks() const { return static_cast<int64_t>(lru_.size()); }  // cached, unreferenced
  // What allocate() can hand out: free blocks plus evictable cached ones.
  int64_t available_blocks() const { return free_blocks() + cached_blocks(); }
  int64_t blocks_for(int64_t tokens) const { return (tokens + block_size_ - 1) / block_size_; }

  // The longest run of cached full blocks that starts `tokens` under `adapter`, covering at
  // most `max_tokens` tokens. Changes nothing.
  PrefixHit lookup(const std::string& adapter, std::span<const int32_t> tokens,
                   int64_t max_tokens) const;
  // Takes (references) the cached blocks of lookup(adapter, tokens, max_tokens) into `seq`,
  // which must hold no blocks yet. Returns the number of tokens they cover.
  int64_t acquire_prefix(const std::string& adapter, std::span<const int32_t> tokens,
                         int64_t max_tokens, SequenceBlocks& seq);

  // Appends `count` fresh blocks to `seq`, evicting least-recently-used cached blocks when
  // the free list runs out. False (nothing taken) when fewer than `count` are available.
  bool allocate(int64_t count, SequenceBlocks& seq);

  // Records that the first `computed` tokens of `seq` (whose ids are `tokens`) now have their
  // keys and values in the cache: every newly full block gets its chain hash and, unless an
  // equal block is cached already, becomes findable by later sequences.
  void commit(const std::string& adapter, std::span<const int32_t> tokens, int64_t computed,
              SequenceBlocks& seq);

  // Drops `seq`'s references (last block first). Blocks nobody references go back to the
  // free list, or stay cached (evictable) when they hold a findable prefix block.
  void release(SequenceBlocks& seq);

  // Blocks of `seq` that only it references: what releasing it gives back.
  int64_t exclusive_blocks(const SequenceBlocks& seq) const;
  int32_t ref_count(int32_t block) const { return meta_[block].refs; }

 private:
  struct Meta {
    int32_t refs = 0;
    bool cached = false;   // registered in index_ under `hash`
    uint64_t hash = 0;
    uint64_t parent = 0;   // the previous block's hash (0 for a sequence's first block)
    std::string adapter;
    std::vector<int32_t> tokens;
    std::list<int32_t>::iterator lru;  // valid while cached and unreferenced
  };

  uint64_t block_hash(const std::string& adapter, uint64_t parent,
                      std::span<const int32_t> tokens) const;
  // The cached block holding exactly this key, or -1.
  // Calls on_block(block, hash) for each cached full block of `tokens` (within max_tokens)
  // in order, until the first miss.
  template <typename OnBlock>
  void walk_cached_prefix(const std::string& adapter, std::span<const int32_t> tokens,
                          int64_t max_tokens, OnBlock on_block) const;
  int32_t find(const std::string& adapter, uint64_t parent, uint64_t hash,
               std::span<const int32_t> tokens) const;
  void take_reference(int32_t block);
  void uncache(int32_t block);

  int64_t num_blocks_;
  int32_t block_size_;
  bool prefix_caching_;
  std::vector<Meta> meta_;
  std::vector<int32_t> free_;     // a stack; lowest ids on top at start
  std::list<int32_t> lru_;        // evictable cached blocks, least recently released first
  std::unordered_map<uint64_t, int32_t> index_;  // chain hash -> cached block
};

}  // namespace mil
