// jinja2's built-in filters (3.1 semantics) that chat templates use, and transformers'
// tojson. Filters that jinja2 implements as generators return generator values, because
// templates can observe the difference (a generator is always truthy and has no length).
#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <unordered_map>

#include "tokenizer/chat_template/builtins.h"
#include "tokenizer/chat_template/interpreter.h"

namespace mil::chat_template {

namespace {

using Filter = Value (*)(Interpreter&, const Value&, CallArgs&);

// make_attrgetter: "a.b.0" walks items (jinja2 uses getitem semantics here).
Value get_path(Interpreter& in, Value item, const Value& attribute) {
  if (attribute.is(Kind::kNone) || attribute.is_undefined()) return item;
  if (!attribute.is(Kind::kString)) return in.getitem(item, attribute);
  const std::string& path = attribute.str();
  size_t begin = 0;
  while (true) {
    size_t dot = path.find('.', begin);
    std::string part = path.substr(begin, dot == std::string::npos ? std::string::npos : dot - begin);
    bool digits = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
    item = in.getitem(item, digits ? Value::integer(std::stoll(part)) : Value::string(part));
    if (dot == std::string::npos) return item;
    begin = dot + 1;
  }
}

Value ignore_case(const Value& v, bool case_sensitive) {
  return !case_sensitive && v.is(Kind::kString) ? Value::string(to_lower(v.str())) : v;
}

Value default_filter(Interpreter&, const Value& v, CallArgs& args) {
  BoundArgs a(args, "default", {"default_value", "boolean"});
  if (v.is_undefined() || (truthy(a.get(1)) && !truthy(v))) return a.get_or(0, Value::string(""));
  return v;
}

Value length_filter(Interpreter&, const Value& v, CallArgs& args) {
  BoundArgs a(args, "length", {});
  switch (v.kind()) {
    case Kind::kUndefined: return Value::integer(0);
    case Kind::kString: return Value::integer(static_cast<int64_t>(count_code_points(v.str())));
    case Kind::kDict: return Value::integer(static_cast<int64_t>(v.dict().entries.size()));
    case Kind::kList:
      if (!v.list().generator) return Value::integer(static_cast<int64_t>(v.list().items.size()));
      [[fallthrough]];
    default:
      throw RenderError(fmt::format("object of type '{}' has no len()", type_name(v)));
  }
}

Value string_filter(Interpreter& in, const Value& v, CallArgs& args) {
  BoundArgs a(args, "string", {});
  return in.make_string(to_str(v));
}

Value trim_filter(Interpreter& in, const Value& v, CallArgs& args) {
  CallArgs method_args;
  method_args.positional = args.positional;
  for (auto& [k, value] : args.keyword) method_args.keyword.emplace_back(k, value);
  Value strip = find_method(Value::string(to_str(v)), "strip");
  return in.call(strip, method_args);
}

Value lower_filter(Interpreter&, const Value& v, CallArgs& args) {
  BoundArgs a(args, "lower", {});
  return Value::string(to_lower(to_str(v)));
}

Value upper_filter(Interpreter&, const Value& v, CallArgs& args) {
  BoundArgs a(args, "upper", {});
  return Value::string(to_upper(to_str(v)));
}

Value capitalize_filter(Interpreter&, const Value& v, CallArgs& args) {
  BoundArgs a(args, "capitalize", {});
  return Value::string(capitalize(to_str(v)));
}

Value title_filter(Interpreter&, const Value& v, CallArgs& args) {
  BoundArgs a(args, "title", {});
  return Value::string(title_case(to_str(v), true));
}

Value join_filter(Interpreter& in, const Value& v, CallArgs& args) {
  BoundArgs a(args, "join", {"d", "attribute"});
  std::string separator = a.has(0) ? to_str(a.get(0)) : "";
  std::string out;
  bool first = true;
  for (const Value& item : in.iterate(v)) {
    if (!first) out += separator;
    first = false;
    append_str(out, a.has(1) ? get_path(in, item, a.get(1)) : item);
    in.check_size(out.size());
  }
  return in.make_string(std::move(out));
}

Value first_filter(Interpreter& in, const Value& v, CallArgs& args) {
  BoundArgs a(args, "first", {});
  if (v.is(Kind::kList) && v.list().generator) {
    ListObj& l = v.list();
    if (l.consumed < l.items.size()) return l.items[l.consumed++];
  } else {
    std::vector<Value> items = in.iterate(v);
    if (!items.empty()) return items.front();
  }
  return Value::undefined("No first item, sequence was empty.");
}

Value last_filter(Interpreter& in, const Value& v, CallArgs& args) {
  BoundArgs a(args, "last", {});
  if (v.is(Kind::kList) && v.list().generator) throw RenderError("'generator' object is not reversible");
  std::vector<Value> items = in.iterate(v);
  if (!items.empty()) return items.back();
  return Value::undefined("No last item, sequence was empty.");
}

Value list_filter(Interpreter& in, const Value& v, CallArgs& args) {
  BoundArgs a(args, "list", {});
  return Value::list(in.iterate(v));
}

bool parse_int(std::string s, int64_t base, int64_t& out) {
  std::vector<char32_t> cps = decode_utf8(s);
  size_t b = 0, e = cps.size();
  while (b < e && is_py_space(cps[b])) ++b;
  while (e > b && is_py_space(cps[e - 1])) --e;
  std::string digits;
  for (size_t i = b; i < e; ++i) {
    if (cps[i] == '_' && i > b && i + 1 < e && cps[i - 1] != '_') continue;
    if (cps[i] >= 0x80) return false;
    digits += static_cast<char>(cps[i]);
  }
  if (digits.empty() || digits.find_first_of(" \t") != std::string::npos) return false;
  size_t start = digits[0] == '-' || digits[0] == '+' ? 1 : 0;
  if (start == digits.size() || digits[start] == '-' || digits[start] == '+') return false;
  errno = 0;
  char* end = nullptr;
  long long v = std::strtoll(digits.c_str(), &end, static_cast<int>(base));
  if (errno == ERANGE || *end != '\0') return false;
  out = v;
  return true;
}

bool parse_float(const std::string& s, double& out) {
  std::string t = s;
  size_t b = t.find_first_not_of(" \t\n\r\f\v"), e = t.find_last_not_of(" \t\n\r\f\v");
  if (b == std::string::npos) return false;
  t = t.substr(b, e - b + 1);
  if (t.find_first_of("xXpP") != std::string::npos && t.find_first_of("iI") == std::string::npos) return false;
  char* end = nullptr;
  out = std::strtod(t.c_str(), &end);
  return *end == '\0';
}

Value int_filter(Interpreter&, const Value& v, CallArgs& args) {
  BoundArgs a(args, "int", {"default", "base"});
  Value fallback = a.get_or(0, Value::integer(0));
  if (v.is(Kind::kInt) || v.is(Kind::kBool)) return Value::integer(v.as_int());
  if (v.is(Kind::kFloat)) {
    double d = v.as_double();
    if (std::isnan(d) || std::isinf(d) || std::fabs(d) >= 9.2e18) throw RenderError("cannot convert float to integer");
    return Value::integer(static_cast<int64_t>(d));
  }
  if (v.is(Kind::kString)) {
    int64_t i = 0;
    if (parse_int(v.str(), a.has(1) ? require_int(a.get(1), "base") : 10, i)) return Value::integer(i);
    double d = 0;
    if (parse_float(v.str(), d) && std::isfinite(d) && std::fabs(d) < 9.2e18) return Value::integer(static_cast<int64_t>(d));
  }
  return fallback;
}

Value float_filter(Interpreter&, const Value& v, CallArgs& args) {
  BoundArgs a(args, "float", {"default"});
  if (v.is_number()) return Value::floating(v.as_double());
  double d = 0;
  if (v.is(Kind::kString) && parse_float(v.str(), d)) return Value::floating(d);
  return a.get_or(0, Value::floating(0.0));
}

Value abs_filter(Interpreter&, const Value& v, CallArgs& args) {
  BoundArgs a(args, "abs", {});
  if (v.is(Kind::kFloat)) return Value::floating(std::fabs(v.as_double()));
  if (v.is_number()) {
    if (v.as_int() == INT64_MIN) throw RenderError("integer overflow");
    return Value::integer(v.as_int() < 0 ? -v.as_int() : v.as_int());
  }
  if (v.is_undefined()) fail_undefined(v);
  throw RenderError(fmt::format("bad operand type for abs(): '{}'", type_name(v)));
}

Value round_filter(Interpreter&, const Value& v, CallArgs& args) {
  BoundArgs a(args, "round", {"precision", "method"});
  int64_t precision = a.has(0) ? require_int(a.get(0), "precision") : 0;
  std::string method = a.has(1) ? to_str(a.get(1)) : "common";
  if (method != "common" && method != "ceil" && method != "floor") {
    throw RenderError("method must be common, ceil or floor");
  }
  if (v.is_undefined()) fail_undefined(v);
  if (!v.is_number()) throw RenderError(fmt::format("type {} doesn't define __round__ method", type_name(v)));
  if (method == "common") {
    if (!v.is(Kind::kFloat)) return Value::integer(v.as_int());  // round(int, n) stays an int
    double d = v.as_double();
    if (!std::isfinite(d)) return v;
    if (precision >= 0) {
      // Correctly rounded decimal conversion, as CPython's float round does.
      std::string text = fmt::format("{:.{}f}", d, std::min<int64_t>(precision, 300));
      return Value::floating(std::strtod(text.c_str(), nullptr));
    }
    double scale = std::pow(10.0, static_cast<double>(-precision));
    return Value::floating(std::nearbyint(d / scale) * scale);
  }
  double scale = std::pow(10.0, static_cast<double>(precision));
  double x = v.as_double() * scale;
  return Value::floating((method == "ceil" ? std::ceil(x) : std::floor(x)) / scale);
}

Value replace_filter(Interpreter& in, const Value& v, CallArgs& args) {
  BoundArgs a(args, "replace", {"old", "new", "count"});
  CallArgs method_args;
  method_args.positional = {Value::string(to_str(a.get(0))), Value::string(to_str(a.get(1)))};
  if (a.has(2) && !a.get(2).is(Kind::kNone)) method_args.positional.push_back(a.get(2));
  return in.call(find_method(Value::string(to_str(v)), "replace"), method_args);
}

Value items_filter(Interpreter&, const Value& v, CallArgs& args) {
  BoundArgs a(args, "items", {});
  if (v.is_undefined()) return Value::generator({});
  if (!v.is(Kind::kDict)) throw RenderError("Can only get item pairs from a mapping.");
  std::vector<Value> pairs;
  for (const auto& [k, value] : v.dict().entries) pairs.push_back(Value::list({k, value}, true));
  return Value::generator(std::move(pairs));
}

// Python's stable sort; `reverse` keeps equal items in their original order, as sorted() does.
void sort_by_keys(std::vector<Value>& items, std::vector<Value>& keys, bool reverse) {
  std::vector<size_t> order(items.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t x, size_t y) {
    return reverse ? compare(keys[y], keys[x]) < 0 : compare(keys[x], keys[y]) < 0;
  });
  std::vector<Value> sorted;
  for (size_t i : order) sorted.push_back(items[i]);
  items = std::move(sorted);
}

Value dictsort_filter(Interpreter& in, const Value& v, CallArgs& args) {
  BoundArgs a(args, "dictsort", {"case_sensitive", "by", "reverse"});
  if (!v.is(Kind::kDict)) throw RenderError("dictsort expects a mapping");
  std::string by = a.has(1) ? to_str(a.get(1)) : "key";
  if (by != "key" && by != "value") throw RenderError("You can only sort by either \"key\" or \"value\"");
  std::vector<Value> items, keys;
  for (const auto& [k, value] : v.dict().entries) {
    items.push_back(Value::list({k, value}, true));
    keys.push_back(ignore_case(by == "key" ? k : value, truthy(a.get(0))));
  }
  in.charge(static_cast<int64_t>(items.size()));
  sort_by_keys(items, keys, truthy(a.get(2)));
  return Value::list(std::move(items));
}

Value sort_filter(Interpreter& in, const Value& v, CallArgs& args) {
  BoundArgs a(args, "sort", {"reverse", "case_sensitive", "attribute"});
  std::vector<Value> items = in.iterate(v);
  std::vector<Value> keys;
  for (const Value& item : items) {
    if (a.has(2) && a.get(2).is(Kind::kString) && a.get(2).str().find(',') != std::string::npos) {
      std::vector<Value> parts;  // "a,b": a tuple key
      std::string spec = a.get(2).str();
      size_t begin = 0;
      while (true) {
        size_t comma = spec.find(',', begin);
        Value part = Value::string(spec.substr(begin, comma == std::string::npos ? std::string::npos : comma - begin));
        parts.push_back(ignore_case(get_path(in, item, part), truthy(a.get(1))));
        if (comma == std::string::npos) break;
        begin = comma + 1;
      }
      keys.push_back(Value::list(std::move(parts), true));
    } else {
      keys.push_back(ignore_case(get_path(in, item, a.get(2)), truthy(a.get(1))));
    }
  }
  sort_by_keys(items, keys, truthy(a.get(0)));
  return Value::list(std::move(items));
}

Value select_common(Interpreter& in, const Value& v, CallArgs& args, bool by_attribute, bool keep) {
  size_t offset = by_attribute ? 1 : 0;
  if (by_attribute && args.positional.empty()) throw RenderError("Missing parameter for attribute name");
  std::vector<Value> out;
  for (const Value& item : in.iterate(v)) {
    Value subject = by_attribute ? get_path(in, item, args.positional[0]) : item;
    bool passed;
    if (args.positional.size() > offset) {
      CallArgs test_args;
      test_args.positional.assign(args.positional.begin() + static_cast<std::ptrdiff_t>(offset) + 1, args.positional.end());
      test_args.keyword = args.keyword;
      passed = apply_test(in, to_str(args.positional[offset]), subject, test_args);
    } else {
      passed = truthy(subject);
    }
    if (passed == keep) out.push_back(item);
  }
  return Value::generator(std::move(out));
}

Value select_filter(Interpreter& in, const Value& v, CallArgs& args) { return select_common(in, v, args, false, true); }
Value reject_filter(Interpreter& in, const Value& v, CallArgs& args) { return select_common(in, v, args, false, false); }
Value selectattr_filter(Interpreter& in, const Value& v, CallArgs& args) { return select_common(in, v, args, true, true); }
Value rejectattr_filter(Interpreter& in, const Value& v, CallArgs& args) { return select_common(in, v, args, true, false); }

Value map_filter(Interpreter& in, const Value& v, CallArgs& args) {
  std::vector<Value> out;
  if (args.positional.empty()) {
    BoundArgs a(args, "map", {"attribute", "default"});
    if (!a.has(0)) throw RenderError("map requires a filter argument");
    for (const Value& item : in.iterate(v)) {
      Value x = get_path(in, item, a.get(0));
      out.push_back(x.is_undefined() && a.has(1) && !a.get(1).is(Kind::kNone) ? a.get(1) : x);
    }
  } else {
    std::string name = to_str(args.positional[0]);
    for (const Value& item : in.iterate(v)) {
      CallArgs filter_args;
      filter_args.positional.assign(args.positional.begin() + 1, args.positional.end());
      filter_args.keyword = args.keyword;
      out.push_back(apply_filter(in, name, item, filter_args));
    }
  }
  return Value::generator(std::move(out));
}

Value unique_filter(Interpreter& in, const Value& v, CallArgs& args) {
  BoundArgs a(args, "unique", {"case_sensitive", "attribute"});
  std::vector<Value> out, seen;
  for (const Value& item : in.iterate(v)) {
    Value key = ignore_case(get_path(in, item, a.get(1)), truthy(a.get(0)));
    if (std::none_of(seen.begin(), seen.end(), [&](const Value& s) { return equals(s, key); })) {
      in.charge(static_cast<int64_t>(seen.size()));
      seen.push_back(key);
      out.push_back(item);
    }
  }
  return Value::generator(std::move(out));
}

Value reverse_filter(Interpreter& in, const Value& v, CallArgs& args) {
  BoundArgs a(args, "reverse", {});
  if (v.is(Kind::kString)) {
    std::vector<char32_t> cps = decode_utf8(v.str());
    std::reverse(cps.begin(), cps.end());
    return Value::string(encode_utf8(cps, 0, cps.size()));
  }
  if (v.is(Kind::kList) && v.list().generator) throw RenderError("argument to reversed() must be a sequence");
  std::vector<Value> items = in.iterate(v);
  std::reverse(items.begin(), items.end());
  return Value::generator(std::move(items));  // Python's reversed() is an iterator
}

Value safe_filter(Interpreter&, const Value& v, CallArgs& args) {
  BoundArgs a(args, "safe", {});
  return Value::string(to_str(v));
}

Value escape_filter(Interpreter& in, const Value& v, CallArgs& args) {
  BoundArgs a(args, "escape", {});
  std::string out;
  for (char c : to_str(v)) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return in.make_string(std::move(out));
}

// Python's str.splitlines on the separators that matter in practice.
std::vector<std::string> split_lines(const std::string& s) {
  std::vector<std::string> lines;
  size_t begin = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c != '\n' && c != '\r' && c != '\v' && c != '\f' && c != '\x1c' && c != '\x1d' && c != '\x1e') continue;
    lines.push_back(s.substr(begin, i - begin));
    if (c == '\r' && i + 1 < s.size() && s[i + 1] == '\n') ++i;
    begin = i + 1;
  }
  if (begin < s.size()) lines.push_back(s.substr(begin));
  return lines;
}

