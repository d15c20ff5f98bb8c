// Normalizers: text -> text before pre-tokenization. Only the ones Llama-family tokenizers use
// (NFC, Prepend, Replace, Sequence); anything else is refused at load with the file and type, so
// a tokenizer never silently diverges from HF.
#pragma once

#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "tokenizer/regex.h"

namespace mil::tok {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void normalize(std::string& text) const = 0;
};

class NfcNormalizer final : public Normalizer {
 public:
  void normalize(std::string& text) const override;
};

class PrependNormalizer final : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prepend) : prepend_(std::move(prepend)) {}
  void normalize(std::string& text) const override;

 private:
  std::string prepend_;
};

// Replaces every non-overlapping match (a literal string or a regex) by `content`.
class ReplaceNormalizer final : public Normalizer {
 public:
  ReplaceNormalizer(std::string literal, std::unique_ptr<Regex> regex, std::string content)
      : literal_(std::move(literal)), regex_(std::move(regex)), content_(std::move(content)) {}
  void normalize(std::string& text) const override;

 private:
  std::string literal_;           // used when regex_ is null
  std::unique_ptr<Regex> regex_;
  std::string content_;
};

class SequenceNormalizer final : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> parts)
      : parts_(std::move(parts)) {}
  void normalize(std::string& text) const override;

 private:
  std::vector<std::unique_ptr<Normalizer>> parts_;
};

// The "normalizer" field of tokenizer.json; null -> nullptr. `origin` names the file.
std::unique_ptr<Normalizer> normalizer_from_json(const nlohmann::json& j, const std::string& origin);

// Shared by the normalizer, pre-tokenizer and decoder loaders: a {"String": s} or {"Regex": r}
// pattern. Returns the regex (null for a literal) and sets `literal`.
std::unique_ptr<Regex> pattern_from_json(const nlohmann::json& j, const std::string& origin,
                                         std::string& literal);

// Replace every occurrence of `from` in `text` (left to right, non-overlapping) by `to`.
void replace_all(std::string& text, std::string_view from, std::string_view to);

}  // namespace mil::tok
