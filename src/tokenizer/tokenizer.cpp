#include "tokenizer/tokenizer_impl.h"

#include "core/error.h"
#include "tokenizer/utf8.h"

namespace mil::tok {

TokenizerImpl::TokenizerImpl(TokenizerParts parts) : parts_(std::move(parts)) {
  MIL_CHECK(parts_.model != nullptr, "{}: no model", parts_.origin);
  vocab_size_ = parts_.model->size();
  for (const auto& t : parts_.added) vocab_size_ = std::max(vocab_size_, t.id + 1);
  added_by_id_.assign(static_cast<size_t>(vocab_size_), nullptr);
  special_.assign(static_cast<size_t>(vocab_size_), false);

  std::vector<const AddedToken*> raw, normalized;
  std::vector<std::string> raw_patterns, normalized_patterns;
  for (const auto& t : parts_.added) {
    MIL_CHECK(!t.content.empty(), "{}: added token {} has empty content", parts_.origin, t.id);
    MIL_CHECK(added_by_id_[t.id] == nullptr, "{}: added_tokens has id {} twice", parts_.origin,
              t.id);
    added_by_id_[t.id] = &t;
    added_by_content_.try_emplace(t.content, t.id);
    if (t.normalized) {
      std::string pattern = t.content;
      if (parts_.normalizer) parts_.normalizer->normalize(pattern);
      normalized.push_back(&t);
      normalized_patterns.push_back(std::move(pattern));
    } else {
      raw.push_back(&t);
      raw_patterns.push_back(t.content);
    }
  }
  raw_matcher_.build(raw, raw_patterns);
  normalized_matcher_.build(normalized, normalized_patterns);
  // HF's skip_special_tokens compares token strings, so a model token spelled like a special
  // token is skipped too.
  for (const auto& t : parts_.added) {
    if (!t.special) continue;
    special_[t.id] = true;
    const int32_t model_id = parts_.model->token_to_id(t.content);
    if (model_id >= 0) special_[model_id] = true;
  }
}

std::optional<int32_t> TokenizerImpl::token_to_id(std::string_view token) const {
  if (const auto it = added_by_content_.find(std::string(token)); it != added_by_content_.end()) {
    return it->second;
  }
  const int32_t id = parts_.model->token_to_id(token);
  if (id < 0) return std::nullopt;
  return id;
}

std::string_view TokenizerImpl::id_to_token(int32_t id) const {
  if (id < 0 || id >= vocab_size_) return {};
  if (const AddedToken* t = added_by_id_[id]) return t->content;
  return parts_.model->id_to_token(id);
}

void TokenizerImpl::encode_text(std::string& text, bool at_start,
                                std::vector<int32_t>& ids) const {
  if (parts_.normalizer) parts_.normalizer->normalize(text);
  thread_local std::vector<Piece> pieces, scratch;
  auto run_model = [&](std::string_view chunk, bool chunk_at_start) {
    if (chunk.empty()) return;
    pieces.clear();
    pieces.push_back({std::string(chunk), chunk_at_start});
    if (parts_.pre_tokenizer) parts_.pre_tokenizer->pre_tokenize(pieces, scratch);
    for (const auto& piece : pieces) parts_.model->encode_word(piece.text, ids);
  };
  if (normalized_matcher_.empty()) {
    run_model(text, at_start);
    return;
  }
  std::vector<Segment> segments;
  normalized_matcher_.split(text, segments);
  for (const auto& seg : segments) {
    if (seg.token >= 0) {
      ids.push_back(seg.token);
    } else {
      run_model(std::string_view(text).substr(seg.start, seg.end - seg.start),
                at_start && seg.start == 0);
    }
  }
}

std::vector<int32_t> TokenizerImpl::encode(std::string_view input, bool add_special_tokens) const {
  // Documented choice: invalid UTF-8 input bytes become U+FFFD (from_utf8_lossy), since HF only
  // ever sees valid strings.
  std::string sanitized;
  std::string_view text = input;
  if (!is_valid_utf8(input)) {
    sanitized = utf8_lossy(input);
    text = sanitized;
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  std::string chunk;
  if (raw_matcher_.empty()) {
    chunk.assign(text);
    encode_text(chunk, true, ids);
  } else {
    std::vector<Segment> segments;
    raw_matcher_.split(text, segments);
    for (const auto& seg : segments) {
      if (seg.token >= 0) {
        ids.push_back(seg.token);
        continue;
      }
      chunk.assign(text.substr(seg.start, seg.end - seg.start));
      encode_text(chunk, seg.start == 0, ids);
    }
  }
  if (add_special_tokens) parts_.post_processor.apply(ids);
  return ids;
}

std::string TokenizerImpl::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (const int32_t id : ids) {
    MIL_CHECK(id >= 0 && id < vocab_size_, "decode: token id {} is out of range [0, {})", id,
              vocab_size_);
    if (skip_special_tokens && special_[static_cast<size_t>(id)]) continue;
    const std::string_view token = id_to_token(id);
    if (token.empty()) continue;  // an id no token has: HF skips it
    tokens.emplace_back(token);
  }
  std::string out;
  if (parts_.decoder) {
    parts_.decoder->decode_chain(tokens);
    for (const auto& t : tokens) out += t;
  } else {
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i > 0) out += ' ';
      out += tokens[i];
    }
  }
  return out;
}

}  // namespace mil::tok
