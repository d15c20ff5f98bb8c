// Multi-LoRA shrink and expand (Punica's SGMV/BGMV semantics) as simple grouped kernels:
// every row finds its segment (binary search over the device segment array) and so its
// adapter slot; rows of base segments, of slots without this projection and rows outside
// every segment are left alone. The shrink result v stays f32.
#include <algorithm>

#include "backends/cuda/device_math.cuh"
#include "backends/cuda/kernels.h"

namespace mil::cuda {
namespace {

constexpr int kShrinkWarps = 8;
constexpr int kExpandThreads = 256;

// The segment holding `row`, or -1.
__device__ int find_segment(const LoraSegment* segs, int count, int64_t row) {
  int lo = 0, hi = count - 1, found = -1;
  while (lo <= hi) {
    const int mid = (lo + hi) / 2;
    if (segs[mid].row_begin <= row) {
      found = mid;
      lo = mid + 1;
    } else {
      hi = mid - 1;
    }
  }
  return found >= 0 && row < segs[found].row_end ? found : -1;
}

__device__ const LoraSlot* slot_of_row(const LoraSlot* slots, int num_slots,
                                       const LoraSegment* segs, int count, int64_t row) {
  const int s = find_segment(segs, count, row);
  if (s < 0) return nullptr;
  const int slot = segs[s].slot;
  if (slot < 0 || slot >= num_slots || slots[slot].rank == 0) return nullptr;
  return &slots[slot];
}

// grid: (ceil(max_rank / kShrinkWarps), rows). Warp j of block x computes v[row, x*8 + j].
__global__ void shrink_kernel(Mat x, const LoraSlot* slots, int num_slots, const LoraSegment* segs,
                              int count, Mat v) {
  for (int64_t row = blockIdx.y; row < x.rows; row += gridDim.y) {
    const LoraSlot* sl = slot_of_row(slots, num_slots, segs, count, row);
    if (sl == nullptr) continue;
    const int j = blockIdx.x * kShrinkWarps + (threadIdx.x >> 5);
    if (j >= sl->rank) continue;
    const auto* xr = static_cast<const uint16_t*>(row_ptr(x.data, x.stride, row));
    const float* ar = sl->a + j * sl->a_stride_elems;
    float sum = 0.0f;
    for (int64_t i = threadIdx.x & 31; i < x.cols; i += 32) sum += bf16_bits_to_f32(xr[i]) * ar[i];
    sum = warp_sum(sum);
    if ((threadIdx.x & 31) == 0) static_cast<float*>(row_ptr(v.data, v.stride, row))[j] = sum;
  }
}

// grid: (ceil(out / kExpandThreads), rows). Thread o adds scale * v[row, :rank] · b[o, :].
__global__ void expand_kernel(Mat v, const LoraSlot* slots, int num_slots, const LoraSegment* segs,
                              int count, int max_rank, Mat y) {
  extern __shared__ float sv[];
  for (int64_t row = blockIdx.y; row < y.rows; row += gridDim.y) {
    const LoraSlot* sl = slot_of_row(slots, num_slots, segs, count, row);
    if (sl == nullptr) continue;  // uniform over the block
    const int rank = sl->rank;
    const float* vr = static_cast<const float*>(row_ptr(v.data, v.stride, row));
    __syncthreads();
    for (int i = threadIdx.x; i < rank && i < max_rank; i += blockDim.x) sv[i] = vr[i];
    __syncthreads();
    const int64_t o = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (o >= y.cols) continue;
    const float* br = sl->b + o * sl->b_stride_elems;
    float sum = 0.0f;
    for (int i = 0; i < rank; ++i) sum += sv[i] * br[i];
    void* yr = row_ptr(y.data, y.stride, row);
    store_elem(yr, o, y.dtype, load_elem(yr, o, y.dtype) + sl->scale * sum);
  }
}

}  // namespace

void launch_lora_shrink(Mat x, const LoraSlot* slots, int32_t num_slots, const LoraSegment* segs,
                        int32_t num_segments, int32_t max_rank, Mat v, cudaStream_t s) {
  if (x.rows == 0 || max_rank == 0 || num_segments == 0) return;
  const dim3 grid(static_cast<unsigned>((max_rank + kShrinkWarps - 1) / kShrinkWarps),
                  static_cast<unsigned>(std::min<int64_t>(x.rows, kMaxGridY)));
  shrink_kernel<<<grid, kShrinkWarps * 32, 0, s>>>(x, slots, num_slots, segs, num_segments, v);
}

void launch_lora_expand(Mat v, const LoraSlot* slots, int32_t num_slots, const LoraSegment* segs,
                        int32_t num_segments, int32_t max_rank, Mat y, cudaStream_t s) {
  if (y.rows == 0 || max_rank == 0 || num_segments == 0) return;
  const dim3 grid(static_cast<unsigned>((y.cols + kExpandThreads - 1) / kExpandThreads),
                  static_cast<unsigned>(std::min<int64_t>(y.rows, kMaxGridY)));
  expand_kernel<<<grid, kExpandThreads, max_rank * sizeof(float), s>>>(
      v, slots, num_slots, segs, num_segments, max_rank, y);
}

}  // namespace mil::cuda
