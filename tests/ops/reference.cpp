#include "reference.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <set>

#include "core/half.h"

namespace mil::ref {
namespace {

uint16_t read16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

}  // namespace

std::vector<float> dequantize(DType dtype, const std::vector<uint8_t>& rows, int64_t num_rows,
                              int64_t cols) {
  std::vector<float> out(static_cast<size_t>(num_rows * cols));
  const size_t n = out.size();
  const uint8_t* p = rows.data();
  switch (dtype) {
    case DType::F32:
      std::memcpy(out.data(), p, n * 4);
      break;
    case DType::F16:
      for (size_t i = 0; i < n; ++i) out[i] = f16_to_f32(read16(p + 2 * i));
      break;
    case DType::BF16:
      for (size_t i = 0; i < n; ++i) out[i] = bf16_to_f32(read16(p + 2 * i));
      break;
    case DType::Q8_0:  // [f16 d][32 x int8]: value = q * d
      for (size_t b = 0; b < n / 32; ++b) {
        const uint8_t* blk = p + b * 34;
        const float d = f16_to_f32(read16(blk));
        for (int j = 0; j < 32; ++j) out[b * 32 + j] = static_cast<int8_t>(blk[2 + j]) * d;
      }
      break;
    case DType::Q4_0:  // [f16 d][16 bytes]: element j < 16 is the low nibble of byte j
      for (size_t b = 0; b < n / 32; ++b) {
        const uint8_t* blk = p + b * 18;
        const float d = f16_to_f32(read16(blk));
        for (int j = 0; j < 32; ++j) {
          const int nibble = j < 16 ? (blk[2 + j] & 15) : (blk[2 + j - 16] >> 4);
          out[b * 32 + j] = static_cast<float>(nibble - 8) * d;
        }
      }
      break;
    case DType::Q4_1:  // [f16 d][f16 m][16 bytes]: value = nibble * d + m
      for (size_t b = 0; b < n / 32; ++b) {
        const uint8_t* blk = p + b * 20;
        const float d = f16_to_f32(read16(blk));
        const float m = f16_to_f32(read16(blk + 2));
        for (int j = 0; j < 32; ++j) {
          const int nibble = j < 16 ? (blk[4 + j] & 15) : (blk[4 + j - 16] >> 4);
          out[b * 32 + j] = static_cast<float>(nibble) * d + m;
        }
      }
      break;
    case DType::I32:
      break;
  }
  return out;
}

std::vector<float> matmul(const std::vector<float>& x, const std::vector<float>& w, int64_t n,
                          int64_t k, int64_t m) {
  std::vector<float> y(static_cast<size_t>(n * m));
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t r = 0; r < m; ++r) {
      double s = 0.0;
      for (int64_t j = 0; j < k; ++j) s += static_cast<double>(x[i * k + j]) * w[r * k + j];
      y[i * m + r] = static_cast<float>(s);
    }
  }
  return y;
}

std::vector<float> quantize_activations(const std::vector<float>& x) {
  std::vector<float> out(x.size());
  for (size_t b = 0; b < x.size() / 32; ++b) {
    float amax = 0.0f;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[b * 32 + j]));
    const float d = amax / 127.0f;
    const float id = d == 0.0f ? 0.0f : 1.0f / d;
    for (int j = 0; j < 32; ++j) out[b * 32 + j] = std::nearbyint(x[b * 32 + j] * id) * d;
  }
  return out;
}

void add_bias(std::vector<float>& y, const std::vector<float>& bias, int64_t cols) {
  for (size_t i = 0; i < y.size(); ++i) y[i] += bias[i % cols];
}

