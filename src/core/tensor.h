// Tensor views. Every tensor the engine touches is a 2-D view: `rows` rows of
// `cols` elements, rows `row_stride` bytes apart. Weights are [out_features, in_features]
// (each output's weights contiguous, as in HF and GGUF); activations are [tokens, features].
// A view never owns memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "core/dtype.h"
#include "core/error.h"

namespace mil {

enum class Device : uint8_t { CPU, CUDA };

struct Tensor {
  DType dtype = DType::F32;
  int64_t rows = 0;
  int64_t cols = 0;
  size_t row_stride = 0;  // bytes
  void* data = nullptr;
  Device device = Device::CPU;

  static Tensor contiguous(DType dtype, int64_t rows, int64_t cols, void* data,
                           Device device = Device::CPU) {
    return Tensor{dtype, rows, cols, row_bytes(dtype, cols), data, device};
  }

  bool empty() const { return data == nullptr; }
  bool is_contiguous() const { return row_stride == row_bytes(dtype, cols); }
  size_t bytes() const { return rows == 0 ? 0 : (rows - 1) * row_stride + row_bytes(dtype, cols); }

  template <typename T>
  T* row(int64_t r) const {
    return reinterpret_cast<T*>(static_cast<std::byte*>(data) + r * row_stride);
  }
  template <typename T>
  T* ptr() const {
    return static_cast<T*>(data);
  }

  // Rows [begin, begin + count) as a view.
  Tensor slice_rows(int64_t begin, int64_t count) const {
    Tensor t = *this;
    t.rows = count;
    t.data = static_cast<std::byte*>(data) + begin * row_stride;
    return t;
  }
  // Columns [begin, begin + count) as a strided view; quantized blocks must stay whole.
  Tensor slice_cols(int64_t begin, int64_t count) const {
    MIL_CHECK(begin % block_elems(dtype) == 0 && count % block_elems(dtype) == 0,
              "column slice [{}, {}) splits {} blocks", begin, begin + count, dtype_name(dtype));
    Tensor t = *this;
    t.cols = count;
    t.data = static_cast<std::byte*>(data) + row_bytes(dtype, begin);
    return t;
  }
};

std::string shape_string(const Tensor& t);

}  // namespace mil
