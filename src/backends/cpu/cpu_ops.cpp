// The CPU implementation of the op interface: argument checks and the small row-wise ops;
// matmul, attention and sampling live in their own files.
#include "backends/cpu/cpu_ops.h"

#include <omp.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "backends/cpu/cpu_internal.h"
#include "backends/cpu/dequant.h"
#include "backends/cpu/kernels.h"
#include "core/half.h"

namespace mil {
namespace cpu {

void check_host(const Tensor& t, const char* op, const char* name) {
  MIL_CHECK(t.device == Device::CPU, "{}: {} is not in host memory", op, name);
  MIL_CHECK(t.rows >= 0 && t.cols >= 0, "{}: {} has a negative shape", op, name);
  MIL_CHECK(t.rows == 0 || t.data != nullptr, "{}: {} has no data", op, name);
}

void check_f32(const Tensor& t, const char* op, const char* name) {
  check_host(t, op, name);
  MIL_CHECK(t.dtype == DType::F32, "{}: {} is {}, expected F32", op, name, shape_string(t));
  MIL_CHECK(t.rows <= 1 || (t.row_stride % sizeof(float) == 0 &&
                            t.row_stride >= static_cast<size_t>(t.cols) * sizeof(float)),
            "{}: {} has row_stride {} bytes for {} floats per row", op, name, t.row_stride, t.cols);
}

namespace {

void check_same_shape(const Tensor& a, const Tensor& b, const char* op, const char* an,
                      const char* bn) {
  MIL_CHECK(a.rows == b.rows && a.cols == b.cols, "{}: {} is {} but {} is {}", op, an,
            shape_string(a), bn, shape_string(b));
}

class CpuOps final : public Ops {
 public:
  CpuOps(int num_threads, MatmulPath path)
      : threads_(num_threads > 0 ? num_threads : omp_get_max_threads()), path_(path) {}

  Device device() const override { return Device::CPU; }
  DType activation_dtype() const override { return DType::F32; }

  OwnedTensor allocate(DType dtype, int64_t rows, int64_t cols) override {
    MIL_CHECK(rows >= 0 && cols >= 0 && cols % block_elems(dtype) == 0,
              "allocate: {} x {} {} is not a valid shape", rows, cols, dtype_name(dtype));
    count_allocation();
    return OwnedTensor(dtype, rows, cols);
  }
  OwnedTensor allocate_host(DType dtype, int64_t rows, int64_t cols) override {
    return allocate(dtype, rows, cols);
  }
  void upload(const void* src, const Tensor& dst) override {
    check_host(dst, "upload", "dst");
    const size_t row = row_bytes(dst.dtype, dst.cols);
    MIL_CHECK(dst.rows == 0 || src != nullptr, "upload: no source");
    for (int64_t i = 0; i < dst.rows; ++i) {
      std::memcpy(dst.row<std::byte>(i), static_cast<const std::byte*>(src) + i * row, row);
    }
  }
  void download(const Tensor& src, void* dst) override {
    check_host(src, "download", "src");
    const size_t row = row_bytes(src.dtype, src.cols);
    MIL_CHECK(src.rows == 0 || dst != nullptr, "download: no destination");
    for (int64_t i = 0; i < src.rows; ++i) {
      std::memcpy(static_cast<std::byte*>(dst) + i * row, src.row<const std::byte>(i), row);
    }
  }
  void synchronize() override {}

  void matmul(const Tensor& x, const Tensor& w, const Tensor& y) override {
    cpu::matmul(x, w, y, MatmulMode{threads_, path_}, ws_);
  }

  void add_bias(const Tensor& y, const Tensor& bias) override {
    check_f32(y, "add_bias", "y");
    check_f32(bias, "add_bias", "bias");
    MIL_CHECK(bias.rows == 1 && bias.cols == y.cols, "add_bias: bias is {}, y is {}",
              shape_string(bias), shape_string(y));
    const float* b = bias.row<const float>(0);
    for (int64_t i = 0; i < y.rows; ++i) {
      float* row = y.row<float>(i);
      for (int64_t j = 0; j < y.cols; ++j) row[j] += b[j];
    }
  }

