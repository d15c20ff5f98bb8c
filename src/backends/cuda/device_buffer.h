// Owned device memory (cudaMalloc / cudaFree), movable, never copied.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <utility>

#include "backends/cuda/cuda_check.h"

namespace mil::cuda {

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes) { reset(bytes); }
  ~DeviceBuffer() {
    if (data_ != nullptr) cudaFree(data_);  // no throw from a destructor
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
    return *this;
  }

  void* data() const { return data_; }
  size_t size() const { return size_; }

  // Frees and allocates exactly `bytes` (0: none).
  void reset(size_t bytes) {
    if (data_ != nullptr) {
      MIL_CUDA_CHECK(cudaFree(data_));
      data_ = nullptr;
      size_ = 0;
    }
    if (bytes > 0) {
      MIL_CUDA_CHECK(cudaMalloc(&data_, bytes));
      size_ = bytes;
    }
  }
  // Grows to at least `bytes` (contents are lost when it grows). The caller must make sure
  // no queued work still uses the old allocation (cudaFree synchronizes the device).
  void* ensure(size_t bytes) {
    if (bytes > size_) reset(std::max(bytes, size_ + size_ / 2));
    return data_;
  }

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace mil::cuda
