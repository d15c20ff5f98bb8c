// The filters, tests, methods and global functions a template can reach. This list is the
// whole sandbox: nothing else (files, environment, Python internals) is reachable.
#pragma once

#include <initializer_list>
#include <string>
#include <vector>

#include "tokenizer/chat_template/value.h"

namespace mil::chat_template {

bool is_known_filter(const std::string& name);
bool is_known_test(const std::string& name);
Value apply_filter(Interpreter& in, const std::string& name, const Value& subject, CallArgs& args);
bool apply_test(Interpreter& in, const std::string& name, const Value& subject, CallArgs& args);

// A bound method of a string, list or dict, an "unsafe" undefined for the methods that would
// mutate (the immutable sandbox refuses them), or a plain undefined.
Value find_method(const Value& receiver, const std::string& name);

// range, namespace, dict, raise_exception, strftime_now.
Value make_globals();

// Python's `format % args` for the conversions templates use.
std::string percent_format(Interpreter& in, const std::string& format, const Value& args);

// Binds a call's arguments to named parameters, as Python does.
class BoundArgs {
 public:
  BoundArgs(CallArgs& args, const char* function, std::initializer_list<const char*> params,
            bool allow_extra_positional = false);
  bool has(size_t i) const { return values_[i] != nullptr; }
  const Value& get(size_t i) const;  // undefined when not given
  Value get_or(size_t i, Value fallback) const { return has(i) ? *values_[i] : fallback; }
  const std::vector<Value>& extra() const { return extra_; }  // positional beyond params

 private:
  std::vector<const Value*> values_;
  std::vector<Value> extra_;
};

// Helpers shared by the builtins.
std::string to_lower(std::string s);
std::string to_upper(std::string s);
std::string capitalize(const std::string& s);
std::string title_case(const std::string& s, bool jinja_words);  // the filter or str.title()
int64_t require_int(const Value& v, const char* what);

}  // namespace mil::chat_template
