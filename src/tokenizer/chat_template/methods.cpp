// Methods of strings, lists and dicts (the whitelist the sandbox exposes), argument binding,
// and Python's two string-formatting mini-languages in the forms templates use.
#include <fmt/format.h>

#include <algorithm>
#include <set>

#include "tokenizer/chat_template/builtins.h"
#include "tokenizer/chat_template/interpreter.h"

namespace mil::chat_template {

BoundArgs::BoundArgs(CallArgs& args, const char* function, std::initializer_list<const char*> params,
                     bool allow_extra_positional)
    : values_(params.size(), nullptr) {
  std::vector<const char*> names(params);
  for (size_t i = 0; i < args.positional.size(); ++i) {
    if (i < names.size()) {
      values_[i] = &args.positional[i];
    } else if (allow_extra_positional) {
      extra_.push_back(args.positional[i]);
    } else {
      throw RenderError(fmt::format("{}() takes at most {} argument(s) ({} given)", function, names.size(),
                                    args.positional.size()));
    }
  }
  for (const auto& [key, value] : args.keyword) {
    auto it = std::find_if(names.begin(), names.end(), [&](const char* n) { return key == n; });
    if (it == names.end()) throw RenderError(fmt::format("{}() got an unexpected keyword argument '{}'", function, key));
    size_t i = static_cast<size_t>(it - names.begin());
    if (values_[i]) throw RenderError(fmt::format("{}() got multiple values for argument '{}'", function, key));
    values_[i] = &value;
  }
}

const Value& BoundArgs::get(size_t i) const {
  static const Value kUndefined;
  return values_[i] ? *values_[i] : kUndefined;
}

namespace {

// Simple case mapping for ASCII, Latin-1, Latin Extended-A, Greek and Cyrillic, which covers
// the text templates case-convert in practice (roles, names); other scripts stay as they are.
char32_t lower_cp(char32_t c) {
  if ((c >= 'A' && c <= 'Z') || (c >= 0xc0 && c <= 0xde && c != 0xd7)) return c + 32;
  if (c >= 0x100 && c <= 0x17f && c != 0x130 && c != 0x138 && c != 0x149 && c != 0x178 && c != 0x17f) {
    bool odd_upper = (c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17e);
    return (c % 2 == (odd_upper ? 1 : 0)) ? c + 1 : c;
  }
  if (c == 0x178) return 0xff;
  if ((c >= 0x391 && c <= 0x3ab && c != 0x3a2) || (c >= 0x410 && c <= 0x42f)) return c + 32;
  if (c >= 0x400 && c <= 0x40f) return c + 80;
  if (c == 0x386) return 0x3ac;
  if (c >= 0x388 && c <= 0x38a) return c + 37;
  if (c == 0x38c) return 0x3cc;
  if (c == 0x38e || c == 0x38f) return c + 63;
  if (c == 0x3cf) return 0x3d7;
  return c;
}

char32_t upper_cp(char32_t c) {
  if ((c >= 'a' && c <= 'z') || (c >= 0xe0 && c <= 0xfe && c != 0xf7)) return c - 32;
  if (c == 0xff) return 0x178;
  if (c == 0xb5) return 0x39c;
  if (c >= 0x100 && c <= 0x17f && c != 0x131 && c != 0x138 && c != 0x149 && c != 0x17f) {
    bool odd_upper = (c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17e);
    return (c % 2 == (odd_upper ? 0 : 1)) ? c - 1 : c;
  }
  if (c == 0x131) return 'I';
  if (c == 0x3c2) return 0x3a3;
  if ((c >= 0x3b1 && c <= 0x3cb && c != 0x3c2) || (c >= 0x430 && c <= 0x44f)) return c - 32;
  if (c >= 0x450 && c <= 0x45f) return c - 80;
  if (c == 0x3ac) return 0x386;
  if (c >= 0x3ad && c <= 0x3af) return c - 37;
  if (c == 0x3cc) return 0x38c;
  if (c == 0x3cd || c == 0x3ce) return c - 63;
  if (c == 0x3d7) return 0x3cf;
  return c;
}

template <typename Map>
std::string map_case(const std::string& s, Map map, bool upper) {
  bool ascii = std::all_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; });
  std::string out;
  out.reserve(s.size());
  if (ascii) {
    for (char c : s) out += static_cast<char>(map(static_cast<char32_t>(c)));
    return out;
  }
  for (char32_t c : decode_utf8(s)) {
    // Python's special cases that change the length.
    if (upper && c == 0xdf) {
      out += "SS";
    } else if (!upper && c == 0x130) {
      out += "i\xcc\x87";
    } else if (upper && (c == 0x390 || c == 0x3b0)) {
      append_utf8(out, c == 0x390 ? 0x399 : 0x3a5);
      out += "\xcc\x88\xcc\x81";
    } else {
      append_utf8(out, map(c));
    }
  }
  return out;
}

}  // namespace

