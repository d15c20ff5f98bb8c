// MIL's CUDA kernels alone, as achieved bandwidth (disabled by default; run with
// --gtest_also_run_disabled_tests --gtest_filter='CudaPerf.*'). Each figure: bytes that
// must be read once / time per call, where time per call is the median over 15 batches of
// 10 calls timed with events (after warm-up). Inputs rotate among copies whose total
// exceeds L2 (50 MB), so that figures are HBM figures; contents are random (a random
// chunk replicated on the device: uploads of GBs of host-generated data would be slow).
// Every figure also goes to $MIL_PERF_JSON (one JSON object per line) when set.
//
// - DecodeAttention: Llama-3-8B attention shapes (32 q / 8 kv heads, d128, block 16,
//   shuffled blocks) at the SDPA-baseline shapes of scripts/gpu/bench_torch_decode.py,
//   current kernel vs the first version (KernelPolicy legacy) in the same run.
// - PrefillAttention: causal prefill of one sequence (the tensor-core kernel vs split-KV).
// - MatmulLlama8B: each Llama-3-8B projection (fused qkv, o, fused gate_up, down, lm_head)
//   at n = 1, 8, 32, 128, 2048: BF16 through cuBLASLt vs MIL's GEMV (n <= 8), and Q8_0 /
//   Q4_0 / Q4_1 on-the-fly kernels (current vs first version) plus dequantize-to-bf16 +
//   cuBLASLt for the prefill sizes.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <numeric>
#include <string>
#include <utility>

#include "backends/cuda/blas.h"
#include "backends/cuda/cuda_ops.h"
#include "backends/cuda/kernels.h"
#include "cuda/cuda_harness.h"

