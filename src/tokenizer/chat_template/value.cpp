#include "tokenizer/chat_template/value.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>

namespace mil::chat_template {

namespace {

int container_depth(const Value& v) {
  if (v.is(Kind::kList)) return v.list().depth;
  if (v.is(Kind::kDict)) return v.dict().depth;
  return 0;
}

void check_depth(int depth) {
  if (depth > kMaxValueDepth) {
    throw RenderError(fmt::format("template exceeded the value nesting limit ({})", kMaxValueDepth));
  }
}

}  // namespace

Value Value::string(std::string s) {
  Value v(Kind::kString);
  auto obj = std::make_shared<StringObj>();
  obj->text = std::move(s);
  v.obj_ = std::move(obj);
  return v;
}

Value Value::list(std::vector<Value> items, bool tuple) {
  Value v(Kind::kList);
  auto obj = std::make_shared<ListObj>();
  int depth = 0;
  for (const Value& item : items) depth = std::max(depth, container_depth(item));
  check_depth(depth + 1);
  obj->depth = depth + 1;
  obj->items = std::move(items);
  obj->tuple = tuple;
  v.obj_ = std::move(obj);
  return v;
}

Value Value::generator(std::vector<Value> items) {
  Value v = list(std::move(items));
  v.list().generator = true;
  return v;
}

Value Value::dict(std::shared_ptr<DictObj> d) {
  Value v(Kind::kDict);
  v.obj_ = std::move(d);
  return v;
}

Value Value::namespace_object(std::shared_ptr<DictObj> d) {
  Value v(Kind::kNamespace);
  v.obj_ = std::move(d);
  return v;
}

Value Value::function(std::shared_ptr<FunctionObj> f) {
  Value v(Kind::kFunction);
  v.obj_ = std::move(f);
  return v;
}

Value Value::loop(std::shared_ptr<LoopObj> l) {
  Value v(Kind::kLoop);
  v.obj_ = std::move(l);
  return v;
}

Value Value::undefined(std::string message, bool unsafe) {
  Value v(Kind::kUndefined);
  auto obj = std::make_shared<UndefinedObj>();
  obj->message = std::move(message);
  obj->unsafe = unsafe;
  v.obj_ = std::move(obj);
  return v;
}

const std::string& Value::str() const { return static_cast<const StringObj&>(*obj_).text; }
ListObj& Value::list() const { return static_cast<ListObj&>(*obj_); }
DictObj& Value::dict() const { return static_cast<DictObj&>(*obj_); }
const FunctionObj& Value::function() const { return static_cast<const FunctionObj&>(*obj_); }
LoopObj& Value::loop() const { return static_cast<LoopObj&>(*obj_); }
const UndefinedObj* Value::undefined_info() const {
  return kind_ == Kind::kUndefined ? static_cast<const UndefinedObj*>(obj_.get()) : nullptr;
}

const Value* DictObj::find(const std::string& key) const {
  auto it = string_index.find(key);
  return it == string_index.end() ? nullptr : &entries[it->second].second;
}

const Value* DictObj::find(const Value& key) const {
  if (key.is(Kind::kString)) return find(key.str());
  for (const auto& [k, v] : entries) {
    if (!k.is(Kind::kString) && equals(k, key)) return &v;
  }
  return nullptr;
}

void DictObj::set(const Value& key, Value value) {
  int value_depth = container_depth(value) + 1;
  check_depth(value_depth);
  depth = std::max(depth, value_depth);
  if (key.is(Kind::kString)) {
    auto [it, inserted] = string_index.try_emplace(key.str(), entries.size());
    if (!inserted) {
      entries[it->second].second = std::move(value);
      return;
    }
  } else {
    for (auto& [k, v] : entries) {
      if (!k.is(Kind::kString) && equals(k, key)) {
        v = std::move(value);
        return;
      }
    }
  }
  entries.emplace_back(key, std::move(value));
}

[[noreturn]] void fail_undefined(const Value& v) {
  const UndefinedObj* info = v.undefined_info();
  if (info && info->unsafe) throw RenderError("security error: " + info->message);
  throw RenderError(info ? info->message : "value is undefined");
}

bool truthy(const Value& v) {
  switch (v.kind()) {
    case Kind::kUndefined:
    case Kind::kNone:
      return false;
    case Kind::kBool:
    case Kind::kInt:
      return v.as_int() != 0;
    case Kind::kFloat:
      return v.as_double() != 0.0;
    case Kind::kString:
      return !v.str().empty();
    case Kind::kList:
      return v.list().generator || !v.list().items.empty();
    case Kind::kDict:
      return !v.dict().entries.empty();
    default:
      return true;
  }
}

bool equals(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.is(Kind::kFloat) || b.is(Kind::kFloat)) return a.as_double() == b.as_double();
    return a.as_int() == b.as_int();
  }
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case Kind::kUndefined:
    case Kind::kNone:
      return true;
    case Kind::kString:
      return a.str() == b.str();
    case Kind::kList: {
      const ListObj& x = a.list();
      const ListObj& y = b.list();
      if (x.generator || y.generator) return &x == &y;
      if (x.tuple != y.tuple || x.items.size() != y.items.size()) return false;
      for (size_t i = 0; i < x.items.size(); ++i) {
        if (!equals(x.items[i], y.items[i])) return false;
      }
      return true;
    }
    case Kind::kDict: {
      const DictObj& x = a.dict();
      const DictObj& y = b.dict();
      if (x.entries.size() != y.entries.size()) return false;
      for (const auto& [k, v] : x.entries) {
        const Value* other = y.find(k);
        if (!other || !equals(v, *other)) return false;
      }
      return true;
    }
    default:
      return a.identity() == b.identity();
  }
}

