// The CUDA implementation of the op interface: argument checks on the host, then one
// launcher of kernels.h (or cuBLAS) per op on the backend's stream, each launch checked.
// The contract (dtypes, device pointers) is in cuda_ops.h.
#include "backends/cuda/cuda_ops.h"

#include <algorithm>
#include <cstdlib>
#include <string>
#include <unordered_map>
#include <vector>

#include "backends/cuda/blas.h"
#include "backends/cuda/cuda_check.h"
#include "backends/cuda/device_buffer.h"
#include "backends/cuda/kernels.h"
#include "backends/cuda/kernels_model.h"

namespace mil {
namespace cuda {
namespace {

// Rows up to which quantized products take the GEMV (launch_qgemv in matmul_dequant.cu).
constexpr int64_t kQuantGemvMaxRows = 8;

void check_device(const Tensor& t, const char* op, const char* name) {
  MIL_CHECK(t.device == Device::CUDA, "{}: {} is not in device memory", op, name);
  MIL_CHECK(t.rows >= 0 && t.cols >= 0, "{}: {} has a negative shape", op, name);
  MIL_CHECK(t.rows == 0 || t.data != nullptr, "{}: {} has no data", op, name);
  MIL_CHECK(t.rows <= 1 || t.row_stride >= row_bytes(t.dtype, t.cols),
            "{}: {} has row_stride {} bytes for {} elements per row", op, name, t.row_stride,
            t.cols);
}

void check_dtype(const Tensor& t, std::initializer_list<DType> allowed, const char* op,
                 const char* name) {
  check_device(t, op, name);
  const bool ok = std::find(allowed.begin(), allowed.end(), t.dtype) != allowed.end();
  MIL_CHECK(ok, "{}: {} is {}, a dtype this op does not take on CUDA", op, name, shape_string(t));
  if (t.dtype == DType::BF16 || t.dtype == DType::F16) {
    MIL_CHECK(t.row_stride % 2 == 0 && reinterpret_cast<uintptr_t>(t.data) % 2 == 0,
              "{}: {} is not 2-byte aligned", op, name);
  } else if (t.dtype == DType::F32) {
    MIL_CHECK(t.row_stride % 4 == 0 && reinterpret_cast<uintptr_t>(t.data) % 4 == 0,
              "{}: {} is not 4-byte aligned", op, name);
  }
}

void check_same_shape(const Tensor& a, const Tensor& b, const char* op, const char* an,
                      const char* bn) {
  MIL_CHECK(a.rows == b.rows && a.cols == b.cols, "{}: {} is {} but {} is {}", op, an,
            shape_string(a), bn, shape_string(b));
}

Mat mat(const Tensor& t) { return Mat{t.data, t.rows, t.cols, t.row_stride, t.dtype}; }

// An instantiated CUDA graph replayed on the backend's stream. While any is alive the
// backend's workspaces must not move (they are baked into the graph's launches).
class CudaGraph final : public OpsGraph {
 public:
  CudaGraph(cudaGraphExec_t exec, cudaStream_t stream, int* live)
      : exec_(exec), stream_(stream), live_(live) {
    ++*live_;
  }
  ~CudaGraph() override {
    (void)cudaGraphExecDestroy(exec_);
    --*live_;
  }
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;
  void launch() override { MIL_CUDA_CHECK(cudaGraphLaunch(exec_, stream_)); }