std::string to_lower(std::string s) { return map_case(s, lower_cp, false); }
std::string to_upper(std::string s) { return map_case(s, upper_cp, true); }

std::string capitalize(const std::string& s) {
  std::vector<char32_t> cps = decode_utf8(s);
  if (cps.empty()) return s;
  std::string first;
  append_utf8(first, cps[0]);
  return to_upper(first) + to_lower(encode_utf8(cps, 1, cps.size()));
}

std::string title_case(const std::string& s, bool jinja_words) {
  std::string out;
  bool word_start = true;
  for (char32_t c : decode_utf8(s)) {
    bool cased = lower_cp(c) != c || upper_cp(c) != c || c == 0xdf || c == 0xb5 || c == 0x138 || c == 0x149 ||
                 c == 0x17f || c == 0x390 || c == 0x3b0;
    // jinja2's title filter starts words after whitespace, '-', '(', '{', '[', '<';
    // Python's str.title after any character without case.
    bool boundary = jinja_words ? (is_py_space(c) || c == '-' || c == '(' || c == '{' || c == '[' || c == '<') : !cased;
    std::string piece;
    append_utf8(piece, c);
    if (boundary) {
      out += piece;
      word_start = true;
      continue;
    }
    out += word_start ? to_upper(piece) : to_lower(piece);
    word_start = false;
  }
  return out;
}

int64_t require_int(const Value& v, const char* what) {
  if (v.is(Kind::kInt) || v.is(Kind::kBool)) return v.as_int();
  if (v.is_undefined()) fail_undefined(v);
  throw RenderError(fmt::format("{} must be an integer, not '{}'", what, type_name(v)));
}

