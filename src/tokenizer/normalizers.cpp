#include "tokenizer/normalizers.h"

#include <unicode/normalizer2.h>
#include <unicode/unistr.h>

#include <algorithm>

#include "tokenizer/json_util.h"

namespace mil::tok {

void NfcNormalizer::normalize(std::string& text) const {
  // ASCII is already NFC; most text is, so skip ICU's UTF-16 round trip when possible.
  if (std::all_of(text.begin(), text.end(), [](char c) { return (c & 0x80) == 0; })) return;
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* nfc = icu::Normalizer2::getNFCInstance(status);
  MIL_CHECK(U_SUCCESS(status), "ICU NFC normalizer unavailable: {}", u_errorName(status));
  const icu::UnicodeString input = icu::UnicodeString::fromUTF8(text);
  if (nfc->quickCheck(input, status) == UNORM_YES && U_SUCCESS(status)) return;
  status = U_ZERO_ERROR;
  const icu::UnicodeString output = nfc->normalize(input, status);
  MIL_CHECK(U_SUCCESS(status), "ICU NFC normalization failed: {}", u_errorName(status));
  text.clear();
  output.toUTF8String(text);
}

void PrependNormalizer::normalize(std::string& text) const {
  if (!text.empty()) text.insert(0, prepend_);  // HF leaves an empty string empty
}

void replace_all(std::string& text, std::string_view from, std::string_view to) {
  if (from.empty()) return;
  size_t pos = text.find(from);
  if (pos == std::string::npos) return;
  std::string out;
  out.reserve(text.size());
  size_t last = 0;
  while (pos != std::string::npos) {
    out.append(text, last, pos - last);
    out.append(to);
    last = pos + from.size();
    pos = text.find(from, last);
  }
  out.append(text, last, std::string::npos);
  text = std::move(out);
}

void ReplaceNormalizer::normalize(std::string& text) const {
  if (!regex_) {
    replace_all(text, literal_, content_);
    return;
  }
  std::vector<std::pair<size_t, size_t>> matches;
  regex_->find_all(text, matches);
  if (matches.empty()) return;
  std::string out;
  size_t last = 0;
  for (const auto& [start, end] : matches) {
    out.append(text, last, start - last);
    out.append(content_);
    last = end;
  }
  out.append(text, last, std::string::npos);
  text = std::move(out);
}

void SequenceNormalizer::normalize(std::string& text) const {
  for (const auto& part : parts_) part->normalize(text);
}

std::unique_ptr<Regex> pattern_from_json(const nlohmann::json& j, const std::string& origin,
                                         std::string& literal) {
  MIL_CHECK(j.is_object() && j.size() == 1,
            "{}: pattern must be {{\"String\": ...}} or {{\"Regex\": ...}}", origin);
  if (j.contains("String")) {
    MIL_CHECK(j["String"].is_string(), "{}: pattern.String must be a string", origin);
    literal = j["String"].get<std::string>();
    return nullptr;
  }
  if (j.contains("Regex")) {
    MIL_CHECK(j["Regex"].is_string(), "{}: pattern.Regex must be a string", origin);
    return std::make_unique<Regex>(j["Regex"].get<std::string>(), origin);
  }
  fail("{}: pattern must be {{\"String\": ...}} or {{\"Regex\": ...}}", origin);
}

std::unique_ptr<Normalizer> normalizer_from_json(const nlohmann::json& j,
                                                 const std::string& origin) {
  if (j.is_null()) return nullptr;
  const std::string where = "normalizer";
  const std::string type = json_type(j, origin, where);
  if (type == "NFC") return std::make_unique<NfcNormalizer>();
  if (type == "Prepend") {
    return std::make_unique<PrependNormalizer>(json_string(j, "prepend", origin, where));
  }
  if (type == "Replace") {
    std::string literal;
    auto regex = pattern_from_json(json_field(j, "pattern", origin, where), origin + " normalizer",
                                   literal);
    return std::make_unique<ReplaceNormalizer>(std::move(literal), std::move(regex),
                                               json_string(j, "content", origin, where));
  }
  if (type == "Sequence") {
    const auto& list = json_field(j, "normalizers", origin, where);
    MIL_CHECK(list.is_array(), "{}: normalizer.normalizers must be an array", origin);
    std::vector<std::unique_ptr<Normalizer>> parts;
    for (const auto& part : list) {
      if (auto n = normalizer_from_json(part, origin)) parts.push_back(std::move(n));
    }
    return std::make_unique<SequenceNormalizer>(std::move(parts));
  }
  fail("{}: normalizer type \"{}\" is not supported (supported: NFC, Prepend, Replace, Sequence)",
       origin, type);
}

}  // namespace mil::tok