 private:
  cudaGraphExec_t exec_;
  cudaStream_t stream_;
  int* live_;
};

constexpr std::initializer_list<DType> kAct = {DType::BF16};
constexpr std::initializer_list<DType> kActOrF32 = {DType::BF16, DType::F32};
constexpr std::initializer_list<DType> kWeights = {DType::F32,  DType::F16,  DType::BF16,
                                                   DType::Q8_0, DType::Q4_0, DType::Q4_1};

class CudaOps final : public Ops {
 public:
  CudaOps(int device, const CudaOpsOptions& options) : device_(device), options_(options) {
    MIL_CUDA_CHECK(cudaSetDevice(device_));
    MIL_CUDA_CHECK(cudaStreamCreate(&stream_));
    MIL_CUDA_CHECK(cudaDeviceGetAttribute(&sms_, cudaDevAttrMultiProcessorCount, device_));
    blas_ = std::make_unique<Blas>(stream_);
  }
  ~CudaOps() override {
    blas_.reset();
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  Device device() const override { return Device::CUDA; }
  DType activation_dtype() const override { return DType::BF16; }

  OwnedTensor allocate(DType dtype, int64_t rows, int64_t cols) override {
    MIL_CHECK(rows >= 0 && cols >= 0 && cols % block_elems(dtype) == 0,
              "allocate: {} x {} {} is not a valid shape", rows, cols, dtype_name(dtype));
    set_device();
    const size_t bytes = std::max<size_t>(row_bytes(dtype, cols) * static_cast<size_t>(rows), 256);
    void* p = nullptr;
    count_allocation();
    const cudaError_t err = cudaMalloc(&p, bytes);
    if (err != cudaSuccess) {
      (void)cudaGetLastError();
      size_t free_b = 0, total_b = 0;
      (void)cudaMemGetInfo(&free_b, &total_b);
      fail("CUDA: cannot allocate {} x {} {} ({} bytes; {} of {} bytes free): {}", rows, cols,
           dtype_name(dtype), bytes, free_b, total_b, cudaGetErrorString(err));
    }
    return OwnedTensor(Tensor::contiguous(dtype, rows, cols, p, Device::CUDA),
                       [](void* q) { (void)cudaFree(q); });
  }

  OwnedTensor allocate_host(DType dtype, int64_t rows, int64_t cols) override {
    MIL_CHECK(rows >= 0 && cols >= 0 && cols % block_elems(dtype) == 0,
              "allocate_host: {} x {} {} is not a valid shape", rows, cols, dtype_name(dtype));
    set_device();
    const size_t bytes = std::max<size_t>(row_bytes(dtype, cols) * static_cast<size_t>(rows), 64);
    void* p = nullptr;
    count_allocation();
    MIL_CUDA_CHECK(cudaMallocHost(&p, bytes));
    return OwnedTensor(Tensor::contiguous(dtype, rows, cols, p, Device::CPU),
                       [](void* q) { (void)cudaFreeHost(q); });
  }

  void upload(const void* src, const Tensor& dst) override {
    check_device(dst, "upload", "dst");
    if (dst.rows == 0 || dst.cols == 0) return;
    MIL_CHECK(src != nullptr, "upload: no source");
    MIL_CHECK(!capturing_, "upload: not allowed while capturing a graph");
    const size_t width = row_bytes(dst.dtype, dst.cols);
    set_device();
    MIL_CUDA_CHECK(cudaMemcpy2DAsync(dst.data, dst.rows <= 1 ? width : dst.row_stride, src, width,
                                     width, static_cast<size_t>(dst.rows), cudaMemcpyHostToDevice,
                                     stream_));
  }

  void download(const Tensor& src, void* dst) override {
    check_device(src, "download", "src");
    if (src.rows == 0 || src.cols == 0) return;
    MIL_CHECK(dst != nullptr, "download: no destination");
    MIL_CHECK(!capturing_, "download: not allowed while capturing a graph");
    const size_t width = row_bytes(src.dtype, src.cols);
    set_device();
    MIL_CUDA_CHECK(cudaMemcpy2DAsync(dst, width, src.data, src.rows <= 1 ? width : src.row_stride,
                                     width, static_cast<size_t>(src.rows), cudaMemcpyDeviceToHost,
                                     stream_));
  }

  void synchronize() override {
    MIL_CHECK(!capturing_, "synchronize: not allowed while capturing a graph");
    set_device();
    MIL_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  bool supports_graphs() const override { return true; }

  void begin_capture() override {
    MIL_CHECK(!capturing_, "begin_capture: a capture is already under way");
    set_device();
    MIL_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    capturing_ = true;
  }

  std::unique_ptr<OpsGraph> end_capture() override {
    MIL_CHECK(capturing_, "end_capture: no capture is under way");
    capturing_ = false;
    cudaGraph_t graph = nullptr;
    MIL_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
    cudaGraphExec_t exec = nullptr;
    const cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
    (void)cudaGraphDestroy(graph);
    MIL_CUDA_CHECK(err);
    return std::make_unique<CudaGraph>(exec, stream_, &live_graphs_);
  }

  bool memory_info(size_t* free_bytes, size_t* total_bytes) const override {
    set_device();
    MIL_CUDA_CHECK(cudaMemGetInfo(free_bytes, total_bytes));
    return true;
  }

  void add_rmsnorm(const Tensor& residual, const Tensor& x, const Tensor& weight, float eps,
                   const Tensor& out) override {
    check_dtype(residual, kAct, "add_rmsnorm", "residual");
    check_dtype(x, kAct, "add_rmsnorm", "x");
    check_dtype(weight, {DType::F32, DType::BF16}, "add_rmsnorm", "weight");
    check_dtype(out, kAct, "add_rmsnorm", "out");
    check_same_shape(residual, x, "add_rmsnorm", "residual", "x");
    check_same_shape(residual, out, "add_rmsnorm", "residual", "out");
    MIL_CHECK(weight.rows == 1 && weight.cols == residual.cols,
              "add_rmsnorm: weight is {}, residual is {}", shape_string(weight),
              shape_string(residual));
    set_device();
    launch_add_rmsnorm(mat(residual), mat(x), mat(weight), eps, mat(out), stream_);
    MIL_CUDA_CHECK_LAUNCH();
  }

  void matmul(const Tensor& x, const Tensor& w, const Tensor& y) override {
    check_dtype(x, kAct, "matmul", "x");
    check_dtype(w, kWeights, "matmul", "w");
    check_dtype(y, kActOrF32, "matmul", "y");
    MIL_CHECK(x.cols == w.cols && y.rows == x.rows && y.cols == w.rows,
              "matmul: x {} · w {}^T does not fit y {}", shape_string(x), shape_string(w),
              shape_string(y));
    if (x.rows == 0 || w.rows == 0) return;
    set_device();
    if (w.dtype == DType::BF16) {
      GemmArgs a;
      a.w = w.data;
      a.x = x.data;
      a.y = y.data;
      a.w_type = CUDA_R_16BF;
      a.x_type = CUDA_R_16BF;
      a.y_type = y.dtype == DType::F32 ? CUDA_R_32F : CUDA_R_16BF;
      a.m = w.rows;
      a.n = x.rows;
      a.k = x.cols;
      a.ldw = ld(w);
      a.ldx = ld(x);
      a.ldy = ld(y);
      blas_->gemm(a, options_.use_cublaslt);
      return;
    }
    if (w.dtype == DType::F16) {
      // cuBLAS has no F16 x BF16 product: x goes to F16 (activations fit its range), the
      // product to F32, then to y's dtype.
      auto* x16 = static_cast<uint16_t*>(workspace(ws_f16_, x.rows * x.cols * 2, "matmul (f16)"));
      launch_bf16_to_f16(mat(x), x16, x.cols, stream_);
      MIL_CUDA_CHECK_LAUNCH();
      float* y32 = y.dtype == DType::F32 && y.is_contiguous()
                       ? y.ptr<float>()
                       : static_cast<float*>(workspace(ws_f32_, y.rows * y.cols * 4, "matmul (f16)"));
      GemmArgs a;
      a.w = w.data;
      a.x = x16;
      a.y = y32;
      a.w_type = CUDA_R_16F;
      a.x_type = CUDA_R_16F;
      a.y_type = CUDA_R_32F;
      a.m = w.rows;
      a.n = x.rows;
      a.k = x.cols;
      a.ldw = ld(w);
      a.ldx = x.cols;
      a.ldy = y.cols;
      blas_->gemm(a, options_.use_cublaslt);
      if (y32 != y.data) {
        launch_f32_to(y32, y.cols, mat(y), stream_);
        MIL_CUDA_CHECK_LAUNCH();
      }
      return;
    }
    MIL_CHECK(!is_quantized(w.dtype) || w.cols % kQuantBlock == 0,
              "matmul: {} weights need a multiple of {} columns", dtype_name(w.dtype), kQuantBlock);
    if (is_quantized(w.dtype) && x.rows > kQuantGemvMaxRows && y.dtype == DType::BF16 &&
        kernel_policy().dequant_gemm) {
      dequant_gemm(x, w, y);
      return;
    }
    launch_dequant_matmul(mat(x), mat(w), mat(y), stream_);
    MIL_CUDA_CHECK_LAUNCH();
  }

  // Prefill-sized products of quantized weights: each band of weight rows is dequantized into
  // a BF16 scratch, then multiplied by cuBLASLt (~600 TFLOP/s against ~1 for the dequantizing
  // kernel on the H100). Rounding the weights to BF16 moves the products by ~2e-3 relative,
  // under the BF16 output's own rounding (3.9e-3); F32 outputs (logits) keep the kernel that
  // dequantizes in f32.
  void dequant_gemm(const Tensor& x, const Tensor& w, const Tensor& y) {
    int64_t band = kernel_policy().dequant_band_rows;
    if (band <= 0) band = std::max<int64_t>(64, (int64_t{32} << 20) / (w.cols * 2) / 64 * 64);
    band = std::min(band, w.rows);
    auto* wb = static_cast<uint16_t*>(workspace(ws_dequant_, static_cast<size_t>(band * w.cols * 2),
                                                "matmul (dequantized weights)"));
    for (int64_t r0 = 0; r0 < w.rows; r0 += band) {
      const int64_t rows = std::min(band, w.rows - r0);
      const Tensor wr = w.slice_rows(r0, rows);
      launch_dequant_to_bf16(mat(wr), wb, w.cols, stream_);
      MIL_CUDA_CHECK_LAUNCH();
      const Tensor yr = y.slice_cols(r0, rows);
      GemmArgs a;
      a.w = wb;
      a.x = x.data;
      a.y = yr.data;
      a.w_type = CUDA_R_16BF;
      a.x_type = CUDA_R_16BF;
      a.y_type = CUDA_R_16BF;
      a.m = rows;
      a.n = x.rows;
      a.k = x.cols;
      a.ldw = w.cols;
      a.ldx = ld(x);
      a.ldy = ld(y);
      blas_->gemm(a, options_.use_cublaslt);
    }
  }

  void add_bias(const Tensor& y, const Tensor& bias) override {
    check_dtype(y, kActOrF32, "add_bias", "y");
    check_dtype(bias, {DType::F32, DType::BF16}, "add_bias", "bias");
    MIL_CHECK(bias.rows == 1 && bias.cols == y.cols, "add_bias: bias is {}, y is {}",
              shape_string(bias), shape_string(y));
    set_device();
    launch_add_bias(mat(y), mat(bias), stream_);
    MIL_CUDA_CHECK_LAUNCH();
  }

  void embedding(const Tensor& table, const int32_t* ids, const Tensor& out) override {
    check_dtype(table, kWeights, "embedding", "table");
    check_dtype(out, kActOrF32, "embedding", "out");
    MIL_CHECK(out.cols == table.cols, "embedding: out is {}, table is {}", shape_string(out),
              shape_string(table));
    MIL_CHECK(out.rows == 0 || ids != nullptr, "embedding: no ids");
    set_device();
    launch_embedding(mat(table), ids, mat(out), stream_);
    MIL_CUDA_CHECK_LAUNCH();
  }

  void rmsnorm(const Tensor& x, const Tensor& weight, float eps, const Tensor& out) override {
    check_dtype(x, kAct, "rmsnorm", "x");
    check_dtype(weight, {DType::F32, DType::BF16}, "rmsnorm", "weight");
    check_dtype(out, kAct, "rmsnorm", "out");
    check_same_shape(x, out, "rmsnorm", "x", "out");
    MIL_CHECK(weight.rows == 1 && weight.cols == x.cols, "rmsnorm: weight is {}, x is {}",
              shape_string(weight), shape_string(x));
    set_device();
    launch_rmsnorm(mat(x), mat(weight), eps, mat(out), stream_);
    MIL_CUDA_CHECK_LAUNCH();
  }

  void rope(const Tensor& x, int32_t head_dim, const int32_t* positions, const Tensor& inv_freq,
            bool interleaved) override {
    check_dtype(x, kAct, "rope", "x");
    check_dtype(inv_freq, {DType::F32}, "rope", "inv_freq");
    MIL_CHECK(head_dim > 0 && head_dim % 2 == 0 && x.cols % head_dim == 0,
              "rope: head_dim {} does not divide the {} columns of x into pairs", head_dim, x.cols);
    MIL_CHECK(inv_freq.rows == 1 && inv_freq.cols == head_dim / 2,
              "rope: inv_freq is {}, expected 1 x {}", shape_string(inv_freq), head_dim / 2);
    MIL_CHECK(x.rows == 0 || positions != nullptr, "rope: no positions");
    set_device();
    launch_rope(mat(x), head_dim, positions, inv_freq.ptr<const float>(), interleaved, stream_);
    MIL_CUDA_CHECK_LAUNCH();
  }

  void rope_kv_store(const Tensor& q, const Tensor& k, const Tensor& v, int32_t head_dim,
                     const int32_t* positions, const Tensor& inv_freq, bool interleaved,
                     const int32_t* slots, const Tensor& k_cache, const Tensor& v_cache) override {
    const auto half = [](DType d) { return d == DType::BF16 || d == DType::F16; };
    if (!kernel_policy().fused_rope_kv || !half(q.dtype) || !half(k.dtype) || !half(v.dtype) ||
        k_cache.dtype != k.dtype || v_cache.dtype != v.dtype || q.rows != k.rows) {
      Ops::rope_kv_store(q, k, v, head_dim, positions, inv_freq, interleaved, slots, k_cache, v_cache);
      return;
    }
    check_dtype(inv_freq, {DType::F32}, "rope_kv_store", "inv_freq");
    MIL_CHECK(head_dim > 0 && head_dim % 2 == 0 && q.cols % head_dim == 0 && k.cols % head_dim == 0,
              "rope_kv_store: head_dim {} does not divide q {} / k {} into pairs", head_dim,
              shape_string(q), shape_string(k));
    MIL_CHECK(inv_freq.rows == 1 && inv_freq.cols == head_dim / 2,
              "rope_kv_store: inv_freq is {}, expected 1 x {}", shape_string(inv_freq), head_dim / 2);
    MIL_CHECK(k.cols == k_cache.cols && v.cols == v_cache.cols && k.rows == v.rows &&
                  k_cache.rows == v_cache.rows,
              "rope_kv_store: k {} / v {} do not fit caches {} / {}", shape_string(k), shape_string(v),
              shape_string(k_cache), shape_string(v_cache));
    MIL_CHECK(q.rows == 0 || (positions != nullptr && slots != nullptr), "rope_kv_store: no positions/slots");
    set_device();
    launch_rope_kv_store(mat(q), mat(k), mat(v), head_dim, positions, inv_freq.ptr<const float>(),
                         interleaved, slots, mat(k_cache), mat(v_cache), stream_);
    MIL_CUDA_CHECK_LAUNCH();
  }

  void kv_store(const Tensor& k, const Tensor& v, const int32_t* slots, const Tensor& k_cache,
                const Tensor& v_cache) override {
    check_dtype(k, kAct, "kv_store", "k");
    check_dtype(v, kAct, "kv_store", "v");
    check_dtype(k_cache, kAct, "kv_store", "k_cache");
    check_dtype(v_cache, kAct, "kv_store", "v_cache");
    MIL_CHECK(k.cols == k_cache.cols && v.cols == v_cache.cols && k.rows == v.rows &&
                  k_cache.rows == v_cache.rows,
              "kv_store: k {} / v {} do not fit caches {} / {}", shape_string(k), shape_string(v),
              shape_string(k_cache), shape_string(v_cache));
    MIL_CHECK(k.rows == 0 || slots != nullptr, "kv_store: no slots");
    set_device();
    launch_kv_store(mat(k), mat(v), slots, mat(k_cache), mat(v_cache), stream_);
    MIL_CUDA_CHECK_LAUNCH();
  }

  void attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                 const AttentionBatch& batch, const AttentionShape& shape,
                 const Tensor& out) override {
    check_dtype(q, kAct, "attention", "q");
    check_dtype(out, kAct, "attention", "out");
    check_dtype(k_cache, kAct, "attention", "k_cache");
    check_dtype(v_cache, kAct, "attention", "v_cache");
    const int32_t heads = shape.num_heads, kv_heads = shape.num_kv_heads, dim = shape.head_dim;
    MIL_CHECK(heads > 0 && kv_heads > 0 && heads % kv_heads == 0,
              "attention: {} heads / {} kv heads", heads, kv_heads);
    const bool tuned = tuned_attention(shape);
    MIL_CHECK(tuned || (dim > 0 && dim % 2 == 0 && dim <= kGenericAttentionMaxDim),
              "attention: head_dim {} (CUDA takes even head dims up to {})", dim,
              kGenericAttentionMaxDim);
    MIL_CHECK(q.cols == int64_t{heads} * dim && out.rows == q.rows && out.cols == q.cols,
              "attention: q {} / out {} do not match {} heads x {}", shape_string(q),
              shape_string(out), heads, dim);
    MIL_CHECK(k_cache.cols == int64_t{kv_heads} * dim && v_cache.cols == k_cache.cols &&
                  v_cache.rows == k_cache.rows && v_cache.row_stride == k_cache.row_stride,
              "attention: caches {} / {} do not match {} kv heads x {}", shape_string(k_cache),
              shape_string(v_cache), kv_heads, dim);
    MIL_CHECK(!tuned || (k_cache.row_stride % 16 == 0 &&
                         reinterpret_cast<uintptr_t>(k_cache.data) % 16 == 0 &&
                         reinterpret_cast<uintptr_t>(v_cache.data) % 16 == 0),
              "attention: KV caches must be 16-byte aligned with 16-byte aligned rows");
    MIL_CHECK(batch.num_seqs > 0 || q.rows == 0, "attention: {} query rows but no sequences",
              q.rows);
    MIL_CHECK(q.rows <= INT32_MAX, "attention: {} query rows", q.rows);
    MIL_CHECK(batch.block_size > 0 && batch.max_blocks_per_seq >= 0,
              "attention: block_size {} / max_blocks_per_seq {} invalid", batch.block_size,
              batch.max_blocks_per_seq);
    MIL_CHECK(q.rows == 0 || (batch.query_start != nullptr && batch.context_len != nullptr &&
                              batch.block_table != nullptr),
              "attention: batch arrays are missing");
    if (q.rows == 0) return;
    set_device();
    AttentionArgs a;
    a.q = mat(q);
    a.k_cache = mat(k_cache);
    a.v_cache = mat(v_cache);
    a.out = mat(out);
    a.batch = batch;
    a.shape = shape;
    a.num_rows = static_cast<int32_t>(q.rows);
    if (!tuned) {
      launch_attention_generic(a, stream_);
      MIL_CUDA_CHECK_LAUNCH();
      return;
    }
    const int splits = attention_splits(q.rows, kv_heads);
    a.splits = splits;
    if (splits > 1) {
      const size_t floats = attention_partials_floats(a.num_rows, heads, dim, splits);
      a.partials = static_cast<float*>(workspace(ws_attn_, floats * sizeof(float), "attention"));
    }
    launch_attention(a, stream_);
    MIL_CUDA_CHECK_LAUNCH();
  }

  void silu_mul(const Tensor& gate, const Tensor& up, const Tensor& out) override {
    check_dtype(gate, kAct, "silu_mul", "gate");
    check_dtype(up, kAct, "silu_mul", "up");
    check_dtype(out, kAct, "silu_mul", "out");
    check_same_shape(gate, up, "silu_mul", "gate", "up");
    check_same_shape(gate, out, "silu_mul", "gate", "out");
    set_device();
    launch_silu_mul(mat(gate), mat(up), mat(out), stream_);
    MIL_CUDA_CHECK_LAUNCH();
  }

  void add(const Tensor& a, const Tensor& b, const Tensor& out) override {
    check_dtype(a, kActOrF32, "add", "a");
    check_dtype(b, kActOrF32, "add", "b");
    check_dtype(out, kActOrF32, "add", "out");
    check_same_shape(a, b, "add", "a", "b");
    check_same_shape(a, out, "add", "a", "out");
    set_device();
    launch_add(mat(a), mat(b), mat(out), stream_);
    MIL_CUDA_CHECK_LAUNCH();
  }

  void lora_shrink(const Tensor& x, const LoraProjection& proj, const LoraSegment* segments,
                   int32_t num_segments, const Tensor& v) override {
    check_dtype(x, kAct, "lora_shrink", "x");
    check_dtype(v, {DType::F32}, "lora_shrink", "v");
    MIL_CHECK(v.rows == x.rows, "lora_shrink: v is {} for {} rows", shape_string(v), x.rows);
    const LoraSlot* table = nullptr;
    const int32_t max_rank =
        slot_table("lora_shrink", proj, num_segments, segments, x.cols, -1, v, &table);
    if (max_rank == 0) return;
    set_device();
    launch_lora_shrink(mat(x), table, proj.num_slots,
                       segments, num_segments, max_rank, mat(v), stream_);
    MIL_CUDA_CHECK_LAUNCH();
  }

  void lora_expand(const Tensor& v, const LoraProjection& proj, const LoraSegment* segments,
                   int32_t num_segments, const Tensor& y) override {
    check_dtype(y, kActOrF32, "lora_expand", "y");
    check_dtype(v, {DType::F32}, "lora_expand", "v");
    MIL_CHECK(v.rows == y.rows, "lora_expand: v is {} for {} rows", shape_string(v), y.rows);
    const LoraSlot* table = nullptr;
    const int32_t max_rank =
        slot_table("lora_expand", proj, num_segments, segments, -1, y.cols, v, &table);
    if (max_rank == 0) return;
    set_device();
    launch_lora_expand(mat(v), table, proj.num_slots,
                       segments, num_segments, max_rank, mat(y), stream_);
    MIL_CUDA_CHECK_LAUNCH();
  }

  void argmax(const Tensor& logits, int32_t* out) override {
    check_dtype(logits, kActOrF32, "argmax", "logits");
    MIL_CHECK(logits.cols > 0, "argmax: logits {} have no columns", shape_string(logits));
    MIL_CHECK(logits.rows == 0 || out != nullptr, "argmax: no out");
    set_device();
    launch_argmax(mat(logits), out, stream_);
    MIL_CUDA_CHECK_LAUNCH();
  }

  void sample(const Tensor& logits, const SamplingParams* params, const float* uniforms,
              int32_t* out) override {
    check_dtype(logits, kActOrF32, "sample", "logits");
    MIL_CHECK(logits.cols > 0, "sample: logits {} have no columns", shape_string(logits));
    MIL_CHECK(logits.rows == 0 || (params != nullptr && uniforms != nullptr && out != nullptr),
              "sample: params, uniforms and out are required");
    MIL_CHECK(logits.rows * logits.cols < INT32_MAX, "sample: {} logits are too many",
              shape_string(logits));
    if (logits.rows == 0) return;
    set_device();
    const size_t bytes = sample_workspace_bytes(logits.rows, logits.cols);
    void* ws = workspace(ws_sample_, bytes, "sample");
    launch_sample(mat(logits), params, uniforms, out, ws, ws_sample_.size(), stream_);
    MIL_CUDA_CHECK_LAUNCH();
  }

  void reserve_workspaces(const StepLimits& l) override {
    MIL_CHECK(l.max_rows >= 0 && l.max_sample_rows >= 0 && l.vocab >= 0,
              "reserve_workspaces: negative limits");
    // Attention partials: the split count falls as rows grow, so the largest workspace is
    // not at the most rows; take the largest over every row count a step may have.
    const AttentionShape& sh = l.attention;
    if (l.max_rows > 0 && sh.num_kv_heads > 0 && tuned_attention(sh)) {
      size_t most = 0;
      for (int64_t rows = 1; rows <= l.max_rows; ++rows) {
        const int splits = attention_splits(rows, sh.num_kv_heads);
        if (splits > 1) {
          most = std::max(most, attention_partials_floats(static_cast<int32_t>(rows), sh.num_heads,
                                                          sh.head_dim, splits));
        }
      }
      if (most > 0) workspace(ws_attn_, most * sizeof(float), "attention");
    }
    // Sampling: sample() takes at most INT32_MAX - 1 logits at once.
    if (l.max_sample_rows > 0 && l.vocab > 0) {
      const int64_t rows = std::min<int64_t>(l.max_sample_rows, (INT32_MAX - 1) / l.vocab);
      if (rows > 0) workspace(ws_sample_, sample_workspace_bytes(rows, l.vocab), "sample");
    }
    // LoRA: each projection's device slot table at its slot count; slot_table() fills it
    // at the first step that names an adapter (its num_slots stays 0 until then).
    for (const LoraProjection* p : l.lora) {
      if (p == nullptr || p->num_slots <= 0) continue;
      MIL_CHECK(!capturing_, "reserve_workspaces: not allowed while capturing a graph");
      CachedSlots& c = slot_tables_[p->a];
      const size_t bytes = static_cast<size_t>(p->num_slots) * sizeof(LoraSlot);
      if (c.table.size() < bytes) {
        if (live_graphs_ > 0 && c.table.size() > 0) retired_.push_back(std::move(c.table));
        count_allocation();
        c.table.reset(bytes);
      }
    }
  }

  void repetition_penalty(const Tensor& logits, const int32_t* ids, const int32_t* offsets,
                          const float* penalties) override {
    // f32 only: the penalty is applied in place, and bf16 logits would round it away.
    check_dtype(logits, {DType::F32}, "repetition_penalty", "logits");
    MIL_CHECK(logits.rows < INT32_MAX, "repetition_penalty: {} rows are too many",
              shape_string(logits));
    MIL_CHECK(logits.rows == 0 || (ids != nullptr && offsets != nullptr && penalties != nullptr),
              "repetition_penalty: ids, offsets and penalties are required");
    if (logits.rows == 0) return;
    set_device();
    launch_repetition_penalty(mat(logits), ids, offsets, penalties, stream_);
    MIL_CUDA_CHECK_LAUNCH();
  }

  void token_logprobs(const Tensor& logits, const float* temperatures, const int32_t* tokens,
                      float* out) override {
    check_dtype(logits, {DType::F32}, "token_logprobs", "logits");
    MIL_CHECK(logits.cols > 0, "token_logprobs: logits {} have no columns", shape_string(logits));
    MIL_CHECK(logits.rows < INT32_MAX, "token_logprobs: {} rows are too many",
              shape_string(logits));
    MIL_CHECK(logits.rows == 0 || (temperatures != nullptr && tokens != nullptr && out != nullptr),
              "token_logprobs: temperatures, tokens and out are required");
    if (logits.rows == 0) return;
    set_device();
    launch_token_logprobs(mat(logits), temperatures, tokens, out, stream_);
    MIL_CUDA_CHECK_LAUNCH();
  }

 private:
  void set_device() const { MIL_CUDA_CHECK(cudaSetDevice(device_)); }

  // The tuned kernel takes head_dim 64/128 with GQA ratios up to 8; other shapes (up to
  // head_dim 256) take the generic one.
  // MIL_ATTN_KERNEL=generic sends every shape to the generic kernel (a cross-check).
  static bool tuned_attention(const AttentionShape& s) {
    static const bool force_generic = [] {
      const char* e = std::getenv("MIL_ATTN_KERNEL");
      return e != nullptr && std::string(e) == "generic";
    }();
    return !force_generic && (s.head_dim == 64 || s.head_dim == 128) && s.num_kv_heads > 0 &&
           s.num_heads / s.num_kv_heads <= 8;
  }

  // Splits of the KV range per (row, kv head) of the tuned kernel: enough blocks to fill the
  // multiprocessors twice, unless fixed by the options.
  int attention_splits(int64_t rows, int32_t kv_heads) const {
    if (options_.attention_splits > 0) return options_.attention_splits;
    const int64_t blocks = rows * kv_heads;
    return static_cast<int>(std::clamp<int64_t>((2 * sms_ + blocks - 1) / blocks, 1, 64));
  }

  static int64_t ld(const Tensor& t) {
    return t.rows <= 1 ? t.cols : static_cast<int64_t>(t.row_stride / (t.dtype == DType::F32 ? 4 : 2));
  }

  // A workspace of at least `bytes`. Growing frees the old one, so it is refused while a
  // capture is under way or a captured graph (which baked the old address in) is alive.
  void* workspace(DeviceBuffer& buf, size_t bytes, const char* op) {
    if (bytes <= buf.size()) return buf.data();
    MIL_CHECK(!capturing_,
              "{}: its workspace must grow from {} to {} bytes inside a graph capture (run every "
              "captured shape eagerly before capturing)",
              op, buf.size(), bytes);
    // Live graphs keep the old address: it stays allocated (retired) until the backend goes.
    if (live_graphs_ > 0 && buf.size() > 0) retired_.push_back(std::move(buf));
    count_allocation();
    return buf.ensure(bytes);
  }

  // The device copy of the projection's slot table (pointers, ranks, scales), kept per
  // projection and refreshed only when its generation moves (or is 0: unknown). Checks the
  // shapes of the slots in use against the call. Returns the largest rank (0: nothing to do).
  int32_t slot_table(const char* op, const LoraProjection& p, int32_t num_segments,
                     const LoraSegment* segments, int64_t in_cols, int64_t out_cols,
                     const Tensor& v, const LoraSlot** table) {
    MIL_CHECK(num_segments >= 0, "{}: {} segments", op, num_segments);
    MIL_CHECK(num_segments == 0 || segments != nullptr, "{}: no segments", op);
    if (num_segments == 0 || p.num_slots == 0) return 0;
    CachedSlots& c = slot_tables_[p.a];
    if (p.generation == 0 || c.generation != p.generation || c.num_slots != p.num_slots) {
      MIL_CHECK(!capturing_, "{}: the LoRA slot table changed while capturing a graph", op);
      c.max_rank = build_slots(op, p, in_cols, out_cols);
      c.generation = p.generation;
      c.num_slots = p.num_slots;
      if (c.max_rank > 0) {
        const size_t bytes = slots_scratch_.size() * sizeof(LoraSlot);
        if (c.table.size() < bytes) {
          if (live_graphs_ > 0 && c.table.size() > 0) retired_.push_back(std::move(c.table));
          count_allocation();
          c.table.reset(bytes);
        }
        set_device();
        MIL_CUDA_CHECK(cudaMemcpyAsync(c.table.data(), slots_scratch_.data(), bytes,
                                       cudaMemcpyHostToDevice, stream_));
      }
      c.in_cols = in_cols;
      c.out_cols = out_cols;
    } else if ((in_cols >= 0 && c.in_cols < 0) || (out_cols >= 0 && c.out_cols < 0)) {
      build_slots(op, p, in_cols, out_cols);  // the side this table was not yet checked for
      c.in_cols = std::max(c.in_cols, in_cols);
      c.out_cols = std::max(c.out_cols, out_cols);
    }
    MIL_CHECK((in_cols < 0 || c.in_cols < 0 || c.in_cols == in_cols) &&
                  (out_cols < 0 || c.out_cols < 0 || c.out_cols == out_cols),
              "{}: the projection's adapters do not fit x/y", op);
    MIL_CHECK(c.max_rank <= v.cols, "{}: rank {} but v has {} columns", op, c.max_rank, v.cols);
    *table = static_cast<const LoraSlot*>(c.table.data());
    return c.max_rank;
  }

  // Checks the projection's slots (host arrays) and writes their pointers, ranks and scales
  // to slots_scratch_. Returns the largest rank.
  int32_t build_slots(const char* op, const LoraProjection& p, int64_t in_cols, int64_t out_cols) {
    MIL_CHECK(p.num_slots >= 0, "{}: {} adapter slots", op, p.num_slots);
    MIL_CHECK(p.num_slots == 0 || (p.a != nullptr && p.b != nullptr && p.scale != nullptr),
              "{}: the projection has {} slots but no a/b/scale arrays", op, p.num_slots);
    std::vector<LoraSlot>& slots = slots_scratch_;
    slots.assign(static_cast<size_t>(p.num_slots), LoraSlot{});
    int32_t max_rank = 0;
    for (int32_t s = 0; s < p.num_slots; ++s) {
      const Tensor& a = p.a[s];
      if (a.empty() || a.rows == 0) continue;
      const Tensor& b = p.b[s];
      check_dtype(a, {DType::F32}, op, "a");
      check_dtype(b, {DType::F32}, op, "b");
      MIL_CHECK(in_cols < 0 || a.cols == in_cols, "{}: slot {} has a {} for x of {} columns", op,
                s, shape_string(a), in_cols);
      MIL_CHECK(b.cols == a.rows && (out_cols < 0 || b.rows == out_cols),
                "{}: slot {} has a {} and b {} (y has {} columns)", op, s, shape_string(a),
                shape_string(b), out_cols);
      LoraSlot& sl = slots[static_cast<size_t>(s)];
      sl.a = a.ptr<const float>();
      sl.b = b.ptr<const float>();
      sl.a_stride_elems = static_cast<int64_t>(a.row_stride / 4);
      sl.b_stride_elems = static_cast<int64_t>(b.row_stride / 4);
      sl.rank = static_cast<int32_t>(a.rows);
      sl.scale = p.scale[s];
      max_rank = std::max(max_rank, sl.rank);
    }
    return max_rank;
  }

  int device_;
  CudaOpsOptions options_;
  cudaStream_t stream_ = nullptr;
  int sms_ = 0;
  std::unique_ptr<Blas> blas_;
  DeviceBuffer ws_f16_, ws_f32_, ws_attn_, ws_sample_, ws_dequant_;
  std::vector<LoraSlot> slots_scratch_;
  struct CachedSlots {
    uint64_t generation = 0;
    int32_t num_slots = 0;
    int32_t max_rank = 0;
    int64_t in_cols = -1, out_cols = -1;
    DeviceBuffer table;
  };
  // Keyed by the projection's (stable) host array of a tensors.
  std::unordered_map<const Tensor*, CachedSlots> slot_tables_;
  std::vector<DeviceBuffer> retired_;  // outgrown workspaces that live graphs may still use
  bool capturing_ = false;
  int live_graphs_ = 0;
};

}  // namespace
}  // namespace cuda

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

std::unique_ptr<Ops> make_cuda_ops(int device) { return make_cuda_ops(device, CudaOpsOptions{}); }

std::unique_ptr<Ops> make_cuda_ops(int device, const CudaOpsOptions& options) {
  return std::make_unique<cuda::CudaOps>(device, options);
}

}  // namespace mil
