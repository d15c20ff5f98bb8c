// Paged attention on CUDA against the CPU backend: head dims 64 and 128, GQA ratios 1, 4
// and 8, block sizes 16 and 256 with shuffled (non-contiguous) blocks, prefill batches of
// mixed lengths, decode batches at long context (split-KV), and forced split counts.
// Every layout runs through the kernel launch_attention picks (the tensor-core prefill
// kernel for mostly-prefill batches, split-KV for decode); `kernel` cases force split-KV or
// the first-version kernel (KernelPolicy) on the other layouts.
// Tolerance: rel L2 <= 1e-2 and max-norm <= 2e-2 (BF16 q/k/v/out, f32 softmax).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include <fmt/format.h>

#include "backends/cuda/cuda_ops.h"
#include "backends/cuda/kernels.h"
#include "cuda/cuda_harness.h"

namespace mil::test::gpu {
namespace {

struct Seq {
  int32_t q_len, context_len;
};

struct AttnCase {
  std::string name;
  std::vector<Seq> seqs;
  int32_t dim, group, block_size, splits;
  cuda::KernelPolicy::Attention kernel = cuda::KernelPolicy::Attention::kAuto;
};

// Sets the attention kernel policy for one test and restores it.
struct PolicyScope {
  cuda::KernelPolicy saved = cuda::kernel_policy();
  explicit PolicyScope(cuda::KernelPolicy::Attention a) { cuda::kernel_policy().attention = a; }
  ~PolicyScope() { cuda::kernel_policy() = saved; }
};

class CudaAttention : public CudaOpsTest, public ::testing::WithParamInterface<AttnCase> {};

TEST_P(CudaAttention, MatchesCpu) {
  const AttnCase c = GetParam();
  const PolicyScope policy(c.kernel);
  if (c.splits > 0) gpu = make_cuda_ops(0, CudaOpsOptions{true, c.splits});
  Random rng(static_cast<uint32_t>(c.dim * 7 + c.group * 3 + c.block_size));
  const int32_t kv_heads = 2, heads = kv_heads * c.group, dim = c.dim;
  const int32_t bs = c.block_size;
  std::vector<int32_t> qs{0}, cl;
  int32_t max_blocks = 0, total = 0;
  for (const Seq& s : c.seqs) {
    const int32_t blocks = (s.context_len + bs - 1) / bs;
    max_blocks = std::max(max_blocks, blocks + 1);
    total += blocks;
    qs.push_back(qs.back() + s.q_len);
    cl.push_back(s.context_len);
  }
  const int32_t num_blocks = total + 3;
  std::vector<int32_t> pool(num_blocks);
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), rng.gen());
  std::vector<int32_t> table(c.seqs.size() * max_blocks, -1);
  size_t next = 0;
  for (size_t s = 0; s < c.seqs.size(); ++s) {
    const int32_t blocks = (c.seqs[s].context_len + bs - 1) / bs;
    for (int32_t b = 0; b < blocks; ++b) table[s * max_blocks + b] = pool[next++];
  }
  const int64_t n = qs.back(), qw = int64_t{heads} * dim, kvw = int64_t{kv_heads} * dim,
                slots = int64_t{num_blocks} * bs;
  const auto q = round_bf16(rng.uniform(n * qw, -2.0f, 2.0f));
  const auto kc = round_bf16(rng.uniform(slots * kvw, -2.0f, 2.0f));
  const auto vc = round_bf16(rng.uniform(slots * kvw));
  const AttentionShape shape{heads, kv_heads, dim, 1.0f / std::sqrt(static_cast<float>(dim))};

