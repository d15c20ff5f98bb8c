// Inner loops of the CPU backend, one table per instruction set. The table is picked once at
// run time (CPUID), so one binary runs on any x86-64 and uses AVX2/AVX-512 where present.
// Kernels are allocation-free and see raw pointers only; shapes are checked by the callers.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

namespace mil::cpu {

// Activations quantized for the integer dot products: per block of 32 values,
// q = round(x / d) with d = max|x| / 127, kept with (d, d * sum(q)). The second number lets
// Q4_1's minimum and Q4_0's offset of 8 be applied once per block instead of per element.
// Unlike llama.cpp's Q8_1 the scales stay f32, which costs nothing and loses nothing.
struct QuantizedActs {
  const int8_t* qs = nullptr;  // rows * nb * 32
  const float* ds = nullptr;   // rows * nb * 2: (d, d * sum(q)) per block
  int64_t nb = 0;              // blocks per row
};

// Most activation rows one kernel call handles: each weight block is decoded once and
// reused for this many rows, which makes prefill compute-bound instead of bandwidth-bound.
// QuantTileFn takes up to kMaxTileRows rows; FloatTileFn up to kMaxFloatTileRows, because
// f32 FMAs do 4x less work per instruction than the 8-bit dot products, so the decode
// (and the weight loads) must be spread over more rows. Tables whose registers hold fewer
// rows split a wide tile internally.
constexpr int kMaxTileRows = 4;
constexpr int kMaxFloatTileRows = 8;

// One tile of y = x w^T: y[i * y_stride + r] for weight rows r < w_rows and activation rows
// i < x_rows (x_rows <= kMaxTileRows; kMaxFloatTileRows for FloatTile).
struct QuantTile {
  const std::byte* w = nullptr;  // first weight row; blocks of the weight's dtype
  size_t w_stride = 0;           // bytes between weight rows
  int64_t w_rows = 0;
  QuantizedActs x;  // x.qs/x.ds point at the tile's first row
  int x_rows = 0;
  float* y = nullptr;
  size_t y_stride = 0;  // floats between y rows
};

// One tile of y = x w^T with f32 activations. The weight is F32, F16 or BF16 elements, or
// Q8_0/Q4_0/Q4_1 blocks that the kernel dequantizes to f32 in registers (k is then a
// multiple of 32): the result is the f32 dot product of x with the dequantized weight.
struct FloatTile {
  const std::byte* w = nullptr;
  size_t w_stride = 0;
  int64_t w_rows = 0;
  int64_t k = 0;  // elements per row
  const float* x = nullptr;
  size_t x_stride = 0;  // floats between x rows
  int x_rows = 0;
  float* y = nullptr;
  size_t y_stride = 0;
};

using QuantTileFn = void (*)(const QuantTile&);
using FloatTileFn = void (*)(const FloatTile&);

// The activation rows of t from `first` on, as a tile of their own.
inline FloatTile tile_rows_from(const FloatTile& t, int first) {
  FloatTile rest = t;
  rest.x += static_cast<size_t>(first) * t.x_stride;
  rest.y += static_cast<size_t>(first) * t.y_stride;
  rest.x_rows = t.x_rows - first;
  return rest;
}

struct Kernels {
  const char* name;
  // Quantizes one row of nb * 32 floats.
  void (*quantize_row)(const float* x, int64_t nb, int8_t* qs, float* ds);
  // Quantized weights with 8-bit activations (llama.cpp's method; make_cpu_ops_int8).
  QuantTileFn q8_0, q4_0, q4_1;
  // f32 activations: float weights, and quantized weights dequantized on the fly.
  FloatTileFn f32, f16, bf16, f32x_q8_0, f32x_q4_0, f32x_q4_1;
  float (*dot_f32)(const float* a, const float* b, int64_t n);
  void (*axpy_f32)(float a, const float* x, float* y, int64_t n);  // y += a * x
};

// The best table this CPU supports.
const Kernels& kernels();
// Every table this CPU can run, best last (tests compare them with each other).
int available_kernels(const Kernels** out, int max);

// Per-ISA tables; the non-scalar ones return nullptr when the CPU lacks the instructions.
const Kernels* scalar_kernels();
const Kernels* avx2_kernels();
const Kernels* avx512_kernels();

inline QuantTileFn quant_tile_fn(const Kernels& k, DType t) {
  switch (t) {
    case DType::Q8_0:
      return k.q8_0;
    case DType::Q4_0:
      return k.q4_0;
    case DType::Q4_1:
      return k.q4_1;
    default:
      return nullptr;
  }
}

inline FloatTileFn float_tile_fn(const Kernels& k, DType t) {
  switch (t) {
    case DType::F32:
      return k.f32;
    case DType::F16:
      return k.f16;
    case DType::BF16:
      return k.bf16;
    case DType::Q8_0:
      return k.f32x_q8_0;
    case DType::Q4_0:
      return k.f32x_q4_0;
    case DType::Q4_1:
      return k.f32x_q4_1;
    default:
      return nullptr;
  }
}

}  // namespace mil::cpu