std::vector<float> rmsnorm(const std::vector<float>& x, const std::vector<float>& weight,
                           int64_t cols, float eps) {
  std::vector<float> out(x.size());
  for (size_t r = 0; r < x.size() / cols; ++r) {
    double ss = 0.0;
    for (int64_t j = 0; j < cols; ++j) ss += static_cast<double>(x[r * cols + j]) * x[r * cols + j];
    const double inv = 1.0 / std::sqrt(ss / cols + eps);
    for (int64_t j = 0; j < cols; ++j)
      out[r * cols + j] = static_cast<float>(x[r * cols + j] * inv * weight[j]);
  }
  return out;
}

void rope(std::vector<float>& x, int64_t rows, int64_t cols, int32_t head_dim,
          const std::vector<int32_t>& positions, const std::vector<float>& inv_freq,
          bool interleaved) {
  const int32_t half = head_dim / 2;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t h = 0; h < cols / head_dim; ++h) {
      float* v = x.data() + r * cols + h * head_dim;
      for (int32_t j = 0; j < half; ++j) {
        // The angle is rounded to f32 as HF does; cos/sin are then taken in double.
        const float angle = static_cast<float>(positions[r]) * inv_freq[j];
        const double c = std::cos(static_cast<double>(angle));
        const double s = std::sin(static_cast<double>(angle));
        float& a = interleaved ? v[2 * j] : v[j];
        float& b = interleaved ? v[2 * j + 1] : v[j + half];
        const double a0 = a, b0 = b;
        a = static_cast<float>(a0 * c - b0 * s);
        b = static_cast<float>(b0 * c + a0 * s);
      }
    }
  }
}

std::vector<float> silu_mul(const std::vector<float>& gate, const std::vector<float>& up) {
  std::vector<float> out(gate.size());
  for (size_t i = 0; i < gate.size(); ++i) {
    const double g = gate[i];
    out[i] = static_cast<float>(g / (1.0 + std::exp(-g)) * up[i]);
  }
  return out;
}

std::vector<float> attention(const std::vector<float>& q, const std::vector<float>& k_cache,
                             const std::vector<float>& v_cache, const AttentionInput& batch,
                             const AttentionShape& shape) {
  const int64_t dim = shape.head_dim, qw = int64_t{shape.num_heads} * dim,
                kvw = int64_t{shape.num_kv_heads} * dim;
  std::vector<float> out(q.size());
  const int32_t num_seqs = static_cast<int32_t>(batch.context_len.size());
  for (int32_t s = 0; s < num_seqs; ++s) {
    const int32_t q0 = batch.query_start[s], q1 = batch.query_start[s + 1];
    const int32_t ctx = batch.context_len[s];
    auto slot = [&](int64_t t) {
      return int64_t{batch.block_table[s * batch.max_blocks_per_seq + t / batch.block_size]} *
                 batch.block_size +
             t % batch.block_size;
    };
    for (int32_t row = q0; row < q1; ++row) {
      const int64_t pos = ctx - (q1 - q0) + (row - q0);  // causal: keys 0..pos
      for (int32_t h = 0; h < shape.num_heads; ++h) {
        const int32_t kvh = h / (shape.num_heads / shape.num_kv_heads);
        std::vector<double> score(pos + 1);
        double mx = -INFINITY;
        for (int64_t t = 0; t <= pos; ++t) {
          double d = 0.0;
          for (int64_t e = 0; e < dim; ++e)
            d += static_cast<double>(q[row * qw + h * dim + e]) *
                 k_cache[slot(t) * kvw + kvh * dim + e];
          score[t] = d * shape.scale;
          mx = std::max(mx, score[t]);
        }
        double sum = 0.0;
        for (double& sc : score) sum += (sc = std::exp(sc - mx));
        for (int64_t e = 0; e < dim; ++e) {
          double acc = 0.0;
          for (int64_t t = 0; t <= pos; ++t)
            acc += score[t] * v_cache[slot(t) * kvw + kvh * dim + e];
          out[row * qw + h * dim + e] = static_cast<float>(acc / sum);
        }
      }
    }
  }
  return out;
}

