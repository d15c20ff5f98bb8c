// Splits template source into text and tag tokens, applying the whitespace rules that
// transformers configures (trim_blocks, lstrip_blocks) plus the explicit `-`/`+` markers.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace mil::chat_template {

// A parse failure at a source line; ChatTemplate adds the origin.
class SyntaxError : public std::runtime_error {
 public:
  SyntaxError(int line, const std::string& message) : std::runtime_error(message), line(line) {}
  int line;
};

enum class TokenType {
  kText,
  kBlockBegin,  // {%
  kBlockEnd,    // %}
  kVarBegin,    // {{
  kVarEnd,      // }}
  kName,
  kString,      // value holds the decoded string
  kInteger,
  kFloat,
  kOperator,
  kEnd,
};

struct Token {
  TokenType type = TokenType::kEnd;
  std::string value;
  int line = 1;
  int64_t integer = 0;
  double floating = 0;
};

std::vector<Token> tokenize(const std::string& source);

}  // namespace mil::chat_template
