// Scalar conversion of any weight dtype to f32: the exact path of matmul, embedding lookups
// and the portable kernels use it.
#pragma once

#include <cstdint>
#include <cstring>

#include "core/dtype.h"
#include "core/half.h"

namespace mil::cpu {

inline void dequant_q8_0(const BlockQ8_0& b, float* out) {
  const float d = f16_to_f32(b.d);
  for (int i = 0; i < kQuantBlock; ++i) out[i] = static_cast<float>(b.qs[i]) * d;
}

inline void dequant_q4_0(const BlockQ4_0& b, float* out) {
  const float d = f16_to_f32(b.d);
  for (int i = 0; i < kQuantBlock / 2; ++i) {
    out[i] = static_cast<float>((b.qs[i] & 0x0f) - 8) * d;
    out[i + kQuantBlock / 2] = static_cast<float>((b.qs[i] >> 4) - 8) * d;
  }
}

inline void dequant_q4_1(const BlockQ4_1& b, float* out) {
  const float d = f16_to_f32(b.d);
  const float m = f16_to_f32(b.m);
  for (int i = 0; i < kQuantBlock / 2; ++i) {
    out[i] = static_cast<float>(b.qs[i] & 0x0f) * d + m;
    out[i + kQuantBlock / 2] = static_cast<float>(b.qs[i] >> 4) * d + m;
  }
}

// Converts n elements (n a multiple of the block size) starting at src to f32.
// Blocks are read with memcpy: GGUF data need not be aligned for the block structs.
inline void dequant_row(DType t, const void* src, int64_t n, float* out) {
  const auto* p = static_cast<const unsigned char*>(src);
  switch (t) {
    case DType::F32:
      std::memcpy(out, p, static_cast<size_t>(n) * 4);
      return;
    case DType::F16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        out[i] = f16_to_f32(h);
      }
      return;
    case DType::BF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        out[i] = bf16_to_f32(h);
      }
      return;
    case DType::Q8_0:
      for (int64_t b = 0; b < n / kQuantBlock; ++b) {
        BlockQ8_0 blk;
        std::memcpy(&blk, p + b * sizeof(blk), sizeof(blk));
        dequant_q8_0(blk, out + b * kQuantBlock);
      }
      return;
    case DType::Q4_0:
      for (int64_t b = 0; b < n / kQuantBlock; ++b) {
        BlockQ4_0 blk;
        std::memcpy(&blk, p + b * sizeof(blk), sizeof(blk));
        dequant_q4_0(blk, out + b * kQuantBlock);
      }
      return;
    case DType::Q4_1:
      for (int64_t b = 0; b < n / kQuantBlock; ++b) {
        BlockQ4_1 blk;
        std::memcpy(&blk, p + b * sizeof(blk), sizeof(blk));
        dequant_q4_1(blk, out + b * kQuantBlock);
      }
      return;
    case DType::I32:
      for (int64_t i = 0; i < n; ++i) {
        int32_t v;
        std::memcpy(&v, p + 4 * i, 4);
        out[i] = static_cast<float>(v);
      }
      return;
  }
}

}  // namespace mil::cpu
