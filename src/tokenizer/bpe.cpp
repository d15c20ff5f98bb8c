#include "tokenizer/bpe.h"

#include <algorithm>
#include <cstring>
#include <mutex>

#include "core/error.h"
#include "tokenizer/utf8.h"

namespace mil::tok {

uint64_t hash_bytes(std::string_view s) {
  uint64_t h = 0x9E3779B97F4A7C15ull ^ (s.size() * 0xff51afd7ed558ccdull);
  size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    uint64_t v;
    std::memcpy(&v, s.data() + i, 8);
    h = (h ^ v) * 0xff51afd7ed558ccdull;
    h ^= h >> 32;
  }
  uint64_t v = 0;
  std::memcpy(&v, s.data() + i, s.size() - i);
  h = (h ^ v) * 0xc4ceb9fe1a85ec53ull;
  h ^= h >> 29;
  h *= 0x9E3779B97F4A7C15ull;
  return h ^ (h >> 32);
}

void TokenIndex::build(const std::vector<std::string_view>& tokens) {
  tokens_ = &tokens;
  size_t capacity = 16;
  while (capacity < tokens.size() * 2) capacity <<= 1;
  slots_.assign(capacity, Slot{});
  mask_ = capacity - 1;
  for (size_t id = 0; id < tokens.size(); ++id) {
    if (tokens[id].empty()) continue;
    const uint64_t h = hash_bytes(tokens[id]);
    size_t i = h & mask_;
    while (slots_[i].id >= 0) i = (i + 1) & mask_;
    slots_[i] = {static_cast<uint32_t>(h >> 32), static_cast<int32_t>(id)};
  }
}

int32_t TokenIndex::find(std::string_view token) const {
  if (slots_.empty()) return -1;
  const uint64_t h = hash_bytes(token);
  const auto hi = static_cast<uint32_t>(h >> 32);
  for (size_t i = h & mask_;; i = (i + 1) & mask_) {
    const Slot& s = slots_[i];
    if (s.id < 0) return -1;
    if (s.hash_hi == hi && (*tokens_)[s.id] == token) return s.id;
  }
}

namespace {

uint64_t mix64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  return x;
}

uint64_t pair_key(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

}  // namespace

BpeModel::BpeModel(std::vector<std::pair<std::string, int32_t>> vocab,
                   const std::vector<std::pair<std::string, std::string>>& merges,
                   BpeOptions options, const std::string& origin)
    : options_(std::move(options)), origin_(origin) {
  int32_t max_id = -1;
  size_t bytes = 0;
  for (const auto& [token, id] : vocab) {
    MIL_CHECK(id >= 0 && id < (1 << 24), "{}: model.vocab id {} of {:?} is out of range", origin,
              id, token);
    MIL_CHECK(!token.empty(), "{}: model.vocab has an empty token (id {})", origin, id);
    max_id = std::max(max_id, id);
    bytes += token.size();
  }
  // Views into arena_ are taken after it is complete, so it never reallocates under them.
  std::vector<std::pair<size_t, size_t>> spans(static_cast<size_t>(max_id + 1), {0, 0});
  arena_.reserve(bytes);
  for (const auto& [token, id] : vocab) {
    MIL_CHECK(spans[id].second == 0, "{}: model.vocab id {} is given to two tokens", origin, id);
    spans[id] = {arena_.size(), token.size()};
    arena_ += token;
  }
  tokens_.resize(spans.size());
  for (size_t id = 0; id < spans.size(); ++id) {
    tokens_[id] = std::string_view(arena_).substr(spans[id].first, spans[id].second);
  }
  index_.build(tokens_);
  for (const auto& [token, id] : vocab) {
    MIL_CHECK(index_.find(token) == id, "{}: model.vocab has token {:?} twice", origin, token);
  }

  size_t capacity = 16;
  while (capacity < merges.size() * 2) capacity <<= 1;
  merges_.assign(capacity, MergeSlot{});
  merge_mask_ = capacity - 1;
  std::string joined;
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [left, right] = merges[rank];
    const int32_t l = index_.find(left), r = index_.find(right);
    joined = left + right;
    const int32_t merged = index_.find(joined);
    MIL_CHECK(l >= 0 && r >= 0 && merged >= 0,
              "{}: model.merges[{}] ({:?} {:?}) uses a token missing from model.vocab", origin,
              rank, left, right);
    const uint64_t key = pair_key(l, r);
    size_t i = mix64(key) & merge_mask_;
    while (merges_[i].key != ~0ull && merges_[i].key != key) i = (i + 1) & merge_mask_;
    // A repeated merge takes the later rank, as HF's HashMap collect does.
    merges_[i] = {key, static_cast<uint32_t>(rank), merged};
  }

  small_char_ids_.assign(512, -1);
  for (char32_t cp = 0; cp < 512; ++cp) {
    std::string s;
    append_utf8(s, cp);
    small_char_ids_[cp] = index_.find(s);
  }
  for (int b = 0; b < 256; ++b) {
    byte_ids_[b] = index_.find(fmt::format("<0x{:02X}>", b));
  }
  if (options_.unk_token) unk_id_ = index_.find(*options_.unk_token);
}