std::string type_name(const Value& v) {
  switch (v.kind()) {
    case Kind::kUndefined: return "Undefined";
    case Kind::kNone: return "NoneType";
    case Kind::kBool: return "bool";
    case Kind::kInt: return "int";
    case Kind::kFloat: return "float";
    case Kind::kString: return "str";
    case Kind::kList:
      return v.list().generator ? "generator" : v.list().tuple ? "tuple" : "list";
    case Kind::kDict: return "dict";
    case Kind::kNamespace: return "Namespace";
    case Kind::kFunction: return "function";
    case Kind::kLoop: return "LoopContext";
  }
  return "object";
}

int compare(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.is(Kind::kFloat) || b.is(Kind::kFloat)) {
      double x = a.as_double(), y = b.as_double();
      return x < y ? -1 : x > y ? 1 : 0;
    }
    return a.as_int() < b.as_int() ? -1 : a.as_int() > b.as_int() ? 1 : 0;
  }
  if (a.is(Kind::kString) && b.is(Kind::kString)) {
    // Byte order of UTF-8 is code point order, which is what Python compares.
    int c = a.str().compare(b.str());
    return c < 0 ? -1 : c > 0 ? 1 : 0;
  }
  if (a.is(Kind::kList) && b.is(Kind::kList) && a.list().tuple == b.list().tuple &&
      !a.list().generator && !b.list().generator) {
    const auto& x = a.list().items;
    const auto& y = b.list().items;
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (!equals(x[i], y[i])) return compare(x[i], y[i]);
    }
    return x.size() < y.size() ? -1 : x.size() > y.size() ? 1 : 0;
  }
  if (a.is_undefined()) fail_undefined(a);
  if (b.is_undefined()) fail_undefined(b);
  throw RenderError(fmt::format("comparison not supported between instances of '{}' and '{}'",
                                type_name(a), type_name(b)));
}