namespace {

const std::string& require_string(const Value& v, const char* what) {
  if (v.is(Kind::kString)) return v.str();
  if (v.is_undefined()) fail_undefined(v);
  throw RenderError(fmt::format("{} must be str, not {}", what, type_name(v)));
}

bool is_alpha(char32_t c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c >= 0x80; }
bool is_digit(char32_t c) { return c >= '0' && c <= '9'; }

// Python's str.strip family; `chars` null means whitespace.
std::string strip(const std::string& s, const Value& chars, bool left, bool right) {
  std::vector<char32_t> cps = decode_utf8(s);
  std::vector<char32_t> set;
  bool whitespace = chars.is(Kind::kNone) || chars.is_undefined();
  if (!whitespace) set = decode_utf8(require_string(chars, "strip arg"));
  auto strippable = [&](char32_t c) {
    return whitespace ? is_py_space(c) : std::find(set.begin(), set.end(), c) != set.end();
  };
  size_t begin = 0, end = cps.size();
  if (left) {
    while (begin < end && strippable(cps[begin])) ++begin;
  }
  if (right) {
    while (end > begin && strippable(cps[end - 1])) --end;
  }
  return encode_utf8(cps, begin, end);
}

// Python's str.split / str.rsplit.
std::vector<Value> split(const std::string& s, const Value& sep, int64_t maxsplit, bool from_right) {
  std::vector<std::string> parts;
  if (sep.is(Kind::kNone) || sep.is_undefined()) {
    std::vector<char32_t> cps = decode_utf8(s);
    std::vector<std::pair<size_t, size_t>> words;
    size_t i = 0;
    while (i < cps.size()) {
      while (i < cps.size() && is_py_space(cps[i])) ++i;
      if (i == cps.size()) break;
      size_t j = i;
      while (j < cps.size() && !is_py_space(cps[j])) ++j;
      words.emplace_back(i, j);
      i = j;
    }
    size_t n = words.size();
    if (maxsplit >= 0 && n > static_cast<size_t>(maxsplit) + 1) {
      // The last (or first, from the right) piece keeps the rest of the text as is,
      // including its outer whitespace.
      size_t keep = static_cast<size_t>(maxsplit);
      if (!from_right) {
        for (size_t k = 0; k < keep; ++k) parts.push_back(encode_utf8(cps, words[k].first, words[k].second));
        parts.push_back(encode_utf8(cps, words[keep].first, cps.size()));
      } else {
        parts.push_back(encode_utf8(cps, 0, words[n - keep - 1].second));
        for (size_t k = n - keep; k < n; ++k) parts.push_back(encode_utf8(cps, words[k].first, words[k].second));
      }
    } else {
      for (const auto& [b, e] : words) parts.push_back(encode_utf8(cps, b, e));
    }
  } else {
    const std::string& sp = require_string(sep, "separator");
    if (sp.empty()) throw RenderError("empty separator");
    std::vector<size_t> cuts;
    for (size_t p = s.find(sp); p != std::string::npos; p = s.find(sp, p + sp.size())) cuts.push_back(p);
    if (maxsplit >= 0 && cuts.size() > static_cast<size_t>(maxsplit)) {
      if (from_right) {
        cuts.erase(cuts.begin(), cuts.end() - maxsplit);
      } else {
        cuts.resize(static_cast<size_t>(maxsplit));
      }
    }
    size_t begin = 0;
    for (size_t c : cuts) {
      parts.push_back(s.substr(begin, c - begin));
      begin = c + sp.size();
    }
    parts.push_back(s.substr(begin));
  }
  std::vector<Value> out;
  for (auto& p : parts) out.push_back(Value::string(std::move(p)));
  return out;
}

std::string replace_all(Interpreter& in, const std::string& s, const std::string& from, const std::string& to,
                        int64_t count) {
  std::string out;
  int64_t done = 0;
  if (from.empty()) {  // Python inserts `to` around every character
    std::vector<char32_t> cps = decode_utf8(s);
    for (size_t i = 0; i <= cps.size(); ++i) {
      if (count < 0 || done < count) {
        out += to;
        ++done;
      }
      if (i < cps.size()) append_utf8(out, cps[i]);
      in.check_size(out.size());
    }
    return out;
  }
  size_t begin = 0;
  for (size_t p = s.find(from); p != std::string::npos && (count < 0 || done < count); p = s.find(from, begin)) {
    out.append(s, begin, p - begin);
    out += to;
    begin = p + from.size();
    ++done;
    in.check_size(out.size());
  }
  out.append(s, begin, std::string::npos);
  return out;
}

bool affix_matches(const std::string& s, const Value& affix, bool prefix) {
  auto one = [&](const std::string& a) {
    return a.size() <= s.size() && s.compare(prefix ? 0 : s.size() - a.size(), a.size(), a) == 0;
  };
  if (affix.is(Kind::kList) && affix.list().tuple) {
    return std::any_of(affix.list().items.begin(), affix.list().items.end(),
                       [&](const Value& a) { return one(require_string(a, "affix")); });
  }
  return one(require_string(affix, prefix ? "startswith first arg" : "endswith first arg"));
}

// str.format with positional ({} {0}) and named ({name}) fields, !r/!s, no format specs.
std::string str_format(Interpreter& in, const std::string& format, CallArgs& args) {
  std::string out;
  size_t auto_index = 0;
  for (size_t i = 0; i < format.size(); ++i) {
    char c = format[i];
    if (c == '}' ) {
      if (i + 1 < format.size() && format[i + 1] == '}') ++i;
      else throw RenderError("single '}' encountered in format string");
      out += '}';
      continue;
    }
    if (c != '{') {
      out += c;
      continue;
    }
    if (i + 1 < format.size() && format[i + 1] == '{') {
      out += '{';
      ++i;
      continue;
    }
    size_t close = format.find('}', i);
    if (close == std::string::npos) throw RenderError("single '{' encountered in format string");
    std::string field = format.substr(i + 1, close - i - 1);
    i = close;
    char conversion = 's';
    if (size_t bang = field.find('!'); bang != std::string::npos) {
      conversion = bang + 1 < field.size() ? field[bang + 1] : 's';
      field.resize(bang);
    }
    if (field.find(':') != std::string::npos || field.find('.') != std::string::npos ||
        field.find('[') != std::string::npos) {
      throw RenderError("unsupported str.format field '{" + field + "}'");
    }
    const Value* value = nullptr;
    if (field.empty() || std::all_of(field.begin(), field.end(), [](char d) { return d >= '0' && d <= '9'; })) {
      size_t index = field.empty() ? auto_index++ : std::stoul(field);
      if (index >= args.positional.size()) throw RenderError("Replacement index out of range for positional args tuple");
      value = &args.positional[index];
    } else {
      for (const auto& [key, v] : args.keyword) {
        if (key == field) value = &v;
      }
      if (!value) throw RenderError("KeyError: '" + field + "'");
    }
    if (conversion == 'r') append_repr(out, *value);
    else append_str(out, *value);
    in.check_size(out.size());
  }
  return out;
}

Value string_method(Interpreter& in, const std::string& s, const std::string& name, CallArgs& args) {
  if (name == "startswith" || name == "endswith") {
    BoundArgs a(args, name.c_str(), {"prefix"});
    return Value::boolean(affix_matches(s, a.get(0), name == "startswith"));
  }
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    BoundArgs a(args, name.c_str(), {"chars"});
    return Value::string(strip(s, a.get_or(0, Value::none()), name != "rstrip", name != "lstrip"));
  }
  if (name == "split" || name == "rsplit") {
    BoundArgs a(args, name.c_str(), {"sep", "maxsplit"});
    int64_t maxsplit = a.has(1) ? require_int(a.get(1), "maxsplit") : -1;
    return Value::list(split(s, a.get_or(0, Value::none()), maxsplit, name == "rsplit"));
  }
  if (name == "replace") {
    BoundArgs a(args, name.c_str(), {"old", "new", "count"});
    int64_t count = a.has(2) ? require_int(a.get(2), "count") : -1;
    return in.make_string(replace_all(in, s, require_string(a.get(0), "replace arg"),
                                      require_string(a.get(1), "replace arg"), count));
  }
  if (name == "upper" || name == "lower" || name == "title" || name == "capitalize" || name == "swapcase") {
    BoundArgs a(args, name.c_str(), {});
    if (name == "upper") return Value::string(to_upper(s));
    if (name == "lower") return Value::string(to_lower(s));
    if (name == "title") return Value::string(title_case(s, false));
    if (name == "capitalize") return Value::string(capitalize(s));
    std::string out = s;
    for (char& c : out) c = (c >= 'a' && c <= 'z') ? static_cast<char>(c - 32) : (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c;
    return Value::string(out);
  }
  if (name == "find" || name == "rfind" || name == "index" || name == "rindex" || name == "count") {
    BoundArgs a(args, name.c_str(), {"sub"});
    const std::string& sub = require_string(a.get(0), "substring");
    if (name == "count") {
      if (sub.empty()) return Value::integer(static_cast<int64_t>(count_code_points(s)) + 1);
      int64_t n = 0;
      for (size_t p = s.find(sub); p != std::string::npos; p = s.find(sub, p + sub.size())) ++n;
      return Value::integer(n);
    }
    size_t p = name[0] == 'r' ? s.rfind(sub) : s.find(sub);
    if (p == std::string::npos) {
      if (name == "index" || name == "rindex") throw RenderError("substring not found");
      return Value::integer(-1);
    }
    return Value::integer(static_cast<int64_t>(count_code_points(std::string_view(s).substr(0, p))));
  }
  if (name == "join") {
    BoundArgs a(args, name.c_str(), {"iterable"});
    std::string out;
    bool first = true;
    for (const Value& item : in.iterate(a.get(0))) {
      if (!first) out += s;
      first = false;
      out += require_string(item, "sequence item");
      in.check_size(out.size());
    }
    return in.make_string(std::move(out));
  }
  if (name == "removeprefix" || name == "removesuffix") {
    BoundArgs a(args, name.c_str(), {"affix"});
    const std::string& affix = require_string(a.get(0), "affix");
    if (!affix_matches(s, a.get(0), name == "removeprefix")) return Value::string(s);
    return Value::string(name == "removeprefix" ? s.substr(affix.size()) : s.substr(0, s.size() - affix.size()));
  }
  if (name == "splitlines") {
    BoundArgs a(args, name.c_str(), {"keepends"});
    std::vector<Value> lines;
    size_t begin = 0;
    for (size_t i = 0; i < s.size(); ++i) {
      if (s[i] != '\n' && s[i] != '\r') continue;
      size_t end = i;
      if (s[i] == '\r' && i + 1 < s.size() && s[i + 1] == '\n') ++i;
      lines.push_back(Value::string(s.substr(begin, (truthy(a.get(0)) ? i + 1 : end) - begin)));
      begin = i + 1;
    }
    if (begin < s.size()) lines.push_back(Value::string(s.substr(begin)));
    return Value::list(std::move(lines));
  }
  if (name == "format") return in.make_string(str_format(in, s, args));
  if (name.size() > 2 && name.compare(0, 2, "is") == 0) {
    BoundArgs a(args, name.c_str(), {});
    std::vector<char32_t> cps = decode_utf8(s);
    auto all = [&](auto pred) { return !cps.empty() && std::all_of(cps.begin(), cps.end(), pred); };
    bool has_lower = std::any_of(cps.begin(), cps.end(), [](char32_t c) { return c >= 'a' && c <= 'z'; });
    bool has_upper = std::any_of(cps.begin(), cps.end(), [](char32_t c) { return c >= 'A' && c <= 'Z'; });
    if (name == "isdigit" || name == "isdecimal" || name == "isnumeric") return Value::boolean(all(is_digit));
    if (name == "isalpha") return Value::boolean(all(is_alpha));
    if (name == "isalnum") return Value::boolean(all([](char32_t c) { return is_alpha(c) || is_digit(c); }));
    if (name == "isspace") return Value::boolean(all(is_py_space));
    if (name == "islower") return Value::boolean(has_lower && !has_upper);
    if (name == "isupper") return Value::boolean(has_upper && !has_lower);
  }
  throw RenderError(fmt::format("'str' object has no attribute '{}'", name));
}

Value list_method(Interpreter& in, const Value& list, const std::string& name, CallArgs& args) {
  BoundArgs a(args, name.c_str(), {"value"});
  std::vector<Value> items = in.iterate(list);
  int64_t count = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    if (!equals(items[i], a.get(0))) continue;
    if (name == "index") return Value::integer(static_cast<int64_t>(i));
    ++count;
  }
  if (name == "index") throw RenderError("value is not in list");
  return Value::integer(count);
}

