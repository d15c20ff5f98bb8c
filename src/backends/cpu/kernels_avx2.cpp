// AVX2 + FMA + F16C kernels. Every function carries the target attribute (no global -march),
// so this translation unit links into a portable binary and runs only after the CPUID check.
//
// Integer dot products follow llama.cpp: maddubs multiplies unsigned bytes by signed bytes
// into int16 pairs (no saturation here: at most 15 * 127 * 2 for 4-bit weights and
// 128 * 127 * 2 for 8-bit ones), madd with ones widens to int32, one f32 FMA per block
// applies the two scales.
#include <immintrin.h>

#include <cstring>

#include "backends/cpu/kernels.h"

#define MIL_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace mil::cpu {
namespace {

MIL_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

MIL_AVX2 inline int hsum_i32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}

MIL_AVX2 void quantize_row(const float* x, int64_t nb, int8_t* qs, float* ds) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int64_t b = 0; b < nb; ++b) {
    const float* xb = x + b * kQuantBlock;
    __m256 v[4];
    __m256 amax = _mm256_setzero_ps();
    for (int j = 0; j < 4; ++j) {
      v[j] = _mm256_loadu_ps(xb + 8 * j);
      amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[j]));
    }
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    // Same operations as the scalar kernel, so every table quantizes bit-identically.
    const float d = _mm_cvtss_f32(m) / 127.0f;
    const __m256 id = _mm256_set1_ps(d != 0.0f ? 1.0f / d : 0.0f);
    __m256i q[4];
    for (int j = 0; j < 4; ++j) q[j] = _mm256_cvtps_epi32(_mm256_mul_ps(v[j], id));
    const int sum =
        hsum_i32(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
    // packs interleave 128-bit lanes; the permute restores element order.
    const __m256i p16a = _mm256_packs_epi32(q[0], q[1]);
    const __m256i p16b = _mm256_packs_epi32(q[2], q[3]);
    __m256i p8 = _mm256_packs_epi16(p16a, p16b);
    p8 = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(qs + b * kQuantBlock), p8);
    ds[2 * b] = d;
    ds[2 * b + 1] = d * static_cast<float>(sum);
  }
}

// 16 bytes of packed nibbles -> 32 unsigned bytes: low nibbles are elements 0..15.
MIL_AVX2 inline __m256i unpack_nibbles(const std::byte* qs) {
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m256i v = _mm256_set_m128i(_mm_srli_epi16(b, 4), b);
  return _mm256_and_si256(v, _mm256_set1_epi8(0x0f));
}

MIL_AVX2 inline __m256 isum_ps(__m256i u8, __m256i s8) {
  const __m256i p16 = _mm256_maddubs_epi16(u8, s8);
  return _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
}

MIL_AVX2 inline __m128 load_ds(const float* ds) {  // (d, s, 0, 0)
  return _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(ds)));
}

template <DType kType>
struct QuantTraits;
template <>
struct QuantTraits<DType::Q8_0> {
  static constexpr size_t kBytes = sizeof(BlockQ8_0);
  static constexpr size_t kQs = 2;
};
template <>
struct QuantTraits<DType::Q4_0> {
  static constexpr size_t kBytes = sizeof(BlockQ4_0);
  static constexpr size_t kQs = 2;
};
template <>
struct QuantTraits<DType::Q4_1> {
  static constexpr size_t kBytes = sizeof(BlockQ4_1);
  static constexpr size_t kQs = 4;
};

