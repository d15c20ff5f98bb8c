// LlamaWeights::to_device: the weights in a backend's memory, with fused projections.
#include <cstring>
#include <vector>

#include "backends/cpu/dequant.h"
#include "core/error.h"
#include "core/half.h"
#include "model/weights.h"

namespace mil {
namespace {

// The dtype a matrix has on the device: plain floats become BF16, blocks stay.
DType device_dtype(DType t) { return is_quantized(t) ? t : DType::BF16; }

// Appends the rows of host tensor `t` to `out` as packed rows of device_dtype(t.dtype).
void append_rows(const Tensor& t, std::vector<std::byte>& out) {
  const DType to = device_dtype(t.dtype);
  const size_t row = row_bytes(to, t.cols);
  const size_t at = out.size();
  out.resize(at + row * static_cast<size_t>(t.rows));
  std::byte* dst = out.data() + at;
  if (to == t.dtype) {
    for (int64_t r = 0; r < t.rows; ++r) std::memcpy(dst + r * row, t.row<const std::byte>(r), row);
    return;
  }
  std::vector<float> f(static_cast<size_t>(t.cols));
  for (int64_t r = 0; r < t.rows; ++r) {
    cpu::dequant_row(t.dtype, t.row<const std::byte>(r), t.cols, f.data());
    auto* o = reinterpret_cast<uint16_t*>(dst + r * row);
    for (int64_t c = 0; c < t.cols; ++c) o[c] = f32_to_bf16(f[c]);
  }
}

// Appends an f32 vector [1, n] (host) to `out`.
void append_vector(const Tensor& t, std::vector<std::byte>& out) {
  const size_t at = out.size();
  out.resize(at + static_cast<size_t>(t.cols) * sizeof(float));
  std::memcpy(out.data() + at, t.ptr<const float>(), static_cast<size_t>(t.cols) * sizeof(float));
}

}  // namespace

void LlamaWeights::to_device(Ops& ops) {
  if (embedding.device != ops.device()) copy_to(ops);
}

void LlamaWeights::copy_to(Ops& ops) {
  // Uploads `parts` stacked by rows as one device tensor; the host staging stays alive until
  // the copy is done.
  auto upload = [&](std::initializer_list<const Tensor*> parts, bool vector) -> Tensor {
    std::vector<std::byte> host;
    int64_t rows = 0, cols = (*parts.begin())->cols;
    const DType dtype = vector ? DType::F32 : device_dtype((*parts.begin())->dtype);
    for (const Tensor* t : parts) {
      MIL_CHECK(t->device == Device::CPU && (vector || t->cols == cols),
                "to_device: parts of different widths");
      if (vector) {
        append_vector(*t, host);
        rows = 1;
      } else {
        append_rows(*t, host);
        rows += t->rows;
      }
    }
    if (vector) cols = static_cast<int64_t>(host.size() / sizeof(float));
    OwnedTensor& d = device_.emplace_back(ops.allocate(dtype, rows, cols));
    ops.upload(host.data(), d.view());
    ops.synchronize();
    return d.view();
  };
  auto same_device_dtype = [](std::initializer_list<const Tensor*> parts) {
    const DType first = device_dtype((*parts.begin())->dtype);
    for (const Tensor* t : parts) {
      if (device_dtype(t->dtype) != first) return false;
    }
    return true;
  };

  const bool tied = config().tie_word_embeddings;
  const Tensor host_lm_head = lm_head;
  embedding = upload({&embedding}, false);
  lm_head = tied ? embedding.slice_rows(shard_.rank * dims_.vocab, dims_.vocab)
                 : upload({&host_lm_head}, false);
  final_norm = upload({&final_norm}, true);

  for (LayerWeights& l : layers) {
    l.attn_norm = upload({&l.attn_norm}, true);
    l.ffn_norm = upload({&l.ffn_norm}, true);
    if (same_device_dtype({&l.q, &l.k, &l.v})) {
      const int64_t nq = l.q.rows, nk = l.k.rows, nv = l.v.rows;
      l.qkv = upload({&l.q, &l.k, &l.v}, false);
      l.q = l.qkv.slice_rows(0, nq);
      l.k = l.qkv.slice_rows(nq, nk);
      l.v = l.qkv.slice_rows(nq + nk, nv);
    } else {
      l.q = upload({&l.q}, false);
      l.k = upload({&l.k}, false);
      l.v = upload({&l.v}, false);
    }
    if (!l.q_bias.empty()) {
      // Fused qkv gets one fused bias; q/k/v biases become its column views.
      const int64_t nq = l.q_bias.cols, nk = l.k_bias.cols, nv = l.v_bias.cols;
      l.qkv_bias = upload({&l.q_bias, &l.k_bias, &l.v_bias}, true);
      l.q_bias = l.qkv_bias.slice_cols(0, nq);
      l.k_bias = l.qkv_bias.slice_cols(nq, nk);
      l.v_bias = l.qkv_bias.slice_cols(nq + nk, nv);
    }
    if (same_device_dtype({&l.gate, &l.up})) {
      const int64_t ng = l.gate.rows, nu = l.up.rows;
      l.gate_up = upload({&l.gate, &l.up}, false);
      l.gate = l.gate_up.slice_rows(0, ng);
      l.up = l.gate_up.slice_rows(ng, nu);
    } else {
      l.gate = upload({&l.gate}, false);
      l.up = upload({&l.up}, false);
    }
    if (!l.gate_bias.empty()) {
      const int64_t ng = l.gate_bias.cols, nu = l.up_bias.cols;
      l.gate_up_bias = upload({&l.gate_bias, &l.up_bias}, true);
      l.gate_bias = l.gate_up_bias.slice_cols(0, ng);
      l.up_bias = l.gate_up_bias.slice_cols(ng, nu);
    }
    l.o = upload({&l.o}, false);
    l.down = upload({&l.down}, false);
    if (!l.o_bias.empty()) l.o_bias = upload({&l.o_bias}, true);
    if (!l.down_bias.empty()) l.down_bias = upload({&l.down_bias}, true);
  }
}

}  // namespace mil
