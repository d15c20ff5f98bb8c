// AVX-512 (F/BW/VL) + VNNI kernels. A 512-bit register holds two 32-value blocks, so the
// per-block bookkeeping (scales, nibble unpacking) is paid once per pair, and vpdpbusd does
// the u8 x s8 multiply-add that AVX2 needs maddubs + madd for. Activations are quantized
// exactly as by the AVX2 table (its quantize_row is reused), so the two tables differ only
// in f32 summation order.
//
// The f32-activation kernels for quantized weights (make_cpu_ops' default path) widen the
// codes to dwords and turn them into f32 weights in registers; with f32 FMAs doing 16 MACs
// per instruction against vpdpbusd's 64, they tile up to 8 activation rows to keep prefill
// close to the int8 kernels, and decode stays near memory speed.
// GCC 12 warns inside its own AVX-512 headers (PR 105593: the "undefined" source operands
// of masked intrinsics); the warning points into the header, so silence it there only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <cstring>

#include "backends/cpu/kernels.h"

#define MIL_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))

namespace mil::cpu {
namespace {

template <DType kType>
constexpr size_t kBlockBytes = kType == DType::Q8_0   ? sizeof(BlockQ8_0)
                               : kType == DType::Q4_0 ? sizeof(BlockQ4_0)
                                                      : sizeof(BlockQ4_1);
template <DType kType>
constexpr size_t kQsOffset = kType == DType::Q4_1 ? 4 : 2;

MIL_AVX512 inline uint32_t load_u32(const std::byte* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// _mm512_reduce_add_ps trips a GCC 12 -Wmaybe-uninitialized false positive; fold by hand.
MIL_AVX512 inline float hsum(__m512 v) {
  v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(1, 0, 3, 2)));
  v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(2, 3, 0, 1)));
  __m128 s = _mm512_castps512_ps128(v);
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

MIL_AVX512 inline int hsum_i32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}

// Two blocks' weight codes in element order: bytes 0..31 block b, 32..63 block b+1.
template <DType kType>
MIL_AVX512 inline __m512i load_pair(const std::byte* b0, const std::byte* b1) {
  if constexpr (kType == DType::Q8_0) {
    const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b0 + 2));
    const __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b1 + 2));
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
  } else {
    // Each block's 16 bytes go to two 128-bit lanes; the odd lane is shifted down by 4 to
    // expose the high nibbles (elements 16..31).
    const __m256i q0 = _mm256_broadcastsi128_si256(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(b0 + kQsOffset<kType>)));
    const __m256i q1 = _mm256_broadcastsi128_si256(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(b1 + kQsOffset<kType>)));
    const __m512i q = _mm512_inserti64x4(_mm512_castsi256_si512(q0), q1, 1);
    const __m512i shifted = _mm512_srlv_epi64(q, _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4));
    return _mm512_and_si512(shifted, _mm512_set1_epi8(0x0f));
  }
}

// (d0, m0, d1, m1) for Q4_1, (d0, d0, d1, d1) otherwise.
template <DType kType>
MIL_AVX512 inline __m128 load_scales(const std::byte* b0, const std::byte* b1) {
  const __m128i raw = _mm_unpacklo_epi32(_mm_cvtsi32_si128(static_cast<int>(load_u32(b0))),
                                         _mm_cvtsi32_si128(static_cast<int>(load_u32(b1))));
  const __m128 f = _mm_cvtph_ps(raw);  // (d0, x, d1, x), x = m or the first codes
  if constexpr (kType == DType::Q4_1) return f;
  return _mm_moveldup_ps(f);
}

