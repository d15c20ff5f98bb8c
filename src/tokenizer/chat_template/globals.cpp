// jinja2's tests (`x is defined`) and the global functions transformers' environment offers.
#include <fmt/format.h>

#include <ctime>
#include <unordered_map>

#include "tokenizer/chat_template/builtins.h"
#include "tokenizer/chat_template/interpreter.h"

namespace mil::chat_template {

namespace {

using Test = bool (*)(Interpreter&, const Value&, const BoundArgs&);

bool is_string_value(const Value& v) { return v.is(Kind::kString); }

bool test_lower_or_upper(const Value& v, bool want_lower) {
  std::string s = to_str(v);
  bool has_lower = false, has_upper = false;
  for (char c : s) {
    has_lower |= c >= 'a' && c <= 'z';
    has_upper |= c >= 'A' && c <= 'Z';
  }
  return want_lower ? (has_lower && !has_upper) : (has_upper && !has_lower);
}

// Python's `is`: identity for objects; small ints, bools and None are singletons.
bool same_as(const Value& a, const Value& b) {
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case Kind::kNone:
    case Kind::kUndefined:
      return a.identity() == b.identity();
    case Kind::kBool:
    case Kind::kInt:
      return a.as_int() == b.as_int() && (a.is(Kind::kBool) || (a.as_int() >= -5 && a.as_int() <= 256));
    case Kind::kFloat:
      return false;
    default:
      return a.identity() == b.identity();
  }
}

int64_t modulo_of(const Value& v, int64_t m) {
  if (v.is_undefined()) fail_undefined(v);
  if (!v.is(Kind::kInt) && !v.is(Kind::kBool)) throw RenderError("odd/even/divisibleby need an integer");
  if (m == 0) throw RenderError("integer division or modulo by zero");
  int64_t r = v.as_int() % m;
  return r;
}

const std::unordered_map<std::string, Test>& tests() {
  static const std::unordered_map<std::string, Test> kTests = {
      {"defined", [](Interpreter&, const Value& v, const BoundArgs&) { return !v.is_undefined(); }},
      {"undefined", [](Interpreter&, const Value& v, const BoundArgs&) { return v.is_undefined(); }},
      {"none", [](Interpreter&, const Value& v, const BoundArgs&) { return v.is(Kind::kNone); }},
      {"boolean", [](Interpreter&, const Value& v, const BoundArgs&) { return v.is(Kind::kBool); }},
      {"true", [](Interpreter&, const Value& v, const BoundArgs&) { return v.is(Kind::kBool) && v.as_bool(); }},
      {"false", [](Interpreter&, const Value& v, const BoundArgs&) { return v.is(Kind::kBool) && !v.as_bool(); }},
      {"integer", [](Interpreter&, const Value& v, const BoundArgs&) { return v.is(Kind::kInt); }},
      {"float", [](Interpreter&, const Value& v, const BoundArgs&) { return v.is(Kind::kFloat); }},
      {"number", [](Interpreter&, const Value& v, const BoundArgs&) { return v.is_number(); }},
      {"string", [](Interpreter&, const Value& v, const BoundArgs&) { return is_string_value(v); }},
      {"mapping", [](Interpreter&, const Value& v, const BoundArgs&) { return v.is(Kind::kDict); }},
      {"iterable",
       [](Interpreter&, const Value& v, const BoundArgs&) {
         return v.is(Kind::kString) || v.is(Kind::kList) || v.is(Kind::kDict) || v.is_undefined();
       }},
      {"sequence",
       [](Interpreter&, const Value& v, const BoundArgs&) {
         return v.is(Kind::kString) || (v.is(Kind::kList) && !v.list().generator) || v.is(Kind::kDict) ||
                v.is_undefined();
       }},
      {"callable",
       [](Interpreter&, const Value& v, const BoundArgs&) { return v.is(Kind::kFunction) || v.is_undefined(); }},
      {"sameas", [](Interpreter&, const Value& v, const BoundArgs& a) { return same_as(v, a.get(0)); }},
      {"escaped", [](Interpreter&, const Value&, const BoundArgs&) { return false; }},
      {"odd", [](Interpreter&, const Value& v, const BoundArgs&) { return modulo_of(v, 2) != 0; }},
      {"even", [](Interpreter&, const Value& v, const BoundArgs&) { return modulo_of(v, 2) == 0; }},
      {"divisibleby",
       [](Interpreter&, const Value& v, const BoundArgs& a) {
         return modulo_of(v, require_int(a.get(0), "divisibleby argument")) == 0;
       }},
      {"in", [](Interpreter& in, const Value& v, const BoundArgs& a) { return in.contains(a.get(0), v); }},
      {"lower", [](Interpreter&, const Value& v, const BoundArgs&) { return test_lower_or_upper(v, true); }},
      {"upper", [](Interpreter&, const Value& v, const BoundArgs&) { return test_lower_or_upper(v, false); }},
      {"eq", [](Interpreter&, const Value& v, const BoundArgs& a) { return equals(v, a.get(0)); }},
      {"ne", [](Interpreter&, const Value& v, const BoundArgs& a) { return !equals(v, a.get(0)); }},
      {"lt", [](Interpreter&, const Value& v, const BoundArgs& a) { return compare(v, a.get(0)) < 0; }},
      {"le", [](Interpreter&, const Value& v, const BoundArgs& a) { return compare(v, a.get(0)) <= 0; }},
      {"gt", [](Interpreter&, const Value& v, const BoundArgs& a) { return compare(v, a.get(0)) > 0; }},
      {"ge", [](Interpreter&, const Value& v, const BoundArgs& a) { return compare(v, a.get(0)) >= 0; }},
      {"filter",
       [](Interpreter&, const Value& v, const BoundArgs&) {
         return v.is(Kind::kString) && is_known_filter(v.str());
       }},
      {"test",
       [](Interpreter&, const Value& v, const BoundArgs&) {
         return v.is(Kind::kString) && is_known_test(v.str());
       }},
  };
  return kTests;
}

const std::unordered_map<std::string, std::string>& test_aliases() {
  static const std::unordered_map<std::string, std::string> kAliases = {
      {"equalto", "eq"}, {"==", "eq"}, {"!=", "ne"},         {"<", "lt"}, {"lessthan", "lt"},
      {"<=", "le"},      {">", "gt"},  {"greaterthan", "gt"}, {">=", "ge"}};
  return kAliases;
}

const std::string& canonical_test(const std::string& name) {
  auto it = test_aliases().find(name);
  return it == test_aliases().end() ? name : it->second;
}

size_t test_arity(const std::string& name) {
  static const char* const kOneArg[] = {"sameas", "divisibleby", "in", "eq", "ne", "lt", "le", "gt", "ge"};
  for (const char* n : kOneArg) {
    if (name == n) return 1;
  }
  return 0;
}

Value make_function(const char* name, std::function<Value(Interpreter&, CallArgs&)> call) {
  auto fn = std::make_shared<FunctionObj>();
  fn->name = name;
  fn->call = std::move(call);
  return Value::function(std::move(fn));
}

Value range_function(Interpreter& in, CallArgs& args) {
  if (!args.keyword.empty()) throw RenderError("range() takes no keyword arguments");
  size_t n = args.positional.size();
  if (n < 1 || n > 3) throw RenderError(fmt::format("range expected 1 to 3 arguments, got {}", n));
  int64_t start = 0, stop = 0, step = 1;
  if (n == 1) {
    stop = require_int(args.positional[0], "range() argument");
  } else {
    start = require_int(args.positional[0], "range() argument");
    stop = require_int(args.positional[1], "range() argument");
    if (n == 3) step = require_int(args.positional[2], "range() argument");
  }
  if (step == 0) throw RenderError("range() arg 3 must not be zero");
  // Count with care for overflow; jinja2's sandbox refuses more than MAX_RANGE items.
  long double span = step > 0 ? static_cast<long double>(stop) - start : static_cast<long double>(start) - stop;
  long double count = span <= 0 ? 0 : (span + (std::abs(static_cast<long double>(step)) - 1)) / std::abs(static_cast<long double>(step));
  if (count > kMaxRange) {
    throw RenderError(fmt::format(
        "Range too big. The sandbox blocks ranges larger than MAX_RANGE ({}); template exceeded the range limit",
        kMaxRange));
  }
  std::vector<Value> items;
  int64_t total = static_cast<int64_t>(count);
  in.charge(total);
  for (int64_t i = 0; i < total; ++i) items.push_back(Value::integer(start + i * step));
  return Value::list(std::move(items));
}

void fill_dict(DictObj& d, CallArgs& args, const char* function) {
  for (const Value& p : args.positional) {
    if (p.is(Kind::kDict) || p.is(Kind::kNamespace)) {
      for (const auto& [k, v] : p.dict().entries) d.set(k, v);
    } else {
      throw RenderError(fmt::format("{}() positional arguments must be mappings", function));
    }
  }
  for (const auto& [k, v] : args.keyword) d.set(Value::string(k), v);
}

std::string strftime_now(const std::string& format) {
  std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  if (format.empty()) return "";
  for (size_t size = 256; size <= 65536; size *= 4) {
    std::string buffer(size, '\0');
    size_t n = std::strftime(buffer.data(), buffer.size(), format.c_str(), &local);
    if (n > 0) {
      buffer.resize(n);
      return buffer;
    }
  }
  return "";
}

}  // namespace

