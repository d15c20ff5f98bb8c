// CPU matmul at the shapes of SmolLM2-135M (hidden 576, ffn 1536, 3 kv heads of 64,
// vocab 49152) for every weight dtype. n=1 is decode (reported as GB/s of weight bytes
// read), n=64 is prefill (reported as GFLOP/s).
//
// make_cpu_ops keeps activations in f32 (quantized weights dequantized in registers);
// the matmul_int8/ variants run the same shapes through make_cpu_ops_int8 (llama.cpp-style
// 8-bit activations), the speed bar the f32 path is measured against.
//
// "hot" runs reuse one weight matrix, which then sits in L2/L3: a kernel-throughput
// figure. "cold" rotates through enough copies to exceed the last-level cache, as a real
// decode step does (the whole model is ~100 MB): the memory-bound figure.
//
//   bench_ops --benchmark_filter='Q4_1/.*/n=1/'   # one dtype, decode, both paths
//
// lora/ runs multi-LoRA shrink + expand (f32, rank 16) on a decode batch of 32 rows:
// "distinct" puts every row on its own adapter (BGMV, one segment per row), "same" puts
// all rows on one adapter (one SGMV segment); lora/base/ is the base matmul of that batch
// alone, the cost the adapters add to.
//
//   bench_ops --benchmark_filter='^lora/'
#include <benchmark/benchmark.h>

#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "backends/cpu/cpu_ops.h"
#include "core/buffer.h"
#include "core/half.h"

