// UTF-8 and the few Unicode properties the tokenizer needs. HF tokenizers is Rust: strings are
// valid UTF-8 and byte -> text conversions go through String::from_utf8_lossy, so these helpers
// reproduce that function's U+FFFD placement exactly (one U+FFFD per maximal invalid subpart).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace mil::tok {

inline constexpr char32_t kReplacementChar = 0xFFFD;
inline constexpr std::string_view kReplacementUtf8 = "\xEF\xBF\xBD";

// Decodes the code point at s[pos]. Returns its byte length (1..4), or 0 when the bytes there do
// not start a valid sequence; then `invalid_len` is the length of the maximal invalid subpart
// (what Rust's from_utf8_lossy replaces by one U+FFFD).
size_t decode_utf8(std::string_view s, size_t pos, char32_t& cp, size_t& invalid_len);

// Length of the valid UTF-8 sequence starting with byte `lead`, 0 for a continuation/invalid.
inline size_t utf8_len(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead < 0xC0) return 0;
  if (lead < 0xE0) return 2;
  if (lead < 0xF0) return 3;
  if (lead < 0xF8) return 4;
  return 0;
}

void append_utf8(std::string& out, char32_t cp);
bool is_valid_utf8(std::string_view s);
// String::from_utf8_lossy: invalid subparts become U+FFFD.
std::string utf8_lossy(std::string_view bytes);
void append_utf8_lossy(std::string& out, std::string_view bytes);

// True when `s` ends with an incomplete multi-byte sequence (a streaming decoder should wait).
bool ends_with_incomplete_utf8(std::string_view s);

// Unicode properties as the Rust side of HF tokenizers sees them.
bool is_white_space(char32_t cp);  // Unicode White_Space (Rust char::is_whitespace, regex \s)
bool is_word_char(char32_t cp);    // Rust regex \w: Alphabetic, M, Nd, Pc, Join_Control
bool is_numeric(char32_t cp);      // Rust char::is_numeric: general category N (Nd, Nl, No)

}  // namespace mil::tok
