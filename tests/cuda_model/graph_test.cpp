// Decode steps replayed as CUDA graphs (LlamaModel::capture_decode_graphs) against the same
// steps run eagerly, on the tiny models: batches that fill a captured size and batches that
// need padding rows (3 -> 4, 5 -> 8), several context lengths per batch. Padding rows must
// leave the real sequences' KV alone: the eager re-run of each step, after the graph one, must
// see the same cache. Same kernels apart from the row count, so the logits agree to bf16
// rounding of a different GEMM tiling (stated: rel L2 <= 1e-2, same top-1 where the margin
// exceeds 0.05).
#include "cuda_model/cuda_model_common.h"

#include <cstdio>
#include <random>

namespace mil::test::cuda_model {
namespace {

const fs::path kRoot = fs::path(MIL_FIXTURES_DIR);

std::vector<fs::path> tiny_models() {
  std::vector<fs::path> out;
  for (const auto& dir : fs::directory_iterator(kRoot / "tiny")) {
    if (fs::exists(dir.path() / "config.json")) out.push_back(dir.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

TEST(DecodeGraphs, MatchEagerStepsWithPadding) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA GPU";
  for (const fs::path& path : tiny_models()) {
    Loaded gpu = load(path.string(), true, 96);  // the prefill below is one step
    LlamaModel& model = *gpu.model;
    const ModelConfig& c = model.config();
    const int32_t bs = 4, per_seq = 8;  // blocks per sequence
    const int max_batch = 8;
    KVCache cache = model.make_kv_cache(int64_t{max_batch} * per_seq, bs);
    ASSERT_EQ(model.capture_decode_graphs(cache, {1, 2, 4, 8}, per_seq), 4) << path;
    std::mt19937 rng(7);
    std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(c.vocab_size - 1));
    // Prefill sequence i with 3 + i tokens (eager: several rows per sequence); the decode
    // steps below add at most 5, within the 4-block (16-token) tables they pass.
    std::vector<int32_t> len(max_batch);
    {
      StepBatch s;
      s.max_blocks_per_seq = per_seq;
      s.query_start.push_back(0);
      for (int i = 0; i < max_batch; ++i) {
        len[i] = 3 + i;
        for (int32_t p = 0; p < len[i]; ++p) {
          s.token_ids.push_back(tok(rng));
          s.positions.push_back(p);
          s.slots.push_back(i * per_seq * bs + p);
        }
        s.query_start.push_back(static_cast<int32_t>(s.token_ids.size()));
        s.context_len.push_back(len[i]);
        for (int32_t b = 0; b < per_seq; ++b) s.block_table.push_back(i * per_seq + b);
      }
      model.forward(s, cache);
    }
    for (int batch : {1, 2, 3, 5, 8}) {
      StepBatch s;
      s.max_blocks_per_seq = 4;  // narrower than captured: padded to per_seq
      s.query_start.push_back(0);
      for (int i = 0; i < batch; ++i) {
        const int32_t p = len[i];
        s.token_ids.push_back(tok(rng));
        s.positions.push_back(p);
        s.slots.push_back(i * per_seq * bs + p);
        s.query_start.push_back(i + 1);
        s.context_len.push_back(p + 1);
        for (int32_t b = 0; b < 4; ++b) s.block_table.push_back(i * per_seq + b);
        s.logit_rows.push_back(i);
        ++len[i];
      }
      const int64_t vocab = c.vocab_size;
      model.set_decode_graphs_enabled(true);
      const Tensor g = model.forward(s, cache);
      const int32_t expected_graph = batch <= 1 ? 1 : batch <= 2 ? 2 : batch <= 4 ? 4 : 8;
      EXPECT_EQ(model.last_graph_batch(), expected_graph) << path << " batch " << batch;
      std::vector<float> got(g.ptr<float>(), g.ptr<float>() + batch * vocab);
      model.set_decode_graphs_enabled(false);
      const Tensor e = model.forward(s, cache);
      EXPECT_EQ(model.last_graph_batch(), 0);
      const Diff d = diff(got.data(), e.ptr<float>(), got.size());
      int flips = 0;
      for (int i = 0; i < batch; ++i) {
        const float* row = e.ptr<float>() + i * vocab;
        if (margin(row, vocab) > 0.05 && argmax(row, vocab) != argmax(got.data() + i * vocab, vocab))
          ++flips;
      }
      std::printf("[graphs] %s batch %d: max %.5f rel %.2e flips %d\n",
                  path.filename().string().c_str(), batch, d.max_abs, d.rel_l2, flips);
      EXPECT_LE(d.rel_l2, 1e-2) << path << " batch " << batch;
      EXPECT_EQ(flips, 0) << path << " batch " << batch;
    }
    model.set_decode_graphs_enabled(true);
    model.release_decode_graphs(cache);
  }
}

}  // namespace
}  // namespace mil::test::cuda_model