// R activation rows against one weight row at a time. For few rows, two accumulator sets
// (even/odd blocks) break the FMA latency chain; with more rows the rows themselves do.
template <DType kType, int R>
MIL_AVX2 void quant_tile_rows(const QuantTile& t) {
  using Tr = QuantTraits<kType>;
  constexpr int kSets = R <= 2 ? 2 : 1;
  const int64_t nb = t.x.nb;
  for (int64_t r = 0; r < t.w_rows; ++r) {
    const std::byte* row = t.w + r * t.w_stride;
    __m256 acc[kSets][R];
    __m128 accm[R];  // lane 1 collects the per-block min/offset terms
    for (int i = 0; i < R; ++i) {
      for (int s = 0; s < kSets; ++s) acc[s][i] = _mm256_setzero_ps();
      accm[i] = _mm_setzero_ps();
    }
    auto step = [&](int64_t b, int set) MIL_AVX2 {
      const std::byte* blk = row + b * Tr::kBytes;
      __m128 wd;  // Q4_1: (d, m); otherwise d in every lane
      if constexpr (kType == DType::Q4_1) {
        int32_t dm;
        std::memcpy(&dm, blk, 4);
        wd = _mm_cvtph_ps(_mm_cvtsi32_si128(dm));
      } else {
        uint16_t d;
        std::memcpy(&d, blk, 2);
        wd = _mm_cvtph_ps(_mm_set1_epi16(static_cast<short>(d)));
      }
      __m256i wq;
      if constexpr (kType == DType::Q8_0) {
        wq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + Tr::kQs));
      } else {
        wq = unpack_nibbles(blk + Tr::kQs);
      }
      [[maybe_unused]] __m256i wabs;
      if constexpr (kType == DType::Q8_0) wabs = _mm256_sign_epi8(wq, wq);
      for (int i = 0; i < R; ++i) {
        const int8_t* xq = t.x.qs + (i * nb + b) * kQuantBlock;
        const __m128 prod = _mm_mul_ps(wd, load_ds(t.x.ds + 2 * (i * nb + b)));
        const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq));
        __m256 isum;
        if constexpr (kType == DType::Q8_0) {
          isum = isum_ps(wabs, _mm256_sign_epi8(x, wq));
        } else {
          isum = isum_ps(wq, x);
          accm[i] = _mm_add_ps(accm[i], prod);
        }
        acc[set][i] = _mm256_fmadd_ps(isum, _mm256_broadcastss_ps(prod), acc[set][i]);
      }
    };
    int64_t b = 0;
    if constexpr (kSets == 2) {
      for (; b + 1 < nb; b += 2) {
        step(b, 0);
        step(b + 1, 1);
      }
    }
    for (; b < nb; ++b) step(b, 0);
    for (int i = 0; i < R; ++i) {
      __m256 a = acc[0][i];
      if constexpr (kSets == 2) a = _mm256_add_ps(a, acc[1][i]);
      float v = hsum(a);
      const float extra = _mm_cvtss_f32(_mm_movehdup_ps(accm[i]));
      if constexpr (kType == DType::Q4_1) v += extra;
      if constexpr (kType == DType::Q4_0) v -= 8.0f * extra;
      t.y[i * t.y_stride + r] = v;
    }
  }
}

template <DType kType>
MIL_AVX2 void quant_tile(const QuantTile& t) {
  switch (t.x_rows) {
    case 1:
      return quant_tile_rows<kType, 1>(t);
    case 2:
      return quant_tile_rows<kType, 2>(t);
    case 3:
      return quant_tile_rows<kType, 3>(t);
    default:
      return quant_tile_rows<kType, 4>(t);
  }
}

template <DType kType>
MIL_AVX2 inline __m256 load8(const std::byte* p) {
  if constexpr (kType == DType::F32) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(p));
  } else if constexpr (kType == DType::F16) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  } else {  // bf16 is the top half of an f32
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
}

template <DType kType>
MIL_AVX2 inline float load1(const std::byte* p) {
  if constexpr (kType == DType::F32) {
    float f;
    std::memcpy(&f, p, 4);
    return f;
  } else {
    uint16_t h;
    std::memcpy(&h, p, 2);
    if constexpr (kType == DType::F16) return _cvtsh_ss(h);
    uint32_t bits = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  }
}

template <DType kType, int R>
MIL_AVX2 void float_tile_rows(const FloatTile& t) {
  constexpr size_t kElem = kType == DType::F32 ? 4 : 2;
  constexpr int kSets = R <= 2 ? 2 : 1;
  for (int64_t r = 0; r < t.w_rows; ++r) {
    const std::byte* row = t.w + r * t.w_stride;
    __m256 acc[kSets][R];
    for (int s = 0; s < kSets; ++s)
      for (int i = 0; i < R; ++i) acc[s][i] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 * kSets <= t.k; k += 8 * kSets) {
      for (int s = 0; s < kSets; ++s) {
        const __m256 w = load8<kType>(row + (k + 8 * s) * kElem);
        for (int i = 0; i < R; ++i) {
          const __m256 x = _mm256_loadu_ps(t.x + i * t.x_stride + k + 8 * s);
          acc[s][i] = _mm256_fmadd_ps(w, x, acc[s][i]);
        }
      }
    }
    for (int i = 0; i < R; ++i) {
      __m256 a = acc[0][i];
      if constexpr (kSets == 2) a = _mm256_add_ps(a, acc[1][i]);
      float v = hsum(a);
      for (int64_t j = k; j < t.k; ++j)
        v += load1<kType>(row + j * kElem) * t.x[i * t.x_stride + j];
      t.y[i * t.y_stride + r] = v;
    }
  }
}

template <DType kType>
MIL_AVX2 void float_tile(const FloatTile& t) {
  switch (t.x_rows) {
    case 1:
      return float_tile_rows<kType, 1>(t);
    case 2:
      return float_tile_rows<kType, 2>(t);
    case 3:
      return float_tile_rows<kType, 3>(t);
    case 4:
      return float_tile_rows<kType, 4>(t);
    default:  // 16 ymm registers hold the accumulators of four rows at most
      float_tile_rows<kType, 4>(t);
      return float_tile<kType>(tile_rows_from(t, 4));
  }
}

