// Portable kernels: the fallback for CPUs without AVX2 and the yardstick the SIMD tables are
// tested against. The integer math is the same as in the SIMD kernels (exact int32 block
// sums, then one f32 scale per block), so the tables differ only in f32 summation order.
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "backends/cpu/dequant.h"
#include "backends/cpu/kernels.h"

namespace mil::cpu {
namespace {

void quantize_row(const float* x, int64_t nb, int8_t* qs, float* ds) {
  for (int64_t b = 0; b < nb; ++b) {
    const float* xb = x + b * kQuantBlock;
    float amax = 0.0f;
    for (int i = 0; i < kQuantBlock; ++i) amax = std::fmax(amax, std::fabs(xb[i]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    int sum = 0;
    for (int i = 0; i < kQuantBlock; ++i) {
      // nearbyint rounds half to even, like the SIMD conversions.
      const int q = static_cast<int>(std::nearbyint(xb[i] * id));
      qs[b * kQuantBlock + i] = static_cast<int8_t>(q);
      sum += q;
    }
    ds[2 * b] = d;
    ds[2 * b + 1] = d * static_cast<float>(sum);
  }
}

template <typename Block>
Block load_block(const std::byte* p) {
  Block b;
  std::memcpy(&b, p, sizeof(b));
  return b;
}

// sum over the block of weight_int[j] * q[j], with the weight's integer codes as stored.
int block_isum(const BlockQ8_0& w, const int8_t* q) {
  int s = 0;
  for (int j = 0; j < kQuantBlock; ++j) s += w.qs[j] * q[j];
  return s;
}
template <typename Block4>
int block_isum_nibbles(const Block4& w, const int8_t* q) {
  int s = 0;
  for (int j = 0; j < kQuantBlock / 2; ++j) {
    s += (w.qs[j] & 0x0f) * q[j];
    s += (w.qs[j] >> 4) * q[j + kQuantBlock / 2];
  }
  return s;
}

template <DType kType>
void quant_tile(const QuantTile& t) {
  const int64_t nb = t.x.nb;
  for (int64_t r = 0; r < t.w_rows; ++r) {
    const std::byte* row = t.w + r * t.w_stride;
    for (int i = 0; i < t.x_rows; ++i) {
      const int8_t* q = t.x.qs + i * nb * kQuantBlock;
      const float* ds = t.x.ds + i * nb * 2;
      float acc = 0.0f;
      for (int64_t b = 0; b < nb; ++b) {
        const int8_t* qb = q + b * kQuantBlock;
        const float dx = ds[2 * b];
        const float sx = ds[2 * b + 1];
        if constexpr (kType == DType::Q8_0) {
          const auto w = load_block<BlockQ8_0>(row + b * sizeof(BlockQ8_0));
          acc += f16_to_f32(w.d) * dx * static_cast<float>(block_isum(w, qb));
        } else if constexpr (kType == DType::Q4_0) {
          // (nibble - 8) * d: the offset is applied through sum(q), kept in sx.
          const auto w = load_block<BlockQ4_0>(row + b * sizeof(BlockQ4_0));
          const float d = f16_to_f32(w.d);
          acc += d * dx * static_cast<float>(block_isum_nibbles(w, qb)) - 8.0f * d * sx;
        } else {
          const auto w = load_block<BlockQ4_1>(row + b * sizeof(BlockQ4_1));
          acc += f16_to_f32(w.d) * dx * static_cast<float>(block_isum_nibbles(w, qb)) +
                 f16_to_f32(w.m) * sx;
        }
      }
      t.y[i * t.y_stride + r] = acc;
    }
  }
}

template <DType kType>
void float_tile(const FloatTile& t) {
  // Converting a row once and reusing it for every activation row; the buffer is on the
  // stack in chunks so that no allocation happens here.
  // The chunk is a multiple of the quantization block, so quantized rows split cleanly.
  constexpr int64_t kChunk = 256;
  static_assert(kChunk % kQuantBlock == 0);
  float wbuf[kChunk];
  for (int64_t r = 0; r < t.w_rows; ++r) {
    const std::byte* row = t.w + r * t.w_stride;
    float acc[kMaxFloatTileRows] = {};
    for (int64_t k0 = 0; k0 < t.k; k0 += kChunk) {
      const int64_t len = t.k - k0 < kChunk ? t.k - k0 : kChunk;
      dequant_row(kType, row + row_bytes(kType, k0), len, wbuf);
      for (int i = 0; i < t.x_rows; ++i) {
        const float* x = t.x + i * t.x_stride + k0;
        float s = 0.0f;
        for (int64_t j = 0; j < len; ++j) s += wbuf[j] * x[j];
        acc[i] += s;
      }
    }
    for (int i = 0; i < t.x_rows; ++i) t.y[i * t.y_stride + r] = acc[i];
  }
}

float dot_f32(const float* a, const float* b, int64_t n) {
  float s = 0.0f;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

void axpy_f32(float a, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

const Kernels kScalar = {
    "scalar",
    quantize_row,
    quant_tile<DType::Q8_0>,
    quant_tile<DType::Q4_0>,
    quant_tile<DType::Q4_1>,
    float_tile<DType::F32>,
    float_tile<DType::F16>,
    float_tile<DType::BF16>,
    float_tile<DType::Q8_0>,
    float_tile<DType::Q4_0>,
    float_tile<DType::Q4_1>,
    dot_f32,
    axpy_f32,
};

}  // namespace

const Kernels* scalar_kernels() { return &kScalar; }

const Kernels& kernels() {
  // MIL_CPU_KERNELS=scalar|avx2|avx512vnni picks a weaker table (benchmarks, bug hunts).
  static const Kernels* best = [] {
    const Kernels* all[4];
    const int n = available_kernels(all, 4);
    const char* want = std::getenv("MIL_CPU_KERNELS");
    for (int i = 0; want != nullptr && i < n; ++i) {
      if (std::strcmp(all[i]->name, want) == 0) return all[i];
    }
    return all[n - 1];
  }();
  return *best;
}

int available_kernels(const Kernels** out, int max) {
  int n = 0;
  for (const Kernels* k : {scalar_kernels(), avx2_kernels(), avx512_kernels()}) {
    if (k != nullptr && n < max) out[n++] = k;
  }
  return n;
}

}  // namespace mil::cpu