template <DType kType, int R>
MIL_AVX512 void quant_tile_rows(const QuantTile& t) {
  constexpr size_t kB = kBlockBytes<kType>;
  const int64_t nb = t.x.nb;
  const __m512i pick = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2);
  for (int64_t r = 0; r < t.w_rows; ++r) {
    const std::byte* row = t.w + r * t.w_stride;
    __m512 acc[R];
    __m128 accm[R];  // lanes 1 and 3 collect the per-block min/offset terms
    for (int i = 0; i < R; ++i) {
      acc[i] = _mm512_setzero_ps();
      accm[i] = _mm_setzero_ps();
    }
    int64_t b = 0;
    for (; b + 1 < nb; b += 2) {
      const std::byte* b0 = row + b * kB;
      const __m512i w = load_pair<kType>(b0, b0 + kB);
      const __m128 wd = load_scales<kType>(b0, b0 + kB);
      [[maybe_unused]] __m512i wabs;
      [[maybe_unused]] __mmask64 wneg;
      if constexpr (kType == DType::Q8_0) {
        wabs = _mm512_abs_epi8(w);
        wneg = _mm512_movepi8_mask(w);
      }
      for (int i = 0; i < R; ++i) {
        const int8_t* xq = t.x.qs + (i * nb + b) * kQuantBlock;
        __m512i x = _mm512_loadu_si512(xq);
        const __m128 prod = _mm_mul_ps(wd, _mm_loadu_ps(t.x.ds + 2 * (i * nb + b)));
        __m512i isum;
        if constexpr (kType == DType::Q8_0) {
          // vpdpbusd wants unsigned x signed: |w| times x with w's sign.
          x = _mm512_mask_sub_epi8(x, wneg, _mm512_setzero_si512(), x);
          isum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wabs, x);
        } else {
          isum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, x);
          accm[i] = _mm_add_ps(accm[i], prod);
        }
        const __m512 scale = _mm512_permutexvar_ps(pick, _mm512_castps128_ps512(prod));
        acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), scale, acc[i]);
      }
    }
    float tail[R] = {};
    if (b < nb) {  // odd block count: the last block alone, in 256 bits
      const std::byte* b0 = row + b * kB;
      __m256i w;
      float d, m = 0.0f;
      uint16_t h;
      std::memcpy(&h, b0, 2);
      d = _cvtsh_ss(h);
      if constexpr (kType == DType::Q4_1) {
        std::memcpy(&h, b0 + 2, 2);
        m = _cvtsh_ss(h);
      }
      if constexpr (kType == DType::Q8_0) {
        w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b0 + 2));
      } else {
        const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b0 + kQsOffset<kType>));
        w = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), _mm256_set1_epi8(0x0f));
      }
      for (int i = 0; i < R; ++i) {
        __m256i x = _mm256_loadu_si256(
            reinterpret_cast<const __m256i*>(t.x.qs + (i * nb + b) * kQuantBlock));
        const float dx = t.x.ds[2 * (i * nb + b)], sx = t.x.ds[2 * (i * nb + b) + 1];
        __m256i isum;
        if constexpr (kType == DType::Q8_0) {
          isum = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_abs_epi8(w),
                                     _mm256_sign_epi8(x, w));
        } else {
          isum = _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, x);
        }
        tail[i] = d * dx * static_cast<float>(hsum_i32(isum));
        if constexpr (kType == DType::Q4_1) tail[i] += m * sx;
        if constexpr (kType == DType::Q4_0) tail[i] -= 8.0f * d * sx;
      }
    }
    for (int i = 0; i < R; ++i) {
      float v = hsum(acc[i]) + tail[i];
      const __m128 odd = _mm_movehdup_ps(accm[i]);  // (m0 s0, -, m1 s1, -)
      const float extra = _mm_cvtss_f32(_mm_add_ss(odd, _mm_movehl_ps(odd, odd)));
      if constexpr (kType == DType::Q4_1) v += extra;
      if constexpr (kType == DType::Q4_0) v -= 8.0f * extra;
      t.y[i * t.y_stride + r] = v;
    }
  }
}

template <DType kType>
MIL_AVX512 void quant_tile(const QuantTile& t) {
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
MIL_AVX512 inline __m512 load16(const std::byte* p) {
  if constexpr (kType == DType::F32) {
    return _mm512_loadu_ps(p);
  } else if constexpr (kType == DType::F16) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  } else {
    const __m512i w =
        _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  }
}

template <DType kType>
MIL_AVX512 inline float load1(const std::byte* p) {
  if constexpr (kType == DType::F32) {
    float f;
    std::memcpy(&f, p, 4);
    return f;
  } else {
    uint16_t h;
    std::memcpy(&h, p, 2);
    if constexpr (kType == DType::F16) return _cvtsh_ss(h);
    const uint32_t bits = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  }
}

