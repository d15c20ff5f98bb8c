#include "tokenizer/chat_template/lexer.h"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <limits>

#include "tokenizer/chat_template/value.h"

namespace mil::chat_template {

namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_name_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool is_name_char(char c) { return is_name_start(c) || is_digit(c); }

int count_newlines(const std::string& s, size_t begin, size_t end) {
  return static_cast<int>(std::count(s.begin() + static_cast<std::ptrdiff_t>(begin),
                                     s.begin() + static_cast<std::ptrdiff_t>(end), '\n'));
}

// jinja2 reads templates with universal newlines and drops one trailing newline
// (keep_trailing_newline=False).
std::string normalize_newlines(const std::string& source) {
  std::string out;
  out.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      out += '\n';
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      out += source[i];
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

// Python's unicode-escape decoding of a string literal's body.
std::string decode_string(const std::string& body, int line) {
  std::string out;
  for (size_t i = 0; i < body.size(); ++i) {
    char c = body[i];
    if (c != '\\' || i + 1 == body.size()) {
      out += c;
      continue;
    }
    char e = body[++i];
    auto hex = [&](size_t digits) {
      uint32_t cp = 0;
      for (size_t k = 1; k <= digits; ++k) {
        if (i + k >= body.size()) throw SyntaxError(line, "truncated escape in string literal");
        char h = body[i + k];
        int d = is_digit(h) ? h - '0' : (h >= 'a' && h <= 'f') ? h - 'a' + 10 : (h >= 'A' && h <= 'F') ? h - 'A' + 10 : -1;
        if (d < 0) throw SyntaxError(line, "truncated escape in string literal");
        cp = cp * 16 + static_cast<uint32_t>(d);
      }
      i += digits;
      if (cp > 0x10ffff) throw SyntaxError(line, "illegal Unicode character in string literal");
      append_utf8(out, cp);
    };
    switch (e) {
      case '\\': out += '\\'; break;
      case '\'': out += '\''; break;
      case '"': out += '"'; break;
      case 'a': out += '\a'; break;
      case 'b': out += '\b'; break;
      case 'f': out += '\f'; break;
      case 'n': out += '\n'; break;
      case 'r': out += '\r'; break;
      case 't': out += '\t'; break;
      case 'v': out += '\v'; break;
      case '\n': break;  // line continuation
      case 'x': hex(2); break;
      case 'u': hex(4); break;
      case 'U': hex(8); break;
      case 'N': throw SyntaxError(line, "unsupported \\N{...} escape in string literal");
      default:
        if (e >= '0' && e <= '7') {
          uint32_t cp = static_cast<uint32_t>(e - '0');
          for (int k = 0; k < 2 && i + 1 < body.size() && body[i + 1] >= '0' && body[i + 1] <= '7'; ++k) {
            cp = cp * 8 + static_cast<uint32_t>(body[++i] - '0');
          }
          append_utf8(out, cp);
        } else {
          out += '\\';
          out += e;
        }
    }
  }
  return out;
}

class Lexer {
 public:
  explicit Lexer(const std::string& source) : src_(normalize_newlines(source)) {}

  std::vector<Token> run() {
    while (pos_ < src_.size()) {
      size_t tag = find_tag(pos_);
      if (tag == std::string::npos) {
        emit_text(src_.substr(pos_), line_);
        line_ += count_newlines(src_, pos_, src_.size());
        pos_ = src_.size();
        break;
      }
      lex_tag(tag);
    }
    push(TokenType::kEnd, "");
    return std::move(tokens_);
  }

 private:
  size_t find_tag(size_t from) const {
    for (size_t i = src_.find('{', from); i != std::string::npos; i = src_.find('{', i + 1)) {
      if (i + 1 < src_.size() && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#')) return i;
    }
    return std::string::npos;
  }

  void push(TokenType type, std::string value) {
    Token t;
    t.type = type;
    t.value = std::move(value);
    t.line = line_;
    tokens_.push_back(std::move(t));
  }

  void emit_text(std::string text, int line) {
    if (text.empty()) return;
    Token t;
    t.type = TokenType::kText;
    t.value = std::move(text);
    t.line = line;
    tokens_.push_back(std::move(t));
  }

  // Text before a tag, after the tag's left whitespace rule.
  void emit_leading_text(size_t tag, char kind, char marker) {
    std::string text = src_.substr(pos_, tag - pos_);
    if (marker == '-') {
      size_t end = text.size();
      while (end > 0 && is_space(text[end - 1])) --end;
      text.resize(end);
    } else if (marker != '+' && kind != '{') {
      // lstrip_blocks: spaces and tabs between the start of a line and a block or comment.
      size_t line_start = text.rfind('\n');
      line_start = line_start == std::string::npos ? 0 : line_start + 1;
      bool at_line_start = line_start > 0 || pos_ == 0 || src_[pos_ - 1] == '\n';
      if (at_line_start && text.find_first_not_of(" \t", line_start) == std::string::npos) {
        text.resize(line_start);
      }
    }
    emit_text(std::move(text), line_);
    line_ += count_newlines(src_, pos_, tag);
  }

  // After a closing `-%}` everything blank goes; after `%}` (trim_blocks) one newline.
  void after_tag_end(bool strip, bool trim_newline) {
    if (strip) {
      while (pos_ < src_.size() && is_space(src_[pos_])) {
        if (src_[pos_] == '\n') ++line_;
        ++pos_;
      }
    } else if (trim_newline && pos_ < src_.size() && src_[pos_] == '\n') {
      ++line_;
      ++pos_;
    }
  }

  void lex_tag(size_t tag) {
    char kind = src_[tag + 1];
    size_t after = tag + 2;
    char marker = after < src_.size() && (src_[after] == '-' || src_[after] == '+') ? src_[after] : 0;
    if (marker == '+' && kind == '{') marker = 0;  // `{{+x}}` is a unary plus
    emit_leading_text(tag, kind, marker);
    pos_ = after + (marker ? 1 : 0);
    if (kind == '#') return lex_comment();
    if (kind == '%' && lex_raw()) return;
    push(kind == '%' ? TokenType::kBlockBegin : TokenType::kVarBegin, "");
    lex_expression_tokens(kind == '%');
  }

  void lex_comment() {
    size_t end = src_.find("#}", pos_);
    if (end == std::string::npos) throw SyntaxError(line_, "unterminated comment");
    bool strip = end > pos_ && src_[end - 1] == '-';
    bool keep = end > pos_ && src_[end - 1] == '+';
    line_ += count_newlines(src_, pos_, end);
    pos_ = end + 2;
    after_tag_end(strip, !keep);
  }

  // {% raw %}...{% endraw %}: the body is text, tags inside it are not interpreted.
  bool lex_raw() {
    size_t p = pos_;
    while (p < src_.size() && is_space(src_[p])) ++p;
    if (src_.compare(p, 3, "raw") != 0 || (p + 3 < src_.size() && is_name_char(src_[p + 3]))) return false;
    p += 3;
    while (p < src_.size() && is_space(src_[p])) ++p;
    bool strip_after = false;
    if (p < src_.size() && (src_[p] == '-' || src_[p] == '+')) strip_after = src_[p++] == '-';
    if (src_.compare(p, 2, "%}") != 0) throw SyntaxError(line_, "expected '%}' after 'raw'");
    line_ += count_newlines(src_, pos_, p);
    pos_ = p + 2;
    after_tag_end(strip_after, false);  // jinja2 keeps the newline after {% raw %}
    for (size_t q = src_.find("{%", pos_); q != std::string::npos; q = src_.find("{%", q + 1)) {
      size_t r = q + 2;
      bool strip_before = r < src_.size() && src_[r] == '-';
      if (r < src_.size() && (src_[r] == '-' || src_[r] == '+')) ++r;
      while (r < src_.size() && is_space(src_[r])) ++r;
      if (src_.compare(r, 6, "endraw") != 0) continue;
      r += 6;
      while (r < src_.size() && is_space(src_[r])) ++r;
      bool strip_end = false;
      if (r < src_.size() && (src_[r] == '-' || src_[r] == '+')) strip_end = src_[r++] == '-';
      if (src_.compare(r, 2, "%}") != 0) continue;
      emit_leading_text(q, '%', strip_before ? '-' : 0);
      line_ += count_newlines(src_, q, r);
      pos_ = r + 2;
      after_tag_end(strip_end, true);
      return true;
    }
    throw SyntaxError(line_, "missing '{% endraw %}'");
  }

  bool try_end(bool block, int depth) {
    if (depth > 0) return false;
    const char* close = block ? "%}" : "}}";
    char marker = src_[pos_] == '-' || (block && src_[pos_] == '+') ? src_[pos_] : 0;
    size_t at = pos_ + (marker ? 1 : 0);
    if (src_.compare(at, 2, close) != 0) return false;
    push(block ? TokenType::kBlockEnd : TokenType::kVarEnd, "");
    pos_ = at + 2;
    after_tag_end(marker == '-', block && marker != '+');
    return true;
  }

  void lex_expression_tokens(bool block) {
    int depth = 0;
    static const char* const kOperators[] = {"//", "**", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%",
                                              "~",  "<",  ">",  "(",  ")",  "[",  "]", "{", "}", ",", ".",
                                              ":",  "|",  "=",  ";"};
    while (true) {
      while (pos_ < src_.size() && is_space(src_[pos_])) {
        if (src_[pos_] == '\n') ++line_;
        ++pos_;
      }
      if (pos_ >= src_.size()) throw SyntaxError(line_, block ? "missing '%}' closing a tag" : "missing '}}' closing an expression");
      if (try_end(block, depth)) return;
      char c = src_[pos_];
      if (is_name_start(c)) {
        size_t end = pos_;
        while (end < src_.size() && is_name_char(src_[end])) ++end;
        push(TokenType::kName, src_.substr(pos_, end - pos_));
        pos_ = end;
      } else if (is_digit(c)) {
        lex_number();
      } else if (c == '\'' || c == '"') {
        lex_string(c);
      } else {
        bool matched = false;
        for (const char* op : kOperators) {
          size_t len = std::char_traits<char>::length(op);
          if (src_.compare(pos_, len, op) == 0) {
            std::string value(op);
            if (value == "(" || value == "[" || value == "{") ++depth;
            if ((value == ")" || value == "]" || value == "}") && depth > 0) --depth;
            push(TokenType::kOperator, value);
            pos_ += len;
            matched = true;
            break;
          }
        }
        if (!matched) throw SyntaxError(line_, fmt::format("unexpected character '{}'", c));
      }
    }
  }

  void lex_number() {
    auto digits = [&](size_t p) {
      while (p < src_.size() && (is_digit(src_[p]) || (src_[p] == '_' && p + 1 < src_.size() && is_digit(src_[p + 1])))) ++p;
      return p;
    };
    size_t end = digits(pos_);
    bool is_float = false;
    // `x.0.1` is attribute access: a number right after a dot never has a fraction.
    bool after_dot = pos_ > 0 && src_[pos_ - 1] == '.';
    if (!after_dot && end + 1 < src_.size() && src_[end] == '.' && is_digit(src_[end + 1])) {
      end = digits(end + 1);
      is_float = true;
    }
    if (!after_dot && end < src_.size() && (src_[end] == 'e' || src_[end] == 'E')) {
      size_t p = end + 1;
      if (p < src_.size() && (src_[p] == '+' || src_[p] == '-')) ++p;
      if (p < src_.size() && is_digit(src_[p])) {
        end = digits(p);
        is_float = true;
      }
    }
    std::string text;
    for (size_t i = pos_; i < end; ++i) {
      if (src_[i] != '_') text += src_[i];
    }
    Token t;
    t.line = line_;
    t.value = text;
    if (is_float) {
      t.type = TokenType::kFloat;
      t.floating = std::strtod(text.c_str(), nullptr);
    } else {
      t.type = TokenType::kInteger;
      errno = 0;
      unsigned long long v = std::strtoull(text.c_str(), nullptr, 10);
      if (errno == ERANGE || v > static_cast<unsigned long long>(std::numeric_limits<int64_t>::max())) {
        throw SyntaxError(line_, "integer literal too large");
      }
      t.integer = static_cast<int64_t>(v);
    }
    tokens_.push_back(std::move(t));
    pos_ = end;
  }

  void lex_string(char quote) {
    size_t p = pos_ + 1;
    while (p < src_.size() && src_[p] != quote) p += src_[p] == '\\' ? 2 : 1;
    if (p >= src_.size()) throw SyntaxError(line_, "unterminated string literal");
    int start_line = line_;
    std::string body = src_.substr(pos_ + 1, p - pos_ - 1);
    line_ += count_newlines(src_, pos_, p);
    Token t;
    t.type = TokenType::kString;
    t.line = start_line;
    t.value = decode_string(body, start_line);
    tokens_.push_back(std::move(t));
    pos_ = p + 1;
  }

  std::string src_;
  size_t pos_ = 0;
  int line_ = 1;
  std::vector<Token> tokens_;
};

}  // namespace

std::vector<Token> tokenize(const std::string& source) { return Lexer(source).run(); }

}  // namespace mil::chat_template
