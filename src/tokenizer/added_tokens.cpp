#include "tokenizer/added_tokens.h"

#include <algorithm>

#include "tokenizer/utf8.h"

namespace mil::tok {

namespace {

// Code point ending at byte `end` (exclusive) of valid UTF-8 text.
char32_t last_char(std::string_view text, size_t end, size_t& start) {
  start = end - 1;
  while (start > 0 && (static_cast<uint8_t>(text[start]) & 0xC0) == 0x80) --start;
  char32_t cp = kReplacementChar;
  size_t bad;
  decode_utf8(text, start, cp, bad);
  return cp;
}

char32_t first_char(std::string_view text, size_t pos, size_t& len) {
  char32_t cp = kReplacementChar;
  size_t bad;
  len = decode_utf8(text, pos, cp, bad);
  if (len == 0) len = bad;
  return cp;
}

}  // namespace

void AddedTokenMatcher::build(const std::vector<const AddedToken*>& tokens,
                              const std::vector<std::string>& patterns) {
  nodes_.assign(1, Node{});
  tokens_ = tokens;
  std::fill(std::begin(first_byte_), std::end(first_byte_), false);
  for (size_t t = 0; t < tokens.size(); ++t) {
    const std::string& pattern = patterns[t];
    if (pattern.empty()) continue;  // matches nothing, as in HF's Aho-Corasick
    first_byte_[static_cast<uint8_t>(pattern[0])] = true;
    int32_t node = 0;
    for (const char c : pattern) {
      const auto b = static_cast<uint8_t>(c);
      int32_t next = child(node, b);
      if (next < 0) {
        next = static_cast<int32_t>(nodes_.size());
        auto& edges = nodes_[node].edges;
        edges.insert(std::lower_bound(edges.begin(), edges.end(), std::make_pair(b, int32_t{0})),
                     {b, next});
        nodes_.emplace_back();
      }
      node = next;
    }
    // Two tokens with one pattern: the first keeps it (either is a valid reading).
    if (nodes_[node].token < 0) nodes_[node].token = static_cast<int32_t>(t);
  }
}

int32_t AddedTokenMatcher::child(int32_t node, uint8_t byte) const {
  const auto& edges = nodes_[node].edges;
  const auto it = std::lower_bound(edges.begin(), edges.end(), std::make_pair(byte, int32_t{0}));
  return it != edges.end() && it->first == byte ? it->second : -1;
}

void AddedTokenMatcher::split(std::string_view text, std::vector<Segment>& out) const {
  if (text.empty()) return;
  size_t start_offset = 0;  // end of the previous segment
  size_t pos = 0;
  while (pos < text.size()) {
    // Leftmost-longest: the first position where some pattern matches, its longest match.
    if (!first_byte_[static_cast<uint8_t>(text[pos])]) {
      ++pos;
      continue;
    }
    int32_t node = 0, found = -1;
    size_t found_end = 0;
    for (size_t i = pos; i < text.size(); ++i) {
      node = child(node, static_cast<uint8_t>(text[i]));
      if (node < 0) break;
      if (nodes_[node].token >= 0) found = nodes_[node].token, found_end = i + 1;
    }
    if (found < 0) {
      ++pos;
      continue;
    }
    const AddedToken& token = *tokens_[found];
    size_t start = pos, stop = found_end;
    pos = found_end;  // matches never overlap, even when this one is discarded below
    if (token.single_word) {
      size_t ignored;
      const bool start_space = start == 0 || !is_word_char(last_char(text, start, ignored));
      const bool stop_space = stop == text.size() || !is_word_char(first_char(text, stop, ignored));
      if (!start_space || !stop_space) continue;
    }
    if (token.lstrip) {
      size_t s = start;
      while (s > 0) {
        size_t prev;
        if (!is_white_space(last_char(text, s, prev))) break;
        s = prev;
      }
      start = std::max(s, start_offset);  // spaces a previous match took stay with it
    }
    if (token.rstrip) {
      while (stop < text.size()) {
        size_t len;
        if (!is_white_space(first_char(text, stop, len))) break;
        stop += len;
      }
      pos = stop;
    }
    if (start < start_offset) continue;  // overlaps what an rstrip took (HF would misbehave)
    if (start_offset < start) out.push_back({-1, start_offset, start});
    out.push_back({token.id, start, stop});
    start_offset = stop;
  }
  if (start_offset != text.size()) out.push_back({-1, start_offset, text.size()});
}

}  // namespace mil::tok