// ---- f32 activations, quantized weights dequantized in registers ----
//
// One block's 32 weights as four vectors of 8 f32 in element order, with the values of the
// scalar dequantization (see kernels_avx512.cpp for why the fused forms round the same).
template <DType kType>
MIL_AVX2 inline void decode_block(const std::byte* blk, __m256 w[4]) {
  using Tr = QuantTraits<kType>;
  if constexpr (kType == DType::Q8_0) {
    const __m256 d = _mm256_cvtph_ps(_mm_broadcastw_epi16(_mm_loadu_si16(blk)));
    for (int j = 0; j < 4; ++j) {
      const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk + Tr::kQs + 8 * j));
      w[j] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), d);
    }
  } else {
    __m256 d, m;
    if constexpr (kType == DType::Q4_1) {
      const __m256 dm = _mm256_cvtph_ps(_mm_broadcastd_epi32(_mm_loadu_si32(blk)));
      d = _mm256_moveldup_ps(dm);
      m = _mm256_movehdup_ps(dm);
    } else {
      d = _mm256_cvtph_ps(_mm_broadcastw_epi16(_mm_loadu_si16(blk)));
      m = _mm256_mul_ps(d, _mm256_set1_ps(-8.0f));
    }
    // Bytes 0..7 hold elements 0..7 (low nibbles) and 16..23 (high), bytes 8..15 the rest.
    for (int h = 0; h < 2; ++h) {
      const __m256i q = _mm256_cvtepu8_epi32(
          _mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk + Tr::kQs + 8 * h)));
      const __m256i lo = _mm256_and_si256(q, _mm256_set1_epi32(15));
      w[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lo), d, m);
      w[2 + h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(q, 4)), d, m);
    }
  }
}

// R activation rows share each decoded block; two accumulators per row (even and odd
// vectors of the block) are as many as 16 ymm registers allow at four rows.
template <DType kType, int R>
MIL_AVX2 void f32x_tile_rows(const FloatTile& t) {
  using Tr = QuantTraits<kType>;
  const int64_t nb = t.k / kQuantBlock;
  for (int64_t r = 0; r < t.w_rows; ++r) {
    const std::byte* row = t.w + r * t.w_stride;
    __m256 acc[R][2];
    for (int i = 0; i < R; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      __m256 w[4];
      decode_block<kType>(row + b * Tr::kBytes, w);
      for (int i = 0; i < R; ++i) {
        const float* x = t.x + i * t.x_stride + b * kQuantBlock;
        for (int j = 0; j < 4; ++j)
          acc[i][j & 1] = _mm256_fmadd_ps(w[j], _mm256_loadu_ps(x + 8 * j), acc[i][j & 1]);
      }
    }
    for (int i = 0; i < R; ++i) t.y[i * t.y_stride + r] = hsum(_mm256_add_ps(acc[i][0], acc[i][1]));
  }
}

template <DType kType>
MIL_AVX2 void f32x_tile(const FloatTile& t) {
  switch (t.x_rows) {
    case 1:
      return f32x_tile_rows<kType, 1>(t);
    case 2:
      return f32x_tile_rows<kType, 2>(t);
    case 3:
      return f32x_tile_rows<kType, 3>(t);
    case 4:
      return f32x_tile_rows<kType, 4>(t);
    default:  // 16 ymm registers hold the accumulators of four rows at most
      f32x_tile_rows<kType, 4>(t);
      return f32x_tile<kType>(tile_rows_from(t, 4));
  }
}

MIL_AVX2 float dot_f32(const float* a, const float* b, int64_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
  }
  for (; i + 8 <= n; i += 8) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
  }
  float s = hsum(_mm256_add_ps(acc0, acc1));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

MIL_AVX2 void axpy_f32(float a, const float* x, float* y, int64_t n) {
  const __m256 va = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  }
  for (; i < n; ++i) y[i] += a * x[i];
}

const Kernels kAvx2 = {
    "avx2",
    quantize_row,
    quant_tile<DType::Q8_0>,
    quant_tile<DType::Q4_0>,
    quant_tile<DType::Q4_1>,
    float_tile<DType::F32>,
    float_tile<DType::F16>,
    float_tile<DType::BF16>,
    f32x_tile<DType::Q8_0>,
    f32x_tile<DType::Q4_0>,
    f32x_tile<DType::Q4_1>,
    dot_f32,
    axpy_f32,
};

}  // namespace

const Kernels* avx2_kernels() {
  __builtin_cpu_init();
  const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                  __builtin_cpu_supports("f16c");
  return ok ? &kAvx2 : nullptr;
}

}  // namespace mil::cpu