  GpuTensor gq(DType::BF16, n, qw, (qw + 2 * kvw) * 2);  // the q slice of a qkv row
  GpuTensor gk(DType::BF16, slots, kvw), gv(DType::BF16, slots, kvw);
  GpuTensor go(DType::BF16, n, qw, (qw + 8) * 2, 16);
  gq.set(q);
  gk.set(kc);
  gv.set(vc);
  GpuArray<int32_t> dqs(qs), dcl(cl), dbt(table);
  const AttentionBatch batch{static_cast<int32_t>(c.seqs.size()), dqs.get(), dcl.get(), dbt.get(),
                             max_blocks, bs};
  gpu->attention(gq, gk, gv, batch, shape, go);

  OwnedTensor hq = host_f32(q, n, qw), hk = host_f32(kc, slots, kvw), hv = host_f32(vc, slots, kvw);
  OwnedTensor ho(DType::F32, n, qw);
  const AttentionBatch hbatch{static_cast<int32_t>(c.seqs.size()), qs.data(), cl.data(),
                              table.data(), max_blocks, bs};
  cpu->attention(hq, hk, hv, hbatch, shape, ho);
  const auto got = go.get(), want = to_vector(ho);
  EXPECT_LE(rel_l2_error(got, want), 1e-2);
  EXPECT_LE(max_norm_error(got, want), 2e-2);
  go.check_untouched("out");
  gq.check_untouched("q", true);
  gk.check_untouched("k_cache", true);
  gv.check_untouched("v_cache", true);
}

std::vector<AttnCase> cases() {
  std::vector<AttnCase> all;
  const std::vector<Seq> prefill = {{7, 7}, {1, 40}, {64, 100}, {0, 5}, {33, 300}, {1, 1}};
  const std::vector<Seq> one_long = {{300, 300}};
  const std::vector<Seq> decode = {{1, 4096}, {1, 17}, {1, 1000}, {1, 2500}, {1, 4000},
                                   {1, 1},    {1, 256}};
  for (int32_t dim : {64, 128}) {
    for (int32_t group : {1, 4, 8}) {
      for (int32_t bs : {16, 256}) {
        all.push_back({fmt::format("prefill_d{}_g{}_b{}", dim, group, bs), prefill, dim, group, bs, 0});
        all.push_back({fmt::format("decode_d{}_g{}_b{}", dim, group, bs), decode, dim, group, bs, 0});
      }
    }
    all.push_back({fmt::format("prefill300_d{}", dim), one_long, dim, 4, 16, 0});
    for (int32_t splits : {1, 7, 64})
      all.push_back({fmt::format("decode_d{}_splits{}", dim, splits), decode, dim, 4, 16, splits});
  }
  all.push_back({"decode_one_row_8k", {{1, 8192}}, 128, 4, 16, 0});
  // Prefill with cached prefixes, several 64-row tiles and 64-key tiles, partial blocks.
  const std::vector<Seq> long_prefill = {{300, 1300}, {129, 129}, {1, 50}, {64, 64}, {2, 700}};
  for (int32_t dim : {64, 128}) {
    for (int32_t group : {1, 8}) {
      all.push_back({fmt::format("prefill_long_d{}_g{}", dim, group), long_prefill, dim, group, 16, 0});
    }
  }
  all.push_back({"prefill_long_d128_g4_b256", long_prefill, 128, 4, 256, 0});
  using A = cuda::KernelPolicy::Attention;
  all.push_back({"prefill_split_d128_g4", prefill, 128, 4, 16, 0, A::kSplit});
  all.push_back({"prefill_split_d64_g8", long_prefill, 64, 8, 16, 0, A::kSplit});
  all.push_back({"prefill_legacy_d128_g4", prefill, 128, 4, 16, 0, A::kLegacy});
  all.push_back({"decode_legacy_d128_g8", decode, 128, 8, 16, 0, A::kLegacy});
  all.push_back({"decode_legacy_d64_splits7", decode, 64, 4, 16, 7, A::kLegacy});
  return all;
}

INSTANTIATE_TEST_SUITE_P(Grid, CudaAttention, ::testing::ValuesIn(cases()),
                         [](const auto& param_info) { return param_info.param.name; });

}  // namespace
}  // namespace mil::test::gpu
