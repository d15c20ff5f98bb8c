// Typed JSON access and TGI's length rules; see validation.h.
#include "server/validation.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

namespace mil::server {

using nlohmann::json;

void throw_bad_request(const std::string& message) { throw ApiError(400, "bad_request", message); }

void throw_validation(const std::string& message) {
  throw ApiError(422, "validation", "Input validation error: " + message);
}

json parse_json_object(std::string_view body) {
  json parsed = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) throw_bad_request("the request body is not valid JSON");
  if (!parsed.is_object()) throw_bad_request("the request body must be a JSON object");
  return parsed;
}

const json* field(const json& object, std::string_view key) {
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) return nullptr;
  return &*it;
}

std::optional<std::string> string_field(const json& object, std::string_view key) {
  const json* value = field(object, key);
  if (value == nullptr) return std::nullopt;
  if (!value->is_string()) throw_bad_request(fmt::format("`{}` must be a string", key));
  return value->get<std::string>();
}

std::optional<bool> bool_field(const json& object, std::string_view key) {
  const json* value = field(object, key);
  if (value == nullptr) return std::nullopt;
  if (!value->is_boolean()) throw_bad_request(fmt::format("`{}` must be a boolean", key));
  return value->get<bool>();
}

std::optional<double> number_field(const json& object, std::string_view key) {
  const json* value = field(object, key);
  if (value == nullptr) return std::nullopt;
  if (!value->is_number()) throw_bad_request(fmt::format("`{}` must be a number", key));
  const double v = value->get<double>();
  if (!std::isfinite(v)) throw_bad_request(fmt::format("`{}` must be a finite number", key));
  return v;
}

std::optional<float> float_field(const json& object, std::string_view key) {
  const std::optional<double> v = number_field(object, key);
  if (!v) return std::nullopt;
  const auto f = static_cast<float>(*v);
  if (!std::isfinite(f)) throw_validation(fmt::format("`{}` is out of range", key));
  return f;
}

std::optional<int64_t> int_field(const json& object, std::string_view key) {
  const json* value = field(object, key);
  if (value == nullptr) return std::nullopt;
  if (value->is_number_unsigned()) {
    const uint64_t v = value->get<uint64_t>();
    if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      throw_bad_request(fmt::format("`{}` is out of range", key));
    }
    return static_cast<int64_t>(v);
  }
  if (!value->is_number_integer()) throw_bad_request(fmt::format("`{}` must be an integer", key));
  return value->get<int64_t>();
}

std::optional<uint64_t> uint_field(const json& object, std::string_view key) {
  const json* value = field(object, key);
  if (value == nullptr) return std::nullopt;
  if (value->is_number_unsigned()) return value->get<uint64_t>();
  if (value->is_number_integer()) {
    throw_bad_request(fmt::format("`{}` must be a non-negative integer", key));
  }
  throw_bad_request(fmt::format("`{}` must be an integer", key));
}

std::vector<std::string> string_list_field(const json& object, std::string_view key,
                                           bool allow_single) {
  const json* value = field(object, key);
  if (value == nullptr) return {};
  if (allow_single && value->is_string()) return {value->get<std::string>()};
  if (!value->is_array()) {
    throw_bad_request(
        fmt::format("`{}` must be {}a list of strings", key, allow_single ? "a string or " : ""));
  }
  std::vector<std::string> out;
  for (const json& item : *value) {
    if (!item.is_string()) throw_bad_request(fmt::format("`{}` must hold only strings", key));
    out.push_back(item.get<std::string>());
  }
  return out;
}

const json* object_field(const json& object, std::string_view key) {
  const json* value = field(object, key);
  if (value != nullptr && !value->is_object()) {
    throw_bad_request(fmt::format("`{}` must be an object", key));
  }
  return value;
}

int32_t apply_length_limits(const LengthLimits& limits, std::vector<int32_t>& ids,
                            std::optional<int64_t> truncate,
                            std::optional<int64_t> max_new_tokens) {
  if (truncate && static_cast<int64_t>(ids.size()) > *truncate) {
    ids.erase(ids.begin(), ids.end() - *truncate);
  }
  const int64_t input_length = static_cast<int64_t>(ids.size());
  const int64_t new_tokens = max_new_tokens
                                 ? *max_new_tokens
                                 : std::max<int64_t>(limits.max_total_tokens - input_length, 0);
  // Compared without adding: a client's max_new_tokens may be near INT64_MAX.
  if (new_tokens > limits.max_total_tokens - input_length) {
    throw_validation(fmt::format(
        "`inputs` tokens + `max_new_tokens` must be <= {}. Given: {} `inputs` tokens and {} "
        "`max_new_tokens`",
        limits.max_total_tokens, input_length, new_tokens));
  }
  if (input_length > limits.max_input_tokens) {
    throw_validation(fmt::format("`inputs` must have less than {} tokens. Given: {}",
                                 limits.max_input_tokens, input_length));
  }
  if (new_tokens <= 0) {
    // Only reachable with the default when the prompt fills the context.
    throw_validation(fmt::format(
        "`inputs` tokens + `max_new_tokens` must be <= {}. Given: {} `inputs` tokens and {} "
        "`max_new_tokens`",
        limits.max_total_tokens, input_length, new_tokens));
  }
  return static_cast<int32_t>(new_tokens);
}

bool constant_time_equal(std::string_view a, std::string_view b) {
  // Walk the longer length so the time depends on the lengths only, never on the contents.
  const size_t n = std::max(a.size(), b.size());
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= static_cast<unsigned char>(x ^ y);
  }
  return diff == 0;
}

uint64_t random_u64() {
  thread_local std::mt19937_64 generator = [] {
    std::random_device device;
    std::seed_seq seq{device(), device(), device(), device()};
    return std::mt19937_64(seq);
  }();
  return generator();
}

}  // namespace mil::server
