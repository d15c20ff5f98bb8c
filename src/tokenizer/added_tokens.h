// Added tokens (special and not): split out of the text before the model sees it, as HF's
// AddedVocabulary does. Two matchers: tokens with normalized=false match the raw text, those with
// normalized=true match the normalized pieces (their patterns normalized the same way). Matching
// is leftmost-longest over a byte trie; lstrip/rstrip/single_word then adjust or drop matches.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace mil::tok {

struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool special = false;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
};

// A piece of input after added-token extraction: an added token id, or text for the model.
struct Segment {
  int32_t token = -1;  // >= 0: an added token
  size_t start = 0, end = 0;  // byte range in the string that was split
};

class AddedTokenMatcher {
 public:
  AddedTokenMatcher() = default;
  // patterns[i] is matched for tokens[i] (content, or content normalized).
  void build(const std::vector<const AddedToken*>& tokens, const std::vector<std::string>& patterns);
  bool empty() const { return tokens_.empty(); }

  // HF's find_matches: segments covering `text`, in order (empty text -> no segments).
  void split(std::string_view text, std::vector<Segment>& out) const;

 private:
  // Byte trie, children as sorted edge lists (few added tokens; memory over speed is fine).
  struct Node {
    std::vector<std::pair<uint8_t, int32_t>> edges;
    int32_t token = -1;  // index into tokens_ when a pattern ends here
  };
  int32_t child(int32_t node, uint8_t byte) const;
  std::vector<Node> nodes_;
  std::vector<const AddedToken*> tokens_;
  bool first_byte_[256] = {};
};

}  // namespace mil::tok
