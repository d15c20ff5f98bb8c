// Checked access to untrusted tokenizer.json values: every failure names the file and the field.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "core/error.h"

namespace mil::tok {

inline const nlohmann::json& json_field(const nlohmann::json& obj, const char* key,
                                        const std::string& origin, const std::string& where) {
  MIL_CHECK(obj.is_object(), "{}: {} must be an object", origin, where);
  const auto it = obj.find(key);
  MIL_CHECK(it != obj.end(), "{}: {} has no field \"{}\"", origin, where, key);
  return *it;
}

inline std::string json_string(const nlohmann::json& obj, const char* key,
                               const std::string& origin, const std::string& where) {
  const auto& v = json_field(obj, key, origin, where);
  MIL_CHECK(v.is_string(), "{}: {}.{} must be a string", origin, where, key);
  return v.get<std::string>();
}

// Optional bool: absent or null -> fallback.
inline bool json_bool(const nlohmann::json& obj, const char* key, bool fallback,
                      const std::string& origin, const std::string& where) {
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return fallback;
  MIL_CHECK(it->is_boolean(), "{}: {}.{} must be a boolean", origin, where, key);
  return it->get<bool>();
}

inline int64_t json_uint(const nlohmann::json& obj, const char* key, int64_t fallback,
                         const std::string& origin, const std::string& where) {
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return fallback;
  MIL_CHECK(it->is_number_unsigned() || (it->is_number_integer() && it->get<int64_t>() >= 0),
            "{}: {}.{} must be a non-negative integer", origin, where, key);
  const auto v = it->get<uint64_t>();
  MIL_CHECK(v <= INT32_MAX, "{}: {}.{} = {} is too large", origin, where, key, v);
  return static_cast<int64_t>(v);
}

inline std::string json_type(const nlohmann::json& obj, const std::string& origin,
                             const std::string& where) {
  return json_string(obj, "type", origin, where);
}

}  // namespace mil::tok
