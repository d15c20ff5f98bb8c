// add_bias, embedding, rmsnorm, rope, kv_store, silu_mul, add, argmax, sample,
// repetition_penalty and token_logprobs on CUDA
// against the CPU backend. Tolerances (BF16 outputs round to 8 significant bits, a relative
// error up to 2^-9 per element): rel L2 <= 1e-2 and max-norm <= 1e-2 for BF16 outputs;
// F32 outputs 1e-5; kv_store and argmax exact; sample: the same token as the CPU backend
// for every draw (differences only in the rounding of prefix sums at a CDF boundary);
// repetition_penalty exact; token_logprobs within one f32 ulp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "core/half.h"
#include "cuda/cuda_harness.h"

namespace mil::test::gpu {
namespace {

constexpr double kBf16Tol = 1e-2;

class CudaRowwise : public CudaOpsTest {};

TEST_F(CudaRowwise, AddBias) {
  Random rng(1);
  for (DType ydt : {DType::BF16, DType::F32}) {
    for (int64_t n : {1, 7, 64, 300}) {
      const int64_t cols = 384;
      const auto y0 = round_bf16(rng.uniform(n * cols));
      const auto bias = rng.uniform(cols);
      GpuTensor y(ydt, n, cols, (cols + 8) * (ydt == DType::F32 ? 4 : 2), 16);
      GpuTensor b(DType::F32, 1, cols);
      y.set(y0);
      b.set(bias);
      gpu->add_bias(y, b);
      OwnedTensor hy = host_f32(y0, n, cols), hb = host_f32(bias, 1, cols);
      cpu->add_bias(hy, hb);
      const double tol = ydt == DType::F32 ? 1e-6 : kBf16Tol;
      EXPECT_LE(rel_l2_error(y.get(), to_vector(hy)), tol) << n;
      y.check_untouched("y");
      b.check_untouched("bias", true);
    }
  }
}

TEST_F(CudaRowwise, EmbeddingEveryDtype) {
  Random rng(2);
  for (DType dt : {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q4_1}) {
    SCOPED_TRACE(dtype_name(dt));
    const int64_t rows = 37, cols = 256;
    const auto table = rng.weight_rows(dt, rows, cols);
    GpuTensor t(dt, rows, cols, row_bytes(dt, cols + 64));
    t.set_bytes(table);
    std::vector<int32_t> ids = {36, 0, 5, 5, 17, 1, 2};
    GpuArray<int32_t> dids(ids);
    for (DType odt : {DType::BF16, DType::F32}) {
      GpuTensor out(odt, 7, cols, (cols + 4) * (odt == DType::F32 ? 4 : 2), 8);
      gpu->embedding(t, dids.get(), out);
      OwnedTensor ref(DType::F32, 7, cols);
      cpu->embedding(Tensor::contiguous(dt, rows, cols, const_cast<uint8_t*>(table.data())),
                     ids.data(), ref);
      const double tol = odt == DType::F32 ? 1e-6 : 5e-3;
      EXPECT_LE(max_norm_error(out.get(), to_vector(ref)), tol);
      out.check_untouched("out");
    }
    t.check_untouched("table", true);
  }
}

TEST_F(CudaRowwise, RmsnormInPlaceAndNot) {
  Random rng(3);
  for (int64_t n : {1, 7, 64, 300}) {
    // 100: not a multiple of 8 columns, the scalar kernel; the others the vectorized one.
    for (int64_t cols : {64, 100, 576, 4096}) {
      const auto x = round_bf16(rng.uniform(n * cols, -3.0f, 3.0f));
      const auto w = rng.uniform(cols, 0.5f, 1.5f);
      OwnedTensor hx = host_f32(x, n, cols), hw = host_f32(w, 1, cols), ho(DType::F32, n, cols);
      cpu->rmsnorm(hx, hw, 1e-5f, ho);
      GpuTensor gx(DType::BF16, n, cols, (cols + 16) * 2), gw(DType::F32, 1, cols);
      GpuTensor go(DType::BF16, n, cols);
      gx.set(x);
      gw.set(w);
      gpu->rmsnorm(gx, gw, 1e-5f, go);
      EXPECT_LE(rel_l2_error(go.get(), to_vector(ho)), kBf16Tol);
      EXPECT_LE(max_norm_error(go.get(), to_vector(ho)), kBf16Tol);
      go.check_untouched("out");
      gx.check_untouched("x", true);
      gpu->rmsnorm(gx, gw, 1e-5f, gx);  // in place
      EXPECT_LE(rel_l2_error(gx.get(), to_vector(ho)), kBf16Tol);
      gx.check_untouched("x in place");
    }
  }
}

TEST_F(CudaRowwise, RopeBothLayouts) {
  Random rng(4);
  for (int32_t dim : {64, 128}) {
    for (bool interleaved : {false, true}) {
      for (int64_t n : {1, 7, 64, 300}) {
        const int64_t cols = 4 * dim;
        const auto x = round_bf16(rng.uniform(n * cols, -2.0f, 2.0f));
        std::vector<float> inv(dim / 2);
        for (int j = 0; j < dim / 2; ++j)
          inv[j] = std::pow(500000.0f, -2.0f * static_cast<float>(j) / static_cast<float>(dim));
        std::vector<int32_t> pos(n);
        for (auto& p : pos) p = rng.integer(0, 8000);
        OwnedTensor hx = host_f32(x, n, cols), hinv = host_f32(inv, 1, dim / 2);
        cpu->rope(hx, dim, pos.data(), hinv, interleaved);
        GpuTensor gx(DType::BF16, n, cols, (cols + 2 * dim) * 2), ginv(DType::F32, 1, dim / 2);
        gx.set(x);
        ginv.set(inv);
        GpuArray<int32_t> gpos(pos);
        gpu->rope(gx, dim, gpos.get(), ginv, interleaved);
        EXPECT_LE(rel_l2_error(gx.get(), to_vector(hx)), kBf16Tol) << dim << " " << interleaved;
        EXPECT_LE(max_norm_error(gx.get(), to_vector(hx)), kBf16Tol);
        gx.check_untouched("x");
      }
    }
  }
}

TEST_F(CudaRowwise, KvStoreExact) {
  Random rng(5);
  for (int64_t n : {1, 7, 64, 300}) {
    const int64_t kvw = 256, slots = 1024;
    const auto k = round_bf16(rng.uniform(n * kvw)), v = round_bf16(rng.uniform(n * kvw));
    std::vector<int32_t> perm(slots);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng.gen());
    std::vector<int32_t> sl(perm.begin(), perm.begin() + n);
    // k and v as column slices of one qkv row.
    const size_t qkv_stride = (3 * kvw) * 2;
    GpuTensor gk(DType::BF16, n, kvw, qkv_stride), gv(DType::BF16, n, kvw, qkv_stride, 2 * kvw);
    gk.set(k);
    gv.set(v);
    GpuTensor kc(DType::BF16, slots, kvw), vc(DType::BF16, slots, kvw);
    const auto k0 = round_bf16(rng.uniform(slots * kvw)), v0 = round_bf16(rng.uniform(slots * kvw));
    kc.set(k0);
    vc.set(v0);
    GpuArray<int32_t> gs(sl);
    gpu->kv_store(gk, gv, gs.get(), kc, vc);
    OwnedTensor hk = host_f32(k, n, kvw), hv = host_f32(v, n, kvw);
    OwnedTensor hkc = host_f32(k0, slots, kvw), hvc = host_f32(v0, slots, kvw);
    cpu->kv_store(hk, hv, sl.data(), hkc, hvc);
    EXPECT_EQ(kc.get(), to_vector(hkc));
    EXPECT_EQ(vc.get(), to_vector(hvc));
    kc.check_untouched("k_cache");
    vc.check_untouched("v_cache");
    gk.check_untouched("k", true);
  }
}

// The fused attention prologue against the three separate kernels on the GPU (q, k and the
// caches within the BF16 tolerance, v in the cache exact), including a skipped slot (-1).
TEST_F(CudaRowwise, RopeKvStoreMatchesSeparateOps) {
  Random rng(7);
  for (bool interleaved : {false, true}) {
    for (int32_t dim : {64, 128}) {
      for (int64_t n : {1, 7, 64, 300}) {
        const int32_t qh = 4, kvh = 2;
        const int64_t qw = qh * dim, kvw = kvh * dim, slots = 1024, width = qw + 2 * kvw;
        const auto qkv = round_bf16(rng.uniform(n * width, -2.0f, 2.0f));
        std::vector<float> inv(dim / 2);
        for (int j = 0; j < dim / 2; ++j)
          inv[j] = std::pow(500000.0f, -2.0f * static_cast<float>(j) / static_cast<float>(dim));
        std::vector<int32_t> pos(n), perm(slots);
        for (auto& p : pos) p = rng.integer(0, 8000);
        std::iota(perm.begin(), perm.end(), 0);
        std::shuffle(perm.begin(), perm.end(), rng.gen());
        std::vector<int32_t> sl(perm.begin(), perm.begin() + n);
        if (n > 1) sl[1] = -1;
        const auto k0 = round_bf16(rng.uniform(slots * kvw)),
                   v0 = round_bf16(rng.uniform(slots * kvw));
        GpuArray<int32_t> gpos(pos), gs(sl);
        GpuTensor ginv(DType::F32, 1, dim / 2);
        ginv.set(inv);
        std::vector<std::vector<float>> got[2];
        for (int fused = 0; fused < 2; ++fused) {
          const size_t stride = width * 2;
          GpuTensor q(DType::BF16, n, qw, stride), k(DType::BF16, n, kvw, stride, qw * 2),
              v(DType::BF16, n, kvw, stride, (qw + kvw) * 2);
          std::vector<float> qv(n * qw), kv(n * kvw), vv(n * kvw);
          for (int64_t i = 0; i < n; ++i) {
            std::copy_n(qkv.begin() + i * width, qw, qv.begin() + i * qw);
            std::copy_n(qkv.begin() + i * width + qw, kvw, kv.begin() + i * kvw);
            std::copy_n(qkv.begin() + i * width + qw + kvw, kvw, vv.begin() + i * kvw);
          }
          q.set(qv);
          k.set(kv);
          v.set(vv);
          GpuTensor kc(DType::BF16, slots, kvw), vc(DType::BF16, slots, kvw);
          kc.set(k0);
          vc.set(v0);
          if (fused) {
            gpu->rope_kv_store(q, k, v, dim, gpos.get(), ginv, interleaved, gs.get(), kc, vc);
          } else {
            gpu->rope(q, dim, gpos.get(), ginv, interleaved);
            gpu->rope(k, dim, gpos.get(), ginv, interleaved);
            gpu->kv_store(k, v, gs.get(), kc, vc);
          }
          got[fused] = {q.get(), k.get(), kc.get(), vc.get()};
          kc.check_untouched("k_cache");
          vc.check_untouched("v_cache");
        }
        for (int t = 0; t < 3; ++t) {
          EXPECT_LE(max_norm_error(got[1][t], got[0][t]), kBf16Tol)
              << t << " " << n << " " << interleaved;
        }
        EXPECT_EQ(got[1][3], got[0][3]) << n;
      }
    }
  }
}

TEST_F(CudaRowwise, SiluMulAndAdd) {
  Random rng(6);
  for (int64_t n : {1, 7, 64, 300}) {
    // 1536: the vectorized kernels (16-byte aligned rows); 1500: the scalar ones.
    for (int64_t cols : {1536, 1500}) {
      const auto g = round_bf16(rng.uniform(n * cols, -6.0f, 6.0f));
      const auto u = round_bf16(rng.uniform(n * cols, -2.0f, 2.0f));
      OwnedTensor hg = host_f32(g, n, cols), hu = host_f32(u, n, cols), ho(DType::F32, n, cols);
      cpu->silu_mul(hg, hu, ho);
      // gate and up as halves of one gate_up row; out aliases gate.
      GpuTensor gg(DType::BF16, n, cols, 2 * cols * 2),
          gu(DType::BF16, n, cols, 2 * cols * 2, cols * 2);
      gg.set(g);
      gu.set(u);
      gpu->silu_mul(gg, gu, gg);
      EXPECT_LE(rel_l2_error(gg.get(), to_vector(ho)), kBf16Tol);
      EXPECT_LE(max_norm_error(gg.get(), to_vector(ho)), kBf16Tol);
      gg.check_untouched("out");
      gu.check_untouched("up", true);

      for (DType dt : {DType::BF16, DType::F32}) {
        for (size_t offset : {4, 16}) {  // a misaligned and an aligned a/out
          OwnedTensor ha = host_f32(g, n, cols), hs(DType::F32, n, cols);
          cpu->add(ha, hu, hs);
          GpuTensor ga(dt, n, cols, 0, offset),
              gb(dt, n, cols, (cols + 8) * (dt == DType::F32 ? 4 : 2));
          ga.set(g);
          gb.set(u);
          gpu->add(ga, gb, ga);
          EXPECT_LE(max_norm_error(ga.get(), to_vector(hs)), dt == DType::F32 ? 1e-6 : 5e-3);
          ga.check_untouched("a/out");
          gb.check_untouched("b", true);
        }
      }
    }
  }
}

TEST_F(CudaRowwise, ArgmaxLowestIndexAmongTies) {
  Random rng(7);
  for (DType dt : {DType::F32, DType::BF16}) {
    for (int64_t vocab : {1, 100, 32000, 128256}) {
      const int64_t n = 9;
      auto l = round_bf16(rng.uniform(n * vocab, -10.0f, 10.0f));
      if (vocab > 100) {
        l[3 * vocab + 77] = 20.0f;  // a tie in row 3: index 77 wins
        l[3 * vocab + 5000] = 20.0f;
      }
      GpuTensor gl(dt, n, vocab, (vocab + 3) * (dt == DType::F32 ? 4 : 2), 4);
      gl.set(l);
      GpuArray<int32_t> out(std::vector<int32_t>(n, -1));
      gpu->argmax(gl, out.mut());
      std::vector<int32_t> want(n);
      OwnedTensor hl = host_f32(l, n, vocab);
      cpu->argmax(hl, want.data());
      EXPECT_EQ(out.download(), want) << vocab;
      if (vocab > 100) {
        EXPECT_EQ(want[3], 77);
      }
    }
  }
}

TEST_F(CudaRowwise, SampleMatchesCpu) {
  Random rng(8);
  const std::vector<SamplingParams> kinds = {{0.0f, 0, 1.0f}, {1.0f, 0, 1.0f},   {0.7f, 50, 1.0f},
                                             {0.8f, 0, 0.9f}, {1.2f, 40, 0.95f}, {0.5f, 1, 1.0f},
                                             {1.0f, 0, 0.0f}, {2.0f, 1000, 0.5f}};
  for (DType dt : {DType::F32, DType::BF16}) {
    for (int64_t vocab : {2, 500, 49152}) {
      const int64_t n = 64;
      const auto l = round_bf16(rng.uniform(n * vocab, -8.0f, 8.0f));
      std::vector<SamplingParams> params(n);
      std::vector<float> u = rng.uniform(n, 0.0f, 0.999f);
      for (int64_t i = 0; i < n; ++i) params[i] = kinds[i % kinds.size()];
      GpuTensor gl(dt, n, vocab);
      gl.set(l);
      GpuArray<SamplingParams> gp(params);
      GpuArray<float> gu(u);
      GpuArray<int32_t> out(std::vector<int32_t>(n, -1));
      gpu->sample(gl, gp.get(), gu.get(), out.mut());
      std::vector<int32_t> want(n);
      OwnedTensor hl = host_f32(l, n, vocab);
      cpu->sample(hl, params.data(), u.data(), want.data());
      EXPECT_EQ(out.download(), want) << "vocab " << vocab << " " << dtype_name(dt);
    }
  }
}

// The repetition penalty is a multiply or a divide per listed id: bit-exact against the CPU
// backend. Sorted lists with repeats, empty lists, penalty-1 rows (left alone even with a
// list), penalties above and below 1 on negative and positive logits, a strided view whose
// gaps and guards must keep their sentinels.
TEST_F(CudaRowwise, RepetitionPenaltyMatchesCpu) {
  Random rng(9);
  for (int64_t vocab : {int64_t{5}, int64_t{500}, int64_t{128256}}) {
    const auto last = static_cast<int32_t>(vocab - 1);
    std::vector<std::vector<int32_t>> lists = {{},        {0},    {0, 0, 0, 2},
                                               {1, 2, 3}, {last}, {0, last, last}};
    if (vocab > 100) {
      std::vector<int32_t> many;  // a long prompt's worth, with repeats
      for (int i = 0; i < 5000; ++i) many.push_back(rng.integer(0, last));
      std::sort(many.begin(), many.end());
      lists.push_back(many);
      lists.push_back(many);
    }
    const std::vector<float> kinds = {1.3f, 2.0f, 1.0f, 0.7f, 1.1f};
    const auto n = static_cast<int64_t>(lists.size());
    auto l = rng.uniform(n * vocab, -8.0f, 8.0f);
    std::vector<int32_t> ids, offsets{0};
    std::vector<float> penalties;
    for (int64_t r = 0; r < n; ++r) {
      ids.insert(ids.end(), lists[r].begin(), lists[r].end());
      offsets.push_back(static_cast<int32_t>(ids.size()));
      penalties.push_back(kinds[r % kinds.size()]);
      l[r * vocab] = r % 2 == 0 ? -3.0f : 3.0f;  // id 0 negative in even rows, positive in odd
    }
    GpuTensor gl(DType::F32, n, vocab, (vocab + 3) * 4, 8);
    gl.set(l);
    GpuArray<int32_t> gids(ids);
    GpuArray<int32_t> goffsets(offsets);
    GpuArray<float> gpen(penalties);
    gpu->repetition_penalty(gl, gids.get(), goffsets.get(), gpen.get());
    OwnedTensor hl = host_f32(l, n, vocab);
    cpu->repetition_penalty(hl, ids.data(), offsets.data(), penalties.data());
    const std::vector<float> want = to_vector(hl);
    EXPECT_EQ(gl.get(), want) << "vocab " << vocab;
    EXPECT_NE(want, l) << "vocab " << vocab;  // something was penalised
    gl.check_untouched("logits");
    EXPECT_EQ(gids.download(), ids);  // inputs are read only
  }
}

// token_logprobs: the CPU sums exp in double in index order, the GPU in a block reduction;
// the double results differ in the last bits only, so the f32 logprob is the CPU's or the
// f32 next to it.
TEST_F(CudaRowwise, TokenLogprobsMatchCpu) {
  Random rng(10);
  const float kInf = std::numeric_limits<float>::infinity();
  for (int64_t vocab : {int64_t{1}, int64_t{500}, int64_t{128256}}) {
    const std::vector<float> kinds = {1.0f, 0.7f, 1.3f, 0.1f, 2.0f};
    const int64_t n = 10;
    auto l = rng.uniform(n * vocab, -12.0f, 12.0f);
    std::vector<float> temps(n);
    std::vector<int32_t> tokens(n);
    for (int64_t r = 0; r < n; ++r) {
      temps[r] = kinds[r % kinds.size()];
      tokens[r] = rng.integer(0, static_cast<int32_t>(vocab - 1));
    }
    if (vocab > 1) {
      for (int64_t i = 0; i < vocab; i += 3) l[(n - 1) * vocab + i] = -kInf;  // filtered entries
      tokens[n - 1] = 0;  // a -inf entry: its logprob is -inf
      tokens[n - 2] = 1;
    }
    GpuTensor gl(DType::F32, n, vocab, (vocab + 1) * 4, 4);
    gl.set(l);
    GpuArray<float> gt(temps);
    GpuArray<int32_t> gtok(tokens);
    GpuArray<float> out(std::vector<float>(n, std::nanf("")));
    gpu->token_logprobs(gl, gt.get(), gtok.get(), out.mut());
    std::vector<float> want(n);
    OwnedTensor hl = host_f32(l, n, vocab);
    cpu->token_logprobs(hl, temps.data(), tokens.data(), want.data());
    const std::vector<float> got = out.download();
    for (int64_t r = 0; r < n; ++r) {
      const bool same_or_next = got[r] == want[r] || got[r] == std::nextafter(want[r], kInf) ||
                                got[r] == std::nextafter(want[r], -kInf);
      EXPECT_TRUE(same_or_next) << "vocab " << vocab << " row " << r << ": " << got[r] << " vs "
                                << want[r];
    }
    if (vocab > 1) {
      EXPECT_EQ(got[n - 1], -kInf);
    }
    gl.check_untouched("logits", true);
  }
}

}  // namespace
}  // namespace mil::test::gpu
