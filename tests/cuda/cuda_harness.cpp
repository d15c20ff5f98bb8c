#include "cuda/cuda_harness.h"

#include <cuda_runtime.h>

#include <cstring>

#include "backends/cuda/cuda_ops.h"
#include "core/half.h"

namespace mil::test::gpu {
namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

}  // namespace

bool has_gpu() {
  static const bool present = [] {
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
  }();
  return present;
}

void sync() { check(cudaDeviceSynchronize(), "cudaDeviceSynchronize"); }

std::vector<float> round_bf16(std::vector<float> v) {
  for (float& x : v) x = bf16_to_f32(f32_to_bf16(x));
  return v;
}

GpuTensor::GpuTensor(DType dtype, int64_t rows, int64_t cols, size_t row_stride, size_t lead_bytes)
    : lead_(lead_bytes) {
  const size_t packed = row_bytes(dtype, cols);
  if (row_stride == 0) row_stride = packed;
  body_ = lead_bytes + (rows == 0 ? 0 : (rows - 1) * row_stride + packed);
  image_.assign(body_ + 2 * kGuardBytes, kSentinel);
  for (int64_t r = 0; r < rows; ++r)
    std::memset(image_.data() + kGuardBytes + lead_ + r * row_stride, kPoison, packed);
  check(cudaMalloc(&base_, image_.size()), "cudaMalloc");
  check(cudaMemcpy(base_, image_.data(), image_.size(), cudaMemcpyHostToDevice), "upload");
  view_ = Tensor{dtype, rows, cols, row_stride,
                 static_cast<uint8_t*>(base_) + kGuardBytes + lead_bytes, Device::CUDA};
}

GpuTensor::~GpuTensor() { cudaFree(base_); }

void GpuTensor::set_bytes(const std::vector<uint8_t>& bytes) {
  const size_t packed = row_bytes(view_.dtype, view_.cols);
  ASSERT_EQ(bytes.size(), packed * view_.rows);
  for (int64_t r = 0; r < view_.rows; ++r)
    std::memcpy(image_.data() + kGuardBytes + lead_ + r * view_.row_stride,
                bytes.data() + r * packed, packed);
  check(cudaMemcpy(base_, image_.data(), image_.size(), cudaMemcpyHostToDevice), "upload");
}

void GpuTensor::set(const std::vector<float>& v) {
  ASSERT_EQ(v.size(), static_cast<size_t>(view_.rows * view_.cols));
  std::vector<uint8_t> bytes(row_bytes(view_.dtype, view_.cols) * view_.rows);
  for (size_t i = 0; i < v.size(); ++i) {
    switch (view_.dtype) {
      case DType::F32: std::memcpy(bytes.data() + 4 * i, &v[i], 4); break;
      case DType::BF16: {
        const uint16_t h = f32_to_bf16(v[i]);
        std::memcpy(bytes.data() + 2 * i, &h, 2);
        break;
      }
      case DType::F16: {
        const uint16_t h = f32_to_f16(v[i]);
        std::memcpy(bytes.data() + 2 * i, &h, 2);
        break;
      }
      default: FAIL() << "set() takes F32, F16 or BF16";
    }
  }
  set_bytes(bytes);
}

std::vector<uint8_t> GpuTensor::download() const {
  std::vector<uint8_t> img(image_.size());
  check(cudaDeviceSynchronize(), "sync before download");
  check(cudaMemcpy(img.data(), base_, img.size(), cudaMemcpyDeviceToHost), "download");
  return img;
}

std::vector<float> GpuTensor::get() const {
  const std::vector<uint8_t> img = download();
  std::vector<float> out(static_cast<size_t>(view_.rows * view_.cols));
  for (int64_t r = 0; r < view_.rows; ++r) {
    const uint8_t* row = img.data() + kGuardBytes + lead_ + r * view_.row_stride;
    for (int64_t j = 0; j < view_.cols; ++j) {
      float& o = out[r * view_.cols + j];
      uint16_t h;
      switch (view_.dtype) {
        case DType::F32: std::memcpy(&o, row + 4 * j, 4); break;
        case DType::BF16: std::memcpy(&h, row + 2 * j, 2); o = bf16_to_f32(h); break;
        case DType::F16: std::memcpy(&h, row + 2 * j, 2); o = f16_to_f32(h); break;
        default: o = 0.0f;
      }
    }
  }
  return out;
}

void GpuTensor::check_untouched(const std::string& what, bool unchanged) const {
  static_assert(kGuardBytes == DeviceTensor::kGuardBytes, "one guard layout for every backend");
  expect_only_rows_changed(image_, download(), view_, lead_, unchanged, what);
}

template <typename T>
GpuArray<T>::GpuArray(const std::vector<T>& values) : n_(values.size()) {
  check(cudaMalloc(reinterpret_cast<void**>(&data_), std::max<size_t>(n_, 1) * sizeof(T)),
        "cudaMalloc");
  if (n_ > 0)
    check(cudaMemcpy(data_, values.data(), n_ * sizeof(T), cudaMemcpyHostToDevice), "upload");
}

template <typename T>
GpuArray<T>::~GpuArray() {
  cudaFree(data_);
}

template <typename T>
std::vector<T> GpuArray<T>::download() const {
  std::vector<T> out(n_);
  check(cudaDeviceSynchronize(), "sync before download");
  if (n_ > 0) check(cudaMemcpy(out.data(), data_, n_ * sizeof(T), cudaMemcpyDeviceToHost), "download");
  return out;
}

template class GpuArray<int32_t>;
template class GpuArray<float>;
template class GpuArray<LoraSegment>;
template class GpuArray<SamplingParams>;

OwnedTensor host_f32(const std::vector<float>& values, int64_t rows, int64_t cols) {
  OwnedTensor t(DType::F32, rows, cols);
  if (!values.empty()) std::memcpy(t.ptr<float>(), values.data(), values.size() * 4);
  return t;
}

std::vector<float> to_vector(const OwnedTensor& t) {
  const Tensor& v = t.view();
  return std::vector<float>(t.ptr<float>(), t.ptr<float>() + v.rows * v.cols);
}

void CudaOpsTest::SetUp() {
  if (!has_gpu()) GTEST_SKIP() << "no CUDA device";
  gpu = make_cuda_ops(0);
  cpu = make_cpu_ops(2);
}

}  // namespace mil::test::gpu