  void embedding(const Tensor& table, const int32_t* ids, const Tensor& out) override {
    check_host(table, "embedding", "table");
    check_f32(out, "embedding", "out");
    MIL_CHECK(out.cols == table.cols, "embedding: out is {}, table is {}", shape_string(out),
              shape_string(table));
    MIL_CHECK(out.rows == 0 || ids != nullptr, "embedding: no ids");
    // All ids first, so that a bad one leaves out untouched.
    for (int64_t i = 0; i < out.rows; ++i) {
      MIL_CHECK(ids[i] >= 0 && ids[i] < table.rows,
                "embedding: token id {} (row {}) is outside the table of {} rows", ids[i], i,
                table.rows);
    }
    for (int64_t i = 0; i < out.rows; ++i) {
      dequant_row(table.dtype, table.row<const std::byte>(ids[i]), table.cols, out.row<float>(i));
    }
  }

  void rmsnorm(const Tensor& x, const Tensor& weight, float eps, const Tensor& out) override {
    check_f32(x, "rmsnorm", "x");
    check_f32(weight, "rmsnorm", "weight");
    check_f32(out, "rmsnorm", "out");
    check_same_shape(x, out, "rmsnorm", "x", "out");
    MIL_CHECK(weight.rows == 1 && weight.cols == x.cols, "rmsnorm: weight is {}, x is {}",
              shape_string(weight), shape_string(x));
    const float* w = weight.row<const float>(0);
    const Kernels& kern = kernels();
    for (int64_t i = 0; i < x.rows; ++i) {
      const float* xr = x.row<const float>(i);
      float* o = out.row<float>(i);
      const float mean = kern.dot_f32(xr, xr, x.cols) / static_cast<float>(x.cols);
      const float r = 1.0f / std::sqrt(mean + eps);
      // (x * r) * w in this order, as HF's LlamaRMSNorm rounds it.
      for (int64_t j = 0; j < x.cols; ++j) o[j] = (xr[j] * r) * w[j];
    }
  }

  void rope(const Tensor& x, int32_t head_dim, const int32_t* positions, const Tensor& inv_freq,
            bool interleaved) override {
    check_f32(x, "rope", "x");
    check_f32(inv_freq, "rope", "inv_freq");
    MIL_CHECK(head_dim > 0 && head_dim % 2 == 0 && x.cols % head_dim == 0,
              "rope: head_dim {} does not divide the {} columns of x into pairs", head_dim, x.cols);
    const int32_t half = head_dim / 2;
    MIL_CHECK(inv_freq.rows == 1 && inv_freq.cols == half, "rope: inv_freq is {}, expected 1 x {}",
              shape_string(inv_freq), half);
    MIL_CHECK(x.rows == 0 || positions != nullptr, "rope: no positions");
    const float* freq = inv_freq.row<const float>(0);
    std::vector<float>& cs = rope_scratch_;
    cs.resize(2 * static_cast<size_t>(half));
    const int64_t heads = x.cols / head_dim;
    for (int64_t i = 0; i < x.rows; ++i) {
      // HF: angle = float(position) * inv_freq in f32, then cos/sin in f32.
      const float pos = static_cast<float>(positions[i]);
      for (int32_t j = 0; j < half; ++j) {
        const float angle = pos * freq[j];
        cs[j] = std::cos(angle);
        cs[half + j] = std::sin(angle);
      }
      float* row = x.row<float>(i);
      for (int64_t h = 0; h < heads; ++h) {
        float* v = row + h * head_dim;
        for (int32_t j = 0; j < half; ++j) {
          const int32_t a = interleaved ? 2 * j : j;
          const int32_t b = interleaved ? 2 * j + 1 : j + half;
          const float x0 = v[a], x1 = v[b], c = cs[j], s = cs[half + j];
          v[a] = x0 * c - x1 * s;
          v[b] = x1 * c + x0 * s;
        }
      }
    }
  }

