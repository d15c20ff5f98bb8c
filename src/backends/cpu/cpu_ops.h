// Constructors of the CPU backend beyond make_cpu_ops (declared in backends/ops.h).
//
// make_cpu_ops keeps activations in f32 for every weight dtype: Q8_0/Q4_0/Q4_1 weights are
// dequantized to f32 in SIMD registers and dotted in f32, so results match HF transformers
// (which dequantizes, then computes in f32) up to f32 summation order.
#pragma once

#include <memory>

#include "backends/ops.h"

namespace mil {

// llama.cpp-style: for Q8_0/Q4_0/Q4_1 weights the activations are quantized to 8 bits per
// block of 32 and dotted with integer instructions. Faster than make_cpu_ops (SmolLM2-135M
// Q4_1: ~10% end to end; matmul kernels up to ~1.7x on decode with weights in cache), but
// ~1e-3..1e-2 relative error per matmul, and much worse on models with outlier activations
// (SmolLM2-135M: logits off by up to ~1.6 from transformers, greedy output changes).
// Float weights take the same f32 kernels as make_cpu_ops.
std::unique_ptr<Ops> make_cpu_ops_int8(int num_threads);

// The reference path: each weight row is dequantized to a buffer by portable scalar code,
// then dotted with f32 activations. Same math as make_cpu_ops but several times slower;
// a yardstick for golden tests and for bug hunts in the SIMD kernels.
std::unique_ptr<Ops> make_cpu_ops_exact(int num_threads);

}  // namespace mil
