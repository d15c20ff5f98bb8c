// Owned, aligned host memory for activations and caches.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <memory>

#include "core/tensor.h"

namespace mil {

class HostBuffer {
 public:
  HostBuffer() = default;
  explicit HostBuffer(size_t bytes);

  void* data() const { return data_.get(); }
  size_t size() const { return size_; }

 private:
  struct Free {
    void operator()(void* p) const { std::free(p); }
  };
  std::unique_ptr<void, Free> data_;
  size_t size_ = 0;
};

// A contiguous f32/i32/... tensor with its own storage: host memory, or memory of another
// allocator (a backend's device memory, pinned host memory) adopted with its release function.
// Frees memory of another allocator through its release function (none: nothing to free).
struct ForeignRelease {
  void (*release)(void*) = nullptr;
  void operator()(void* p) const {
    if (release != nullptr) release(p);
  }
};

class OwnedTensor {
 public:
  using Release = void (*)(void*);

  OwnedTensor() = default;
  OwnedTensor(DType dtype, int64_t rows, int64_t cols)
      : buffer_(row_bytes(dtype, cols) * rows),
        view_(Tensor::contiguous(dtype, rows, cols, buffer_.data())) {}
  // Adopts view.data, which `release` frees when this tensor dies.
  OwnedTensor(const Tensor& view, Release release) : foreign_(view.data, ForeignRelease{release}), view_(view) {}

  const Tensor& view() const { return view_; }
  operator const Tensor&() const { return view_; }
  template <typename T>
  T* ptr() const {
    return view_.ptr<T>();
  }

 private:
  HostBuffer buffer_;
  std::unique_ptr<void, ForeignRelease> foreign_;
  Tensor view_;
};

}  // namespace mil
