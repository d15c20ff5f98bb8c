// Errors: one exception type carrying context (file, tensor, field) to the user.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace mil {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace mil

// Checks an invariant that input data or a caller must satisfy; throws mil::Error.
#define MIL_CHECK(cond, ...)                \
  do {                                      \
    if (!(cond)) ::mil::fail(__VA_ARGS__);  \
  } while (0)