namespace mil::test::gpu {
namespace {

#define PERF_CHECK(call)                                                              \
  do {                                                                                \
    const cudaError_t e_ = (call);                                                    \
    ASSERT_EQ(e_, cudaSuccess) << #call << ": " << cudaGetErrorString(e_);            \
  } while (0)

// Median time per call in ms of f(i), i counting calls (for rotation).
template <typename F>
double time_ms(F&& f, int batches = 15, int per_batch = 10) {
  int i = 0;
  for (int w = 0; w < 5; ++w) f(i++);
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  std::vector<float> t;
  for (int r = 0; r < batches; ++r) {
    cudaEventRecord(a);
    for (int j = 0; j < per_batch; ++j) f(i++);
    cudaEventRecord(b);
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    t.push_back(ms / per_batch);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

void record(const std::string& json, const std::string& text) {
  std::printf("PERF %s\n", text.c_str());
  std::fflush(stdout);
  if (const char* path = std::getenv("MIL_PERF_JSON")) {
    if (FILE* f = std::fopen(path, "a")) {
      std::fprintf(f, "%s\n", json.c_str());
      std::fclose(f);
    }
  }
}

// Raw device memory filled by replicating `pattern` (no guards: timing only).
struct DevMem {
  void* p = nullptr;
  size_t bytes = 0;
  DevMem(size_t n, const std::vector<uint8_t>& pattern) : bytes(n) {
    if (cudaMalloc(&p, n) != cudaSuccess) {
      p = nullptr;
      return;
    }
    const size_t chunk = std::min(n, pattern.size());
    cudaMemcpy(p, pattern.data(), chunk, cudaMemcpyHostToDevice);
    for (size_t done = chunk; done < n;) {
      const size_t c = std::min(done, n - done);
      cudaMemcpy(static_cast<char*>(p) + done, p, c, cudaMemcpyDeviceToDevice);
      done += c;
    }
  }
  ~DevMem() {
    if (p != nullptr) cudaFree(p);
  }
  DevMem(const DevMem&) = delete;
  DevMem& operator=(const DevMem&) = delete;
};

std::vector<uint8_t> random_bf16_bytes(Random& rng, size_t n_elems) {
  return rng.weight_rows(DType::BF16, 1, static_cast<int64_t>(n_elems));
}

Tensor dev_tensor(DType dt, int64_t rows, int64_t cols, void* data) {
  return Tensor::contiguous(dt, rows, cols, data, Device::CUDA);
}

constexpr size_t kRotateBytes = 256u << 20;  // > 5x L2

using Policy = cuda::KernelPolicy;

TEST(CudaPerf, DISABLED_DecodeAttention) {
  if (!has_gpu()) GTEST_SKIP();
  auto ops = make_cuda_ops(0);
  Random rng(1);
  const int32_t heads = 32, kv_heads = 8, dim = 128, bs = 16;
  const int64_t kvw = kv_heads * dim;
  const std::vector<uint8_t> pattern = random_bf16_bytes(rng, 4u << 20);
  const std::pair<int32_t, int32_t> shapes[] = {{1, 4096}, {1, 16384}, {8, 4096}, {32, 2048},
                                                {32, 512}, {128, 512}, {64, 2048}, {128, 2048}};
  const Policy saved = cuda::kernel_policy();
  for (const auto& [batch, ctx] : shapes) {
    const int32_t blocks = (ctx + bs - 1) / bs, total = blocks * batch;
    const int64_t slots = int64_t{total} * bs;
    const size_t kv_bytes = static_cast<size_t>(slots * kvw * 2);
    const int copies = static_cast<int>(std::max<size_t>(1, (kRotateBytes + 2 * kv_bytes - 1) / (2 * kv_bytes)));
    std::vector<std::unique_ptr<DevMem>> ks, vs;
    for (int c = 0; c < copies; ++c) {
      ks.push_back(std::make_unique<DevMem>(kv_bytes, pattern));
      vs.push_back(std::make_unique<DevMem>(kv_bytes, pattern));
      ASSERT_NE(ks.back()->p, nullptr);
      ASSERT_NE(vs.back()->p, nullptr);
    }
    std::vector<int32_t> pool(total);
    std::iota(pool.begin(), pool.end(), 0);
    std::shuffle(pool.begin(), pool.end(), rng.gen());
    std::vector<int32_t> qs(batch + 1), cl(batch, ctx);
    std::iota(qs.begin(), qs.end(), 0);
    GpuTensor q(DType::BF16, batch, heads * dim), out(DType::BF16, batch, heads * dim);
    q.set(rng.uniform(int64_t{batch} * heads * dim));
    GpuArray<int32_t> dqs(qs), dcl(cl), dbt(pool);
    const AttentionBatch b{batch, dqs.get(), dcl.get(), dbt.get(), blocks, bs};
    const AttentionShape shape{heads, kv_heads, dim, 1.0f / std::sqrt(128.0f)};
    const double bytes = 2.0 * static_cast<double>(batch) * ctx * kvw * 2;  // K+V read once
    for (const auto& [name, pol] : {std::pair{"current", Policy::Attention::kAuto},
                                    std::pair{"v1", Policy::Attention::kLegacy}}) {
      cuda::kernel_policy().attention = pol;
      const double ms = time_ms([&](int i) {
        const int c = i % copies;
        ops->attention(q, dev_tensor(DType::BF16, slots, kvw, ks[c]->p),
                       dev_tensor(DType::BF16, slots, kvw, vs[c]->p), b, shape, out);
      });
      PERF_CHECK(cudaDeviceSynchronize());
      char text[256], json[512];
      std::snprintf(text, sizeof text, "decode_attention %-7s batch=%d ctx=%d: %.4f ms, %.0f GB/s", name,
                    batch, ctx, ms, bytes / ms / 1e6);
      std::snprintf(json, sizeof json,
                    R"({"bench":"decode_attention","kernel":"%s","batch":%d,"ctx":%d,"ms":%.5f,"GBps":%.1f})",
                    name, batch, ctx, ms, bytes / ms / 1e6);
      record(json, text);
    }
  }
  cuda::kernel_policy() = saved;
}

TEST(CudaPerf, DISABLED_PrefillAttention) {
  if (!has_gpu()) GTEST_SKIP();
  auto ops = make_cuda_ops(0);
  Random rng(3);
  const int32_t heads = 32, kv_heads = 8, dim = 128, bs = 16;
  const int64_t kvw = kv_heads * dim;
  const Policy saved = cuda::kernel_policy();
  for (int32_t n : {128, 512, 2048, 4096}) {
    const int32_t blocks = (n + bs - 1) / bs;
    const int64_t slots = int64_t{blocks} * bs;
    GpuTensor k(DType::BF16, slots, kvw), v(DType::BF16, slots, kvw);
    k.set(rng.uniform(slots * kvw));
    v.set(rng.uniform(slots * kvw));
    GpuTensor q(DType::BF16, n, heads * dim), out(DType::BF16, n, heads * dim);
    q.set(rng.uniform(int64_t{n} * heads * dim));
    std::vector<int32_t> table(blocks);
    std::iota(table.begin(), table.end(), 0);
    std::shuffle(table.begin(), table.end(), rng.gen());
    GpuArray<int32_t> dqs(std::vector<int32_t>{0, n}), dcl(std::vector<int32_t>{n}), dbt(table);
    const AttentionBatch b{1, dqs.get(), dcl.get(), dbt.get(), blocks, bs};
    const AttentionShape shape{heads, kv_heads, dim, 1.0f / std::sqrt(128.0f)};
    // Causal attention FLOPs: QK^T and PV over the lower triangle.
    const double flops = 4.0 * heads * dim * (static_cast<double>(n) * (n + 1) / 2);
    for (const auto& [name, pol] : {std::pair{"flash", Policy::Attention::kAuto},
                                    std::pair{"split", Policy::Attention::kSplit},
                                    std::pair{"v1", Policy::Attention::kLegacy}}) {
      if (n > 2048 && pol == Policy::Attention::kLegacy) continue;
      cuda::kernel_policy().attention = pol;
      const double ms = time_ms([&](int) { ops->attention(q, k, v, b, shape, out); }, 5, 3);
      PERF_CHECK(cudaDeviceSynchronize());
      char text[256], json[512];
      std::snprintf(text, sizeof text, "prefill_attention %-5s tokens=%d (32/8 heads, d128): %.4f ms, %.1f TFLOP/s",
                    name, n, ms, flops / ms / 1e9);
      std::snprintf(json, sizeof json,
                    R"({"bench":"prefill_attention","kernel":"%s","tokens":%d,"ms":%.5f,"TFLOPs":%.2f})", name,
                    n, ms, flops / ms / 1e9);
      record(json, text);
    }
  }
  cuda::kernel_policy() = saved;
}

TEST(CudaPerf, DISABLED_MatmulLlama8B) {
  if (!has_gpu()) GTEST_SKIP();
  Random rng(2);
  struct Shape {
    const char* name;
    int64_t m, k;
  };
  const Shape shapes[] = {{"qkv", 6144, 4096}, {"o", 4096, 4096}, {"gate_up", 28672, 4096},
                          {"down", 4096, 14336}, {"lm_head", 128256, 4096}};
  const int64_t ns[] = {1, 2, 4, 8, 32, 128, 2048};
  const Policy saved = cuda::kernel_policy();
  auto ops = make_cuda_ops(0);
  cudaStream_t stream = nullptr;
  PERF_CHECK(cudaStreamCreate(&stream));
  cuda::Blas blas(stream);
  for (DType dt : {DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q4_1}) {
    for (const Shape& s : shapes) {
      const size_t wbytes = row_bytes(dt, s.k) * s.m;
      const int copies = static_cast<int>(std::max<size_t>(1, (kRotateBytes + wbytes - 1) / wbytes));
      const std::vector<uint8_t> pattern = rng.weight_rows(dt, std::min<int64_t>(s.m, 512), s.k);
      std::vector<std::unique_ptr<DevMem>> ws;
      for (int c = 0; c < copies; ++c) {
        ws.push_back(std::make_unique<DevMem>(wbytes, pattern));
        ASSERT_NE(ws.back()->p, nullptr);
      }
      const int64_t max_n = 2048;
      DevMem xmem(static_cast<size_t>(max_n * s.k * 2), random_bf16_bytes(rng, 1u << 20));
      DevMem ymem(static_cast<size_t>(max_n * s.m * 2), std::vector<uint8_t>(16, 0));
      std::unique_ptr<DevMem> scratch;  // bf16 image of quantized weights (prefill path)
      if (dt != DType::BF16) scratch = std::make_unique<DevMem>(static_cast<size_t>(s.m * s.k * 2), std::vector<uint8_t>(16, 0));
      for (int64_t n : ns) {
        if ((n == 2 || n == 4) && dt != DType::BF16) continue;
        const Tensor x = dev_tensor(DType::BF16, n, s.k, xmem.p), y = dev_tensor(DType::BF16, n, s.m, ymem.p);
        auto w = [&](int i) { return dev_tensor(dt, s.m, s.k, ws[i % copies]->p); };
        std::vector<std::pair<std::string, std::function<void(int)>>> variants;
        if (dt == DType::BF16) {
          variants.emplace_back("cublaslt", [&](int i) {
            cuda::kernel_policy().bf16_gemv_max_n = 0;
            ops->matmul(x, w(i), y);
          });
          if (n <= 8) {
            variants.emplace_back("gemv", [&](int i) {
              cuda::kernel_policy().bf16_gemv_max_n = 8;
              cuda::kernel_policy().gemv_splitk = true;
              ops->matmul(x, w(i), y);
            });
            variants.emplace_back("gemv_rowwarp", [&](int i) {  // the pre-split-K kernel
              cuda::kernel_policy().bf16_gemv_max_n = 8;
              cuda::kernel_policy().gemv_splitk = false;
              ops->matmul(x, w(i), y);
            });
          }
        } else {
          if (n <= 8) {
            variants.emplace_back("qgemv", [&](int i) {
              cuda::kernel_policy().qgemv = true;
              ops->matmul(x, w(i), y);
            });
          }
          if (n <= 8) {
            variants.emplace_back("v1", [&](int i) {
              cuda::kernel_policy().qgemv = false;
              ops->matmul(x, w(i), y);
            });
          }
          if (n >= 8) {
            variants.emplace_back("dequant+lt", [&](int i) {
              const Tensor wi = w(i);
              cuda::launch_dequant_to_bf16(cuda::Mat{wi.data, wi.rows, wi.cols, wi.row_stride, dt},
                                           static_cast<uint16_t*>(scratch->p), s.k, stream);
              cuda::GemmArgs a;
              a.w = scratch->p;
              a.x = x.data;
              a.y = y.data;
              a.m = s.m;
              a.n = n;
              a.k = s.k;
              a.ldw = s.k;
              a.ldx = s.k;
              a.ldy = s.m;
              cuda::kernel_policy().bf16_gemv_max_n = 0;
              blas.gemm(a, true);
            });
          }
        }
        for (auto& [name, f] : variants) {
          const bool big = n >= 128;
          const double ms = time_ms(f, big ? 7 : 15, big ? 3 : 10);
          cudaDeviceSynchronize();
          const cudaError_t err = cudaGetLastError();
          ASSERT_EQ(err, cudaSuccess) << cudaGetErrorString(err);
          const double tflops = 2.0 * n * s.m * s.k / ms / 1e9;
          char text[256], json[512];
          std::snprintf(text, sizeof text, "matmul %-4s %-8s %-10s n=%-5ld %6ldx%-6ld: %8.4f ms, %6.0f GB/s, %6.1f TFLOP/s",
                        dtype_name(dt).data(), s.name, name.c_str(), static_cast<long>(n),
                        static_cast<long>(s.m), static_cast<long>(s.k), ms, wbytes / ms / 1e6, tflops);
          std::snprintf(json, sizeof json,
                        R"({"bench":"matmul","dtype":"%s","shape":"%s","m":%ld,"k":%ld,"n":%ld,"kernel":"%s","ms":%.5f,"weight_GBps":%.1f,"TFLOPs":%.2f})",
                        dtype_name(dt).data(), s.name, static_cast<long>(s.m), static_cast<long>(s.k),
                        static_cast<long>(n), name.c_str(), ms, wbytes / ms / 1e6, tflops);
          record(json, text);
        }
      }
    }
  }
  cuda::kernel_policy() = saved;
  cudaStreamDestroy(stream);
}

}  // namespace
}  // namespace mil::test::gpu