  void kv_store(const Tensor& k, const Tensor& v, const int32_t* slots, const Tensor& k_cache,
                const Tensor& v_cache) override {
    check_f32(k, "kv_store", "k");
    check_f32(v, "kv_store", "v");
    check_f32(k_cache, "kv_store", "k_cache");
    check_f32(v_cache, "kv_store", "v_cache");
    MIL_CHECK(k.cols == k_cache.cols && v.cols == v_cache.cols && k.rows == v.rows &&
                  k_cache.rows == v_cache.rows,
              "kv_store: k {} / v {} do not fit caches {} / {}", shape_string(k), shape_string(v),
              shape_string(k_cache), shape_string(v_cache));
    MIL_CHECK(k.rows == 0 || slots != nullptr, "kv_store: no slots");
    for (int64_t i = 0; i < k.rows; ++i) {
      MIL_CHECK(slots[i] >= 0 && slots[i] < k_cache.rows,
                "kv_store: slot {} (row {}) is outside the cache of {} slots", slots[i], i,
                k_cache.rows);
    }
    for (int64_t i = 0; i < k.rows; ++i) {
      std::memcpy(k_cache.row<float>(slots[i]), k.row<const float>(i), k.cols * sizeof(float));
      std::memcpy(v_cache.row<float>(slots[i]), v.row<const float>(i), v.cols * sizeof(float));
    }
  }

  void attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                 const AttentionBatch& batch, const AttentionShape& shape,
                 const Tensor& out) override {
    cpu::attention(q, k_cache, v_cache, batch, shape, out, threads_, ws_);
  }

  void silu_mul(const Tensor& gate, const Tensor& up, const Tensor& out) override {
    check_f32(gate, "silu_mul", "gate");
    check_f32(up, "silu_mul", "up");
    check_f32(out, "silu_mul", "out");
    check_same_shape(gate, up, "silu_mul", "gate", "up");
    check_same_shape(gate, out, "silu_mul", "gate", "out");
    for (int64_t i = 0; i < gate.rows; ++i) {
      const float* g = gate.row<const float>(i);
      const float* u = up.row<const float>(i);
      float* o = out.row<float>(i);
      for (int64_t j = 0; j < gate.cols; ++j) o[j] = g[j] / (1.0f + std::exp(-g[j])) * u[j];
    }
  }

  void add(const Tensor& a, const Tensor& b, const Tensor& out) override {
    check_f32(a, "add", "a");
    check_f32(b, "add", "b");
    check_f32(out, "add", "out");
    check_same_shape(a, b, "add", "a", "b");
    check_same_shape(a, out, "add", "a", "out");
    for (int64_t i = 0; i < a.rows; ++i) {
      const float* x = a.row<const float>(i);
      const float* y = b.row<const float>(i);
      float* o = out.row<float>(i);
      for (int64_t j = 0; j < a.cols; ++j) o[j] = x[j] + y[j];
    }
  }

  // add then rmsnorm, so that the CPU path's numerics are those of the two ops.
  void add_rmsnorm(const Tensor& residual, const Tensor& x, const Tensor& weight, float eps,
                   const Tensor& out) override {
    add(residual, x, residual);
    rmsnorm(residual, weight, eps, out);
  }

  void lora_shrink(const Tensor& x, const LoraProjection& proj, const LoraSegment* segments,
                   int32_t num_segments, const Tensor& v) override {
    cpu::lora_shrink(x, proj, segments, num_segments, v, MatmulMode{threads_, path_});
  }

  void lora_expand(const Tensor& v, const LoraProjection& proj, const LoraSegment* segments,
                   int32_t num_segments, const Tensor& y) override {
    cpu::lora_expand(v, proj, segments, num_segments, y, MatmulMode{threads_, path_});
  }

  void argmax(const Tensor& logits, int32_t* out) override {
    check_f32(logits, "argmax", "logits");
    MIL_CHECK(logits.cols > 0, "argmax: logits {} have no columns", shape_string(logits));
    for (int64_t i = 0; i < logits.rows; ++i)
      out[i] = argmax_row(logits.row<const float>(i), logits.cols);
  }