Value indent_filter(Interpreter& in, const Value& v, CallArgs& args) {
  BoundArgs a(args, "indent", {"width", "first", "blank"});
  std::string indentation;
  if (a.get(0).is(Kind::kString)) {
    indentation = a.get(0).str();
  } else {
    int64_t width = a.has(0) ? require_int(a.get(0), "width") : 4;
    if (width > 4096) throw RenderError("indent width too large");
    indentation.assign(static_cast<size_t>(std::max<int64_t>(width, 0)), ' ');
  }
  std::vector<std::string> lines = split_lines(to_str(v) + "\n");
  std::string out;
  for (size_t i = 0; i < lines.size(); ++i) {
    if (i > 0) {
      out += '\n';
      if (truthy(a.get(2)) || !lines[i].empty()) out += indentation;
    }
    out += lines[i];
    in.check_size(out.size());
  }
  if (truthy(a.get(1))) out = indentation + out;
  return in.make_string(std::move(out));
}

Value wordcount_filter(Interpreter&, const Value& v, CallArgs& args) {
  BoundArgs a(args, "wordcount", {});
  int64_t words = 0;
  bool in_word = false;
  for (char32_t c : decode_utf8(to_str(v))) {
    bool word = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
                (c >= 0x80 && !is_py_space(c));
    if (word && !in_word) ++words;
    in_word = word;
  }
  return Value::integer(words);
}