template <DType kType, int R>
MIL_AVX512 void float_tile_rows(const FloatTile& t) {
  constexpr size_t kElem = kType == DType::F32 ? 4 : 2;
  constexpr int kSets = R <= 2 ? 2 : 1;
  for (int64_t r = 0; r < t.w_rows; ++r) {
    const std::byte* row = t.w + r * t.w_stride;
    __m512 acc[kSets][R];
    for (int s = 0; s < kSets; ++s)
      for (int i = 0; i < R; ++i) acc[s][i] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 16 * kSets <= t.k; k += 16 * kSets) {
      for (int s = 0; s < kSets; ++s) {
        const __m512 w = load16<kType>(row + (k + 16 * s) * kElem);
        for (int i = 0; i < R; ++i) {
          acc[s][i] =
              _mm512_fmadd_ps(w, _mm512_loadu_ps(t.x + i * t.x_stride + k + 16 * s), acc[s][i]);
        }
      }
    }
    for (int i = 0; i < R; ++i) {
      __m512 a = acc[0][i];
      if constexpr (kSets == 2) a = _mm512_add_ps(a, acc[1][i]);
      float v = hsum(a);
      for (int64_t j = k; j < t.k; ++j)
        v += load1<kType>(row + j * kElem) * t.x[i * t.x_stride + j];
      t.y[i * t.y_stride + r] = v;
    }
  }
}

template <DType kType>
MIL_AVX512 void float_tile(const FloatTile& t) {
  switch (t.x_rows) {
    case 1:
      return float_tile_rows<kType, 1>(t);
    case 2:
      return float_tile_rows<kType, 2>(t);
    case 3:
      return float_tile_rows<kType, 3>(t);
    case 4:
      return float_tile_rows<kType, 4>(t);
    case 8:
      return float_tile_rows<kType, 8>(t);
    default:  // 5..7 rows, the last tile of a prefill: four, then the rest
      float_tile_rows<kType, 4>(t);
      return float_tile<kType>(tile_rows_from(t, 4));
  }
}

// ---- f32 activations, quantized weights dequantized in registers ----
//
// One block's 32 weights become two vectors of 16 f32 (elements 0..15 and 16..31) with the
// same values as the scalar dequantization. 4-bit codes go through a 16-entry table of the
// block's dequantized values, table[q] = q * d + m (Q4_0: (q - 8) * d): vpermps indexes it
// with the low 4 bits of each dword, so one FMA per block replaces an FMA and an int->float
// conversion per 16 weights, and the low nibbles need no mask. Q4_1's q * d + m rounds
// once instead of twice (at most 1 ulp of the weight apart); Q4_0's product is exact.
template <DType kType>
MIL_AVX512 inline void decode_block(const std::byte* blk, __m512* lo, __m512* hi) {
  if constexpr (kType == DType::Q8_0) {
    const __m512 d = _mm512_cvtph_ps(_mm256_broadcastw_epi16(_mm_loadu_si16(blk)));
    const auto* q = reinterpret_cast<const __m128i*>(blk + 2);
    *lo = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(q))), d);
    *hi = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(q + 1))), d);
  } else {
    __m512 table;
    if constexpr (kType == DType::Q4_1) {
      // (d, m) pairs in every lane, then each one spread by an in-lane shuffle.
      const __m128 dm = _mm_cvtph_ps(_mm_loadu_si32(blk));
      const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
      table = _mm512_fmadd_ps(iota, _mm512_broadcastss_ps(dm),
                              _mm512_broadcastss_ps(_mm_movehdup_ps(dm)));
    } else {
      const __m512 d = _mm512_cvtph_ps(_mm256_broadcastw_epi16(_mm_loadu_si16(blk)));
      const __m512 iota = _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
      table = _mm512_mul_ps(iota, d);
    }
    // Each dword holds one byte, i.e. two nibbles: the low one is element j, the high one
    // element j + 16.
    const __m512i q = _mm512_cvtepu8_epi32(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + kQsOffset<kType>)));
    *lo = _mm512_permutexvar_ps(q, table);
    *hi = _mm512_permutexvar_ps(_mm512_srli_epi32(q, 4), table);
  }
}