  void sample(const Tensor& logits, const SamplingParams* params, const float* uniforms,
              int32_t* out) override {
    check_f32(logits, "sample", "logits");
    MIL_CHECK(logits.cols > 0, "sample: logits {} have no columns", shape_string(logits));
    MIL_CHECK(logits.rows == 0 || (params != nullptr && uniforms != nullptr && out != nullptr),
              "sample: params, uniforms and out are required");
    for (int64_t i = 0; i < logits.rows; ++i) {
      MIL_CHECK(uniforms[i] >= 0.0f && uniforms[i] < 1.0f,
                "sample: uniform {} of row {} is not in [0, 1)", uniforms[i], i);
      out[i] = sample_row(logits.row<const float>(i), logits.cols, params[i], uniforms[i],
                          probs_scratch_, ids_scratch_);
    }
  }

  void repetition_penalty(const Tensor& logits, const int32_t* ids, const int32_t* offsets,
                          const float* penalties) override {
    check_f32(logits, "repetition_penalty", "logits");
    MIL_CHECK(logits.rows == 0 || (offsets != nullptr && penalties != nullptr),
              "repetition_penalty: offsets and penalties are required");
    for (int64_t i = 0; i < logits.rows; ++i) {
      const int32_t begin = offsets[i], end = offsets[i + 1];
      MIL_CHECK(begin >= 0 && begin <= end && (begin == end || ids != nullptr),
                "repetition_penalty: row {} has the id range [{}, {})", i, begin, end);
      if (penalties[i] == 1.0f) continue;
      MIL_CHECK(penalties[i] > 0.0f && std::isfinite(penalties[i]),
                "repetition_penalty: penalty {} of row {} is not a positive number", penalties[i],
                i);
      for (int32_t j = begin; j < end; ++j) {
        MIL_CHECK(ids[j] >= 0 && ids[j] < logits.cols,
                  "repetition_penalty: id {} of row {} is outside the vocabulary ({})", ids[j], i,
                  logits.cols);
        MIL_CHECK(j == begin || ids[j] >= ids[j - 1],
                  "repetition_penalty: ids of row {} are not in increasing order ({} after {})", i,
                  ids[j], ids[j - 1]);
      }
      repetition_penalty_row(logits.row<float>(i), ids + begin, end - begin, penalties[i]);
    }
  }

  void token_logprobs(const Tensor& logits, const float* temperatures, const int32_t* tokens,
                      float* out) override {
    check_f32(logits, "token_logprobs", "logits");
    MIL_CHECK(logits.cols > 0, "token_logprobs: logits {} have no columns", shape_string(logits));
    MIL_CHECK(logits.rows == 0 || (temperatures != nullptr && tokens != nullptr && out != nullptr),
              "token_logprobs: temperatures, tokens and out are required");
    for (int64_t i = 0; i < logits.rows; ++i) {
      MIL_CHECK(tokens[i] >= 0 && tokens[i] < logits.cols,
                "token_logprobs: token {} of row {} is outside the vocabulary ({})", tokens[i], i,
                logits.cols);
      MIL_CHECK(temperatures[i] > 0.0f, "token_logprobs: temperature {} of row {} is not positive",
                temperatures[i], i);
      out[i] =
          token_logprob_row(logits.row<const float>(i), logits.cols, temperatures[i], tokens[i]);
    }
  }

 private:
  int threads_;
  MatmulPath path_;
  Workspace ws_;
  std::vector<float> rope_scratch_, probs_scratch_;
  std::vector<int32_t> ids_scratch_;
};

}  // namespace
}  // namespace cpu

std::unique_ptr<Ops> make_cpu_ops(int num_threads) {
  return std::make_unique<cpu::CpuOps>(num_threads, cpu::MatmulPath::kF32);
}

std::unique_ptr<Ops> make_cpu_ops_int8(int num_threads) {
  return std::make_unique<cpu::CpuOps>(num_threads, cpu::MatmulPath::kInt8);
}

std::unique_ptr<Ops> make_cpu_ops_exact(int num_threads) {
  return std::make_unique<cpu::CpuOps>(num_threads, cpu::MatmulPath::kExact);
}

}  // namespace mil
