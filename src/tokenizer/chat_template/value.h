// Values of the chat-template interpreter, modelled on the Python objects that jinja2 hands
// around, because templates are written against Python semantics (truthiness, 1 == 1.0,
// "True"/"None" when printed, floor division, dict insertion order).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace mil::chat_template {

// A failure while rendering; the interpreter adds the origin and the line.
class RenderError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Containers nest at most this deep: destruction, printing and comparison recurse.
inline constexpr int kMaxValueDepth = 256;

enum class Kind : uint8_t {
  kUndefined,
  kNone,
  kBool,
  kInt,
  kFloat,
  kString,
  kList,  // also tuples and one-shot generators (see ListObj)
  kDict,
  kNamespace,  // a DictObj whose attributes `set ns.x = ...` may change
  kFunction,
  kLoop,
};

struct Object {
  virtual ~Object() = default;
};
struct StringObj;
struct ListObj;
struct DictObj;
struct FunctionObj;
struct LoopObj;
struct UndefinedObj;

class Value {
 public:
  Value() = default;  // undefined, with no hint
  static Value none() { return Value(Kind::kNone); }
  static Value boolean(bool b) {
    Value v(Kind::kBool);
    v.i_ = b ? 1 : 0;
    return v;
  }
  static Value integer(int64_t i) {
    Value v(Kind::kInt);
    v.i_ = i;
    return v;
  }
  static Value floating(double f) {
    Value v(Kind::kFloat);
    v.f_ = f;
    return v;
  }
  static Value string(std::string s);
  static Value list(std::vector<Value> items, bool tuple = false);
  static Value generator(std::vector<Value> items);
  static Value dict(std::shared_ptr<DictObj> d);
  static Value namespace_object(std::shared_ptr<DictObj> d);
  static Value function(std::shared_ptr<FunctionObj> f);
  static Value loop(std::shared_ptr<LoopObj> l);
  // An undefined value that fails with `message` when used (printing it yields "").
  static Value undefined(std::string message, bool unsafe = false);

  Kind kind() const { return kind_; }
  bool is(Kind k) const { return kind_ == k; }
  bool is_undefined() const { return kind_ == Kind::kUndefined; }
  bool is_number() const { return kind_ == Kind::kInt || kind_ == Kind::kFloat || kind_ == Kind::kBool; }

  bool as_bool() const { return i_ != 0; }
  int64_t as_int() const { return i_; }  // also for bools (Python: True == 1)
  double as_double() const { return kind_ == Kind::kFloat ? f_ : static_cast<double>(i_); }
  const std::string& str() const;
  ListObj& list() const;
  DictObj& dict() const;  // dicts and namespaces
  const FunctionObj& function() const;
  LoopObj& loop() const;
  const UndefinedObj* undefined_info() const;
  const Object* identity() const { return obj_.get(); }

 private:
  explicit Value(Kind k) : kind_(k) {}
  Kind kind_ = Kind::kUndefined;
  union {
    int64_t i_ = 0;
    double f_;
  };
  std::shared_ptr<Object> obj_;
};

struct StringObj : Object {
  std::string text;
};

struct ListObj : Object {
  std::vector<Value> items;
  bool tuple = false;
  // jinja2's map/select/... return Python generators: always truthy, no len(), and spent
  // once iterated. `consumed` counts the items already taken.
  bool generator = false;
  size_t consumed = 0;
  int depth = 1;
};

struct DictObj : Object {
  // Insertion-ordered like Python dicts; string keys are also indexed.
  std::vector<std::pair<Value, Value>> entries;
  std::unordered_map<std::string, size_t> string_index;
  int depth = 1;

  const Value* find(const Value& key) const;
  const Value* find(const std::string& key) const;
  void set(const Value& key, Value value);
};

class Interpreter;

struct CallArgs {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;
};

struct FunctionObj : Object {
  std::string name;
  std::function<Value(Interpreter&, CallArgs&)> call;
};

struct LoopObj : Object {
  std::shared_ptr<const std::vector<Value>> items;
  int64_t index0 = 0;
  int64_t depth0 = 0;
};

struct UndefinedObj : Object {
  std::string message;
  bool unsafe = false;  // a sandbox refusal: reported as a security error
};

// Python semantics.
bool truthy(const Value& v);
bool equals(const Value& a, const Value& b);
int compare(const Value& a, const Value& b);  // <0, 0, >0; throws when unorderable
std::string type_name(const Value& v);          // Python's type name: 'str', 'int', ...

// str(v) and repr(v) as Python prints them (undefined prints as "").
void append_str(std::string& out, const Value& v);
std::string to_str(const Value& v);
void append_repr(std::string& out, const Value& v);
std::string float_repr(double d);

// Fails with the undefined value's own message ("'x' is undefined").
[[noreturn]] void fail_undefined(const Value& v);

struct JsonStyle {
  bool indented = false;
  std::string indent;
  std::string item_separator = ", ";
  std::string key_separator = ": ";
  bool sort_keys = false;
  bool ensure_ascii = false;
};
// Python's json.dumps(v, ...) with the given options.
void append_json(std::string& out, const Value& v, const JsonStyle& style, int level = 0);

Value from_json(const nlohmann::ordered_json& j, int depth = 0);

// UTF-8 helpers: Python indexes strings by code point.
std::vector<char32_t> decode_utf8(std::string_view s);
void append_utf8(std::string& out, char32_t cp);
std::string encode_utf8(const std::vector<char32_t>& cps, size_t begin, size_t end);
size_t count_code_points(std::string_view s);
bool is_py_space(char32_t cp);

}  // namespace mil::chat_template
