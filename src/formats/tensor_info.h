// What a weight file says about one tensor: the common currency of the safetensors and GGUF
// parsers and of the model loader.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"

namespace mil {

struct TensorInfo {
  std::string name;
  std::string dtype_name;            // as in the file: "BF16", "F32", "Q4_1", "I64", ...
  std::optional<DType> dtype;        // set when MIL can compute with it (F32/F16/BF16/Q8_0/Q4_0/Q4_1)
  std::vector<int64_t> shape;        // row-major, outermost first; the LAST dim is contiguous.
  std::span<const std::byte> data;   // inside the mapped file, already bounds-checked
};

// Element count of `shape`, or nullopt when a dim is negative or the product of the nonzero dims
// overflows int64. Requiring the nonzero product to fit means every partial product a consumer
// computes (rows, cols, numel) fits too, whatever the order of the dims.
inline std::optional<int64_t> checked_numel(std::span<const int64_t> shape) {
  int64_t nonzero_product = 1;
  bool has_zero = false;
  for (const int64_t dim : shape) {
    if (dim < 0) return std::nullopt;
    if (dim == 0) {
      has_zero = true;
      continue;
    }
    if (nonzero_product > std::numeric_limits<int64_t>::max() / dim) return std::nullopt;
    nonzero_product *= dim;
  }
  return has_zero ? 0 : nonzero_product;
}

// Names read from untrusted files end up in error messages: keep them short and printable.
inline std::string printable_name(std::string_view name) {
  constexpr size_t kMaxShown = 160;
  constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < name.size() && i < kMaxShown; ++i) {
    const auto c = static_cast<unsigned char>(name[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out.push_back(static_cast<char>(c));
    } else if (c >= 0x80) {
      out.push_back(static_cast<char>(c));  // UTF-8 text stays readable
    } else {
      out += "\\x";
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  if (name.size() > kMaxShown) out += "...";
  return out;
}

}  // namespace mil
