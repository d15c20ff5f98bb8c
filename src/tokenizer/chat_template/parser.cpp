#include "tokenizer/chat_template/parser.h"

#include <fmt/format.h>

#include <algorithm>
#include <initializer_list>
#include <vector>

#include "tokenizer/chat_template/builtins.h"
#include "tokenizer/chat_template/lexer.h"

namespace mil::chat_template {

namespace {

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : tokens_(std::move(tokens)) {}

  Body parse() {
    std::string found;
    Body body = parse_body({}, &found);
    return body;
  }

 private:
  // RAII counter of the current nesting, failing past kMaxParseNesting.
  class Nest {
   public:
    Nest(Parser& p, int line) : p_(p) {
      if (++p_.nesting_ > kMaxParseNesting) {
        throw SyntaxError(line, fmt::format("template exceeded the nesting limit ({})", kMaxParseNesting));
      }
    }
    ~Nest() { --p_.nesting_; }
    Nest(const Nest&) = delete;
    Nest& operator=(const Nest&) = delete;

   private:
    Parser& p_;
  };

  const Token& cur() const { return tokens_[i_]; }
  const Token& peek(size_t n = 1) const { return tokens_[std::min(i_ + n, tokens_.size() - 1)]; }
  const Token& next() {
    const Token& t = tokens_[i_];
    if (i_ + 1 < tokens_.size()) ++i_;
    return t;
  }
  bool is_op(const char* op) const { return cur().type == TokenType::kOperator && cur().value == op; }
  bool is_name(const char* name) const { return cur().type == TokenType::kName && cur().value == name; }
  bool accept_op(const char* op) {
    if (!is_op(op)) return false;
    next();
    return true;
  }
  bool accept_name(const char* name) {
    if (!is_name(name)) return false;
    next();
    return true;
  }

  static std::string describe(const Token& t) {
    switch (t.type) {
      case TokenType::kText: return "text";
      case TokenType::kBlockBegin: return "'{%'";
      case TokenType::kBlockEnd: return "end of tag '%}'";
      case TokenType::kVarBegin: return "'{{'";
      case TokenType::kVarEnd: return "end of expression '}}'";
      case TokenType::kEnd: return "end of template";
      case TokenType::kString: return "string literal";
      default: return "'" + t.value + "'";
    }
  }
  [[noreturn]] void unexpected(const std::string& expected) const {
    throw SyntaxError(cur().line, fmt::format("unexpected {}, expected {}", describe(cur()), expected));
  }
  void expect_op(const char* op) {
    if (!accept_op(op)) unexpected(fmt::format("'{}'", op));
  }
  std::string expect_name() {
    if (cur().type != TokenType::kName) unexpected("a name");
    return next().value;
  }
  void expect_block_end() {
    if (cur().type != TokenType::kBlockEnd) unexpected("end of tag '%}'");
    next();
  }

  ExprPtr node(ExprKind kind, int line, std::vector<ExprPtr> children = {}) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->line = line;
    e->children = std::move(children);
    finish(*e);
    return e;
  }
  // Records the tree height, which bounds the evaluator's recursion.
  void finish(Expr& e) {
    int depth = 0;
    for (const auto& c : e.children) {
      if (c) depth = std::max(depth, c->depth);
    }
    for (const auto& [name, c] : e.kwargs) depth = std::max(depth, c->depth);
    e.depth = depth + 1;
    if (e.depth > kMaxExpressionDepth) {
      throw SyntaxError(e.line, fmt::format("template exceeded the expression depth limit ({})", kMaxExpressionDepth));
    }
  }

  // ---- statements ----