std::string float_repr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d < 0 ? "-inf" : "inf";
  if (d == 0) return std::signbit(d) ? "-0.0" : "0.0";
  // Shortest round-trip digits, laid out the way Python's repr does: positional for
  // exponents in [-4, 16), otherwise d.ddde+XX.
  char buf[64];
  auto result = std::to_chars(buf, buf + sizeof(buf), d, std::chars_format::scientific);
  std::string sci(buf, result.ptr);
  std::string out;
  size_t pos = 0;
  if (sci[0] == '-') {
    out += '-';
    pos = 1;
  }
  size_t e_pos = sci.find('e');
  std::string digits;
  for (size_t i = pos; i < e_pos; ++i) {
    if (sci[i] != '.') digits += sci[i];
  }
  int exponent = std::stoi(sci.substr(e_pos + 1));
  if (exponent >= -4 && exponent < 16) {
    if (exponent < 0) {
      out += "0.";
      out.append(static_cast<size_t>(-exponent - 1), '0');
      out += digits;
    } else {
      size_t int_digits = static_cast<size_t>(exponent) + 1;
      if (digits.size() <= int_digits) {
        out += digits;
        out.append(int_digits - digits.size(), '0');
        out += ".0";
      } else {
        out.append(digits, 0, int_digits);
        out += '.';
        out.append(digits, int_digits);
      }
    }
  } else {
    out += digits.substr(0, 1);
    if (digits.size() > 1) {
      out += '.';
      out.append(digits, 1);
    }
    out += fmt::format("e{}{:02d}", exponent < 0 ? '-' : '+', std::abs(exponent));
  }
  return out;
}

namespace {

void append_string_repr(std::string& out, const std::string& s) {
  bool has_single = s.find('\'') != std::string::npos;
  bool has_double = s.find('"') != std::string::npos;
  char quote = (has_single && !has_double) ? '"' : '\'';
  out += quote;
  for (char32_t cp : decode_utf8(s)) {
    if (cp == static_cast<char32_t>(quote) || cp == U'\\') {
      out += '\\';
      out += static_cast<char>(cp);
    } else if (cp == U'\n') {
      out += "\\n";
    } else if (cp == U'\r') {
      out += "\\r";
    } else if (cp == U'\t') {
      out += "\\t";
    } else if (cp < 0x20 || (cp >= 0x7f && cp <= 0xa0) || cp == 0xad) {
      out += fmt::format("\\x{:02x}", static_cast<uint32_t>(cp));
    } else if (cp == 0x2028 || cp == 0x2029) {
      out += fmt::format("\\u{:04x}", static_cast<uint32_t>(cp));
    } else {
      append_utf8(out, cp);
    }
  }
  out += quote;
}

void append_dict_repr(std::string& out, const DictObj& d) {
  out += '{';
  bool first = true;
  for (const auto& [k, v] : d.entries) {
    if (!first) out += ", ";
    first = false;
    append_repr(out, k);
    out += ": ";
    append_repr(out, v);
  }
  out += '}';
}

}  // namespace

void append_repr(std::string& out, const Value& v) {
  switch (v.kind()) {
    case Kind::kString:
      append_string_repr(out, v.str());
      return;
    case Kind::kUndefined:
      return;  // Python's repr of Undefined is "Undefined"; nothing sane prints it
    default:
      append_str(out, v);
  }
}

void append_str(std::string& out, const Value& v) {
  switch (v.kind()) {
    case Kind::kUndefined:
      return;
    case Kind::kNone:
      out += "None";
      return;
    case Kind::kBool:
      out += v.as_bool() ? "True" : "False";
      return;
    case Kind::kInt:
      out += std::to_string(v.as_int());
      return;
    case Kind::kFloat:
      out += float_repr(v.as_double());
      return;
    case Kind::kString:
      out += v.str();
      return;
    case Kind::kList: {
      const ListObj& l = v.list();
      if (l.generator) {
        out += "<generator object>";
        return;
      }
      out += l.tuple ? '(' : '[';
      for (size_t i = 0; i < l.items.size(); ++i) {
        if (i) out += ", ";
        append_repr(out, l.items[i]);
      }
      if (l.tuple && l.items.size() == 1) out += ',';
      out += l.tuple ? ')' : ']';
      return;
    }
    case Kind::kDict:
      append_dict_repr(out, v.dict());
      return;
    case Kind::kNamespace:
      out += "<Namespace ";
      append_dict_repr(out, v.dict());
      out += '>';
      return;
    case Kind::kFunction:
      out += "<function " + v.function().name + ">";
      return;
    case Kind::kLoop:
      out += fmt::format("<LoopContext {}/{}>", v.loop().index0 + 1, v.loop().items->size());
      return;
  }
}