// R activation rows share each decoded block. With one or two rows, two accumulator sets
// (even/odd blocks) keep enough independent FMA chains in flight.
template <DType kType, int R>
MIL_AVX512 void f32x_tile_rows(const FloatTile& t) {
  constexpr size_t kB = kBlockBytes<kType>;
  constexpr int kSets = R <= 2 ? 2 : 1;
  const int64_t nb = t.k / kQuantBlock;
  for (int64_t r = 0; r < t.w_rows; ++r) {
    const std::byte* row = t.w + r * t.w_stride;
    __m512 acc[kSets][R][2];
    for (int s = 0; s < kSets; ++s) {
      for (int i = 0; i < R; ++i) acc[s][i][0] = acc[s][i][1] = _mm512_setzero_ps();
    }
    int64_t b = 0;
    for (; b + kSets <= nb; b += kSets) {
      for (int s = 0; s < kSets; ++s) {
        __m512 lo, hi;
        decode_block<kType>(row + (b + s) * kB, &lo, &hi);
        for (int i = 0; i < R; ++i) {
          const float* x = t.x + i * t.x_stride + (b + s) * kQuantBlock;
          acc[s][i][0] = _mm512_fmadd_ps(lo, _mm512_loadu_ps(x), acc[s][i][0]);
          acc[s][i][1] = _mm512_fmadd_ps(hi, _mm512_loadu_ps(x + 16), acc[s][i][1]);
        }
      }
    }
    if (b < nb) {  // odd block count with two sets
      __m512 lo, hi;
      decode_block<kType>(row + b * kB, &lo, &hi);
      for (int i = 0; i < R; ++i) {
        const float* x = t.x + i * t.x_stride + b * kQuantBlock;
        acc[0][i][0] = _mm512_fmadd_ps(lo, _mm512_loadu_ps(x), acc[0][i][0]);
        acc[0][i][1] = _mm512_fmadd_ps(hi, _mm512_loadu_ps(x + 16), acc[0][i][1]);
      }
    }
    for (int i = 0; i < R; ++i) {
      __m512 a = _mm512_add_ps(acc[0][i][0], acc[0][i][1]);
      if constexpr (kSets == 2) a = _mm512_add_ps(a, _mm512_add_ps(acc[1][i][0], acc[1][i][1]));
      t.y[i * t.y_stride + r] = hsum(a);
    }
  }
}

template <DType kType>
MIL_AVX512 void f32x_tile(const FloatTile& t) {
  switch (t.x_rows) {
    case 1:
      return f32x_tile_rows<kType, 1>(t);
    case 2:
      return f32x_tile_rows<kType, 2>(t);
    case 3:
      return f32x_tile_rows<kType, 3>(t);
    case 4:
      return f32x_tile_rows<kType, 4>(t);
    case 8:
      return f32x_tile_rows<kType, 8>(t);
    default:  // 5..7 rows, the last tile of a prefill: four, then the rest
      f32x_tile_rows<kType, 4>(t);
      return f32x_tile<kType>(tile_rows_from(t, 4));
  }
}

Kernels make_table() {
  Kernels k = *avx2_kernels();  // quantize_row, dot_f32 and axpy_f32 stay AVX2
  k.name = "avx512vnni";
  k.q8_0 = quant_tile<DType::Q8_0>;
  k.q4_0 = quant_tile<DType::Q4_0>;
  k.q4_1 = quant_tile<DType::Q4_1>;
  k.f32 = float_tile<DType::F32>;
  k.f16 = float_tile<DType::F16>;
  k.bf16 = float_tile<DType::BF16>;
  k.f32x_q8_0 = f32x_tile<DType::Q8_0>;
  k.f32x_q4_0 = f32x_tile<DType::Q4_0>;
  k.f32x_q4_1 = f32x_tile<DType::Q4_1>;
  return k;
}

}  // namespace

const Kernels* avx512_kernels() {
  __builtin_cpu_init();
  const bool ok = avx2_kernels() != nullptr && __builtin_cpu_supports("avx512f") &&
                  __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                  __builtin_cpu_supports("avx512vnni");
  if (!ok) return nullptr;
  static const Kernels table = make_table();
  return &table;
}

}  // namespace mil::cpu