bool is_known_test(const std::string& name) { return tests().count(canonical_test(name)) > 0; }

bool apply_test(Interpreter& in, const std::string& name, const Value& subject, CallArgs& args) {
  const std::string& canonical = canonical_test(name);
  auto it = tests().find(canonical);
  if (it == tests().end()) throw RenderError(fmt::format("no test named '{}'", name));
  BoundArgs bound = test_arity(canonical) ? BoundArgs(args, name.c_str(), {"value"}) : BoundArgs(args, name.c_str(), {});
  return it->second(in, subject, bound);
}

Value make_globals() {
  auto d = std::make_shared<DictObj>();
  d->set(Value::string("range"), make_function("range", range_function));
  d->set(Value::string("namespace"), make_function("namespace", [](Interpreter&, CallArgs& args) {
           auto ns = std::make_shared<DictObj>();
           fill_dict(*ns, args, "namespace");
           return Value::namespace_object(std::move(ns));
         }));
  d->set(Value::string("dict"), make_function("dict", [](Interpreter&, CallArgs& args) {
           auto out = std::make_shared<DictObj>();
           fill_dict(*out, args, "dict");
           return Value::dict(std::move(out));
         }));
  d->set(Value::string("raise_exception"), make_function("raise_exception", [](Interpreter&, CallArgs& args) -> Value {
           BoundArgs a(args, "raise_exception", {"message"});
           throw RenderError(to_str(a.get(0)));
         }));
  d->set(Value::string("strftime_now"), make_function("strftime_now", [](Interpreter& in, CallArgs& args) {
           BoundArgs a(args, "strftime_now", {"format"});
           return in.make_string(strftime_now(to_str(a.get(0))));
         }));
  return Value::dict(std::move(d));
}

}  // namespace mil::chat_template