  Body parse_body(std::initializer_list<const char*> end_tags, std::string* found) {
    Body body;
    while (true) {
      const Token& t = cur();
      if (t.type == TokenType::kEnd) {
        if (end_tags.size() == 0) return body;
        std::string names;
        for (const char* tag : end_tags) names += fmt::format("{}'{}'", names.empty() ? "" : " or ", tag);
        throw SyntaxError(t.line, "unexpected end of template, expected " + names);
      }
      if (t.type == TokenType::kText) {
        auto s = std::make_unique<Stmt>();
        s->kind = StmtKind::kText;
        s->line = t.line;
        s->text = t.value;
        body.push_back(std::move(s));
        next();
      } else if (t.type == TokenType::kVarBegin) {
        next();
        auto s = std::make_unique<Stmt>();
        s->kind = StmtKind::kOutput;
        s->line = t.line;
        s->expr = parse_tuple(true);
        if (cur().type != TokenType::kVarEnd) unexpected("end of expression '}}'");
        next();
        body.push_back(std::move(s));
      } else if (t.type == TokenType::kBlockBegin) {
        const Token& name = peek();
        if (name.type == TokenType::kName &&
            std::any_of(end_tags.begin(), end_tags.end(), [&](const char* tag) { return name.value == tag; })) {
          next();
          *found = next().value;
          return body;
        }
        next();
        body.push_back(parse_statement());
      } else {
        unexpected("text or a tag");
      }
    }
  }

  // Parses a body that ends with `end_tag` (consumed, with its '%}').
  Body parse_block_body(const char* end_tag) {
    std::string found;
    Body body = parse_body({end_tag}, &found);
    expect_block_end();
    return body;
  }

  StmtPtr parse_statement() {
    int line = cur().line;
    if (cur().type != TokenType::kName) unexpected("a tag name");
    std::string tag = next().value;
    Nest nest(*this, line);
    auto s = std::make_unique<Stmt>();
    s->line = line;
    if (tag == "if") {
      parse_if(*s);
    } else if (tag == "for") {
      parse_for(*s);
    } else if (tag == "set") {
      parse_set(*s);
    } else if (tag == "macro") {
      parse_macro(*s);
    } else if (tag == "filter") {
      s->kind = StmtKind::kFilterBlock;
      s->filter = parse_filters(node(ExprKind::kBlockValue, line), false);
      expect_block_end();
      s->body = parse_block_body("endfilter");
    } else if (tag == "with") {
      s->kind = StmtKind::kScope;
      while (cur().type != TokenType::kBlockEnd) {
        if (!s->assignments.empty()) expect_op(",");
        std::string name = expect_name();
        expect_op("=");
        s->assignments.emplace_back(name, parse_expression(true));
      }
      expect_block_end();
      s->body = parse_block_body("endwith");
    } else if (tag == "generation") {
      // transformers' extension marking assistant text; rendering just emits the body.
      s->kind = StmtKind::kScope;
      expect_block_end();
      s->body = parse_block_body("endgeneration");
    } else if (tag == "break" || tag == "continue") {
      if (loop_depth_ == 0) throw SyntaxError(line, fmt::format("'{}' outside of a for loop", tag));
      s->kind = tag == "break" ? StmtKind::kBreak : StmtKind::kContinue;
      expect_block_end();
    } else if (tag == "call") {
      throw SyntaxError(line, "unsupported tag 'call' (call blocks are not supported)");
    } else if (tag.rfind("end", 0) == 0 || tag == "else" || tag == "elif") {
      throw SyntaxError(line, fmt::format("unexpected tag '{}'", tag));
    } else {
      throw SyntaxError(line, fmt::format("unsupported tag '{}'", tag));
    }
    return s;
  }

  void parse_if(Stmt& s) {
    s.kind = StmtKind::kIf;
    ExprPtr condition = parse_tuple(false);
    expect_block_end();
    while (true) {
      std::string found;
      Body body = parse_body({"elif", "else", "endif"}, &found);
      s.branches.emplace_back(std::move(condition), std::move(body));
      if (found == "elif") {
        condition = parse_tuple(false);
        expect_block_end();
        continue;
      }
      expect_block_end();
      if (found == "else") s.else_body = parse_block_body("endif");
      return;
    }
  }

