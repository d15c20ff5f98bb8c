// argmax, sampling, the repetition penalty and token logprobs on the GPU, with the CPU backend's
// semantics (backends/cpu/sample.cpp): probabilities exp((l - max) / T), candidates sorted by
// decreasing probability with ties in increasing id order (a stable segmented radix sort of the ids
// by probability), top-k, then top-p over the sorted candidates, then one inverse-CDF draw with the
// caller's uniform. Sums are in double, as on the CPU (prefix sums run as block scans, so the
// summation order differs from the CPU's only in rounding).
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_segmented_radix_sort.cuh>

#include <cfloat>

#include "backends/cuda/device_math.cuh"
#include "backends/cuda/kernels.h"
#include "backends/cuda/launch.cuh"

namespace mil::cuda {
namespace {

constexpr int kThreads = 1024;

struct ArgMaxPair {
  float v;
  int32_t i;
};
struct ArgMaxOp {
  __device__ ArgMaxPair operator()(const ArgMaxPair& a, const ArgMaxPair& b) const {
    return (b.v > a.v || (b.v == a.v && b.i < a.i)) ? b : a;
  }
};

// Row argmax (lowest index among ties) by the whole block; every thread gets it.
__device__ int32_t block_argmax(const void* row, int64_t n, DType t) {
  using Reduce = cub::BlockReduce<ArgMaxPair, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ int32_t result;
  ArgMaxPair best{-FLT_MAX, INT32_MAX};
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const float v = load_elem(row, i, t);
    if (v > best.v || best.i == INT32_MAX) best = {v, static_cast<int32_t>(i)};
  }
  const ArgMaxPair r = Reduce(tmp).Reduce(best, ArgMaxOp());
  if (threadIdx.x == 0) result = r.i;
  __syncthreads();
  const int32_t out = result;
  __syncthreads();
  return out;
}

__global__ void __launch_bounds__(kThreads) argmax_kernel(Mat logits, int32_t* out) {
  pdl_begin();
  const void* row = row_ptr(logits.data, logits.stride, blockIdx.x);
  const int32_t best = block_argmax(row, logits.cols, logits.dtype);
  if (threadIdx.x == 0) out[blockIdx.x] = best;
}

// probs[r, i] = exp((l - max) / T) (greedy rows: 0), ids[r, i] = i; offsets for the sort.
__global__ void __launch_bounds__(kThreads) probs_kernel(Mat logits, const SamplingParams* params, float* probs, int32_t* ids,
                             int32_t* offsets) {
  const int64_t r = blockIdx.x, n = logits.cols;
  const void* row = row_ptr(logits.data, logits.stride, r);
  const SamplingParams sp = params[r];
  const int32_t best = block_argmax(row, n, logits.dtype);
  const float max_logit = load_elem(row, best, logits.dtype);
  const bool greedy = sp.temperature <= 0.0f || n == 1;
  const float inv_t = greedy ? 0.0f : 1.0f / sp.temperature;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    probs[r * n + i] = greedy ? 0.0f : expf((load_elem(row, i, logits.dtype) - max_logit) * inv_t);
    ids[r * n + i] = static_cast<int32_t>(i);
  }
  if (threadIdx.x == 0) {
    offsets[r] = static_cast<int32_t>(r * n);
    if (r == gridDim.x - 1) offsets[r + 1] = static_cast<int32_t>((r + 1) * n);
  }
}

using Scan = cub::BlockScan<double, kThreads>;
using SumReduce = cub::BlockReduce<double, kThreads>;

// The smallest count c in [1, limit] whose prefix sum (of the first c sorted probabilities)
// satisfies target < prefix(c) (strict) or prefix(c) >= target; limit + 1 where none.
// *mass_out: prefix(c), or prefix(limit) where none. Prefix sums only grow, so the first
// hit is where a hit follows a miss.
__device__ int64_t first_prefix_reaching(const float* sorted, int64_t limit, double target,
                                         bool strict, double* mass_out) {
  __shared__ typename Scan::TempStorage tmp;
  __shared__ double incl_sh[kThreads];
  __shared__ int64_t found;
  __syncthreads();  // an earlier call may still read found / incl_sh
  if (threadIdx.x == 0) found = limit + 1;
  __syncthreads();
  double carry = 0.0, mass = 0.0;
  for (int64_t base = 0; base < limit; base += blockDim.x) {
    const int64_t i = base + threadIdx.x;
    const double v = i < limit ? static_cast<double>(sorted[i]) : 0.0;
    double incl, total;
    Scan(tmp).InclusiveSum(v, incl, total);
    incl += carry;
    incl_sh[threadIdx.x] = incl;
    __syncthreads();
    const bool hit = i < limit && (strict ? target < incl : incl >= target);
    const double before = threadIdx.x > 0 ? incl_sh[threadIdx.x - 1] : 0.0;
    const bool prev = threadIdx.x > 0 && (strict ? target < before : before >= target);
    if (hit && !prev) found = i + 1;
    __syncthreads();
    if (found <= limit) {
      mass = incl_sh[found - 1 - base];
      break;
    }
    carry += total;
    __syncthreads();
  }
  const int64_t c = found;
  *mass_out = c <= limit ? mass : carry;
  return c;
}