Value dict_method(const Value& dict, const std::string& name, CallArgs& args) {
  if (name == "get") {
    BoundArgs a(args, "get", {"key", "default"});
    const Value* v = dict.dict().find(a.get(0));
    return v ? *v : a.get_or(1, Value::none());
  }
  BoundArgs a(args, name.c_str(), {});
  std::vector<Value> out;
  for (const auto& [k, v] : dict.dict().entries) {
    if (name == "keys") out.push_back(k);
    else if (name == "values") out.push_back(v);
    else out.push_back(Value::list({k, v}, true));
  }
  return Value::list(std::move(out));
}

const std::set<std::string>& string_methods() {
  static const std::set<std::string> kNames = {
      "startswith", "endswith", "strip",   "lstrip",  "rstrip",       "split",        "rsplit",
      "replace",    "upper",    "lower",   "title",   "capitalize",   "swapcase",     "find",
      "rfind",      "index",    "rindex",  "count",   "join",         "removeprefix", "removesuffix",
      "splitlines", "format",   "isdigit", "isalpha", "isalnum",      "isspace",      "islower",
      "isupper",    "isdecimal", "isnumeric"};
  return kNames;
}

}  // namespace

Value find_method(const Value& receiver, const std::string& name) {
  // What the immutable sandbox refuses: methods that would change a list or a dict.
  static const std::set<std::string> kListMutators = {"append", "extend", "insert", "pop", "remove",
                                                      "reverse", "sort",  "clear"};
  static const std::set<std::string> kDictMutators = {"pop", "popitem", "setdefault", "update", "clear"};
  bool known = false;
  if (receiver.is(Kind::kString)) {
    known = string_methods().count(name) > 0;
  } else if (receiver.is(Kind::kList) && !receiver.list().generator) {
    if (kListMutators.count(name)) {
      return Value::undefined(fmt::format("access to attribute '{}' of '{}' object is unsafe.", name,
                                          type_name(receiver)), true);
    }
    known = name == "index" || name == "count";
  } else if (receiver.is(Kind::kDict)) {
    if (kDictMutators.count(name)) {
      return Value::undefined(fmt::format("access to attribute '{}' of 'dict' object is unsafe.", name), true);
    }
    known = name == "items" || name == "keys" || name == "values" || name == "get";
  }
  if (!known) {
    return Value::undefined(fmt::format("'{} object' has no attribute '{}'", type_name(receiver), name));
  }
  auto fn = std::make_shared<FunctionObj>();
  fn->name = name;
  fn->call = [receiver, name](Interpreter& in, CallArgs& args) -> Value {
    if (receiver.is(Kind::kString)) return string_method(in, receiver.str(), name, args);
    if (receiver.is(Kind::kList)) return list_method(in, receiver, name, args);
    return dict_method(receiver, name, args);
  };
  return Value::function(std::move(fn));
}

