#include "core/tensor.h"

#include <fmt/format.h>

namespace mil {

std::string shape_string(const Tensor& t) {
  return fmt::format("{}[{}, {}]", dtype_name(t.dtype), t.rows, t.cols);
}

}  // namespace mil