// transformers' tojson: json.dumps(x, ensure_ascii=False, indent=None, separators=None,
// sort_keys=False), without jinja2's HTML escaping.
Value tojson_filter(Interpreter& in, const Value& v, CallArgs& args) {
  BoundArgs a(args, "tojson", {"ensure_ascii", "indent", "separators", "sort_keys"});
  JsonStyle style;
  style.ensure_ascii = truthy(a.get(0));
  style.sort_keys = truthy(a.get(3));
  const Value& indent = a.get(1);
  if (indent.is(Kind::kString)) {
    style.indented = true;
    style.indent = indent.str();
  } else if (indent.is(Kind::kInt)) {
    if (indent.as_int() > 4096) throw RenderError("indent too large");
    style.indented = true;
    style.indent.assign(static_cast<size_t>(std::max<int64_t>(indent.as_int(), 0)), ' ');
  }
  if (style.indented) style.item_separator = ",";
  const Value& separators = a.get(2);
  if (separators.is(Kind::kList) && separators.list().items.size() == 2) {
    style.item_separator = to_str(separators.list().items[0]);
    style.key_separator = to_str(separators.list().items[1]);
  }
  std::string out;
  append_json(out, v, style);
  return in.make_string(std::move(out));
}

Value sum_filter(Interpreter& in, const Value& v, CallArgs& args) {
  BoundArgs a(args, "sum", {"attribute", "start"});
  Value total = a.get_or(1, Value::integer(0));
  for (const Value& item : in.iterate(v)) {
    Value x = get_path(in, item, a.get(0));
    if (!x.is_number() || !total.is_number()) throw RenderError("sum() supports numbers only");
    int64_t r = 0;
    if (x.is(Kind::kFloat) || total.is(Kind::kFloat)) total = Value::floating(total.as_double() + x.as_double());
    else if (__builtin_add_overflow(total.as_int(), x.as_int(), &r)) throw RenderError("integer overflow");
    else total = Value::integer(r);
  }
  return total;
}