  void parse_targets(Stmt& s) {
    bool parens = accept_op("(");
    do {
      if (parens && is_op(")")) break;
      s.targets.push_back(expect_name());
    } while (accept_op(","));
    if (parens) expect_op(")");
  }

  void parse_for(Stmt& s) {
    s.kind = StmtKind::kFor;
    parse_targets(s);
    if (!accept_name("in")) unexpected("'in'");
    s.expr = parse_tuple(false);
    if (accept_name("if")) s.condition = parse_expression(true);
    if (is_name("recursive")) throw SyntaxError(cur().line, "unsupported construct 'recursive' for loop");
    expect_block_end();
    ++loop_depth_;
    std::string found;
    s.body = parse_body({"else", "endfor"}, &found);
    --loop_depth_;
    expect_block_end();
    if (found == "else") s.else_body = parse_block_body("endfor");
  }

  void parse_set(Stmt& s) {
    int line = cur().line;
    std::string first = expect_name();
    if (accept_op(".")) {
      s.kind = StmtKind::kSet;
      s.targets.push_back(first);
      s.attribute = expect_name();
      expect_op("=");
      s.expr = parse_tuple(true);
      expect_block_end();
      return;
    }
    s.targets.push_back(first);
    while (accept_op(",")) s.targets.push_back(expect_name());
    if (accept_op("=")) {
      s.kind = StmtKind::kSet;
      s.expr = parse_tuple(true);
      expect_block_end();
      return;
    }
    if (s.targets.size() != 1) unexpected("'='");
    s.kind = StmtKind::kSetBlock;
    if (is_op("|")) s.filter = parse_filters(node(ExprKind::kBlockValue, line));
    expect_block_end();
    s.body = parse_block_body("endset");
  }

  void parse_macro(Stmt& s) {
    s.kind = StmtKind::kMacro;
    s.text = expect_name();
    expect_op("(");
    while (!is_op(")")) {
      if (!s.params.empty()) expect_op(",");
      if (is_op(")")) break;
      MacroParam p;
      p.name = expect_name();
      if (accept_op("=")) {
        p.default_value = parse_expression(true);
      } else if (!s.params.empty() && s.params.back().default_value) {
        throw SyntaxError(cur().line, "non-default argument follows default argument");
      }
      s.params.push_back(std::move(p));
    }
    expect_op(")");
    expect_block_end();
    // A macro body is its own function: loops around the definition do not enclose it.
    int saved_loops = loop_depth_;
    bool saved_varargs = uses_varargs_, saved_kwargs = uses_kwargs_;
    loop_depth_ = 0;
    uses_varargs_ = uses_kwargs_ = false;
    s.body = parse_block_body("endmacro");
    s.uses_varargs = uses_varargs_;
    s.uses_kwargs = uses_kwargs_;
    loop_depth_ = saved_loops;
    uses_varargs_ = saved_varargs;
    uses_kwargs_ = saved_kwargs;
  }

  // ---- expressions ----

  bool at_tuple_end() const {
    return cur().type == TokenType::kBlockEnd || cur().type == TokenType::kVarEnd || is_op(")") ||
           cur().type == TokenType::kEnd || is_name("if") || is_name("recursive");
  }

  // `a, b` without brackets is a tuple (in {{ }}, set values and for iterables).
  ExprPtr parse_tuple(bool with_condition) {
    int line = cur().line;
    ExprPtr first = parse_expression(with_condition);
    if (!is_op(",")) return first;
    std::vector<ExprPtr> items;
    items.push_back(std::move(first));
    while (accept_op(",")) {
      if (at_tuple_end()) break;
      items.push_back(parse_expression(with_condition));
    }
    return node(ExprKind::kTuple, line, std::move(items));
  }

  ExprPtr parse_expression(bool with_condition) {
    Nest nest(*this, cur().line);
    return with_condition ? parse_condition() : parse_or();
  }

