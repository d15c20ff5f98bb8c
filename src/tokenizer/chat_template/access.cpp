// Reading values: iteration, membership, attribute and item access, slicing. Attribute
// access is where the sandbox lives: only names starting without '_' and the whitelisted
// methods of builtins.h are reachable.
#include <fmt/format.h>

#include "tokenizer/chat_template/builtins.h"
#include "tokenizer/chat_template/interpreter.h"

namespace mil::chat_template {

bool Interpreter::contains(const Value& container, const Value& item) {
  switch (container.kind()) {
    case Kind::kString:
      if (!item.is(Kind::kString)) {
        throw RenderError(fmt::format("'in <string>' requires string as left operand, not {}", type_name(item)));
      }
      return container.str().find(item.str()) != std::string::npos;
    case Kind::kDict:
      return container.dict().find(item) != nullptr;
    case Kind::kUndefined:
      return false;  // jinja2's Undefined iterates as empty
    case Kind::kList:
      for (const Value& v : iterate(container)) {
        if (equals(v, item)) return true;
      }
      return false;
    default:
      throw RenderError(fmt::format("argument of type '{}' is not iterable", type_name(container)));
  }
}

std::vector<Value> Interpreter::iterate(const Value& v) {
  switch (v.kind()) {
    case Kind::kUndefined:
      return {};
    case Kind::kList: {
      ListObj& l = v.list();
      charge(static_cast<int64_t>(l.items.size()));
      if (!l.generator) return l.items;
      std::vector<Value> rest(l.items.begin() + static_cast<std::ptrdiff_t>(l.consumed), l.items.end());
      l.consumed = l.items.size();
      return rest;
    }
    case Kind::kDict: {
      std::vector<Value> keys;
      for (const auto& [k, value] : v.dict().entries) keys.push_back(k);
      charge(static_cast<int64_t>(keys.size()));
      return keys;
    }
    case Kind::kString: {
      std::vector<Value> chars;
      std::vector<char32_t> cps = decode_utf8(v.str());
      charge(static_cast<int64_t>(cps.size()));
      for (size_t i = 0; i < cps.size(); ++i) chars.push_back(Value::string(encode_utf8(cps, i, i + 1)));
      return chars;
    }
    default:
      throw RenderError(fmt::format("'{}' object is not iterable", type_name(v)));
  }
}

Value Interpreter::loop_attribute(const Value& loop_value, const std::string& name) {
  const LoopObj& loop = loop_value.loop();
  int64_t length = static_cast<int64_t>(loop.items->size());
  int64_t i = loop.index0;
  if (name == "index") return Value::integer(i + 1);
  if (name == "index0") return Value::integer(i);
  if (name == "revindex") return Value::integer(length - i);
  if (name == "revindex0") return Value::integer(length - i - 1);
  if (name == "first") return Value::boolean(i == 0);
  if (name == "last") return Value::boolean(i == length - 1);
  if (name == "length") return Value::integer(length);
  if (name == "depth") return Value::integer(loop.depth0 + 1);
  if (name == "depth0") return Value::integer(loop.depth0);
  if (name == "previtem") {
    return i > 0 ? (*loop.items)[static_cast<size_t>(i - 1)] : Value::undefined("there is no previous item");
  }
  if (name == "nextitem") {
    return i + 1 < length ? (*loop.items)[static_cast<size_t>(i + 1)] : Value::undefined("there is no next item");
  }
  if (name == "cycle") {
    auto fn = std::make_shared<FunctionObj>();
    fn->name = "cycle";
    fn->call = [i](Interpreter&, CallArgs& args) {
      if (args.positional.empty()) throw RenderError("no items for cycling given");
      return args.positional[static_cast<size_t>(i) % args.positional.size()];
    };
    return Value::function(std::move(fn));
  }
  return Value::undefined(fmt::format("'LoopContext object' has no attribute '{}'", name), name[0] == '_');
}

Value Interpreter::getattr(const Value& object, const std::string& name) {
  if (object.is_undefined()) fail_undefined(object);
  if (!name.empty() && name[0] == '_') {
    return Value::undefined(
        fmt::format("access to attribute '{}' of '{}' object is unsafe.", name, type_name(object)), true);
  }
  switch (object.kind()) {
    case Kind::kNamespace:
      if (const Value* v = object.dict().find(name)) return *v;
      break;
    case Kind::kLoop:
      return loop_attribute(object, name);
    case Kind::kDict: {
      Value method = find_method(object, name);
      if (!method.is_undefined()) return method;
      if (method.undefined_info() && method.undefined_info()->unsafe) return method;
      if (const Value* v = object.dict().find(name)) return *v;
      break;
    }
    case Kind::kString:
    case Kind::kList:
      return find_method(object, name);
    default:
      break;
  }
  return Value::undefined(fmt::format("'{} object' has no attribute '{}'", type_name(object), name));
}

Value Interpreter::getitem(const Value& object, const Value& key) {
  if (object.is_undefined()) fail_undefined(object);
  switch (object.kind()) {
    case Kind::kDict:
      if (const Value* v = object.dict().find(key)) return *v;
      break;
    case Kind::kList:
    case Kind::kString: {
      if (!key.is(Kind::kInt) && !key.is(Kind::kBool)) break;
      if (object.is(Kind::kList) && object.list().generator) break;
      int64_t i = key.as_int();
      if (object.is(Kind::kList)) {
        const auto& items = object.list().items;
        int64_t n = static_cast<int64_t>(items.size());
        if (i < 0) i += n;
        if (i >= 0 && i < n) return items[static_cast<size_t>(i)];
      } else {
        std::vector<char32_t> cps = decode_utf8(object.str());
        int64_t n = static_cast<int64_t>(cps.size());
        if (i < 0) i += n;
        if (i >= 0 && i < n) return Value::string(encode_utf8(cps, static_cast<size_t>(i), static_cast<size_t>(i) + 1));
      }
      return Value::undefined(fmt::format("{} object has no element {}", type_name(object), key.as_int()));
    }
    default:
      break;
  }
  // Like jinja2: a failed subscript with a string falls back to attribute lookup.
  if (key.is(Kind::kString)) {
    if (object.is(Kind::kDict)) {
      Value method = find_method(object, key.str());
      if (!method.is_undefined() || (!key.str().empty() && key.str()[0] == '_')) {
        return method.is_undefined() ? getattr(object, key.str()) : method;
      }
      return Value::undefined(fmt::format("'dict object' has no attribute '{}'", key.str()));
    }
    return getattr(object, key.str());
  }
  return Value::undefined(fmt::format("'{} object' has no element {}", type_name(object), to_str(key)));
}

Value Interpreter::eval_slice(const Value& target, const Expr& e) {
  if (target.is_undefined()) fail_undefined(target);
  Value bounds[3];
  for (int k = 0; k < 3; ++k) {
    if (e.children[static_cast<size_t>(k) + 1]) bounds[k] = eval(*e.children[static_cast<size_t>(k) + 1]);
    else bounds[k] = Value::none();
    if (!bounds[k].is(Kind::kNone) && !bounds[k].is(Kind::kInt) && !bounds[k].is(Kind::kBool)) {
      return Value::undefined("slice indices must be integers or None");
    }
  }
  bool is_string = target.is(Kind::kString);
  if (!is_string && !(target.is(Kind::kList) && !target.list().generator)) {
    return Value::undefined(fmt::format("'{}' object is not subscriptable", type_name(target)));
  }
  std::vector<char32_t> cps;
  if (is_string) cps = decode_utf8(target.str());
  int64_t n = static_cast<int64_t>(is_string ? cps.size() : target.list().items.size());
  int64_t step = bounds[2].is(Kind::kNone) ? 1 : bounds[2].as_int();
  if (step == 0) throw RenderError("slice step cannot be zero");
  // Python's PySlice_AdjustIndices.
  auto adjust = [&](const Value& v, int64_t fallback) {
    if (v.is(Kind::kNone)) return fallback;
    int64_t x = v.as_int();
    if (x < 0) {
      x += n;
      if (x < 0) x = step < 0 ? -1 : 0;
    } else if (x >= n) {
      x = step < 0 ? n - 1 : n;
    }
    return x;
  };
  int64_t start = adjust(bounds[0], step < 0 ? n - 1 : 0);
  int64_t stop = adjust(bounds[1], step < 0 ? -1 : n);
  std::vector<size_t> picked;
  for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) picked.push_back(static_cast<size_t>(i));
  charge(static_cast<int64_t>(picked.size()));
  if (is_string) {
    std::string s;
    for (size_t i : picked) append_utf8(s, cps[i]);
    return Value::string(std::move(s));
  }
  std::vector<Value> items;
  for (size_t i : picked) items.push_back(target.list().items[i]);
  return Value::list(std::move(items), target.list().tuple);
}

}  // namespace mil::chat_template