Value min_max(Interpreter& in, const Value& v, CallArgs& args, bool want_max) {
  BoundArgs a(args, want_max ? "max" : "min", {"case_sensitive", "attribute"});
  std::vector<Value> items = in.iterate(v);
  if (items.empty()) return Value::undefined(fmt::format("No aggregated item, sequence was empty."));
  size_t best = 0;
  Value best_key = ignore_case(get_path(in, items[0], a.get(1)), truthy(a.get(0)));
  for (size_t i = 1; i < items.size(); ++i) {
    Value key = ignore_case(get_path(in, items[i], a.get(1)), truthy(a.get(0)));
    int c = compare(key, best_key);
    if (want_max ? c > 0 : c < 0) {
      best = i;
      best_key = key;
    }
  }
  return items[best];
}

Value min_filter(Interpreter& in, const Value& v, CallArgs& args) { return min_max(in, v, args, false); }
Value max_filter(Interpreter& in, const Value& v, CallArgs& args) { return min_max(in, v, args, true); }

Value batch_filter(Interpreter& in, const Value& v, CallArgs& args) {
  BoundArgs a(args, "batch", {"linecount", "fill_with"});
  int64_t size = require_int(a.get(0), "linecount");
  if (size <= 0) throw RenderError("batch size must be positive");
  std::vector<Value> batches, current;
  for (const Value& item : in.iterate(v)) {
    if (static_cast<int64_t>(current.size()) == size) {
      batches.push_back(Value::list(std::move(current)));
      current.clear();
    }
    current.push_back(item);
  }
  if (!current.empty()) {
    if (a.has(1) && !a.get(1).is(Kind::kNone)) {
      while (static_cast<int64_t>(current.size()) < size) current.push_back(a.get(1));
    }
    batches.push_back(Value::list(std::move(current)));
  }
  return Value::generator(std::move(batches));
}

