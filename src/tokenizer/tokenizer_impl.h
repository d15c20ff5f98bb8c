// The one Tokenizer implementation: HF's pipeline (added tokens -> normalizer -> pre-tokenizer ->
// BPE -> post-processor; decoder back) assembled from parts by the tokenizer.json and GGUF
// loaders.
#pragma once

#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "tokenizer/added_tokens.h"
#include "tokenizer/bpe.h"
#include "tokenizer/decoders.h"
#include "tokenizer/normalizers.h"
#include "tokenizer/post_processor.h"
#include "tokenizer/pre_tokenizers.h"
#include "tokenizer/tokenizer.h"

namespace mil::tok {

struct TokenizerParts {
  std::string origin;  // file name, for errors
  std::unique_ptr<Normalizer> normalizer;
  std::unique_ptr<PreTokenizer> pre_tokenizer;
  std::unique_ptr<BpeModel> model;
  std::vector<AddedToken> added;
  PostProcessor post_processor;
  std::unique_ptr<Decoder> decoder;
};

class TokenizerImpl final : public Tokenizer {
 public:
  explicit TokenizerImpl(TokenizerParts parts);

  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const override;
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens) const override;
  int32_t vocab_size() const override { return vocab_size_; }
  std::optional<int32_t> token_to_id(std::string_view token) const override;
  std::string_view id_to_token(int32_t id) const override;
  bool is_special(int32_t id) const override {
    return id >= 0 && id < vocab_size_ && special_[static_cast<size_t>(id)];
  }

 private:
  void encode_text(std::string& text, bool at_start, std::vector<int32_t>& ids) const;

  TokenizerParts parts_;
  AddedTokenMatcher raw_matcher_;         // added tokens with normalized=false
  AddedTokenMatcher normalized_matcher_;  // normalized=true, matched after normalization
  std::unordered_map<std::string, int32_t> added_by_content_;
  std::vector<const AddedToken*> added_by_id_;  // id -> added token or null
  std::vector<bool> special_;                   // id -> decode(skip) drops it
  int32_t vocab_size_ = 0;
};

}  // namespace mil::tok
