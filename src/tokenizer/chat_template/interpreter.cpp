#include "tokenizer/chat_template/interpreter.h"

#include <fmt/format.h>

#include <cmath>
#include <limits>

#include "tokenizer/chat_template/builtins.h"

namespace mil::chat_template {

namespace {

[[noreturn]] void exceeded(const char* what, int64_t limit) {
  throw RenderError(fmt::format("template exceeded the {} ({})", what, limit));
}

[[noreturn]] void unsupported_operands(const char* op, const Value& a, const Value& b) {
  throw RenderError(fmt::format("unsupported operand type(s) for {}: '{}' and '{}'", op, type_name(a),
                                type_name(b)));
}

int64_t floor_div(int64_t a, int64_t b) {
  if (b == 0) throw RenderError("integer division or modulo by zero");
  if (a == std::numeric_limits<int64_t>::min() && b == -1) throw RenderError("integer overflow");
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

int64_t floor_mod(int64_t a, int64_t b) {
  if (b == 0) throw RenderError("integer division or modulo by zero");
  if (b == -1) return 0;
  int64_t r = a % b;
  if (r != 0 && ((r < 0) != (b < 0))) r += b;
  return r;
}

double float_mod(double a, double b) {
  if (b == 0) throw RenderError("float modulo");
  double r = std::fmod(a, b);
  if (r != 0 && ((r < 0) != (b < 0))) r += b;
  return r;
}

}  // namespace

Value* Interpreter::Frame::find(const std::string& name) {
  for (auto& [k, v] : vars) {
    if (k == name) return &v;
  }
  return nullptr;
}

void Interpreter::Frame::set(const std::string& name, Value v) {
  if (Value* existing = find(name)) {
    *existing = std::move(v);
  } else {
    vars.emplace_back(name, std::move(v));
  }
}

Interpreter::DepthGuard::DepthGuard(Interpreter& in) : in_(in) {
  if (++in_.depth_ > kMaxEvalDepth) {
    --in_.depth_;
    exceeded("evaluation depth limit", kMaxEvalDepth);
  }
}

Interpreter::Interpreter(const Body& program, Value context)
    : program_(program), context_(std::move(context)), globals_(make_globals()) {}

std::string Interpreter::render() {
  std::string out;
  out_ = &out;
  exec_body(program_);
  return out;
}

void Interpreter::charge(int64_t work) {
  work_ += work;
  if (work_ > kMaxWork) exceeded("work limit", kMaxWork);
}

void Interpreter::check_size(size_t bytes) const {
  if (bytes > kMaxOutputSize) exceeded("output size limit", static_cast<int64_t>(kMaxOutputSize));
}

Value Interpreter::make_string(std::string s) {
  check_size(s.size());
  charge(static_cast<int64_t>(s.size()));
  return Value::string(std::move(s));
}

void Interpreter::emit(const Value& v) {
  append_str(*out_, v);
  check_size(out_->size());
}

std::string Interpreter::render_body(const Body& body) {
  std::string buffer;
  std::string* saved = out_;
  out_ = &buffer;
  try {
    exec_body(body);
  } catch (...) {
    out_ = saved;
    throw;
  }
  out_ = saved;
  return buffer;
}

Interpreter::Flow Interpreter::exec_body(const Body& body) {
  for (const StmtPtr& s : body) {
    Flow flow = exec(*s);
    if (flow != Flow::kNormal) return flow;
  }
  return Flow::kNormal;
}

Interpreter::Flow Interpreter::exec(const Stmt& s) {
  DepthGuard guard(*this);
  line_ = s.line;
  switch (s.kind) {
    case StmtKind::kText:
      *out_ += s.text;
      check_size(out_->size());
      return Flow::kNormal;
    case StmtKind::kOutput:
      emit(eval(*s.expr));
      return Flow::kNormal;
    case StmtKind::kIf:
      for (const auto& [condition, body] : s.branches) {
        if (truthy(eval(*condition))) return exec_body(body);
      }
      return exec_body(s.else_body);
    case StmtKind::kFor:
      return exec_for(s);
    case StmtKind::kSet:
      exec_set(s);
      return Flow::kNormal;
    case StmtKind::kSetBlock: {
      Value value = make_string(render_body(s.body));
      if (s.filter) {
        block_value_ = value;
        value = eval(*s.filter);
      }
      frame_->set(s.targets[0], std::move(value));
      return Flow::kNormal;
    }
    case StmtKind::kFilterBlock:
      block_value_ = make_string(render_body(s.body));
      emit(eval(*s.filter));
      return Flow::kNormal;
    case StmtKind::kMacro: {
      auto fn = std::make_shared<FunctionObj>();
      fn->name = s.text;
      const Stmt* macro = &s;
      fn->call = [macro](Interpreter& in, CallArgs& args) { return in.call_macro(*macro, args); };
      frame_->set(s.text, Value::function(std::move(fn)));
      return Flow::kNormal;
    }
    case StmtKind::kBreak:
      return Flow::kBreak;
    case StmtKind::kContinue:
      return Flow::kContinue;
    case StmtKind::kScope: {
      Frame scope;
      scope.parent = frame_;
      for (const auto& [name, expr] : s.assignments) scope.set(name, eval(*expr));
      Frame* saved = frame_;
      frame_ = &scope;
      Flow flow;
      try {
        flow = exec_body(s.body);
      } catch (...) {
        frame_ = saved;
        throw;
      }
      frame_ = saved;
      return flow;
    }
  }
  return Flow::kNormal;
}

void Interpreter::assign(const std::vector<std::string>& targets, const Value& v) {
  if (targets.size() == 1) {
    frame_->set(targets[0], v);
    return;
  }
  std::vector<Value> items = iterate(v);
  if (items.size() != targets.size()) {
    throw RenderError(fmt::format("cannot unpack {} values into {} names", items.size(), targets.size()));
  }
  for (size_t i = 0; i < items.size(); ++i) frame_->set(targets[i], items[i]);
}

void Interpreter::exec_set(const Stmt& s) {
  Value value = eval(*s.expr);
  if (s.attribute.empty()) {
    assign(s.targets, value);
    return;
  }
  Value target = lookup(s.targets[0]);
  if (!target.is(Kind::kNamespace)) throw RenderError("cannot assign attribute on non-namespace object");
  target.dict().set(Value::string(s.attribute), std::move(value));
}

Interpreter::Flow Interpreter::exec_for(const Stmt& s) {
  std::vector<Value> items = iterate(eval(*s.expr));
  Frame* outer = frame_;
  try {
    if (s.condition) {  // `for x in xs if cond`: loop.length counts the kept items
      std::vector<Value> kept;
      for (Value& item : items) {
        Frame scope;
        scope.parent = outer;
        frame_ = &scope;
        assign(s.targets, item);
        if (truthy(eval(*s.condition))) kept.push_back(std::move(item));
        frame_ = outer;
      }
      items = std::move(kept);
    }
    auto shared = std::make_shared<const std::vector<Value>>(std::move(items));
    auto loop = std::make_shared<LoopObj>();
    loop->items = shared;
    Value loop_value = Value::loop(loop);  // depth stays 0: only recursive loops nest it
    for (size_t i = 0; i < shared->size(); ++i) {
      if (++iterations_ > kMaxIterations) exceeded("iteration limit", kMaxIterations);
      charge(1);
      loop->index0 = static_cast<int64_t>(i);
      Frame scope;
      scope.parent = outer;
      frame_ = &scope;
      assign(s.targets, (*shared)[i]);
      scope.set("loop", loop_value);
      Flow flow = exec_body(s.body);
      frame_ = outer;
      if (flow == Flow::kBreak) break;
    }
    if (shared->empty()) return exec_body(s.else_body);
  } catch (...) {
    frame_ = outer;
    throw;
  }
  return Flow::kNormal;
}

Value Interpreter::call_macro(const Stmt& macro, CallArgs& args) {
  if (++iterations_ > kMaxIterations) exceeded("iteration limit", kMaxIterations);
  if (call_depth_ >= kMaxCallDepth) exceeded("macro call depth limit", kMaxCallDepth);
  // Macros see the template's top-level names, not the caller's locals.
  Frame scope;
  scope.parent = &top_;
  size_t n = macro.params.size();
  if (args.positional.size() > n && !macro.uses_varargs) {
    throw RenderError(fmt::format("macro '{}' takes not more than {} argument(s)", macro.text, n));
  }
  std::vector<const Value*> bound(n, nullptr);
  for (size_t i = 0; i < n && i < args.positional.size(); ++i) bound[i] = &args.positional[i];
  auto extra_kwargs = std::make_shared<DictObj>();
  for (const auto& [key, value] : args.keyword) {
    size_t i = 0;
    while (i < n && macro.params[i].name != key) ++i;
    if (i < n) {
      if (bound[i]) throw RenderError(fmt::format("macro '{}' got multiple values for argument '{}'", macro.text, key));
      bound[i] = &value;
    } else if (macro.uses_kwargs) {
      extra_kwargs->set(Value::string(key), value);
    } else {
      throw RenderError(fmt::format("macro '{}' takes no keyword argument '{}'", macro.text, key));
    }
  }
  Frame* saved_frame = frame_;
  std::string buffer;
  std::string* saved_out = out_;
  ++call_depth_;
  frame_ = &scope;
  try {
    for (size_t i = 0; i < n; ++i) {
      const MacroParam& p = macro.params[i];
      if (bound[i]) {
        scope.set(p.name, *bound[i]);
      } else if (p.default_value) {
        scope.set(p.name, eval(*p.default_value));
      } else {
        scope.set(p.name, Value::undefined(fmt::format("parameter '{}' was not provided", p.name)));
      }
    }
    if (macro.uses_varargs) {
      std::vector<Value> rest;
      for (size_t i = n; i < args.positional.size(); ++i) rest.push_back(args.positional[i]);
      scope.set("varargs", Value::list(std::move(rest), true));
    }
    if (macro.uses_kwargs) scope.set("kwargs", Value::dict(extra_kwargs));
    out_ = &buffer;
    exec_body(macro.body);
  } catch (...) {
    frame_ = saved_frame;
    out_ = saved_out;
    --call_depth_;
    throw;
  }
  frame_ = saved_frame;
  out_ = saved_out;
  --call_depth_;
  return Value::string(std::move(buffer));
}

Value Interpreter::lookup(const std::string& name) {
  for (Frame* f = frame_; f; f = f->parent) {
    if (Value* v = f->find(name)) return *v;
  }
  if (const Value* v = context_.dict().find(name)) return *v;
  if (const Value* v = globals_.dict().find(name)) return *v;
  return Value::undefined(fmt::format("'{}' is undefined", name));
}

Value Interpreter::call(const Value& callee, CallArgs& args) {
  if (callee.is(Kind::kFunction)) {
    charge(1);
    return callee.function().call(*this, args);
  }
  if (callee.is_undefined()) fail_undefined(callee);
  throw RenderError(fmt::format("'{}' object is not callable", type_name(callee)));
}

CallArgs Interpreter::eval_args(const Expr& e, size_t first) {
  CallArgs args;
  for (size_t i = first; i < e.children.size(); ++i) args.positional.push_back(eval(*e.children[i]));
  for (const auto& [name, expr] : e.kwargs) args.keyword.emplace_back(name, eval(*expr));
  return args;
}

Value Interpreter::eval(const Expr& e) {
  DepthGuard guard(*this);
  line_ = e.line;
  switch (e.kind) {
    case ExprKind::kLiteral:
      return e.literal;
    case ExprKind::kName:
      return lookup(e.name);
    case ExprKind::kList:
    case ExprKind::kTuple: {
      std::vector<Value> items;
      items.reserve(e.children.size());
      for (const auto& c : e.children) items.push_back(eval(*c));
      return Value::list(std::move(items), e.kind == ExprKind::kTuple);
    }
    case ExprKind::kDict: {
      auto d = std::make_shared<DictObj>();
      for (size_t i = 0; i + 1 < e.children.size(); i += 2) {
        Value key = eval(*e.children[i]);
        if (key.is(Kind::kList) && !key.list().tuple) throw RenderError("unhashable type: 'list'");
        if (key.is(Kind::kDict)) throw RenderError("unhashable type: 'dict'");
        d->set(key, eval(*e.children[i + 1]));
      }
      return Value::dict(std::move(d));
    }
    case ExprKind::kAttr:
      return getattr(eval(*e.children[0]), e.name);
    case ExprKind::kItem: {
      Value target = eval(*e.children[0]);
      return getitem(target, eval(*e.children[1]));
    }
    case ExprKind::kSlice:
      return eval_slice(eval(*e.children[0]), e);
    case ExprKind::kCall: {
      Value callee = eval(*e.children[0]);
      CallArgs args = eval_args(e, 1);
      line_ = e.line;
      return call(callee, args);
    }
    case ExprKind::kFilter: {
      Value subject = eval(*e.children[0]);
      CallArgs args = eval_args(e, 1);
      line_ = e.line;
      return apply_filter(*this, e.name, subject, args);
    }
    case ExprKind::kTest: {
      Value subject = eval(*e.children[0]);
      CallArgs args = eval_args(e, 1);
      line_ = e.line;
      return Value::boolean(apply_test(*this, e.name, subject, args) != e.negated);
    }
    case ExprKind::kNeg:
    case ExprKind::kPos: {
      Value v = eval(*e.children[0]);
      if (v.is_undefined()) fail_undefined(v);
      if (v.is(Kind::kFloat)) return Value::floating(e.kind == ExprKind::kNeg ? -v.as_double() : v.as_double());
      if (!v.is_number()) throw RenderError(fmt::format("bad operand type for unary -: '{}'", type_name(v)));
      if (e.kind == ExprKind::kPos) return Value::integer(v.as_int());
      if (v.as_int() == std::numeric_limits<int64_t>::min()) throw RenderError("integer overflow");
      return Value::integer(-v.as_int());
    }
    case ExprKind::kNot:
      return Value::boolean(!truthy(eval(*e.children[0])));
    case ExprKind::kAnd: {
      Value a = eval(*e.children[0]);
      return truthy(a) ? eval(*e.children[1]) : a;
    }
    case ExprKind::kOr: {
      Value a = eval(*e.children[0]);
      return truthy(a) ? a : eval(*e.children[1]);
    }
    case ExprKind::kBinary: {
      Value a = eval(*e.children[0]);
      Value b = eval(*e.children[1]);
      line_ = e.line;
      return eval_binary(e.binary_op, a, b);
    }
    case ExprKind::kCompare: {
      Value left = eval(*e.children[0]);
      for (size_t i = 0; i < e.compare_ops.size(); ++i) {
        Value right = eval(*e.children[i + 1]);
        line_ = e.line;
        if (!eval_compare(e.compare_ops[i], left, right)) return Value::boolean(false);
        left = std::move(right);
      }
      return Value::boolean(true);
    }
    case ExprKind::kCondition:
      if (truthy(eval(*e.children[1]))) return eval(*e.children[0]);
      if (e.children[2]) return eval(*e.children[2]);
      return Value::undefined("the inline if-expression evaluated to false and no else section was defined");
    case ExprKind::kBlockValue:
      return block_value_;
  }
  return Value();
}

Value Interpreter::eval_binary(BinaryOp op, const Value& a, const Value& b) {
  if (op == BinaryOp::kConcat) {
    std::string s = to_str(a);
    append_str(s, b);
    return make_string(std::move(s));
  }
  if (a.is_undefined()) fail_undefined(a);
  if (b.is_undefined()) fail_undefined(b);
  bool numbers = a.is_number() && b.is_number();
  bool floats = numbers && (a.is(Kind::kFloat) || b.is(Kind::kFloat));
  int64_t r = 0;
  switch (op) {
    case BinaryOp::kAdd:
      if (floats) return Value::floating(a.as_double() + b.as_double());
      if (numbers) {
        if (__builtin_add_overflow(a.as_int(), b.as_int(), &r)) throw RenderError("integer overflow");
        return Value::integer(r);
      }
      if (a.is(Kind::kString) && b.is(Kind::kString)) {
        check_size(a.str().size() + b.str().size());
        return make_string(a.str() + b.str());
      }
      if (a.is(Kind::kList) && b.is(Kind::kList) && a.list().tuple == b.list().tuple && !a.list().generator &&
          !b.list().generator) {
        size_t n = a.list().items.size() + b.list().items.size();
        if (n > kMaxListSize) exceeded("list size limit", kMaxListSize);
        charge(static_cast<int64_t>(n));
        std::vector<Value> items = a.list().items;
        items.insert(items.end(), b.list().items.begin(), b.list().items.end());
        return Value::list(std::move(items), a.list().tuple);
      }
      unsupported_operands("+", a, b);
    case BinaryOp::kSub:
      if (floats) return Value::floating(a.as_double() - b.as_double());
      if (numbers) {
        if (__builtin_sub_overflow(a.as_int(), b.as_int(), &r)) throw RenderError("integer overflow");
        return Value::integer(r);
      }
      unsupported_operands("-", a, b);
    case BinaryOp::kMul: {
      if (floats) return Value::floating(a.as_double() * b.as_double());
      if (numbers) {
        if (__builtin_mul_overflow(a.as_int(), b.as_int(), &r)) throw RenderError("integer overflow");
        return Value::integer(r);
      }
      const Value& seq = a.is_number() ? b : a;
      const Value& count = a.is_number() ? a : b;
      if (!count.is_number() || count.is(Kind::kFloat)) unsupported_operands("*", a, b);
      int64_t times = std::max<int64_t>(0, count.as_int());
      if (seq.is(Kind::kString)) {
        if (times > 0 && seq.str().size() > kMaxOutputSize / static_cast<size_t>(times)) {
          exceeded("output size limit", static_cast<int64_t>(kMaxOutputSize));
        }
        std::string s;
        s.reserve(seq.str().size() * static_cast<size_t>(times));
        for (int64_t i = 0; i < times; ++i) s += seq.str();
        return make_string(std::move(s));
      }
      if (seq.is(Kind::kList) && !seq.list().generator) {
        const auto& items = seq.list().items;
        if (times > 0 && items.size() > kMaxListSize / static_cast<size_t>(times)) {
          exceeded("list size limit", kMaxListSize);
        }
        charge(static_cast<int64_t>(items.size()) * times);
        std::vector<Value> out;
        for (int64_t i = 0; i < times; ++i) out.insert(out.end(), items.begin(), items.end());
        return Value::list(std::move(out), seq.list().tuple);
      }
      unsupported_operands("*", a, b);
    }
    case BinaryOp::kDiv:
      if (!numbers) unsupported_operands("/", a, b);
      if (b.as_double() == 0) throw RenderError("division by zero");
      return Value::floating(a.as_double() / b.as_double());
    case BinaryOp::kFloorDiv:
      if (!numbers) unsupported_operands("//", a, b);
      if (floats) {
        if (b.as_double() == 0) throw RenderError("float floor division by zero");
        return Value::floating(std::floor(a.as_double() / b.as_double()));
      }
      return Value::integer(floor_div(a.as_int(), b.as_int()));
    case BinaryOp::kMod:
      if (a.is(Kind::kString)) return make_string(percent_format(*this, a.str(), b));
      if (!numbers) unsupported_operands("%", a, b);
      if (floats) return Value::floating(float_mod(a.as_double(), b.as_double()));
      return Value::integer(floor_mod(a.as_int(), b.as_int()));
    case BinaryOp::kPow: {
      if (!numbers) unsupported_operands("**", a, b);
      if (!floats && b.as_int() >= 0) {
        int64_t result = 1, base = a.as_int();
        for (int64_t e = b.as_int(); e > 0; e >>= 1) {
          if ((e & 1) && __builtin_mul_overflow(result, base, &result)) throw RenderError("integer overflow");
          if (e > 1 && __builtin_mul_overflow(base, base, &base)) throw RenderError("integer overflow");
        }
        return Value::integer(result);
      }
      if (a.as_double() == 0 && b.as_double() < 0) throw RenderError("zero cannot be raised to a negative power");
      return Value::floating(std::pow(a.as_double(), b.as_double()));
    }
    case BinaryOp::kConcat:
      break;
  }
  return Value();
}

bool Interpreter::eval_compare(CompareOp op, const Value& a, const Value& b) {
  switch (op) {
    case CompareOp::kEq: return equals(a, b);
    case CompareOp::kNe: return !equals(a, b);
    case CompareOp::kLt: return compare(a, b) < 0;
    case CompareOp::kLe: return compare(a, b) <= 0;
    case CompareOp::kGt: return compare(a, b) > 0;
    case CompareOp::kGe: return compare(a, b) >= 0;
    case CompareOp::kIn: return contains(b, a);
    case CompareOp::kNotIn: return !contains(b, a);
  }
  return false;
}

}  // namespace mil::chat_template