Value attr_filter(Interpreter& in, const Value& v, CallArgs& args) {
  BoundArgs a(args, "attr", {"name"});
  std::string name = to_str(a.get(0));
  if (v.is(Kind::kDict)) return find_method(v, name);  // attributes, not items
  return in.getattr(v, name);
}

Value center_filter(Interpreter& in, const Value& v, CallArgs& args) {
  BoundArgs a(args, "center", {"width"});
  std::string s = to_str(v);
  int64_t width = a.has(0) ? require_int(a.get(0), "width") : 80;
  int64_t length = static_cast<int64_t>(count_code_points(s));
  if (width <= length) return Value::string(s);
  in.check_size(static_cast<size_t>(width));
  int64_t margin = width - length;
  int64_t left = margin / 2 + (margin & width & 1);  // CPython's str.center
  return in.make_string(std::string(static_cast<size_t>(left), ' ') + s +
                        std::string(static_cast<size_t>(margin - left), ' '));
}

Value format_filter(Interpreter& in, const Value& v, CallArgs& args) {
  if (!args.positional.empty() && !args.keyword.empty()) {
    throw RenderError("can't handle positional and keyword arguments at the same time");
  }
  Value values;
  if (!args.keyword.empty()) {
    auto d = std::make_shared<DictObj>();
    for (const auto& [k, x] : args.keyword) d->set(Value::string(k), x);
    values = Value::dict(std::move(d));
  } else {
    values = Value::list(args.positional, true);
  }
  return in.make_string(percent_format(in, to_str(v), values));
}

