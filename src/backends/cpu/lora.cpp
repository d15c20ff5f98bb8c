// Multi-LoRA on the CPU: Punica's SGMV shrink/expand over segments of rows that share an
// adapter slot (a decode batch with one segment per row is BGMV). Everything is f32: the
// shrink result v = x · A^T stays f32, and expand adds scale · v · B^T to y.
//
// Both ops reuse the f32 FloatTile kernels of matmul. Shrink is a small matmul per segment
// (x rows against the rank rows of A, k = in). Expand has k = rank, which is short, so
// each tile's dot products go to a stack buffer that is then added to y with axpy_f32.
// Rows are split between threads by cost (rows x rank), so that base rows, which cost
// nothing, do not unbalance the split and a single long prefill segment is still shared.
// The exact path (make_cpu_ops_exact) computes the same with plain dot_f32 calls.
#include <omp.h>

#include <algorithm>

#include "backends/cpu/cpu_internal.h"
#include "backends/cpu/kernels.h"

namespace mil::cpu {
namespace {

// Below this many multiply-adds a second thread costs more than it saves (as in matmul).
constexpr int64_t kMinParallelMacs = 64 * 1024;
// Outputs of one expand tile in the multi-row orientation (stack buffer of 8 x this).
constexpr int64_t kMaxOutChunk = 256;

// The rank the rows of `slot` use in this projection; 0 means they are skipped.
int64_t rank_of(const LoraProjection& p, int32_t slot) {
  if (slot < 0) return 0;
  const Tensor& a = p.a[slot];
  return a.empty() ? 0 : a.rows;
}

// Checks everything before any output is written, so a bad call leaves v/y untouched.
// in_cols / out_cols: x.cols for shrink, y.cols for expand (-1 where the op has no such
// tensor). Returns the total cost, sum of rows x rank over the adapter segments.
int64_t check_args(const char* op, const LoraProjection& p, const LoraSegment* segs, int32_t count,
                   int64_t n, const Tensor& v, int64_t in_cols, int64_t out_cols) {
  check_f32(v, op, "v");
  MIL_CHECK(v.rows == n, "{}: v is {} for {} rows", op, shape_string(v), n);
  MIL_CHECK(count >= 0, "{}: {} segments", op, count);
  MIL_CHECK(count == 0 || segs != nullptr, "{}: no segments", op);
  MIL_CHECK(p.num_slots >= 0, "{}: {} adapter slots", op, p.num_slots);
  MIL_CHECK(p.num_slots == 0 || (p.a != nullptr && p.b != nullptr && p.scale != nullptr),
            "{}: the projection has {} slots but no a/b/scale arrays", op, p.num_slots);
  int64_t cost = 0;
  int32_t prev_end = 0;
  for (int32_t s = 0; s < count; ++s) {
    const LoraSegment& seg = segs[s];
    MIL_CHECK(seg.row_begin >= prev_end && seg.row_begin <= seg.row_end && seg.row_end <= n,
              "{}: segment {} [{}, {}) is not sorted, overlaps or leaves the {} rows", op, s,
              seg.row_begin, seg.row_end, n);
    prev_end = seg.row_end;
    MIL_CHECK(seg.slot >= -1 && seg.slot < p.num_slots, "{}: segment {} names slot {} of {}", op, s,
              seg.slot, p.num_slots);
    const int64_t rank = rank_of(p, seg.slot);
    if (rank == 0) continue;
    const Tensor& a = p.a[seg.slot];
    const Tensor& b = p.b[seg.slot];
    check_f32(a, op, "a");
    check_f32(b, op, "b");
    MIL_CHECK(in_cols < 0 || a.cols == in_cols, "{}: slot {} has a {} for x of {} columns", op,
              seg.slot, shape_string(a), in_cols);
    MIL_CHECK(b.cols == rank && (out_cols < 0 || b.rows == out_cols),
              "{}: slot {} has a {} and b {} (y has {} columns)", op, seg.slot, shape_string(a),
              shape_string(b), out_cols);
    MIL_CHECK(rank <= v.cols, "{}: slot {} has rank {} but v has {} columns", op, seg.slot, rank,
              v.cols);
    cost += (seg.row_end - seg.row_begin) * rank;
  }
  return cost;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Calls f(segment, row_begin, row_end, rank) for the adapter rows that thread tid of nth
// owns: row i of a segment starts at cost offset cum + i * rank, and thread t owns the
// offsets [total * t / nth, total * (t + 1) / nth).
template <typename F>
void for_rows_of_thread(const LoraProjection& p, const LoraSegment* segs, int32_t count,
                        int64_t total, int tid, int nth, F&& f) {
  const int64_t lo = total * tid / nth, hi = total * (tid + 1) / nth;
  int64_t cum = 0;
  for (int32_t s = 0; s < count && cum < hi; ++s) {
    const LoraSegment& seg = segs[s];
    const int64_t rank = rank_of(p, seg.slot);
    if (rank == 0) continue;
    const int64_t rows = seg.row_end - seg.row_begin;
    const int64_t i0 = lo <= cum ? 0 : ceil_div(lo - cum, rank);
    const int64_t i1 = std::min(rows, ceil_div(hi - cum, rank));
    if (i0 < i1) f(seg, seg.row_begin + i0, seg.row_begin + i1, rank);
    cum += rows * rank;
  }
}

template <typename F>
void run_split(const LoraProjection& p, const LoraSegment* segs, int32_t count, int64_t total,
               int64_t macs, int threads, F&& f) {
  const int nt = macs < kMinParallelMacs ? 1 : std::max(1, threads);
  if (nt == 1) return for_rows_of_thread(p, segs, count, total, 0, 1, f);
#pragma omp parallel num_threads(nt)
  for_rows_of_thread(p, segs, count, total, omp_get_thread_num(), omp_get_num_threads(), f);
}

// v[i, 0:rank] = x[i] · a^T for rows [r0, r1).
void shrink_rows(const Tensor& x, const Tensor& a, const Tensor& v, int64_t r0, int64_t r1,
                 bool exact) {
  const Kernels& kern = kernels();
  const int64_t rank = a.rows, k = a.cols;
  if (exact) {
    for (int64_t i = r0; i < r1; ++i) {
      const float* xr = x.row<const float>(i);
      float* vr = v.row<float>(i);
      for (int64_t j = 0; j < rank; ++j) vr[j] = kern.dot_f32(xr, a.row<const float>(j), k);
    }
    return;
  }
  // Rows of A per chunk: a chunk stays in L1 while the tiles of x stream past it.
  const int64_t chunk = std::max<int64_t>(4, 16 * 1024 / std::max<int64_t>(k * 4, 1));
  FloatTile t;
  t.w_stride = a.row_stride;
  t.k = k;
  t.x_stride = x.row_stride / sizeof(float);
  t.y_stride = v.row_stride / sizeof(float);
  for (int64_t j0 = 0; j0 < rank; j0 += chunk) {
    t.w = a.row<const std::byte>(j0);
    t.w_rows = std::min(chunk, rank - j0);
    for (int64_t i = r0; i < r1; i += kMaxFloatTileRows) {
      t.x = x.row<const float>(i);
      t.x_rows = static_cast<int>(std::min<int64_t>(kMaxFloatTileRows, r1 - i));
      t.y = v.row<float>(i) + j0;
      kern.f32(t);
    }
  }
}

// y[i] += scale * v[i, 0:rank] · b^T for rows [r0, r1).
void expand_rows(const Tensor& v, const Tensor& b, float scale, const Tensor& y, int64_t r0,
                 int64_t r1, bool exact) {
  const Kernels& kern = kernels();
  const int64_t rank = b.cols, out = b.rows;
  if (exact) {
    for (int64_t i = r0; i < r1; ++i) {
      const float* vr = v.row<const float>(i);
      float* yr = y.row<float>(i);
      for (int64_t o = 0; o < out; ++o)
        yr[o] += scale * kern.dot_f32(vr, b.row<const float>(o), rank);
    }
    return;
  }
  alignas(64) float tmp[kMaxFloatTileRows * kMaxOutChunk];
  FloatTile t;
  t.k = rank;
  if (r1 - r0 < 3) {
    // Decode (BGMV): one row at a time, with 8 rows of B as the tile's activation rows, so
    // the kernel runs its many-row form (the one- and two-row forms vectorise only k >= 32
    // or 16, which short ranks do not reach). tmp[o] = v[i] · b[o].
    t.w_stride = v.row_stride;
    t.w_rows = 1;
    t.x_stride = b.row_stride / sizeof(float);
    t.y_stride = 1;
    for (int64_t i = r0; i < r1; ++i) {
      t.w = v.row<const std::byte>(i);
      float* yr = y.row<float>(i);
      for (int64_t c0 = 0; c0 < out; c0 += kMaxOutChunk) {
        const int64_t len = std::min(kMaxOutChunk, out - c0);
        for (int64_t o = 0; o < len; o += kMaxFloatTileRows) {
          t.x = b.row<const float>(c0 + o);
          t.x_rows = static_cast<int>(std::min<int64_t>(kMaxFloatTileRows, len - o));
          t.y = tmp + o;
          kern.f32(t);
        }
        kern.axpy_f32(scale, tmp, yr + c0, len);
      }
    }
    return;
  }
  // Prefill (SGMV): tiles of up to 8 rows of v against a chunk of B's rows that stays in
  // L1; tmp[ii * chunk + o] = v[i + ii] · b[c0 + o].
  const int64_t chunk =
      std::clamp<int64_t>(16 * 1024 / (rank * 4), kMaxFloatTileRows, kMaxOutChunk);
  t.w_stride = b.row_stride;
  t.x_stride = v.row_stride / sizeof(float);
  t.y_stride = static_cast<size_t>(chunk);
  t.y = tmp;
  for (int64_t c0 = 0; c0 < out; c0 += chunk) {
    t.w = b.row<const std::byte>(c0);
    t.w_rows = std::min(chunk, out - c0);
    for (int64_t i = r0; i < r1; i += kMaxFloatTileRows) {
      t.x = v.row<const float>(i);
      t.x_rows = static_cast<int>(std::min<int64_t>(kMaxFloatTileRows, r1 - i));
      kern.f32(t);
      for (int ii = 0; ii < t.x_rows; ++ii)
        kern.axpy_f32(scale, tmp + ii * chunk, y.row<float>(i + ii) + c0, t.w_rows);
    }
  }
}

}  // namespace

void lora_shrink(const Tensor& x, const LoraProjection& proj, const LoraSegment* segments,
                 int32_t num_segments, const Tensor& v, const MatmulMode& mode) {
  check_f32(x, "lora_shrink", "x");
  const int64_t cost =
      check_args("lora_shrink", proj, segments, num_segments, x.rows, v, x.cols, -1);
  if (cost == 0) return;
  const bool exact = mode.path == MatmulPath::kExact;
  run_split(proj, segments, num_segments, cost, cost * x.cols, mode.threads,
            [&](const LoraSegment& seg, int64_t r0, int64_t r1, int64_t) {
              shrink_rows(x, proj.a[seg.slot], v, r0, r1, exact);
            });
}

void lora_expand(const Tensor& v, const LoraProjection& proj, const LoraSegment* segments,
                 int32_t num_segments, const Tensor& y, const MatmulMode& mode) {
  check_f32(y, "lora_expand", "y");
  const int64_t cost =
      check_args("lora_expand", proj, segments, num_segments, y.rows, v, -1, y.cols);
  if (cost == 0) return;
  const bool exact = mode.path == MatmulPath::kExact;
  run_split(proj, segments, num_segments, cost, cost * y.cols, mode.threads,
            [&](const LoraSegment& seg, int64_t r0, int64_t r1, int64_t) {
              expand_rows(v, proj.b[seg.slot], proj.scale[seg.slot], y, r0, r1, exact);
            });
}

}  // namespace mil::cpu
