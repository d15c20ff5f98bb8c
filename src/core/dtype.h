// Element and block types of tensors. Quantized types store blocks of 32 values
// with the layouts llama.cpp's GGUF files use.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace mil {

enum class DType : uint8_t { F32, F16, BF16, Q8_0, Q4_0, Q4_1, I32 };

constexpr int kQuantBlock = 32;

// Block layouts (little-endian, packed as in GGUF).
struct BlockQ8_0 {
  uint16_t d;  // f16 scale
  int8_t qs[kQuantBlock];
};
struct BlockQ4_0 {
  uint16_t d;                    // f16 scale; value = (nibble - 8) * d
  uint8_t qs[kQuantBlock / 2];   // low nibbles: elements 0..15, high nibbles: 16..31
};
struct BlockQ4_1 {
  uint16_t d;                    // f16 scale; value = nibble * d + m
  uint16_t m;                    // f16 minimum
  uint8_t qs[kQuantBlock / 2];
};
static_assert(sizeof(BlockQ8_0) == 34 && sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_1) == 20);

// Number of elements that share one block (1 for plain types).
constexpr int64_t block_elems(DType t) {
  switch (t) {
    case DType::Q8_0: case DType::Q4_0: case DType::Q4_1: return kQuantBlock;
    default: return 1;
  }
}

constexpr size_t block_bytes(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::I32: return 4;
    case DType::F16: return 2;
    case DType::BF16: return 2;
    case DType::Q8_0: return sizeof(BlockQ8_0);
    case DType::Q4_0: return sizeof(BlockQ4_0);
    case DType::Q4_1: return sizeof(BlockQ4_1);
  }
  return 0;
}

constexpr bool is_quantized(DType t) { return block_elems(t) > 1; }

// Bytes taken by `n` consecutive elements; n must be a multiple of block_elems.
constexpr size_t row_bytes(DType t, int64_t n) {
  return static_cast<size_t>(n / block_elems(t)) * block_bytes(t);
}

constexpr std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::Q8_0: return "Q8_0";
    case DType::Q4_0: return "Q4_0";
    case DType::Q4_1: return "Q4_1";
    case DType::I32: return "I32";
  }
  return "?";
}

}  // namespace mil
