// Pre-tokenizers: split normalized text into the words the model encodes one by one, with HF's
// split semantics (pattern matches -> behavior -> empty pieces dropped).
#pragma once

#include <array>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/regex.h"

namespace mil::tok {

// One word in flight. at_start: the piece begins at offset 0 of the original input (Metaspace's
// prepend_scheme "first" looks at that).
struct Piece {
  std::string text;
  bool at_start = false;
};

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Replaces `pieces` by their splits; `scratch` is reusable storage.
  virtual void pre_tokenize(std::vector<Piece>& pieces, std::vector<Piece>& scratch) const = 0;
};

// GPT-2's byte -> printable character table (bytes_to_unicode), as UTF-8.
struct ByteLevelAlphabet {
  std::array<std::string, 256> byte_to_utf8;
  // char code point (< 324) -> byte, or -1.
  std::array<int16_t, 324> char_to_byte;
  static const ByteLevelAlphabet& get();
};

class ByteLevelPreTokenizer final : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, bool use_regex);
  void pre_tokenize(std::vector<Piece>& pieces, std::vector<Piece>& scratch) const override;

 private:
  bool add_prefix_space_;
  std::unique_ptr<Regex> regex_;  // null when use_regex is false
};

class SplitPreTokenizer final : public PreTokenizer {
 public:
  SplitPreTokenizer(std::string literal, std::unique_ptr<Regex> regex, SplitBehavior behavior,
                    bool invert);
  void pre_tokenize(std::vector<Piece>& pieces, std::vector<Piece>& scratch) const override;

 private:
  std::unique_ptr<Regex> regex_;  // a literal is compiled escaped, as HF does
  SplitBehavior behavior_;
  bool invert_;
  bool empty_literal_;  // HF: an empty String pattern matches nothing
};

class MetaspacePreTokenizer final : public PreTokenizer {
 public:
  enum class Prepend { kAlways, kFirst, kNever };
  MetaspacePreTokenizer(char32_t replacement, Prepend prepend, bool split);
  void pre_tokenize(std::vector<Piece>& pieces, std::vector<Piece>& scratch) const override;

 private:
  char32_t replacement_;
  std::string replacement_utf8_;
  Prepend prepend_;
  bool split_;
};

class DigitsPreTokenizer final : public PreTokenizer {
 public:
  explicit DigitsPreTokenizer(bool individual) : individual_(individual) {}
  void pre_tokenize(std::vector<Piece>& pieces, std::vector<Piece>& scratch) const override;

 private:
  bool individual_;
};

class SequencePreTokenizer final : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> parts)
      : parts_(std::move(parts)) {}
  void pre_tokenize(std::vector<Piece>& pieces, std::vector<Piece>& scratch) const override;

 private:
  std::vector<std::unique_ptr<PreTokenizer>> parts_;
};

// The "pre_tokenizer" field of tokenizer.json; null -> nullptr.
std::unique_ptr<PreTokenizer> pre_tokenizer_from_json(const nlohmann::json& j,
                                                      const std::string& origin);

// Regexes of HF's ByteLevel and of the Llama 3 / Qwen2 Split pre-tokenizers.
inline constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
inline constexpr std::string_view kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
inline constexpr std::string_view kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

}  // namespace mil::tok