std::string percent_format(Interpreter& in, const std::string& format, const Value& args) {
  std::vector<Value> values;
  const DictObj* mapping = args.is(Kind::kDict) ? &args.dict() : nullptr;
  if (args.is(Kind::kList) && args.list().tuple) values = args.list().items;
  else values.push_back(args);
  size_t next = 0;
  std::string out;
  for (size_t i = 0; i < format.size(); ++i) {
    if (format[i] != '%') {
      out += format[i];
      continue;
    }
    if (++i >= format.size()) throw RenderError("incomplete format");
    const Value* value = nullptr;
    if (format[i] == '(') {
      size_t close = format.find(')', i);
      if (!mapping || close == std::string::npos) throw RenderError("format requires a mapping");
      value = mapping->find(format.substr(i + 1, close - i - 1));
      if (!value) throw RenderError("KeyError: '" + format.substr(i + 1, close - i - 1) + "'");
      i = close + 1;
    }
    std::string flags;
    while (i < format.size() && std::string("-+ 0#").find(format[i]) != std::string::npos) flags += format[i++];
    int width = 0, precision = -1;
    while (i < format.size() && is_digit(static_cast<char32_t>(format[i]))) width = std::min(width * 10 + (format[i++] - '0'), 1000);
    if (i < format.size() && format[i] == '.') {
      precision = 0;
      ++i;
      while (i < format.size() && is_digit(static_cast<char32_t>(format[i]))) precision = std::min(precision * 10 + (format[i++] - '0'), 100);
    }
    if (i >= format.size()) throw RenderError("incomplete format");
    char conv = format[i];
    if (conv == '%') {
      out += '%';
      continue;
    }
    if (!value) {
      if (mapping && values.size() == 1 && values[0].is(Kind::kDict) && conv != 's') throw RenderError("format requires a mapping");
      if (next >= values.size()) throw RenderError("not enough arguments for format string");
      value = &values[next++];
    }
    std::string piece;
    if (conv == 's' || conv == 'r') {
      piece = conv == 's' ? to_str(*value) : "";
      if (conv == 'r') append_repr(piece, *value);
      if (precision >= 0 && static_cast<size_t>(precision) < piece.size()) piece.resize(static_cast<size_t>(precision));
    } else if (conv == 'd' || conv == 'i' || conv == 'x' || conv == 'X' || conv == 'f' || conv == 'F') {
      if (!value->is_number()) throw RenderError(fmt::format("%{} format: a real number is required, not {}", conv, type_name(*value)));
      std::string sign = flags.find('+') != std::string::npos ? "+" : flags.find(' ') != std::string::npos ? " " : "";
      if (conv == 'f' || conv == 'F') {
        double d = value->as_double();
        piece = fmt::format("{:.{}f}", d, precision < 0 ? 6 : precision);
        if (d >= 0) piece = sign + piece;
      } else {
        int64_t n = value->is(Kind::kFloat) ? static_cast<int64_t>(value->as_double()) : value->as_int();
        piece = conv == 'x' ? fmt::format("{:x}", n) : conv == 'X' ? fmt::format("{:X}", n) : std::to_string(n);
        if (n >= 0) piece = sign + piece;
      }
      if (flags.find('0') != std::string::npos && flags.find('-') == std::string::npos && static_cast<int>(piece.size()) < width) {
        size_t at = (!piece.empty() && (piece[0] == '-' || piece[0] == '+' || piece[0] == ' ')) ? 1 : 0;
        piece.insert(at, static_cast<size_t>(width) - piece.size(), '0');
      }
    } else {
      throw RenderError(fmt::format("unsupported format character '{}'", conv));
    }
    int pad = width - static_cast<int>(count_code_points(piece));
    if (pad > 0) {
      if (flags.find('-') != std::string::npos) piece.append(static_cast<size_t>(pad), ' ');
      else piece.insert(0, static_cast<size_t>(pad), ' ');
    }
    out += piece;
    in.check_size(out.size());
  }
  if (!mapping && next < values.size()) throw RenderError("not all arguments converted during string formatting");
  return out;
}

}  // namespace mil::chat_template
