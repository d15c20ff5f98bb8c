// Executes a parsed template against a context, with jinja2's scoping (a for-loop iteration
// and a macro call get their own scope; `if` does not) and hard limits on the work a hostile
// template can ask for.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "tokenizer/chat_template/ast.h"
#include "tokenizer/chat_template/value.h"

namespace mil::chat_template {

// Bounds on one render. Exceeding one fails with "template exceeded ...".
inline constexpr int64_t kMaxIterations = 1'000'000;    // loop iterations plus macro calls
inline constexpr size_t kMaxOutputSize = 16u << 20;     // bytes rendered (also any one string)
inline constexpr size_t kMaxListSize = 1u << 20;        // items built by + and * on lists
inline constexpr int64_t kMaxWork = int64_t{1} << 28;   // bytes and items copied in total
inline constexpr int kMaxCallDepth = 128;               // nested macro calls
inline constexpr int kMaxEvalDepth = 1000;              // nested statements and expressions;
                                                        // a render needs < 1 MiB of stack
inline constexpr int64_t kMaxRange = 100'000;           // range() size, as jinja2's sandbox

class Interpreter {
 public:
  Interpreter(const Body& program, Value context);
  std::string render();
  int line() const { return line_; }

  // For the builtins.
  Value call(const Value& callee, CallArgs& args);
  Value getattr(const Value& object, const std::string& name);
  Value getitem(const Value& object, const Value& key);
  std::vector<Value> iterate(const Value& v);  // items of an iterable; spends generators
  bool contains(const Value& container, const Value& item);
  void charge(int64_t work);
  void check_size(size_t bytes) const;
  Value make_string(std::string s);

 private:
  struct Frame {
    Frame* parent = nullptr;
    std::vector<std::pair<std::string, Value>> vars;
    Value* find(const std::string& name);
    void set(const std::string& name, Value v);
  };
  enum class Flow { kNormal, kBreak, kContinue };

  class DepthGuard {
   public:
    explicit DepthGuard(Interpreter& in);
    ~DepthGuard() { --in_.depth_; }
    DepthGuard(const DepthGuard&) = delete;
    DepthGuard& operator=(const DepthGuard&) = delete;

   private:
    Interpreter& in_;
  };

  Flow exec_body(const Body& body);
  Flow exec(const Stmt& s);
  Flow exec_for(const Stmt& s);
  void exec_set(const Stmt& s);
  std::string render_body(const Body& body);
  void emit(const Value& v);
  void assign(const std::vector<std::string>& targets, const Value& v);
  Value call_macro(const Stmt& macro, CallArgs& args);

  Value eval(const Expr& e);
  Value lookup(const std::string& name);
  Value eval_binary(BinaryOp op, const Value& a, const Value& b);
  bool eval_compare(CompareOp op, const Value& a, const Value& b);
  Value eval_slice(const Value& target, const Expr& e);
  CallArgs eval_args(const Expr& e, size_t first);
  Value loop_attribute(const Value& loop, const std::string& name);

  const Body& program_;
  Value context_;
  Value globals_;
  Frame top_;
  Frame* frame_ = &top_;
  std::string* out_ = nullptr;
  Value block_value_;  // the rendered body seen by a filter block's filter chain
  int line_ = 0;
  int depth_ = 0;
  int call_depth_ = 0;
  int64_t iterations_ = 0;
  int64_t work_ = 0;
};

}  // namespace mil::chat_template