  ExprPtr parse_condition() {
    ExprPtr expr = parse_or();
    while (is_name("if")) {
      int line = next().line;
      std::vector<ExprPtr> children;
      children.push_back(std::move(expr));
      children.push_back(parse_or());
      children.push_back(accept_name("else") ? parse_condition() : nullptr);
      expr = node(ExprKind::kCondition, line, std::move(children));
    }
    return expr;
  }

  ExprPtr binary(ExprKind kind, int line, ExprPtr left, ExprPtr right) {
    std::vector<ExprPtr> children;
    children.push_back(std::move(left));
    children.push_back(std::move(right));
    return node(kind, line, std::move(children));
  }

  ExprPtr parse_or() {
    ExprPtr left = parse_and();
    while (is_name("or")) {
      int line = next().line;
      left = binary(ExprKind::kOr, line, std::move(left), parse_and());
    }
    return left;
  }

  ExprPtr parse_and() {
    ExprPtr left = parse_not();
    while (is_name("and")) {
      int line = next().line;
      left = binary(ExprKind::kAnd, line, std::move(left), parse_not());
    }
    return left;
  }

  ExprPtr parse_not() {
    if (is_name("not")) {
      int line = next().line;
      Nest nest(*this, line);
      std::vector<ExprPtr> children;
      children.push_back(parse_not());
      return node(ExprKind::kNot, line, std::move(children));
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    int line = cur().line;
    ExprPtr first = parse_math1();
    std::vector<ExprPtr> operands;
    std::vector<CompareOp> ops;
    while (true) {
      static const std::pair<const char*, CompareOp> kOps[] = {
          {"==", CompareOp::kEq}, {"!=", CompareOp::kNe}, {"<", CompareOp::kLt},
          {"<=", CompareOp::kLe}, {">", CompareOp::kGt},  {">=", CompareOp::kGe}};
      bool matched = false;
      for (const auto& [text, op] : kOps) {
        if (accept_op(text)) {
          ops.push_back(op);
          matched = true;
          break;
        }
      }
      if (!matched) {
        if (accept_name("in")) {
          ops.push_back(CompareOp::kIn);
        } else if (is_name("not") && peek().type == TokenType::kName && peek().value == "in") {
          next();
          next();
          ops.push_back(CompareOp::kNotIn);
        } else {
          break;
        }
      }
      operands.push_back(parse_math1());
    }
    if (ops.empty()) return first;
    operands.insert(operands.begin(), std::move(first));
    ExprPtr e = node(ExprKind::kCompare, line, std::move(operands));
    e->compare_ops = std::move(ops);
    return e;
  }

  ExprPtr binary_op(BinaryOp op, int line, ExprPtr left, ExprPtr right) {
    ExprPtr e = binary(ExprKind::kBinary, line, std::move(left), std::move(right));
    e->binary_op = op;
    return e;
  }

  ExprPtr parse_math1() {
    ExprPtr left = parse_concat();
    while (is_op("+") || is_op("-")) {
      int line = cur().line;
      BinaryOp op = next().value == "+" ? BinaryOp::kAdd : BinaryOp::kSub;
      left = binary_op(op, line, std::move(left), parse_concat());
    }
    return left;
  }

  ExprPtr parse_concat() {
    ExprPtr left = parse_math2();
    while (is_op("~")) {
      int line = next().line;
      left = binary_op(BinaryOp::kConcat, line, std::move(left), parse_math2());
    }
    return left;
  }

  ExprPtr parse_math2() {
    ExprPtr left = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      int line = cur().line;
      const std::string& text = next().value;
      BinaryOp op = text == "*" ? BinaryOp::kMul : text == "/" ? BinaryOp::kDiv : text == "//" ? BinaryOp::kFloorDiv : BinaryOp::kMod;
      left = binary_op(op, line, std::move(left), parse_pow());
    }
    return left;
  }

  ExprPtr parse_pow() {
    ExprPtr left = parse_unary(true);
    while (is_op("**")) {
      int line = next().line;
      left = binary_op(BinaryOp::kPow, line, std::move(left), parse_unary(true));
    }
    return left;
  }

