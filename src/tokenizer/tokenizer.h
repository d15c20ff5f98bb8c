// Text <-> token ids, exactly as HF `tokenizers` does for the Llama family: byte-level BPE
// with a regex pre-tokenizer (Llama 3, Qwen2, SmolLM2) and SentencePiece-style BPE with
// byte fallback (Llama 2, Mistral). Loaded from tokenizer.json or a GGUF vocabulary.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace mil {

class GGUFFile;

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // HF tokenizer.json. Untrusted: errors name the file and the field. Components HF supports
  // but Llama-family tokenizers don't use (e.g. Lowercase, WordPiece) are refused, never ignored.
  static std::unique_ptr<Tokenizer> from_hf_json(const std::string& path);
  static std::unique_ptr<Tokenizer> from_hf_json_text(const std::string& text,
                                                      const std::string& source);
  // The tokenizer.ggml.* metadata of a GGUF file.
  static std::unique_ptr<Tokenizer> from_gguf(const GGUFFile& gguf);

  // add_special_tokens: apply the post-processor (BOS/EOS templates), as HF's default.
  // Invalid UTF-8 in `text` is replaced by U+FFFD (as String::from_utf8_lossy) before encoding.
  // decode throws mil::Error for an id outside [0, vocab_size()).
  virtual std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = true) const = 0;
  virtual std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const = 0;

  virtual int32_t vocab_size() const = 0;  // added tokens included
  virtual std::optional<int32_t> token_to_id(std::string_view token) const = 0;
  virtual std::string_view id_to_token(int32_t id) const = 0;  // "" when out of range
  virtual bool is_special(int32_t id) const = 0;
};

// Streaming detokenization: push ids one at a time and get back the text that became final,
// never a broken UTF-8 sequence. The concatenation of all pieces (and flush) equals
// decode(all ids). push() throws mil::Error for an id outside [0, vocab_size). flush() emits what
// was held back and resets the decoder for a new sequence.
class IncrementalDecoder {
 public:
  IncrementalDecoder(const Tokenizer& tokenizer, bool skip_special_tokens);
  std::string push(int32_t id);
  std::string flush();

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_;
  std::vector<int32_t> ids_;   // the window: ids before prefix_offset_ are dropped
  size_t prefix_offset_ = 0;   // first id of the window (its text was already emitted)
  size_t read_offset_ = 0;     // ids before this have had their text emitted
  std::string prefix_text_;    // decode(ids_[prefix_offset_, read_offset_))
};

}  // namespace mil