std::string to_str(const Value& v) {
  if (v.is(Kind::kString)) return v.str();
  std::string out;
  append_str(out, v);
  return out;
}

namespace {

void append_json_string(std::string& out, const std::string& s, bool ensure_ascii) {
  out += '"';
  for (char32_t cp : decode_utf8(s)) {
    switch (cp) {
      case U'"': out += "\\\""; break;
      case U'\\': out += "\\\\"; break;
      case U'\n': out += "\\n"; break;
      case U'\r': out += "\\r"; break;
      case U'\t': out += "\\t"; break;
      case U'\b': out += "\\b"; break;
      case U'\f': out += "\\f"; break;
      default:
        if (cp < 0x20) {
          out += fmt::format("\\u{:04x}", static_cast<uint32_t>(cp));
        } else if (ensure_ascii && cp > 0x7e) {
          if (cp >= 0x10000) {
            uint32_t v = static_cast<uint32_t>(cp) - 0x10000;
            out += fmt::format("\\u{:04x}\\u{:04x}", 0xd800 + (v >> 10), 0xdc00 + (v & 0x3ff));
          } else {
            out += fmt::format("\\u{:04x}", static_cast<uint32_t>(cp));
          }
        } else {
          append_utf8(out, cp);
        }
    }
  }
  out += '"';
}

std::string json_float(double d) {
  if (std::isnan(d)) return "NaN";
  if (std::isinf(d)) return d < 0 ? "-Infinity" : "Infinity";
  return float_repr(d);
}

void append_newline(std::string& out, const JsonStyle& style, int level) {
  out += '\n';
  for (int i = 0; i < level; ++i) out += style.indent;
}

}  // namespace

void append_json(std::string& out, const Value& v, const JsonStyle& style, int level) {
  switch (v.kind()) {
    case Kind::kNone: out += "null"; return;
    case Kind::kBool: out += v.as_bool() ? "true" : "false"; return;
    case Kind::kInt: out += std::to_string(v.as_int()); return;
    case Kind::kFloat: out += json_float(v.as_double()); return;
    case Kind::kString: append_json_string(out, v.str(), style.ensure_ascii); return;
    case Kind::kList: {
      const ListObj& l = v.list();
      if (l.generator) break;
      if (l.items.empty()) {
        out += "[]";
        return;
      }
      out += '[';
      for (size_t i = 0; i < l.items.size(); ++i) {
        if (i) out += style.item_separator;
        if (style.indented) append_newline(out, style, level + 1);
        append_json(out, l.items[i], style, level + 1);
      }
      if (style.indented) append_newline(out, style, level);
      out += ']';
      return;
    }
    case Kind::kDict: {
      const DictObj& d = v.dict();
      if (d.entries.empty()) {
        out += "{}";
        return;
      }
      std::vector<const std::pair<Value, Value>*> entries;
      for (const auto& e : d.entries) entries.push_back(&e);
      if (style.sort_keys) {
        std::stable_sort(entries.begin(), entries.end(),
                         [](const auto* a, const auto* b) { return compare(a->first, b->first) < 0; });
      }
      out += '{';
      for (size_t i = 0; i < entries.size(); ++i) {
        if (i) out += style.item_separator;
        if (style.indented) append_newline(out, style, level + 1);
        const Value& key = entries[i]->first;
        // json.dumps turns scalar keys into strings.
        if (key.is(Kind::kString)) {
          append_json_string(out, key.str(), style.ensure_ascii);
        } else if (key.is(Kind::kNone) || key.is(Kind::kBool) || key.is(Kind::kInt) ||
                   key.is(Kind::kFloat)) {
          std::string scalar;
          append_json(scalar, key, style, 0);
          out += '"';
          out += scalar;
          out += '"';
        } else {
          throw RenderError("keys must be str, int, float, bool or None, not " + type_name(key));
        }
        out += style.key_separator;
        append_json(out, entries[i]->second, style, level + 1);
      }
      if (style.indented) append_newline(out, style, level);
      out += '}';
      return;
    }
    default:
      break;
  }
  throw RenderError("Object of type " + type_name(v) + " is not JSON serializable");
}