  ExprPtr parse_unary(bool with_filter) {
    int line = cur().line;
    ExprPtr e;
    if (is_op("-") || is_op("+")) {
      bool negative = next().value == "-";
      Nest nest(*this, line);
      std::vector<ExprPtr> children;
      children.push_back(parse_unary(false));
      e = node(negative ? ExprKind::kNeg : ExprKind::kPos, line, std::move(children));
    } else {
      e = parse_primary();
    }
    e = parse_postfix(std::move(e));
    if (with_filter) e = parse_filter_expr(std::move(e));
    return e;
  }

  ExprPtr literal(Value v, int line) {
    ExprPtr e = node(ExprKind::kLiteral, line);
    e->literal = std::move(v);
    return e;
  }

  ExprPtr parse_primary() {
    const Token& t = cur();
    int line = t.line;
    switch (t.type) {
      case TokenType::kName: {
        std::string name = next().value;
        if (name == "true" || name == "True") return literal(Value::boolean(true), line);
        if (name == "false" || name == "False") return literal(Value::boolean(false), line);
        if (name == "none" || name == "None") return literal(Value::none(), line);
        if (name == "varargs") uses_varargs_ = true;
        if (name == "kwargs") uses_kwargs_ = true;
        ExprPtr e = node(ExprKind::kName, line);
        e->name = std::move(name);
        return e;
      }
      case TokenType::kString: {
        std::string text;
        while (cur().type == TokenType::kString) text += next().value;  // 'a' 'b' == 'ab'
        return literal(Value::string(std::move(text)), line);
      }
      case TokenType::kInteger:
        return literal(Value::integer(next().integer), line);
      case TokenType::kFloat:
        return literal(Value::floating(next().floating), line);
      default:
        break;
    }
    if (accept_op("(")) {
      if (accept_op(")")) return node(ExprKind::kTuple, line);
      ExprPtr first = parse_expression(true);
      if (accept_op(")")) return first;
      std::vector<ExprPtr> items;
      items.push_back(std::move(first));
      while (accept_op(",")) {
        if (is_op(")")) break;
        items.push_back(parse_expression(true));
      }
      expect_op(")");
      return node(ExprKind::kTuple, line, std::move(items));
    }
    if (accept_op("[")) {
      std::vector<ExprPtr> items;
      while (!is_op("]")) {
        if (!items.empty()) expect_op(",");
        if (is_op("]")) break;
        items.push_back(parse_expression(true));
      }
      expect_op("]");
      return node(ExprKind::kList, line, std::move(items));
    }
    if (accept_op("{")) {
      std::vector<ExprPtr> items;
      while (!is_op("}")) {
        if (!items.empty()) expect_op(",");
        if (is_op("}")) break;
        items.push_back(parse_expression(true));
        expect_op(":");
        items.push_back(parse_expression(true));
      }
      expect_op("}");
      return node(ExprKind::kDict, line, std::move(items));
    }
    unexpected("an expression");
  }

