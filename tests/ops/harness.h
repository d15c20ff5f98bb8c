// The op-test harness: backends under test, device buffers with sentinel bytes, random
// inputs and normalised error measures. A new backend joins every op test by adding an
// entry to backends_under_test() with its Ops factory and its memory functions.
#pragma once

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "backends/ops.h"

namespace mil::test {

// How the harness reaches a backend's memory. The CPU's is plain host memory.
struct DeviceMemory {
  std::function<void*(size_t)> alloc;
  std::function<void(void*)> free;
  std::function<void(void* dst, const void* src, size_t)> upload;
  std::function<void(void* dst, const void* src, size_t)> download;
};

struct BackendUnderTest {
  std::string name;
  std::function<std::unique_ptr<Ops>()> make;
  DeviceMemory memory;
  Device device = Device::CPU;
  // Quantized matmuls round activations to 8 bits (llama.cpp style, make_cpu_ops_int8), so
  // they meet a looser tolerance against the f32 reference than f32-activation backends.
  bool int8_activations = false;
};

std::vector<BackendUnderTest> backends_under_test();

// A tensor in a backend's memory with kGuardBytes of sentinel before and after it. Every
// byte that is not part of a row (guards, and the gaps of a strided view) must come back
// unchanged after an op; check_untouched() asserts that with gtest.
class DeviceTensor {
 public:
  static constexpr size_t kGuardBytes = 256;
  static constexpr uint8_t kSentinel = 0xA5;

  // row_stride 0 means packed rows; lead_bytes puts the view that far into its allocation,
  // as a column slice of a wider tensor would be.
  DeviceTensor(const BackendUnderTest& backend, DType dtype, int64_t rows, int64_t cols,
               size_t row_stride = 0, size_t lead_bytes = 0);
  ~DeviceTensor();
  DeviceTensor(const DeviceTensor&) = delete;
  DeviceTensor& operator=(const DeviceTensor&) = delete;

  const Tensor& view() const { return view_; }
  operator const Tensor&() const { return view_; }

  void set_f32(const std::vector<float>& values);    // rows * cols, row-major
  void set_rows(const std::vector<uint8_t>& bytes);  // rows * row_bytes(dtype, cols)
  std::vector<float> get_f32() const;                // rows * cols
  // Guards and gaps are the sentinel; if `unchanged` is set, the rows must also still hold
  // what set_*() put there (for inputs an op must not write).
  void check_untouched(const std::string& what, bool unchanged = false) const;

 private:
  std::vector<uint8_t> download_image() const;

  const BackendUnderTest& backend_;
  Tensor view_;
  size_t lead_bytes_ = 0;
  size_t body_bytes_ = 0;       // lead + rows
  void* base_ = nullptr;        // device allocation including guards
  std::vector<uint8_t> image_;  // what the host last uploaded (guards included)
};

// Asserts (gtest) that `now` equals `before` everywhere but the bytes of `view`'s rows (and
// everywhere when `unchanged`). Both are images of an allocation that holds kGuardBytes of
// guard, then `lead_bytes`, then the view: any backend's guarded tensors check this way.
void expect_only_rows_changed(const std::vector<uint8_t>& before, const std::vector<uint8_t>& now,
                              const Tensor& view, size_t lead_bytes, bool unchanged,
                              const std::string& what);

// A device copy of a small array of 32-bit values (ids, positions, block tables).
class DeviceArray {
 public:
  DeviceArray(const BackendUnderTest& backend, const std::vector<int32_t>& values);
  DeviceArray(const BackendUnderTest& backend, const std::vector<float>& values);
  ~DeviceArray();
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  const int32_t* i32() const { return static_cast<const int32_t*>(data_); }
  int32_t* mutable_i32() const { return static_cast<int32_t*>(data_); }
  const float* f32() const { return static_cast<const float*>(data_); }
  std::vector<int32_t> get_i32() const;

 private:
  const BackendUnderTest& backend_;
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

// Seeded random inputs.
class Random {
 public:
  explicit Random(uint32_t seed) : gen_(seed) {}
  std::vector<float> uniform(size_t n, float lo = -1.0f, float hi = 1.0f);
  int32_t integer(int32_t lo, int32_t hi);  // inclusive
  // Random blocks of a weight dtype: rows rows of cols elements, packed.
  std::vector<uint8_t> weight_rows(DType dtype, int64_t rows, int64_t cols);
  std::mt19937& gen() { return gen_; }

 private:
  std::mt19937 gen_;
};

// max |got - ref| / max(max |ref|, 1e-6)
double max_norm_error(const std::vector<float>& got, const std::vector<float>& ref);
// ||got - ref||_2 / max(||ref||_2, 1e-12)
double rel_l2_error(const std::vector<float>& got, const std::vector<float>& ref);

// Base of every op test: one instance per backend under test.
class OpsTest : public ::testing::TestWithParam<BackendUnderTest> {
 protected:
  void SetUp() override { ops = GetParam().make(); }
  const BackendUnderTest& backend() const { return GetParam(); }
  std::unique_ptr<Ops> ops;
};

}  // namespace mil::test

#define MIL_INSTANTIATE_OPS_TEST(Suite)                                             \
  INSTANTIATE_TEST_SUITE_P(AllBackends, Suite,                                      \
                           ::testing::ValuesIn(::mil::test::backends_under_test()), \
                           [](const auto& param_info) { return param_info.param.name; })