const BpeModel::MergeSlot* BpeModel::find_merge(int32_t left, int32_t right) const {
  const uint64_t key = pair_key(left, right);
  for (size_t i = mix64(key) & merge_mask_;; i = (i + 1) & merge_mask_) {
    const MergeSlot& s = merges_[i];
    if (s.key == key) return &s;
    if (s.key == ~0ull) return nullptr;
  }
}

void BpeModel::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (options_.ignore_merges) {
    const int32_t id = index_.find(word);
    if (id >= 0) {
      out.push_back(id);
      return;
    }
  }
  const bool cacheable = word.size() <= kMaxCachedWord;
  if (cacheable) {
    std::shared_lock lock(cache_mutex_);
    const auto it = cache_.find(word);
    if (it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t before = out.size();
  merge_word(word, out);
  if (cacheable) {
    std::unique_lock lock(cache_mutex_);
    if (cache_.size() < kCacheCapacity) {
      cache_.try_emplace(std::string(word), out.begin() + static_cast<ptrdiff_t>(before),
                         out.end());
    }
  }
}

void BpeModel::merge_word(std::string_view word, std::vector<int32_t>& out) const {
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
    bool alive;
  };
  struct Candidate {
    uint32_t rank;
    uint32_t pos;
    int32_t new_id;
  };
  // Scratch reused across calls: no allocation per word once warm.
  thread_local std::vector<Symbol> symbols;
  thread_local std::vector<Candidate> heap;
  symbols.clear();
  heap.clear();

  auto add = [&](int32_t id) {
    const auto n = static_cast<int32_t>(symbols.size());
    symbols.push_back({id, n - 1, n + 1, true});
  };
  // HF's merge_word: one symbol per char; unknown chars fall back to <0xXX> bytes, then unk
  // (consecutive unks fused when fuse_unk); without an unk token the char is dropped.
  int32_t pending_unk = -1;
  for (size_t pos = 0; pos < word.size();) {
    char32_t cp;
    size_t bad;
    size_t n = decode_utf8(word, pos, cp, bad);
    if (n == 0) n = bad, cp = kReplacementChar;
    const std::string_view ch = word.substr(pos, n);
    pos += n;
    int32_t id = cp < 512 ? small_char_ids_[cp] : index_.find(ch);
    if (id >= 0) {
      if (pending_unk >= 0) add(pending_unk), pending_unk = -1;
      add(id);
      continue;
    }
    if (options_.byte_fallback &&
        std::all_of(ch.begin(), ch.end(), [&](char b) { return byte_ids_[uint8_t(b)] >= 0; })) {
      for (const char b : ch) add(byte_ids_[static_cast<uint8_t>(b)]);
      continue;
    }
    if (options_.unk_token) {
      MIL_CHECK(unk_id_ >= 0, "{}: model.unk_token {:?} is not in model.vocab", origin_,
                *options_.unk_token);
      if (pending_unk >= 0 && !options_.fuse_unk) add(pending_unk);
      pending_unk = unk_id_;
    }
  }
  if (pending_unk >= 0) add(pending_unk);
  if (symbols.empty()) return;
  symbols.back().next = -1;

  auto worse = [](const Candidate& a, const Candidate& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  auto push = [&](uint32_t pos, int32_t left, int32_t right) {
    if (const MergeSlot* m = find_merge(left, right)) {
      heap.push_back({m->rank, pos, m->new_id});
      std::push_heap(heap.begin(), heap.end(), worse);
    }
  };
  for (size_t i = 0; i + 1 < symbols.size(); ++i) {
    if (const MergeSlot* m = find_merge(symbols[i].id, symbols[i + 1].id)) {
      heap.push_back({m->rank, static_cast<uint32_t>(i), m->new_id});
    }
  }
  std::make_heap(heap.begin(), heap.end(), worse);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), worse);
    const Candidate top = heap.back();
    heap.pop_back();
    Symbol& left = symbols[top.pos];
    if (!left.alive || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    const MergeSlot* m = find_merge(left.id, right.id);
    if (m == nullptr || m->new_id != top.new_id) continue;  // stale entry
    left.id = top.new_id;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = static_cast<int32_t>(top.pos);
    if (left.prev >= 0) push(static_cast<uint32_t>(left.prev), symbols[left.prev].id, left.id);
    if (left.next >= 0) push(top.pos, left.id, symbols[left.next].id);
  }
  for (const Symbol& s : symbols) {
    if (s.alive) out.push_back(s.id);
  }
}

}  // namespace mil::tok
