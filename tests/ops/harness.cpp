#include "harness.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "backends/cpu/cpu_ops.h"
#include "core/half.h"

namespace mil::test {
namespace {

DeviceMemory host_memory() {
  DeviceMemory m;
  m.alloc = [](size_t bytes) {
    return std::aligned_alloc(64, std::max<size_t>(64, (bytes + 63) / 64 * 64));
  };
  m.free = [](void* p) { std::free(p); };
  m.upload = [](void* dst, const void* src, size_t n) { std::memcpy(dst, src, n); };
  m.download = [](void* dst, const void* src, size_t n) { std::memcpy(dst, src, n); };
  return m;
}

}  // namespace

std::vector<BackendUnderTest> backends_under_test() {
  std::vector<BackendUnderTest> all;
  all.push_back({"cpu_fast_1t", [] { return make_cpu_ops(1); }, host_memory(), Device::CPU, false});
  all.push_back({"cpu_fast_2t", [] { return make_cpu_ops(2); }, host_memory(), Device::CPU, false});
  all.push_back(
      {"cpu_int8_1t", [] { return make_cpu_ops_int8(1); }, host_memory(), Device::CPU, true});
  all.push_back(
      {"cpu_int8_2t", [] { return make_cpu_ops_int8(2); }, host_memory(), Device::CPU, true});
  all.push_back(
      {"cpu_exact_2t", [] { return make_cpu_ops_exact(2); }, host_memory(), Device::CPU, false});
  return all;
}

DeviceTensor::DeviceTensor(const BackendUnderTest& backend, DType dtype, int64_t rows, int64_t cols,
                           size_t row_stride, size_t lead_bytes)
    : backend_(backend), lead_bytes_(lead_bytes) {
  const size_t packed = row_bytes(dtype, cols);
  if (row_stride == 0) row_stride = packed;
  body_bytes_ = lead_bytes + (rows == 0 ? 0 : (rows - 1) * row_stride + packed);
  image_.assign(body_bytes_ + 2 * kGuardBytes, kSentinel);
  base_ = backend.memory.alloc(image_.size());
  backend.memory.upload(base_, image_.data(), image_.size());
  view_ = Tensor{dtype,
                 rows,
                 cols,
                 row_stride,
                 static_cast<uint8_t*>(base_) + kGuardBytes + lead_bytes,
                 backend.device};
}

DeviceTensor::~DeviceTensor() { backend_.memory.free(base_); }

void DeviceTensor::set_rows(const std::vector<uint8_t>& bytes) {
  const size_t packed = row_bytes(view_.dtype, view_.cols);
  ASSERT_EQ(bytes.size(), packed * view_.rows);
  for (int64_t r = 0; r < view_.rows; ++r) {
    std::memcpy(image_.data() + kGuardBytes + lead_bytes_ + r * view_.row_stride,
                bytes.data() + r * packed, packed);
  }
  backend_.memory.upload(base_, image_.data(), image_.size());
}

void DeviceTensor::set_f32(const std::vector<float>& values) {
  ASSERT_EQ(view_.dtype, DType::F32);
  std::vector<uint8_t> bytes(values.size() * 4);
  std::memcpy(bytes.data(), values.data(), bytes.size());
  set_rows(bytes);
}

std::vector<uint8_t> DeviceTensor::download_image() const {
  std::vector<uint8_t> img(image_.size());
  backend_.memory.download(img.data(), base_, img.size());
  return img;
}

std::vector<float> DeviceTensor::get_f32() const {
  EXPECT_EQ(view_.dtype, DType::F32);
  const std::vector<uint8_t> img = download_image();
  std::vector<float> out(static_cast<size_t>(view_.rows * view_.cols));
  for (int64_t r = 0; r < view_.rows; ++r) {
    std::memcpy(out.data() + r * view_.cols,
                img.data() + kGuardBytes + lead_bytes_ + r * view_.row_stride, view_.cols * 4);
  }
  return out;
}

void expect_only_rows_changed(const std::vector<uint8_t>& before, const std::vector<uint8_t>& now,
                              const Tensor& view, size_t lead_bytes, bool unchanged,
                              const std::string& what) {
  ASSERT_EQ(before.size(), now.size()) << what;
  // Mark the row bytes, which an output may change.
  const size_t offset = DeviceTensor::kGuardBytes + lead_bytes;
  std::vector<bool> in_row(now.size(), false);
  const size_t packed = row_bytes(view.dtype, view.cols);
  for (int64_t r = 0; r < view.rows; ++r) {
    const size_t start = offset + r * view.row_stride;
    std::fill(in_row.begin() + start, in_row.begin() + start + packed, true);
  }
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < now.size(); ++i) {
    if ((unchanged || !in_row[i]) && now[i] != before[i]) {
      if (bad++ == 0) first = i;
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " bytes changed outside what the op may write, "
                     << "first at offset "
                     << static_cast<int64_t>(first) - static_cast<int64_t>(offset)
                     << " from the view's start";
}

void DeviceTensor::check_untouched(const std::string& what, bool unchanged) const {
  expect_only_rows_changed(image_, download_image(), view_, lead_bytes_, unchanged, what);
}

DeviceArray::DeviceArray(const BackendUnderTest& backend, const std::vector<int32_t>& values)
    : backend_(backend), bytes_(values.size() * 4) {
  data_ = backend.memory.alloc(std::max<size_t>(bytes_, 4));
  backend.memory.upload(data_, values.data(), bytes_);
}

DeviceArray::DeviceArray(const BackendUnderTest& backend, const std::vector<float>& values)
    : backend_(backend), bytes_(values.size() * 4) {
  data_ = backend.memory.alloc(std::max<size_t>(bytes_, 4));
  backend.memory.upload(data_, values.data(), bytes_);
}

DeviceArray::~DeviceArray() { backend_.memory.free(data_); }

std::vector<int32_t> DeviceArray::get_i32() const {
  std::vector<int32_t> out(bytes_ / 4);
  backend_.memory.download(out.data(), data_, bytes_);
  return out;
}

std::vector<float> Random::uniform(size_t n, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(gen_);
  return v;
}

int32_t Random::integer(int32_t lo, int32_t hi) {
  return std::uniform_int_distribution<int32_t>(lo, hi)(gen_);
}

std::vector<uint8_t> Random::weight_rows(DType dtype, int64_t rows, int64_t cols) {
  const size_t n = static_cast<size_t>(rows * cols);
  std::vector<uint8_t> out(row_bytes(dtype, cols) * rows);
  auto put16 = [&](size_t at, uint16_t v) { std::memcpy(out.data() + at, &v, 2); };
  switch (dtype) {
    case DType::F32: {
      const std::vector<float> v = uniform(n);
      std::memcpy(out.data(), v.data(), out.size());
      break;
    }
    case DType::F16:
    case DType::BF16: {
      const std::vector<float> v = uniform(n);
      for (size_t i = 0; i < n; ++i)
        put16(2 * i, dtype == DType::F16 ? f32_to_f16(v[i]) : f32_to_bf16(v[i]));
      break;
    }
    case DType::Q8_0:
    case DType::Q4_0:
    case DType::Q4_1: {
      const size_t bb = block_bytes(dtype), blocks = n / kQuantBlock;
      for (size_t b = 0; b < blocks; ++b) {
        uint8_t* p = out.data() + b * bb;
        for (size_t i = 0; i < bb; ++i) p[i] = static_cast<uint8_t>(integer(0, 255));
        // Scales of realistic size and sign; -128 stays possible in Q8_0 codes on purpose.
        put16(b * bb, f32_to_f16(uniform(1, 0.002f, 0.05f)[0]));
        if (dtype == DType::Q4_1) put16(b * bb + 2, f32_to_f16(uniform(1, -0.4f, 0.1f)[0]));
      }
      break;
    }
    case DType::I32:
      break;
  }
  return out;
}

double max_norm_error(const std::vector<float>& got, const std::vector<float>& ref) {
  double diff = 0.0, scale = 1e-6;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = std::fabs(static_cast<double>(got[i]) - ref[i]);
    diff = std::isnan(d) ? INFINITY : std::max(diff, d);
    scale = std::max(scale, std::fabs(static_cast<double>(ref[i])));
  }
  return diff / scale;
}

double rel_l2_error(const std::vector<float>& got, const std::vector<float>& ref) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = static_cast<double>(got[i]) - ref[i];
    num += d * d;
    den += static_cast<double>(ref[i]) * ref[i];
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-12);
}

}  // namespace mil::test