__global__ void __launch_bounds__(kThreads) pick_kernel(Mat logits, const SamplingParams* params, const float* uniforms,
                            const float* sorted_probs, const int32_t* sorted_ids, int32_t* out) {
  __shared__ typename SumReduce::TempStorage red;
  __shared__ double mass_sh;
  const int64_t r = blockIdx.x, n = logits.cols;
  const SamplingParams sp = params[r];
  if (sp.temperature <= 0.0f || n == 1) {
    const int32_t best =
        block_argmax(row_ptr(logits.data, logits.stride, r), n, logits.dtype);
    if (threadIdx.x == 0) out[r] = best;
    return;
  }
  const float* sp_row = sorted_probs + r * n;
  const int32_t* id_row = sorted_ids + r * n;
  int64_t kept = (sp.top_k > 0 && sp.top_k < n) ? sp.top_k : n;
  double part = 0.0;
  for (int64_t i = threadIdx.x; i < kept; i += blockDim.x) part += sp_row[i];
  const double mass = SumReduce(red).Sum(part);
  if (threadIdx.x == 0) mass_sh = mass;
  __syncthreads();
  double kept_mass = mass_sh;
  if (sp.top_p < 1.0f) {
    double cum;
    const int64_t c = first_prefix_reaching(sp_row, kept, static_cast<double>(sp.top_p) * kept_mass,
                                            false, &cum);
    if (c <= kept) {
      kept = c;
      kept_mass = cum;
    } else {
      kept_mass = cum;  // rounding left the sum short of the target: keep all
    }
  }
  double unused;
  const int64_t c = first_prefix_reaching(sp_row, kept, static_cast<double>(uniforms[r]) * kept_mass,
                                          true, &unused);
  if (threadIdx.x == 0) out[r] = id_row[(c <= kept ? c : kept) - 1];
}

// Ops::repetition_penalty: one block per row, thread j of the row's sorted list takes
// ids[j] unless it repeats ids[j - 1], so every distinct id is written by exactly one thread
// (no race, each id penalised once). __fmul_rn / __fdiv_rn: IEEE round-to-nearest whatever
// the compiler flags, as the CPU's x * p and x / p.
__global__ void repetition_penalty_kernel(Mat logits, const int32_t* ids, const int32_t* offsets,
                                          const float* penalties) {
  const int64_t r = blockIdx.x;
  const float p = penalties[r];
  if (p == 1.0f) return;
  auto* row = static_cast<float*>(row_ptr(logits.data, logits.stride, r));
  const int32_t begin = offsets[r], end = offsets[r + 1];
  for (int64_t j = begin + static_cast<int64_t>(threadIdx.x); j < end; j += blockDim.x) {
    const int32_t id = ids[j];
    if (id < 0 || id >= logits.cols) continue;  // never write outside the row
    if (j > begin && ids[j - 1] == id) continue;
    const float x = row[id];
    row[id] = x < 0.0f ? __fmul_rn(x, p) : __fdiv_rn(x, p);
  }
}

struct MaxOp {
  __device__ float operator()(float a, float b) const { return b > a ? b : a; }
};

