// The ops the model added on CUDA against the CPU backend: add_rmsnorm (BF16; rel L2 and
// max-norm <= 1e-2), allocate/upload/download (exact round trips through strided views),
// and attention for head dims the tuned kernel does not take (the generic kernel; rel L2
// <= 1e-2, max-norm <= 2e-2 as the tuned kernel's cases).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "cuda/cuda_harness.h"

namespace mil::test::gpu {
namespace {

class CudaModelOps : public CudaOpsTest {};

TEST_F(CudaModelOps, AddRmsnorm) {
  Random rng(71);
  for (int64_t n : {1, 7, 300}) {
    for (int64_t cols : {64, 100, 576, 4096, 8192}) {  // 100: the scalar kernel
      const auto r = round_bf16(rng.uniform(n * cols, -3.0f, 3.0f));
      const auto x = round_bf16(rng.uniform(n * cols, -1.0f, 1.0f));
      const auto w = rng.uniform(cols, 0.5f, 1.5f);
      GpuTensor gr(DType::BF16, n, cols, (cols + 8) * 2, 16), gx(DType::BF16, n, cols);
      GpuTensor gw(DType::F32, 1, cols), go(DType::BF16, n, cols, (cols + 16) * 2);
      gr.set(r);
      gx.set(x);
      gw.set(w);
      gpu->add_rmsnorm(gr, gx, gw, 1e-5f, go);
      OwnedTensor hr = host_f32(r, n, cols), hx = host_f32(x, n, cols), hw = host_f32(w, 1, cols);
      OwnedTensor ho(DType::F32, n, cols);
      cpu->add_rmsnorm(hr, hx, hw, 1e-5f, ho);
      EXPECT_LE(rel_l2_error(gr.get(), to_vector(hr)), 1e-2) << n << "x" << cols;
      EXPECT_LE(rel_l2_error(go.get(), to_vector(ho)), 1e-2) << n << "x" << cols;
      EXPECT_LE(max_norm_error(go.get(), to_vector(ho)), 1e-2) << n << "x" << cols;
      gr.check_untouched("residual");
      go.check_untouched("out");
      gx.check_untouched("x", true);
    }
  }
}

TEST_F(CudaModelOps, AllocateUploadDownload) {
  OwnedTensor d = gpu->allocate(DType::F32, 5, 40);
  EXPECT_EQ(d.view().device, Device::CUDA);
  std::vector<float> host(5 * 40);
  for (size_t i = 0; i < host.size(); ++i) host[i] = static_cast<float>(i) * 0.5f;
  gpu->upload(host.data(), d.view());
  // A strided column view: 3 rows x 8 columns starting at column 4 of row 1.
  const Tensor view = d.view().slice_rows(1, 3).slice_cols(4, 8);
  std::vector<float> part(3 * 8, -1.0f);
  gpu->download(view, part.data());
  gpu->synchronize();
  for (int r = 0; r < 3; ++r) {
    for (int c = 0; c < 8; ++c) EXPECT_EQ(part[r * 8 + c], host[(1 + r) * 40 + 4 + c]);
  }
  std::vector<float> twos(3 * 8, 2.0f), back(host.size());
  gpu->upload(twos.data(), view);
  OwnedTensor pinned = gpu->allocate_host(DType::F32, 5, 40);
  gpu->download(d.view(), pinned.ptr<float>());
  gpu->synchronize();
  for (int r = 0; r < 5; ++r) {
    for (int c = 0; c < 40; ++c) {
      const bool in = r >= 1 && r < 4 && c >= 4 && c < 12;
      EXPECT_EQ(pinned.ptr<float>()[r * 40 + c], in ? 2.0f : host[r * 40 + c]);
    }
  }
  size_t free_b = 0, total_b = 0;
  EXPECT_TRUE(gpu->memory_info(&free_b, &total_b));
  EXPECT_GT(free_b, 0u);
  EXPECT_GE(total_b, free_b);
}

// Head dims 16 and 32 (the tiny test models) and a GQA ratio of 16 take the generic kernel.
TEST_F(CudaModelOps, GenericAttention) {
  Random rng(73);
  struct Shape {
    int32_t dim, kv_heads, group;
  };
  for (const Shape sh : {Shape{16, 2, 2}, Shape{32, 2, 2}, Shape{16, 4, 1}, Shape{64, 1, 16}}) {
    const int32_t heads = sh.kv_heads * sh.group, dim = sh.dim, bs = 4;
    const std::vector<int32_t> q_len = {5, 1, 17}, ctx = {5, 30, 40};
    std::vector<int32_t> qs{0};
    for (int32_t l : q_len) qs.push_back(qs.back() + l);
    const int32_t max_blocks = 10, num_blocks = 40;
    std::vector<int32_t> table(3 * max_blocks);
    for (size_t i = 0; i < table.size(); ++i) table[i] = static_cast<int32_t>((i * 7 + 3) % num_blocks);
    const int64_t n = qs.back(), qw = int64_t{heads} * dim, kvw = int64_t{sh.kv_heads} * dim,
                  slots = int64_t{num_blocks} * bs;
    const auto q = round_bf16(rng.uniform(n * qw, -2.0f, 2.0f));
    const auto kc = round_bf16(rng.uniform(slots * kvw, -2.0f, 2.0f));
    const auto vc = round_bf16(rng.uniform(slots * kvw));
    const AttentionShape shape{heads, sh.kv_heads, dim, 1.0f / std::sqrt(static_cast<float>(dim))};
    GpuTensor gq(DType::BF16, n, qw, (qw + 2 * kvw) * 2), gk(DType::BF16, slots, kvw);
    GpuTensor gv(DType::BF16, slots, kvw), go(DType::BF16, n, qw, (qw + 8) * 2, 16);
    gq.set(q);
    gk.set(kc);
    gv.set(vc);
    GpuArray<int32_t> dqs(qs), dcl(ctx), dbt(table);
    gpu->attention(gq, gk, gv, {3, dqs.get(), dcl.get(), dbt.get(), max_blocks, bs}, shape, go);
    OwnedTensor hq = host_f32(q, n, qw), hk = host_f32(kc, slots, kvw), hv = host_f32(vc, slots, kvw);
    OwnedTensor ho(DType::F32, n, qw);
    cpu->attention(hq, hk, hv, {3, qs.data(), ctx.data(), table.data(), max_blocks, bs}, shape, ho);
    const auto got = go.get(), want = to_vector(ho);
    EXPECT_LE(rel_l2_error(got, want), 1e-2) << "dim " << dim << " group " << sh.group;
    EXPECT_LE(max_norm_error(got, want), 2e-2) << "dim " << dim << " group " << sh.group;
    go.check_untouched("out");
  }
}

}  // namespace
}  // namespace mil::test::gpu
