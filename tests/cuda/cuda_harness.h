// The CUDA op-test harness: every CUDA op against the CPU backend (tests/ops checks the
// CPU backend against plain references). Inputs are random and rounded to BF16 first, so
// that both backends see the same values; outputs are compared by ||out - ref|| / ||ref||
// (and max error where meaningful) under per-op tolerances. Device tensors carry sentinel
// guards before and after them and in the gaps of strided views, and outputs start
// poisoned (NaN), so a missed element or a stray write shows.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backends/ops.h"
#include "core/buffer.h"
#include "ops/harness.h"

namespace mil::test::gpu {

using mil::test::max_norm_error;
using mil::test::Random;
using mil::test::rel_l2_error;

bool has_gpu();

// Values as the device's BF16 activations hold them.
std::vector<float> round_bf16(std::vector<float> v);

class GpuTensor {
 public:
  static constexpr size_t kGuardBytes = 256;
  static constexpr uint8_t kSentinel = 0xA5;
  static constexpr uint8_t kPoison = 0xFF;  // NaN in F32, BF16 and F16

  // row_stride 0: packed rows. lead_bytes: the view starts that far into the allocation.
  GpuTensor(DType dtype, int64_t rows, int64_t cols, size_t row_stride = 0, size_t lead_bytes = 0);
  ~GpuTensor();
  GpuTensor(const GpuTensor&) = delete;
  GpuTensor& operator=(const GpuTensor&) = delete;

  const Tensor& view() const { return view_; }
  operator const Tensor&() const { return view_; }

  void set_bytes(const std::vector<uint8_t>& packed);  // rows * row_bytes(dtype, cols)
  void set(const std::vector<float>& values);         // F32, F16 or BF16 (rounded)
  std::vector<float> get() const;                      // F32, F16 or BF16 as f32
  // Guards and gaps must hold the sentinel; with `unchanged`, the rows too what set put there.
  void check_untouched(const std::string& what, bool unchanged = false) const;

 private:
  std::vector<uint8_t> download() const;
  Tensor view_;
  size_t lead_ = 0, body_ = 0;
  void* base_ = nullptr;
  std::vector<uint8_t> image_;
};

// A device copy of a plain array (ids, positions, segments, sampling params...).
template <typename T>
class GpuArray {
 public:
  explicit GpuArray(const std::vector<T>& values);
  ~GpuArray();
  GpuArray(const GpuArray&) = delete;
  GpuArray& operator=(const GpuArray&) = delete;
  const T* get() const { return data_; }
  T* mut() const { return data_; }
  std::vector<T> download() const;

 private:
  T* data_ = nullptr;
  size_t n_ = 0;
};

// A host f32 tensor for the CPU backend.
OwnedTensor host_f32(const std::vector<float>& values, int64_t rows, int64_t cols);
std::vector<float> to_vector(const OwnedTensor& t);

class CudaOpsTest : public ::testing::Test {
 protected:
  void SetUp() override;
  std::unique_ptr<Ops> gpu;
  std::unique_ptr<Ops> cpu;
};

void sync();

}  // namespace mil::test::gpu
