// Request validation shared by the TGI and OpenAI routes: the error type every route throws
// (status + error_type + message), defensive typed access to untrusted JSON (wrong types are
// 400 bad_request, invalid values 422 validation with TGI's messages), and TGI's prompt-length
// rules (truncate, max_input_tokens, max_total_tokens).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace mil::server {

// An error a client caused (or the server reports); the routes turn it into an HTTP answer in
// their dialect (TGI `{error, error_type}` or OpenAI `{error:{message,type,param,code}}`).
class ApiError : public std::runtime_error {
 public:
  ApiError(int status, std::string type, const std::string& message)
      : std::runtime_error(message), status_(status), type_(std::move(type)) {}
  int status() const { return status_; }
  const std::string& type() const { return type_; }

 private:
  int status_;
  std::string type_;
};

// 400 bad_request (malformed JSON, wrong JSON types).
[[noreturn]] void throw_bad_request(const std::string& message);
// 422 validation, with TGI's "Input validation error: " prefix.
[[noreturn]] void throw_validation(const std::string& message);

// Parses a request body that must be a JSON object (400 otherwise).
nlohmann::json parse_json_object(std::string_view body);

// Typed optional fields of a JSON object. Absent and null are both "not given" (as serde's
// Option); a value of the wrong JSON type is a 400 naming the field.
const nlohmann::json* field(const nlohmann::json& object, std::string_view key);
std::optional<std::string> string_field(const nlohmann::json& object, std::string_view key);
std::optional<bool> bool_field(const nlohmann::json& object, std::string_view key);
std::optional<double> number_field(const nlohmann::json& object, std::string_view key);
// Integers only (1.0 is refused, as serde does for integer fields).
std::optional<int64_t> int_field(const nlohmann::json& object, std::string_view key);
// A number field as the float the engine uses: 422 when it has no finite float value
// (1e300 would become inf); positivity is checked by the caller on the float (1e-50 is 0).
std::optional<float> float_field(const nlohmann::json& object, std::string_view key);
// An unsigned 64-bit integer (seeds).
std::optional<uint64_t> uint_field(const nlohmann::json& object, std::string_view key);
// A list of strings; with `allow_single`, a lone string is a list of one (OpenAI's `stop`).
std::vector<std::string> string_list_field(const nlohmann::json& object, std::string_view key,
                                           bool allow_single);
// An object field (or nullptr when absent/null).
const nlohmann::json* object_field(const nlohmann::json& object, std::string_view key);

struct LengthLimits {
  int64_t max_input_tokens = 0;
  int64_t max_total_tokens = 0;
};

// TGI's validate_input: keeps the last `truncate` ids when given, defaults max_new_tokens to
// max_total_tokens - input length, and checks (in TGI's order) input + max_new_tokens <=
// max_total_tokens, then input <= max_input_tokens. Returns the max_new_tokens to run.
int32_t apply_length_limits(const LengthLimits& limits, std::vector<int32_t>& ids,
                            std::optional<int64_t> truncate, std::optional<int64_t> max_new_tokens);

// Compares two secrets in time independent of where they differ (length still shows).
bool constant_time_equal(std::string_view a, std::string_view b);

// A random 64-bit value (seeds, ids).
uint64_t random_u64();

}  // namespace mil::server
