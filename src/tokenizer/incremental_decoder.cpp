// Streaming detokenization, the TGI/vLLM prefix_offset/read_offset method: decode a short window
// of recent ids twice (without and with the new ones) and emit the difference. The window always
// starts at an id whose text was already emitted, so decoders that treat the first token
// specially (Metaspace, Strip) treat it the same in both decodes and the difference is exactly
// the new text. Text is held back while it ends in U+FFFD or an incomplete UTF-8 sequence: a
// later byte token may complete the character; runs of byte-fallback tokens are held whole.
#include "core/error.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace mil {

namespace {

bool is_byte_token(std::string_view token) {
  return token.size() == 6 && token.starts_with("<0x") && token.ends_with('>');
}

}  // namespace

IncrementalDecoder::IncrementalDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tokenizer_(tokenizer), skip_special_(skip_special_tokens) {}

std::string IncrementalDecoder::push(int32_t id) {
  MIL_CHECK(id >= 0 && id < tokenizer_.vocab_size(), "decode: token id {} is out of range [0, {})",
            id, tokenizer_.vocab_size());
  ids_.push_back(id);
  // HF's ByteFallback decodes a run of <0xXX> tokens as a whole: if the run turns out invalid,
  // every byte becomes U+FFFD, even a valid character at its start. So a run is final only once
  // a token of another kind follows it (or at flush).
  if (is_byte_token(tokenizer_.id_to_token(id))) return {};
  const std::span<const int32_t> window(ids_.data() + prefix_offset_, ids_.size() - prefix_offset_);
  std::string text = tokenizer_.decode(window, skip_special_);
  if (text.size() <= prefix_text_.size() || text.compare(0, prefix_text_.size(), prefix_text_) != 0) {
    return {};  // nothing new yet (or a decoder rewrote the window: wait for more context)
  }
  const std::string_view tail = std::string_view(text).substr(prefix_text_.size());
  if (tail.ends_with(tok::kReplacementUtf8) || tok::ends_with_incomplete_utf8(tail)) return {};
  std::string piece(tail);
  // Slide the window: it now starts at the first id of the piece just emitted.
  prefix_offset_ = read_offset_;
  read_offset_ = ids_.size();
  prefix_text_ = tokenizer_.decode(
      std::span<const int32_t>(ids_.data() + prefix_offset_, read_offset_ - prefix_offset_),
      skip_special_);
  // Ids before the window are never decoded again; drop them so memory stays bounded.
  if (prefix_offset_ > 0) {
    ids_.erase(ids_.begin(), ids_.begin() + static_cast<ptrdiff_t>(prefix_offset_));
    read_offset_ -= prefix_offset_;
    prefix_offset_ = 0;
  }
  return piece;
}

std::string IncrementalDecoder::flush() {
  std::string piece;
  if (read_offset_ < ids_.size()) {
    const std::string text = tokenizer_.decode(
        std::span<const int32_t>(ids_.data() + prefix_offset_, ids_.size() - prefix_offset_),
        skip_special_);
    if (text.size() > prefix_text_.size() &&
        text.compare(0, prefix_text_.size(), prefix_text_) == 0) {
      piece = text.substr(prefix_text_.size());
    }
  }
  ids_.clear();
  prefix_offset_ = read_offset_ = 0;
  prefix_text_.clear();
  return piece;
}

}  // namespace mil
