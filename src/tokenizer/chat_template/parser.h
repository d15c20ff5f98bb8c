// Recursive-descent parser for the Jinja subset, following jinja2's grammar and operator
// precedence. Nesting is bounded so that hostile templates cannot exhaust the stack.
#pragma once

#include <string>

#include "tokenizer/chat_template/ast.h"

namespace mil::chat_template {

inline constexpr int kMaxParseNesting = 64;      // nested blocks, brackets, unary operators
inline constexpr int kMaxExpressionDepth = 256;  // height of one expression tree

// Throws SyntaxError (with the line) on invalid or unsupported syntax.
Body parse_template(const std::string& source);

}  // namespace mil::chat_template
