// Constructors of the CPU backend beyond make_cpu_ops (declared in backends/ops.h).
#pragma once

#include <memory>

#include "backends/ops.h"

namespace mil {

// The same ops, but matmul keeps activations in f32: weights are dequantized to f32 and
// dotted in f32, as HF transformers would after dequantizing. Golden tests against HF use
// this; make_cpu_ops quantizes activations to 8 bits for Q8_0/Q4_0/Q4_1 weights
// (llama.cpp's method), which is several times faster and differs by ~1e-3..1e-2 relative.
std::unique_ptr<Ops> make_cpu_ops_exact(int num_threads);

}  // namespace mil