// Ops::token_logprobs: the host's log_softmax (engine/logits_processor.cpp) of the row
// divided by its temperature, at one token: f32 division, f32 max, double sum of exp.
__global__ void __launch_bounds__(kThreads)
    token_logprobs_kernel(Mat logits, const float* temperatures, const int32_t* tokens,
                          float* out) {
  using MaxReduce = cub::BlockReduce<float, kThreads>;
  __shared__ typename MaxReduce::TempStorage max_tmp;
  __shared__ typename SumReduce::TempStorage sum_tmp;
  __shared__ float max_sh;
  const float neg_inf = __uint_as_float(0xff800000u);
  const int64_t r = blockIdx.x, n = logits.cols;
  const auto* row = static_cast<const float*>(row_ptr(logits.data, logits.stride, r));
  const float t = temperatures[r];
  float m = neg_inf;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) m = MaxOp()(m, __fdiv_rn(row[i], t));
  m = MaxReduce(max_tmp).Reduce(m, MaxOp());
  if (threadIdx.x == 0) max_sh = m;
  __syncthreads();
  m = max_sh;
  double part = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const float x = __fdiv_rn(row[i], t);
    if (x != neg_inf) part += exp(static_cast<double>(x) - static_cast<double>(m));
  }
  const double sum = SumReduce(sum_tmp).Sum(part);
  if (threadIdx.x == 0) {
    const double log_sum = log(sum) + static_cast<double>(m);
    const float x = __fdiv_rn(row[tokens[r]], t);
    out[r] = x == neg_inf ? neg_inf : static_cast<float>(static_cast<double>(x) - log_sum);
  }
}

size_t align256(size_t b) { return (b + 255) / 256 * 256; }

size_t sort_temp_bytes(int64_t rows, int64_t n) {
  size_t bytes = 0;
  cub::DeviceSegmentedRadixSort::SortPairsDescending(
      nullptr, bytes, static_cast<const float*>(nullptr), static_cast<float*>(nullptr),
      static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr),
      static_cast<int>(rows * n), static_cast<int>(rows), static_cast<const int32_t*>(nullptr),
      static_cast<const int32_t*>(nullptr) + 1);
  return bytes;
}

}  // namespace

void launch_argmax(Mat logits, int32_t* out, cudaStream_t s) {
  if (logits.rows == 0) return;
  launch_kernel(argmax_kernel, static_cast<unsigned>(logits.rows), kThreads, 0, s, logits, out);
}

void launch_repetition_penalty(Mat logits, const int32_t* ids, const int32_t* offsets,
                               const float* penalties, cudaStream_t s) {
  if (logits.rows == 0) return;
  // Lists are a few thousand ids at most per row: 256 threads cover them in a few passes.
  repetition_penalty_kernel<<<static_cast<unsigned>(logits.rows), 256, 0, s>>>(logits, ids, offsets,
                                                                               penalties);
}

void launch_token_logprobs(Mat logits, const float* temperatures, const int32_t* tokens, float* out,
                           cudaStream_t s) {
  if (logits.rows == 0) return;
  token_logprobs_kernel<<<static_cast<unsigned>(logits.rows), kThreads, 0, s>>>(
      logits, temperatures, tokens, out);
}

size_t sample_workspace_bytes(int64_t rows, int64_t vocab) {
  const size_t items = static_cast<size_t>(rows * vocab);
  return 2 * align256(items * 4) + 2 * align256(items * 4) + align256((rows + 1) * 4) +
         align256(sort_temp_bytes(rows, vocab));
}

void launch_sample(Mat logits, const SamplingParams* params, const float* uniforms, int32_t* out,
                   void* workspace, size_t workspace_bytes, cudaStream_t s) {
  const int64_t rows = logits.rows, n = logits.cols;
  if (rows == 0) return;
  const size_t items = static_cast<size_t>(rows * n);
  char* p = static_cast<char*>(workspace);
  auto take = [&](size_t bytes) {
    char* q = p;
    p += align256(bytes);
    return q;
  };
  auto* probs = reinterpret_cast<float*>(take(items * 4));
  auto* sorted_probs = reinterpret_cast<float*>(take(items * 4));
  auto* ids = reinterpret_cast<int32_t*>(take(items * 4));
  auto* sorted_ids = reinterpret_cast<int32_t*>(take(items * 4));
  auto* offsets = reinterpret_cast<int32_t*>(take((rows + 1) * 4));
  size_t temp_bytes = static_cast<char*>(workspace) + workspace_bytes - p;
  probs_kernel<<<static_cast<unsigned>(rows), kThreads, 0, s>>>(logits, params, probs, ids, offsets);
  cub::DeviceSegmentedRadixSort::SortPairsDescending(p, temp_bytes, probs, sorted_probs, ids,
                                                     sorted_ids, static_cast<int>(items), static_cast<int>(rows),
                                                     offsets, offsets + 1, 0, 32, s);
  pick_kernel<<<static_cast<unsigned>(rows), kThreads, 0, s>>>(logits, params, uniforms,
                                                              sorted_probs, sorted_ids, out);
}

}  // namespace mil::cuda
