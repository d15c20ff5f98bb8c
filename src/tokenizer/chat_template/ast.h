// The parsed template: statements and expressions, each remembering its source line so that
// errors can point at it.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tokenizer/chat_template/value.h"

namespace mil::chat_template {

enum class ExprKind {
  kLiteral,     // literal
  kName,        // name
  kList,        // children: elements
  kTuple,       // children: elements
  kDict,        // children: key, value, key, value...
  kAttr,        // children[0].name
  kItem,        // children[0][children[1]]
  kSlice,       // children[0][children[1]:children[2]:children[3]] (each may be null)
  kCall,        // children[0](children[1..], kwargs)
  kFilter,      // children[0] | name(children[1..], kwargs)
  kTest,        // children[0] is [not] name(children[1..], kwargs)
  kNeg,         // -children[0]
  kPos,         // +children[0]
  kNot,         // not children[0]
  kAnd,         // children[0] and children[1]
  kOr,          // children[0] or children[1]
  kBinary,      // children[0] op children[1]
  kCompare,     // children[0] cmp_ops[0] children[1] cmp_ops[1] children[2]...
  kCondition,   // children[0] if children[1] else children[2] (may be null)
  kBlockValue,  // the rendered body of a filter block or block set
};

enum class BinaryOp { kAdd, kSub, kMul, kDiv, kFloorDiv, kMod, kPow, kConcat };
enum class CompareOp { kEq, kNe, kLt, kLe, kGt, kGe, kIn, kNotIn };

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  ExprKind kind = ExprKind::kLiteral;
  int line = 0;
  int depth = 1;  // height of this subtree; bounded so that evaluation cannot overflow the stack
  Value literal;
  std::string name;
  BinaryOp binary_op = BinaryOp::kAdd;
  std::vector<CompareOp> compare_ops;
  bool negated = false;
  std::vector<ExprPtr> children;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
};

enum class StmtKind {
  kText,         // text
  kOutput,       // {{ expr }}
  kIf,           // branches, else_body
  kFor,          // targets in expr [if condition], body, else_body
  kSet,          // targets = expr, or targets[0].attribute = expr
  kSetBlock,     // targets[0] = body rendered [| filter]
  kMacro,        // name(params) body
  kBreak,
  kContinue,
  kFilterBlock,  // body rendered | filter
  kScope,        // body run in a child scope: {% with %} and {% generation %}
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

struct MacroParam {
  std::string name;
  ExprPtr default_value;  // null when required
};

struct Stmt {
  StmtKind kind = StmtKind::kText;
  int line = 0;
  std::string text;                 // kText; macro name
  ExprPtr expr;                     // kOutput, kFor iterable, kSet value
  ExprPtr condition;                // kFor inline filter
  ExprPtr filter;                   // kSetBlock/kFilterBlock: a filter chain over kBlockValue
  std::vector<std::string> targets; // kFor/kSet/kSetBlock names
  std::string attribute;            // kSet on a namespace: targets[0].attribute
  std::vector<std::pair<ExprPtr, Body>> branches;  // kIf
  Body body;
  Body else_body;
  std::vector<MacroParam> params;   // kMacro
  bool uses_varargs = false;        // kMacro: the body reads `varargs`
  bool uses_kwargs = false;         // kMacro: the body reads `kwargs`
  std::vector<std::pair<std::string, ExprPtr>> assignments;  // kScope ({% with a = 1 %})
};

}  // namespace mil::chat_template