namespace {

using mil::DType;

struct Shape {
  int64_t m, k;
  const char* what;
};

constexpr Shape kShapes[] = {{576, 576, "q_o"},
                             {192, 576, "k_v"},
                             {1536, 576, "gate_up"},
                             {576, 1536, "down"},
                             {49152, 576, "lm_head"}};
constexpr DType kDtypes[] = {DType::Q4_1, DType::Q8_0, DType::Q4_0,
                             DType::F16,  DType::BF16, DType::F32};
constexpr size_t kColdBytes = size_t{192} << 20;  // well past a 32 MB L3

// Random but valid blocks: small f16 scales, so no value is Inf/NaN.
void fill_weights(DType dtype, void* data, size_t bytes, std::mt19937& gen) {
  auto* p = static_cast<uint8_t*>(data);
  for (size_t i = 0; i < bytes; ++i) p[i] = static_cast<uint8_t>(gen());
  const size_t bb = mil::block_bytes(dtype);
  const uint16_t scale = mil::f32_to_f16(0.01f);
  const uint16_t bf = mil::f32_to_bf16(0.01f);
  for (size_t off = 0; off + bb <= bytes; off += bb) {
    switch (dtype) {
      case DType::Q8_0:
      case DType::Q4_0:
        std::memcpy(p + off, &scale, 2);
        break;
      case DType::Q4_1:
        std::memcpy(p + off, &scale, 2);
        std::memcpy(p + off + 2, &scale, 2);
        break;
      case DType::F16:
        std::memcpy(p + off, &scale, 2);
        break;
      case DType::BF16:
        std::memcpy(p + off, &bf, 2);
        break;
      case DType::F32: {
        const float f = 0.01f;
        std::memcpy(p + off, &f, 4);
        break;
      }
      default:
        break;
    }
  }
}

enum class Path { kDefault, kInt8, kExact };

void bench_matmul(benchmark::State& state, DType dtype, Shape shape, int64_t n, int threads,
                  bool cold, Path path) {
  const size_t wbytes = mil::row_bytes(dtype, shape.k) * shape.m;
  const size_t copies = cold ? std::max<size_t>(2, (kColdBytes + wbytes - 1) / wbytes) : 1;
  std::vector<mil::HostBuffer> weights;
  std::mt19937 gen(1);
  for (size_t c = 0; c < copies; ++c) {
    weights.emplace_back(wbytes);
    fill_weights(dtype, weights.back().data(), wbytes, gen);
  }
  mil::OwnedTensor x(DType::F32, n, shape.k), y(DType::F32, n, shape.m);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (int64_t i = 0; i < n * shape.k; ++i) x.ptr<float>()[i] = dist(gen);
  auto ops = path == Path::kExact  ? mil::make_cpu_ops_exact(threads)
             : path == Path::kInt8 ? mil::make_cpu_ops_int8(threads)
                                   : mil::make_cpu_ops(threads);

  size_t next = 0;
  for (auto _ : state) {
    const mil::Tensor w = mil::Tensor::contiguous(dtype, shape.m, shape.k, weights[next].data());
    ops->matmul(x, w, y);
    benchmark::DoNotOptimize(y.ptr<float>());
    if (++next == copies) next = 0;
  }
  state.counters["GB/s"] = benchmark::Counter(static_cast<double>(wbytes) / 1e9,
                                              benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * n * shape.m * shape.k / 1e9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
}

// One LoRA projection (in -> out) for `slots` adapters of rank `rank`, f32.
struct LoraBench {
  LoraBench(int64_t in, int64_t out, int64_t rank, int slots, std::mt19937& gen) {
    std::uniform_real_distribution<float> dist(-0.05f, 0.05f);
    for (int s = 0; s < slots; ++s) {
      weights.emplace_back(mil::DType::F32, rank, in);
      weights.emplace_back(mil::DType::F32, out, rank);
      for (int w = 1; w <= 2; ++w) {
        mil::OwnedTensor& t = weights[weights.size() - w];
        for (int64_t i = 0; i < t.view().rows * t.view().cols; ++i) t.ptr<float>()[i] = dist(gen);
      }
    }
    for (int s = 0; s < slots; ++s) {
      a.push_back(weights[2 * s].view());
      b.push_back(weights[2 * s + 1].view());
      scale.push_back(2.0f);
    }
    proj = {a.data(), b.data(), scale.data(), slots};
  }
  std::vector<mil::OwnedTensor> weights;
  std::vector<mil::Tensor> a, b;
  std::vector<float> scale;
  mil::LoraProjection proj;
};

constexpr int64_t kLoraRows = 32, kLoraRank = 16;

// distinct: row i on adapter i (one segment per row); otherwise all rows on adapter 0.
void bench_lora(benchmark::State& state, Shape shape, bool distinct, int threads) {
  std::mt19937 gen(3);
  LoraBench lora(shape.k, shape.m, kLoraRank, static_cast<int>(kLoraRows), gen);
  std::vector<mil::LoraSegment> segs;
  if (distinct) {
    for (int32_t i = 0; i < kLoraRows; ++i) segs.push_back({i, i + 1, i});
  } else {
    segs.push_back({0, static_cast<int32_t>(kLoraRows), 0});
  }
  mil::OwnedTensor x(DType::F32, kLoraRows, shape.k), y(DType::F32, kLoraRows, shape.m),
      v(DType::F32, kLoraRows, kLoraRank);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (int64_t i = 0; i < kLoraRows * shape.k; ++i) x.ptr<float>()[i] = dist(gen);
  for (int64_t i = 0; i < kLoraRows * shape.m; ++i) y.ptr<float>()[i] = 0.0f;
  auto ops = mil::make_cpu_ops(threads);
  const auto count = static_cast<int32_t>(segs.size());
  for (auto _ : state) {
    ops->lora_shrink(x, lora.proj, segs.data(), count, v);
    ops->lora_expand(v, lora.proj, segs.data(), count, y);
    benchmark::DoNotOptimize(y.ptr<float>());
  }
  // Adapter bytes read per call: every used adapter's A and B once.
  const double used = distinct ? static_cast<double>(kLoraRows) : 1.0;
  state.counters["adapter_MB"] =
      used * static_cast<double>(kLoraRank * (shape.k + shape.m) * 4) / 1e6;
}

void register_lora() {
  const Shape shapes[] = {kShapes[0], kShapes[2]};  // q/o 576 -> 576, gate 576 -> 1536
  for (const Shape& shape : shapes) {
    const std::string dims = std::string(shape.what) + "_" + std::to_string(shape.m) + "x" +
                             std::to_string(shape.k) + "/n=" + std::to_string(kLoraRows) + "/t=1";
    for (bool distinct : {true, false}) {
      const std::string name = std::string("lora/r16/") + (distinct ? "distinct/" : "same/") + dims;
      benchmark::RegisterBenchmark(name.c_str(), bench_lora, shape, distinct, 1)
          ->UseRealTime()
          ->Unit(benchmark::kMicrosecond);
    }
    for (DType dtype : {DType::BF16, DType::Q4_1}) {
      const std::string name =
          std::string("lora/base/") + std::string(mil::dtype_name(dtype)) + "/" + dims;
      benchmark::RegisterBenchmark(name.c_str(), bench_matmul, dtype, shape, kLoraRows, 1, false,
                                   Path::kDefault)
          ->UseRealTime()
          ->Unit(benchmark::kMicrosecond);
    }
  }
}

void register_all() {
  register_lora();
  for (DType dtype : kDtypes) {
    for (const Shape& shape : kShapes) {
      for (int64_t n : {1, 64}) {
        for (int threads : {1, 2}) {
          for (bool cold : {false, true}) {
            if (cold && n != 1) continue;  // prefill reuses weights; cache state hardly matters
            for (Path path : {Path::kDefault, Path::kInt8}) {
              // Float weights run the same kernels on both paths.
              if (path == Path::kInt8 && !mil::is_quantized(dtype)) continue;
              const std::string name =
                  std::string(path == Path::kInt8 ? "matmul_int8/" : "matmul/") +
                  std::string(mil::dtype_name(dtype)) + "/" + shape.what + "_" +
                  std::to_string(shape.m) + "x" + std::to_string(shape.k) +
                  "/n=" + std::to_string(n) + "/t=" + std::to_string(threads) +
                  (cold ? "/cold" : "/hot");
              benchmark::RegisterBenchmark(name.c_str(), bench_matmul, dtype, shape, n, threads,
                                           cold, path)
                  ->UseRealTime()
                  ->Unit(benchmark::kMicrosecond);
            }
          }
        }
      }
    }
  }
  // The exact (scalar reference) path, for the cost of golden-test mode.
  for (int64_t n : {1, 64}) {
    benchmark::RegisterBenchmark(
        ("matmul_exact/Q4_1/gate_up_1536x576/n=" + std::to_string(n) + "/t=2/hot").c_str(),
        bench_matmul, DType::Q4_1, kShapes[2], n, 2, false, Path::kExact)
        ->UseRealTime()
        ->Unit(benchmark::kMicrosecond);
  }
}

}  // namespace

int main(int argc, char** argv) {
  register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
