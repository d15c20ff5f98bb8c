// The BPE model: a word (one pre-token) -> ids by applying merges lowest rank first, leftmost
// first among equal ranks, exactly as HF's Word::merge_all. Words already seen are served from a
// bounded cache shared by all threads.
#pragma once

#include <cstdint>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace mil::tok {

uint64_t hash_bytes(std::string_view s);

// token string -> id, open addressing over views into one arena (read-only after build).
class TokenIndex {
 public:
  void build(const std::vector<std::string_view>& tokens);  // tokens[id]; "" = hole
  int32_t find(std::string_view token) const;                // -1 when absent

 private:
  struct Slot {
    uint32_t hash_hi = 0;
    int32_t id = -1;
  };
  std::vector<Slot> slots_;
  const std::vector<std::string_view>* tokens_ = nullptr;
  size_t mask_ = 0;
};

struct BpeOptions {
  bool byte_fallback = false;
  std::optional<std::string> unk_token;
  bool fuse_unk = false;
  bool ignore_merges = false;
};

class BpeModel {
 public:
  // vocab: (token, id) pairs; merges: (left, right) in rank order. `origin` names the source
  // for errors (a merge whose parts or result are not in the vocab, duplicate tokens or ids).
  BpeModel(std::vector<std::pair<std::string, int32_t>> vocab,
           const std::vector<std::pair<std::string, std::string>>& merges, BpeOptions options,
           const std::string& origin);
  BpeModel(const BpeModel&) = delete;
  BpeModel& operator=(const BpeModel&) = delete;

  // Appends the ids of one pre-tokenized word. Thread-safe.
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;

  int32_t token_to_id(std::string_view token) const { return index_.find(token); }
  std::string_view id_to_token(int32_t id) const {
    return id >= 0 && static_cast<size_t>(id) < tokens_.size() ? tokens_[id] : std::string_view();
  }
  int32_t size() const { return static_cast<int32_t>(tokens_.size()); }  // max id + 1

 private:
  struct MergeSlot {
    uint64_t key = ~0ull;  // (left << 32) | right; ~0 = empty
    uint32_t rank = 0;
    int32_t new_id = -1;
  };
  const MergeSlot* find_merge(int32_t left, int32_t right) const;
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;

  std::string arena_;                      // all token bytes
  std::vector<std::string_view> tokens_;   // id -> token (views into arena_)
  TokenIndex index_;
  std::vector<MergeSlot> merges_;
  size_t merge_mask_ = 0;
  std::vector<int32_t> small_char_ids_;    // code point < 512 -> id of that 1-char token, or -1
  int32_t byte_ids_[256];                  // <0xXX> tokens for byte_fallback, or -1
  BpeOptions options_;
  int32_t unk_id_ = -1;
  std::string origin_;

  // Word cache (HF keeps one too): words up to kMaxCachedWord bytes, up to kCacheCapacity.
  static constexpr size_t kMaxCachedWord = 256;
  static constexpr size_t kCacheCapacity = 1 << 17;
  struct CacheHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return hash_bytes(s); }
  };
  mutable std::shared_mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>, CacheHash, std::equal_to<>> cache_;
};

}  // namespace mil::tok