Value from_json(const nlohmann::ordered_json& j, int depth) {
  if (depth > kMaxValueDepth) {
    throw RenderError(fmt::format("template exceeded the value nesting limit ({})", kMaxValueDepth));
  }
  switch (j.type()) {
    case nlohmann::ordered_json::value_t::null: return Value::none();
    case nlohmann::ordered_json::value_t::boolean: return Value::boolean(j.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer: return Value::integer(j.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_unsigned: {
      uint64_t u = j.get<uint64_t>();
      if (u <= static_cast<uint64_t>(INT64_MAX)) return Value::integer(static_cast<int64_t>(u));
      return Value::floating(static_cast<double>(u));
    }
    case nlohmann::ordered_json::value_t::number_float: return Value::floating(j.get<double>());
    case nlohmann::ordered_json::value_t::string: return Value::string(j.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      std::vector<Value> items;
      items.reserve(j.size());
      for (const auto& item : j) items.push_back(from_json(item, depth + 1));
      return Value::list(std::move(items));
    }
    case nlohmann::ordered_json::value_t::object: {
      auto d = std::make_shared<DictObj>();
      for (const auto& [key, item] : j.items()) d->set(Value::string(key), from_json(item, depth + 1));
      return Value::dict(std::move(d));
    }
    default:
      throw RenderError("unsupported JSON value in the template context");
  }
}

std::vector<char32_t> decode_utf8(std::string_view s) {
  // Invalid bytes decode to U+DC80..U+DCFF (Python's surrogateescape), so that encoding
  // the code points again reproduces the input bytes.
  std::vector<char32_t> out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
    bool ok = len > 0 && i + len <= s.size();
    char32_t cp = len == 1 ? c : len == 2 ? (c & 0x1f) : len == 3 ? (c & 0x0f) : (c & 0x07);
    for (size_t k = 1; ok && k < len; ++k) {
      unsigned char cc = static_cast<unsigned char>(s[i + k]);
      if ((cc >> 6) != 0x2) ok = false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    if (!ok) {
      out.push_back(0xdc00 + c);
      i += 1;
      continue;
    }
    out.push_back(cp);
    i += len;
  }
  return out;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp >= 0xdc80 && cp <= 0xdcff) {
    out += static_cast<char>(cp - 0xdc00);  // a raw byte kept by decode_utf8
  } else if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xc0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xe0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else {
    out += static_cast<char>(0xf0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  }
}

std::string encode_utf8(const std::vector<char32_t>& cps, size_t begin, size_t end) {
  std::string out;
  for (size_t i = begin; i < end; ++i) append_utf8(out, cps[i]);
  return out;
}

size_t count_code_points(std::string_view s) {
  size_t n = 0;
  for (char c : s) {
    if ((static_cast<unsigned char>(c) & 0xc0) != 0x80) ++n;
  }
  return n;
}

bool is_py_space(char32_t cp) {
  return (cp >= 0x09 && cp <= 0x0d) || (cp >= 0x1c && cp <= 0x20) || cp == 0x85 || cp == 0xa0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x202f || cp == 0x205f || cp == 0x3000;
}

}  // namespace mil::chat_template
