#include "tokenizer/decoders.h"

#include "tokenizer/json_util.h"
#include "tokenizer/normalizers.h"
#include "tokenizer/pre_tokenizers.h"
#include "tokenizer/utf8.h"

namespace mil::tok {

namespace {

std::u32string to_u32(std::string_view s) {
  std::u32string out;
  for (size_t pos = 0; pos < s.size();) {
    char32_t cp;
    size_t bad;
    size_t n = decode_utf8(s, pos, cp, bad);
    if (n == 0) n = bad, cp = kReplacementChar;
    out.push_back(cp);
    pos += n;
  }
  return out;
}

// Rust's u8::from_str_radix(s, 16) on two chars: an optional '+' then hex digits.
bool parse_hex_byte(std::string_view s, uint8_t& out) {
  if (!s.empty() && s[0] == '+') s.remove_prefix(1);
  if (s.empty()) return false;
  unsigned value = 0;
  for (const char c : s) {
    unsigned d;
    if (c >= '0' && c <= '9') {
      d = static_cast<unsigned>(c - '0');
    } else if (c >= 'a' && c <= 'f') {
      d = static_cast<unsigned>(c - 'a' + 10);
    } else if (c >= 'A' && c <= 'F') {
      d = static_cast<unsigned>(c - 'A' + 10);
    } else {
      return false;
    }
    value = value * 16 + d;
  }
  out = static_cast<uint8_t>(value);
  return true;
}

}  // namespace

void ByteLevelDecoder::decode_chain(std::vector<std::string>& tokens) const {
  const auto& alphabet = ByteLevelAlphabet::get();
  std::string bytes;
  for (const auto& token : tokens) {
    const size_t mark = bytes.size();
    bool ok = true;
    for (size_t pos = 0; pos < token.size();) {
      char32_t cp;
      size_t bad;
      const size_t n = decode_utf8(token, pos, cp, bad);
      if (n == 0 || cp >= alphabet.char_to_byte.size() || alphabet.char_to_byte[cp] < 0) {
        ok = false;
        break;
      }
      bytes.push_back(static_cast<char>(alphabet.char_to_byte[cp]));
      pos += n;
    }
    if (!ok) {
      bytes.resize(mark);
      bytes += token;
    }
  }
  tokens.assign(1, utf8_lossy(bytes));
}

void ByteFallbackDecoder::decode_chain(std::vector<std::string>& tokens) const {
  std::vector<std::string> out;
  out.reserve(tokens.size());
  std::string pending;
  auto flush = [&] {
    if (pending.empty()) return;
    if (is_valid_utf8(pending)) {
      out.push_back(pending);
    } else {
      for (size_t i = 0; i < pending.size(); ++i) out.emplace_back(kReplacementUtf8);
    }
    pending.clear();
  };
  for (auto& token : tokens) {
    uint8_t byte;
    if (token.size() == 6 && token.compare(0, 3, "<0x") == 0 && token[5] == '>' &&
        parse_hex_byte(std::string_view(token).substr(3, 2), byte)) {
      pending.push_back(static_cast<char>(byte));
      continue;
    }
    flush();
    out.push_back(std::move(token));
  }
  flush();
  tokens = std::move(out);
}

void FuseDecoder::decode_chain(std::vector<std::string>& tokens) const {
  std::string joined;
  for (const auto& t : tokens) joined += t;
  tokens.assign(1, std::move(joined));
}

void StripDecoder::decode_chain(std::vector<std::string>& tokens) const {
  for (auto& token : tokens) {
    const std::u32string chars = to_u32(token);
    size_t start_cut = 0;
    for (size_t i = 0; i < start_ && i < chars.size() && chars[i] == content_; ++i) start_cut = i + 1;
    size_t stop_cut = chars.size();
    for (size_t i = 0; i < stop_ && i < chars.size(); ++i) {
      const size_t index = chars.size() - i - 1;
      if (chars[index] != content_) break;
      stop_cut = index;
    }
    // HF would panic when the cuts cross (a token made only of `content`); give "" instead.
    std::string out;
    for (size_t i = start_cut; i < stop_cut; ++i) append_utf8(out, chars[i]);
    token = std::move(out);
  }
}

void ReplaceDecoder::decode_chain(std::vector<std::string>& tokens) const {
  for (auto& token : tokens) {
    if (!regex_) {
      replace_all(token, literal_, content_);
      continue;
    }
    std::vector<std::pair<size_t, size_t>> matches;
    regex_->find_all(token, matches);
    std::string out;
    size_t last = 0;
    for (const auto& [s, e] : matches) {
      out.append(token, last, s - last);
      out += content_;
      last = e;
    }
    out.append(token, last, std::string::npos);
    token = std::move(out);
  }
}

void MetaspaceDecoder::decode_chain(std::vector<std::string>& tokens) const {
  std::string rep;
  append_utf8(rep, replacement_);
  for (size_t i = 0; i < tokens.size(); ++i) {
    replace_all(tokens[i], rep, i == 0 && strip_first_ ? "" : " ");
  }
}

void SequenceDecoder::decode_chain(std::vector<std::string>& tokens) const {
  for (const auto& part : parts_) part->decode_chain(tokens);
}

std::unique_ptr<Decoder> decoder_from_json(const nlohmann::json& j, const std::string& origin) {
  if (j.is_null()) return nullptr;
  const std::string where = "decoder";
  const std::string type = json_type(j, origin, where);
  auto one_char = [&](const std::string& s, const char* field) {
    char32_t cp = 0;
    size_t bad = 0;
    MIL_CHECK(!s.empty() && decode_utf8(s, 0, cp, bad) == s.size(),
              "{}: decoder {}.{} must be one character", origin, type, field);
    return cp;
  };
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Strip") {
    return std::make_unique<StripDecoder>(one_char(json_string(j, "content", origin, where), "content"),
                                          json_uint(j, "start", 0, origin, where),
                                          json_uint(j, "stop", 0, origin, where));
  }
  if (type == "Replace") {
    std::string literal;
    auto regex = pattern_from_json(json_field(j, "pattern", origin, where), origin + " decoder",
                                   literal);
    return std::make_unique<ReplaceDecoder>(std::move(literal), std::move(regex),
                                            json_string(j, "content", origin, where));
  }
  if (type == "Metaspace") {
    const char32_t cp = one_char(json_string(j, "replacement", origin, where), "replacement");
    bool strip_first = json_bool(j, "add_prefix_space", true, origin, where);
    if (j.contains("prepend_scheme") && !j["prepend_scheme"].is_null()) {
      const std::string scheme = json_string(j, "prepend_scheme", origin, where);
      MIL_CHECK(scheme == "always" || scheme == "first" || scheme == "never",
                "{}: decoder Metaspace prepend_scheme \"{}\" is unknown", origin, scheme);
      strip_first = scheme != "never";
    }
    return std::make_unique<MetaspaceDecoder>(cp, strip_first);
  }
  if (type == "Sequence") {
    const auto& list = json_field(j, "decoders", origin, where);
    MIL_CHECK(list.is_array(), "{}: decoder.decoders must be an array", origin);
    std::vector<std::unique_ptr<Decoder>> parts;
    for (const auto& part : list) {
      if (auto d = decoder_from_json(part, origin)) parts.push_back(std::move(d));
    }
    return std::make_unique<SequenceDecoder>(std::move(parts));
  }
  fail("{}: decoder type \"{}\" is not supported (supported: ByteLevel, ByteFallback, Fuse, "
       "Strip, Replace, Metaspace, Sequence)",
       origin, type);
}

}  // namespace mil::tok
