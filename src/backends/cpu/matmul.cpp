// Matmul driver: checks shapes, picks the path (f32 activations by default; int8 activations
// quantized once per call for make_cpu_ops_int8), splits weight rows across threads and
// walks the (weight rows x activation rows) tiles in cache-friendly order.
#include <omp.h>

#include <algorithm>
#include <vector>

#include "backends/cpu/cpu_internal.h"
#include "backends/cpu/dequant.h"
#include "backends/cpu/kernels.h"

namespace mil::cpu {
namespace {

// Below this many multiply-adds a second thread costs more (fork/join, ~2 us) than it saves.
constexpr int64_t kMinParallelMacs = 64 * 1024;

// Weight rows per chunk: each chunk is reused by every activation tile, so it should stay
// in L1 while the tiles stream past it.
int64_t rows_per_chunk(size_t row_bytes_w) {
  constexpr size_t kChunkBytes = 16 * 1024;
  return std::max<int64_t>(4, static_cast<int64_t>(kChunkBytes / std::max<size_t>(row_bytes_w, 1)));
}

// Contiguous share of [0, rows) for thread `tid` of `nth`, in multiples of 4 rows so that
// neighbouring threads do not write the same cache line of y more than necessary.
void thread_range(int64_t rows, int tid, int nth, int64_t* begin, int64_t* end) {
  const int64_t units = (rows + 3) / 4;
  const int64_t b = units * tid / nth * 4;
  const int64_t e = units * (tid + 1) / nth * 4;
  *begin = std::min(b, rows);
  *end = std::min(e, rows);
}

int threads_for(int64_t macs, int threads) { return macs < kMinParallelMacs ? 1 : threads; }

void matmul_exact(const Tensor& x, const Tensor& w, const Tensor& y, int threads) {
  const int64_t n = x.rows, k = w.cols, m = w.rows;
  const Kernels& kern = kernels();
  const int nt = threads_for(n * k * m, threads);
#pragma omp parallel num_threads(nt)
  {
    // One dequantized weight row, reused for all activation rows.
    thread_local std::vector<float> wrow;
    wrow.resize(static_cast<size_t>(k));
    int64_t r0, r1;
    thread_range(m, omp_get_thread_num(), omp_get_num_threads(), &r0, &r1);
    for (int64_t r = r0; r < r1; ++r) {
      dequant_row(w.dtype, w.row<const std::byte>(r), k, wrow.data());
      for (int64_t i = 0; i < n; ++i) {
        y.row<float>(i)[r] = kern.dot_f32(wrow.data(), x.row<const float>(i), k);
      }
    }
  }
}

void matmul_float(const Tensor& x, const Tensor& w, const Tensor& y, int threads) {
  const int64_t n = x.rows, k = w.cols, m = w.rows;
  const FloatTileFn fn = float_tile_fn(kernels(), w.dtype);
  const int64_t chunk = rows_per_chunk(row_bytes(w.dtype, k));
  const int nt = threads_for(n * k * m, threads);
#pragma omp parallel num_threads(nt)
  {
    int64_t r0, r1;
    thread_range(m, omp_get_thread_num(), omp_get_num_threads(), &r0, &r1);
    for (int64_t c = r0; c < r1; c += chunk) {
      FloatTile t;
      t.w = w.row<const std::byte>(c);
      t.w_stride = w.row_stride;
      t.w_rows = std::min(chunk, r1 - c);
      t.k = k;
      t.x_stride = x.row_stride / sizeof(float);
      t.y_stride = y.row_stride / sizeof(float);
      for (int64_t i = 0; i < n; i += kMaxFloatTileRows) {
        t.x = x.row<const float>(i);
        t.x_rows = static_cast<int>(std::min<int64_t>(kMaxFloatTileRows, n - i));
        t.y = y.row<float>(i) + c;
        fn(t);
      }
    }
  }
}

void matmul_quant(const Tensor& x, const Tensor& w, const Tensor& y, int threads, Workspace& ws) {
  const int64_t n = x.rows, k = w.cols, m = w.rows;
  const int64_t nb = k / kQuantBlock;
  const Kernels& kern = kernels();
  const QuantTileFn fn = quant_tile_fn(kern, w.dtype);
  const int64_t chunk = rows_per_chunk(row_bytes(w.dtype, k));

  // Activations: int8 codes first, then the (d, d*sum) pairs, 64-byte aligned.
  const size_t qs_bytes = (static_cast<size_t>(n * k) + 63) / 64 * 64;
  std::byte* buf = ws.get(qs_bytes + static_cast<size_t>(n * nb) * 2 * sizeof(float));
  auto* qs = reinterpret_cast<int8_t*>(buf);
  auto* ds = reinterpret_cast<float*>(buf + qs_bytes);

  const int nt = threads_for(n * k * m, threads);
#pragma omp parallel num_threads(nt)
  {
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      kern.quantize_row(x.row<const float>(i), nb, qs + i * k, ds + i * nb * 2);
    }
    int64_t r0, r1;
    thread_range(m, omp_get_thread_num(), omp_get_num_threads(), &r0, &r1);
    for (int64_t c = r0; c < r1; c += chunk) {
      QuantTile t;
      t.w = w.row<const std::byte>(c);
      t.w_stride = w.row_stride;
      t.w_rows = std::min(chunk, r1 - c);
      t.x.nb = nb;
      t.y_stride = y.row_stride / sizeof(float);
      for (int64_t i = 0; i < n; i += kMaxTileRows) {
        t.x.qs = qs + i * k;
        t.x.ds = ds + i * nb * 2;
        t.x_rows = static_cast<int>(std::min<int64_t>(kMaxTileRows, n - i));
        t.y = y.row<float>(i) + c;
        fn(t);
      }
    }
  }
}

}  // namespace

void matmul(const Tensor& x, const Tensor& w, const Tensor& y, const MatmulMode& mode,
            Workspace& ws) {
  check_f32(x, "matmul", "x");
  check_f32(y, "matmul", "y");
  check_host(w, "matmul", "w");
  MIL_CHECK(w.dtype != DType::I32, "matmul: weight dtype I32 is not supported");
  MIL_CHECK(x.cols == w.cols, "matmul: x {} and w {} disagree on the inner dimension",
            shape_string(x), shape_string(w));
  MIL_CHECK(y.rows == x.rows && y.cols == w.rows, "matmul: y is {}, expected F32[{}, {}]",
            shape_string(y), x.rows, w.rows);
  MIL_CHECK(w.rows <= 1 || w.row_stride >= row_bytes(w.dtype, w.cols),
            "matmul: weight rows overlap (row_stride {} < {} bytes)", w.row_stride,
            row_bytes(w.dtype, w.cols));
  if (x.rows == 0 || w.rows == 0) return;
  const int threads = std::max(1, mode.threads);
  if (mode.path == MatmulPath::kExact) return matmul_exact(x, w, y, threads);
  if (mode.path == MatmulPath::kInt8 && is_quantized(w.dtype))
    return matmul_quant(x, w, y, threads, ws);
  matmul_float(x, w, y, threads);
}

}  // namespace mil::cpu