  ExprPtr parse_postfix(ExprPtr e) {
    while (true) {
      int line = cur().line;
      if (accept_op(".")) {
        if (cur().type == TokenType::kInteger) {  // x.0 is x[0]
          std::vector<ExprPtr> children;
          children.push_back(std::move(e));
          children.push_back(literal(Value::integer(next().integer), line));
          e = node(ExprKind::kItem, line, std::move(children));
        } else {
          std::vector<ExprPtr> children;
          children.push_back(std::move(e));
          std::string name = expect_name();
          e = node(ExprKind::kAttr, line, std::move(children));
          e->name = std::move(name);
        }
      } else if (accept_op("[")) {
        e = parse_subscript(std::move(e), line);
      } else if (is_op("(")) {
        e = parse_call(std::move(e), ExprKind::kCall, "");
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr target, int line) {
    std::vector<ExprPtr> children;
    children.push_back(std::move(target));
    ExprPtr start;
    if (!is_op(":")) {
      start = parse_expression(true);
      if (accept_op("]")) {
        children.push_back(std::move(start));
        return node(ExprKind::kItem, line, std::move(children));
      }
    }
    expect_op(":");
    ExprPtr stop, step;
    if (!is_op("]") && !is_op(":")) stop = parse_expression(true);
    if (accept_op(":") && !is_op("]")) step = parse_expression(true);
    expect_op("]");
    children.push_back(std::move(start));
    children.push_back(std::move(stop));
    children.push_back(std::move(step));
    return node(ExprKind::kSlice, line, std::move(children));
  }

  // Parses `(args)` after the callee/subject, which becomes children[0].
  ExprPtr parse_call(ExprPtr subject, ExprKind kind, std::string name) {
    int line = cur().line;
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->line = line;
    e->name = std::move(name);
    e->children.push_back(std::move(subject));
    if (accept_op("(")) {
      bool first = true;
      while (!is_op(")")) {
        if (!first) expect_op(",");
        first = false;
        if (is_op(")")) break;
        if (is_op("*") || is_op("**")) throw SyntaxError(cur().line, "unsupported construct '*args' in a call");
        if (cur().type == TokenType::kName && peek().type == TokenType::kOperator && peek().value == "=") {
          std::string key = next().value;
          next();
          e->kwargs.emplace_back(std::move(key), parse_expression(true));
        } else {
          if (!e->kwargs.empty()) throw SyntaxError(cur().line, "positional argument follows keyword argument");
          e->children.push_back(parse_expression(true));
        }
      }
      expect_op(")");
    }
    finish(*e);
    return e;
  }

  std::string dotted_name() {
    std::string name = expect_name();
    while (accept_op(".")) {
      name += '.';
      name += expect_name();
    }
    return name;
  }

  // `| f(args) | g`; a filter block's chain starts without the first bar.
  ExprPtr parse_filters(ExprPtr e, bool leading_bar = true) {
    while (!leading_bar || accept_op("|")) {
      leading_bar = true;
      int line = cur().line;
      std::string name = dotted_name();
      if (!is_known_filter(name)) throw SyntaxError(line, fmt::format("unsupported filter '{}'", name));
      e = parse_call(std::move(e), ExprKind::kFilter, std::move(name));
    }
    return e;
  }

  ExprPtr parse_filter_expr(ExprPtr e) {
    while (true) {
      if (is_op("|")) {
        e = parse_filters(std::move(e));
      } else if (is_name("is")) {
        next();
        bool negated = accept_name("not");
        int name_line = cur().line;
        std::string name = dotted_name();
        if (!is_known_test(name)) throw SyntaxError(name_line, fmt::format("unsupported test '{}'", name));
        const Token& t = cur();
        bool single_arg = (t.type == TokenType::kName || t.type == TokenType::kString ||
                           t.type == TokenType::kInteger || t.type == TokenType::kFloat || is_op("[") ||
                           is_op("{")) &&
                          !is_name("else") && !is_name("or") && !is_name("and");
        if (is_op("(")) {
          e = parse_call(std::move(e), ExprKind::kTest, std::move(name));
        } else {
          int line = t.line;
          std::vector<ExprPtr> children;
          children.push_back(std::move(e));
          if (single_arg) {
            if (is_name("is")) throw SyntaxError(line, "tests cannot be chained with 'is'");
            children.push_back(parse_postfix(parse_primary()));
          }
          e = node(ExprKind::kTest, line, std::move(children));
          e->name = std::move(name);
        }
        e->negated = negated;
      } else if (is_op("(")) {
        e = parse_call(std::move(e), ExprKind::kCall, "");
      } else {
        return e;
      }
    }
  }

  std::vector<Token> tokens_;
  size_t i_ = 0;
  int nesting_ = 0;
  int loop_depth_ = 0;
  bool uses_varargs_ = false;
  bool uses_kwargs_ = false;
};

}  // namespace

Body parse_template(const std::string& source) { return Parser(tokenize(source)).parse(); }

}  // namespace mil::chat_template