void lora_shrink(const std::vector<float>& x, int64_t in, const LoraInput& lora,
                 std::vector<float>& v, int64_t v_cols) {
  for (const LoraSegment& seg : lora.segments) {
    if (seg.slot < 0 || lora.rank[seg.slot] == 0) continue;
    const std::vector<float>& a = lora.a[seg.slot];
    for (int64_t i = seg.row_begin; i < seg.row_end; ++i) {
      for (int64_t j = 0; j < lora.rank[seg.slot]; ++j) {
        double s = 0.0;
        for (int64_t c = 0; c < in; ++c) s += static_cast<double>(x[i * in + c]) * a[j * in + c];
        v[i * v_cols + j] = static_cast<float>(s);
      }
    }
  }
}

void lora_expand(const std::vector<float>& v, int64_t v_cols, const LoraInput& lora,
                 std::vector<float>& y, int64_t out) {
  for (const LoraSegment& seg : lora.segments) {
    if (seg.slot < 0 || lora.rank[seg.slot] == 0) continue;
    const int64_t rank = lora.rank[seg.slot];
    const std::vector<float>& b = lora.b[seg.slot];
    for (int64_t i = seg.row_begin; i < seg.row_end; ++i) {
      for (int64_t o = 0; o < out; ++o) {
        double s = 0.0;
        for (int64_t j = 0; j < rank; ++j)
          s += static_cast<double>(v[i * v_cols + j]) * b[o * rank + j];
        y[i * out + o] = static_cast<float>(y[i * out + o] + lora.scale[seg.slot] * s);
      }
    }
  }
}

int32_t argmax(const std::vector<float>& row) {
  int32_t best = 0;
  for (size_t i = 0; i < row.size(); ++i) {
    if (row[i] > row[best]) best = static_cast<int32_t>(i);
  }
  return best;
}

int32_t sample(const std::vector<float>& row, const SamplingParams& params, float uniform) {
  if (params.temperature <= 0.0f) return argmax(row);
  const size_t n = row.size();
  std::vector<double> p(n);
  double mx = -INFINITY;
  for (size_t i = 0; i < n; ++i)
    mx = std::max(mx, static_cast<double>(row[i]) / params.temperature);
  for (size_t i = 0; i < n; ++i)
    p[i] = std::exp(static_cast<double>(row[i]) / params.temperature - mx);
  std::vector<int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return p[a] > p[b]; });
  size_t kept = n;
  if (params.top_k > 0) kept = std::min<size_t>(kept, params.top_k);
  double total = 0.0;
  for (size_t i = 0; i < kept; ++i) total += p[order[i]];
  if (params.top_p < 1.0f) {
    double cum = 0.0;
    size_t i = 0;
    while (i < kept && cum < params.top_p * total) cum += p[order[i++]];
    kept = std::max<size_t>(i, 1);
    total = 0.0;
    for (size_t j = 0; j < kept; ++j) total += p[order[j]];
  }
  double cum = 0.0;
  for (size_t i = 0; i < kept; ++i) {
    cum += p[order[i]] / total;
    if (uniform < cum) return order[i];
  }
  return order[kept - 1];
}

void repetition_penalty(std::vector<float>& row, const std::vector<int32_t>& ids, float penalty) {
  const std::set<int32_t> distinct(ids.begin(), ids.end());
  for (int32_t id : distinct) {
    float& x = row[static_cast<size_t>(id)];
    x = x < 0 ? x * penalty : x / penalty;
  }
}

double token_logprob(const std::vector<float>& row, float temperature, int32_t token) {
  // The op's contract divides in f32 (as the host path does); everything after is exact here.
  auto scaled = [&](float x) { return static_cast<long double>(x / temperature); };
  long double mx = -INFINITY;
  for (float x : row) mx = std::max(mx, scaled(x));
  long double sum = 0;
  for (float x : row) sum += std::exp(scaled(x) - mx);
  return static_cast<double>(scaled(row[static_cast<size_t>(token)]) - mx - std::log(sum));
}

}  // namespace mil::ref