const std::unordered_map<std::string, Filter>& filters() {
  static const std::unordered_map<std::string, Filter> kFilters = {
      {"default", default_filter},   {"d", default_filter},           {"length", length_filter},
      {"count", length_filter},      {"string", string_filter},       {"trim", trim_filter},
      {"lower", lower_filter},       {"upper", upper_filter},         {"capitalize", capitalize_filter},
      {"title", title_filter},       {"join", join_filter},           {"first", first_filter},
      {"last", last_filter},         {"list", list_filter},           {"int", int_filter},
      {"float", float_filter},       {"abs", abs_filter},             {"round", round_filter},
      {"replace", replace_filter},   {"items", items_filter},         {"dictsort", dictsort_filter},
      {"sort", sort_filter},         {"select", select_filter},       {"reject", reject_filter},
      {"selectattr", selectattr_filter}, {"rejectattr", rejectattr_filter}, {"map", map_filter},
      {"unique", unique_filter},     {"reverse", reverse_filter},     {"safe", safe_filter},
      {"escape", escape_filter},     {"e", escape_filter},            {"forceescape", escape_filter},
      {"indent", indent_filter},     {"wordcount", wordcount_filter}, {"tojson", tojson_filter},
      {"sum", sum_filter},           {"min", min_filter},             {"max", max_filter},
      {"batch", batch_filter},       {"attr", attr_filter},           {"center", center_filter},
      {"format", format_filter},
  };
  return kFilters;
}

}  // namespace

bool is_known_filter(const std::string& name) { return filters().count(name) > 0; }

Value apply_filter(Interpreter& in, const std::string& name, const Value& subject, CallArgs& args) {
  auto it = filters().find(name);
  if (it == filters().end()) throw RenderError(fmt::format("no filter named '{}'", name));
  return it->second(in, subject, args);
}

}  // namespace mil::chat_template
