// lora_shrink / lora_expand on CUDA against the CPU backend: ranks 4, 8, 16 and 64 mixed
// with a slot that lacks the projection, segment layouts (one segment, one per row as in
// BGMV decode, base rows and gaps mixed in), n in {1, 7, 64, 300}.
// Tolerances: shrink (f32 v) rel L2 <= 1e-5 and untouched entries exact; expand (BF16 y)
// rel L2 <= 1e-2.
#include <gtest/gtest.h>

#include "cuda/cuda_harness.h"

namespace mil::test::gpu {
namespace {

class CudaLora : public CudaOpsTest, public ::testing::WithParamInterface<std::tuple<int, int64_t>> {};

std::vector<LoraSegment> layout(int kind, int64_t n) {
  const auto rows = static_cast<int32_t>(n);
  std::vector<LoraSegment> segs;
  switch (kind) {
    case 0:  // one segment, one adapter
      segs.push_back({0, rows, 2});
      break;
    case 1:  // BGMV: one segment per row, slots cycling, base rows among them
      for (int32_t i = 0; i < rows; ++i) segs.push_back({i, i + 1, (i % 6) - 1});
      break;
    default:  // prefill-like segments of varied lengths, base rows, a gap, the empty slot
      for (int32_t i = 0, s = 0; i < rows; ++s) {
        const int32_t len = std::min<int32_t>(rows - i, 1 + (s * 7) % 23);
        if (s % 5 != 4) segs.push_back({i, i + len, s % 6 - 1});
        i += len;
      }
  }
  return segs;
}

TEST_P(CudaLora, ShrinkAndExpandMatchCpu) {
  const auto [kind, n] = GetParam();
  Random rng(static_cast<uint32_t>(kind * 1000 + n));
  const int64_t in = 576, out = 384, vcols = 64;
  const std::vector<int64_t> ranks = {4, 8, 16, 64, 0};  // slot 4 lacks this projection
  const int32_t slots = static_cast<int32_t>(ranks.size());
  std::vector<std::unique_ptr<GpuTensor>> ga, gb;
  std::vector<OwnedTensor> ha, hb;
  std::vector<Tensor> ta_gpu(slots), tb_gpu(slots), ta_cpu(slots), tb_cpu(slots);
  std::vector<float> scale(slots);
  for (int32_t s = 0; s < slots; ++s) {
    scale[s] = 0.5f + 0.25f * static_cast<float>(s);
    if (ranks[s] == 0) continue;
    const auto a = rng.uniform(ranks[s] * in, -0.1f, 0.1f), b = rng.uniform(out * ranks[s]);
    ga.push_back(std::make_unique<GpuTensor>(DType::F32, ranks[s], in, (in + 4) * 4));
    gb.push_back(std::make_unique<GpuTensor>(DType::F32, out, ranks[s]));
    ga.back()->set(a);
    gb.back()->set(b);
    ta_gpu[s] = *ga.back();
    tb_gpu[s] = *gb.back();
    ha.push_back(host_f32(a, ranks[s], in));
    hb.push_back(host_f32(b, out, ranks[s]));
    ta_cpu[s] = ha.back();
    tb_cpu[s] = hb.back();
  }
  const LoraProjection pg{ta_gpu.data(), tb_gpu.data(), scale.data(), slots};
  const LoraProjection pc{ta_cpu.data(), tb_cpu.data(), scale.data(), slots};
  const std::vector<LoraSegment> segs = layout(kind, n);
  GpuArray<LoraSegment> gsegs(segs);

  const auto x = round_bf16(rng.uniform(n * in));
  const auto v0 = rng.uniform(n * vcols);
  GpuTensor gx(DType::BF16, n, in, (in + 64) * 2);
  GpuTensor gv(DType::F32, n, vcols, (vcols + 4) * 4, 16);
  gx.set(x);
  gv.set(v0);
  OwnedTensor hx = host_f32(x, n, in), hv = host_f32(v0, n, vcols);
  gpu->lora_shrink(gx, pg, gsegs.get(), static_cast<int32_t>(segs.size()), gv);
  cpu->lora_shrink(hx, pc, segs.data(), static_cast<int32_t>(segs.size()), hv);
  EXPECT_LE(rel_l2_error(gv.get(), to_vector(hv)), 1e-5);
  gv.check_untouched("v");
  gx.check_untouched("x", true);

  // Expand from the CPU's v (both backends then start from the same values).
  const std::vector<float> v = to_vector(hv);
  gv.set(v);
  const auto y0 = round_bf16(rng.uniform(n * out));
  GpuTensor gy(DType::BF16, n, out, (out + 8) * 2, 8);
  gy.set(y0);
  OwnedTensor hy = host_f32(y0, n, out);
  gpu->lora_expand(gv, pg, gsegs.get(), static_cast<int32_t>(segs.size()), gy);
  cpu->lora_expand(hv, pc, segs.data(), static_cast<int32_t>(segs.size()), hy);
  EXPECT_LE(rel_l2_error(gy.get(), to_vector(hy)), 1e-2);
  gy.check_untouched("y");
  gv.check_untouched("v", true);
}

INSTANTIATE_TEST_SUITE_P(Grid, CudaLora,
                         ::testing::Combine(::testing::Values(0, 1, 2),
                                            ::testing::Values(int64_t{1}, int64_t{7}, int64_t{64},
                                                              int64_t{300})));

}  // namespace
}  // namespace mil::test::gpu
