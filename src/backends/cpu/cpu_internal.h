// Pieces of the CPU backend shared between its translation units.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "backends/ops.h"

namespace mil::cpu {

// Throws mil::Error unless t is an f32 tensor in host memory that the op may read/write.
void check_f32(const Tensor& t, const char* op, const char* name);
void check_host(const Tensor& t, const char* op, const char* name);

// Scratch memory owned by one Ops object; grows to the largest request and is then reused,
// so no allocation happens on the hot path after the first step. One Ops object must not
// be used from two threads at once (the engine drives each backend from one thread).
class Workspace {
 public:
  std::byte* get(size_t bytes) {
    if (bytes > buffer_.size()) buffer_.resize(bytes + bytes / 4);
    return buffer_.data();
  }

 private:
  std::vector<std::byte> buffer_;
};

// How matmul treats Q8_0/Q4_0/Q4_1 weights (float weights always take the f32 kernels).
enum class MatmulPath {
  kF32,    // f32 activations, weights dequantized in registers by the SIMD kernels
  kInt8,   // activations quantized to 8 bits per block, integer dot products (llama.cpp)
  kExact,  // reference: each weight row dequantized to a buffer, then plain f32 dots
};

struct MatmulMode {
  int threads = 1;
  MatmulPath path = MatmulPath::kF32;
};

void matmul(const Tensor& x, const Tensor& w, const Tensor& y, const MatmulMode& mode,
            Workspace& ws);

// Multi-LoRA (lora.cpp); the exact path uses plain dot products, the others the f32 tiles.
void lora_shrink(const Tensor& x, const LoraProjection& proj, const LoraSegment* segments,
                 int32_t num_segments, const Tensor& v, const MatmulMode& mode);
void lora_expand(const Tensor& v, const LoraProjection& proj, const LoraSegment* segments,
                 int32_t num_segments, const Tensor& y, const MatmulMode& mode);

void attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
               const AttentionBatch& batch, const AttentionShape& shape, const Tensor& out,
               int threads, Workspace& ws);

// One row of logits (n values) -> token id. scratch is reused between calls.
int32_t sample_row(const float* logits, int64_t n, const SamplingParams& params, float uniform,
                   std::vector<float>& scratch_probs, std::vector<int32_t>& scratch_ids);
int32_t argmax_row(const float* logits, int64_t n);
// Ops::repetition_penalty on one row; ids in increasing order (repeats adjacent).
void repetition_penalty_row(float* logits, const int32_t* ids, int64_t count, float penalty);
// Ops::token_logprobs on one row.
float token_logprob_row(const float* logits, int64_t n, float temperature, int32_t token);

}  // namespace mil::cpu
