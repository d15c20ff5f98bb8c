// Paged attention on every backend against the double reference. Tolerance: normalised
// max error 1e-5 (f32 dot products and softmax).
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>

#include "core/error.h"
#include "harness.h"
#include "reference.h"

namespace mil::test {
namespace {

constexpr double kTol = 1e-5;

struct SeqSpec {
  int32_t q_len, context_len;
};

class Attention : public OpsTest {
 protected:
  // Builds a cache of `num_blocks` blocks filled with random keys/values (unused slots too,
  // so reading a wrong slot shows), hands each sequence a shuffled set of blocks, and
  // compares the op with the reference.
  void run(const std::vector<SeqSpec>& seqs, int32_t heads, int32_t kv_heads, int32_t dim,
           int32_t block_size, uint32_t seed) {
    SCOPED_TRACE(testing::Message() << "heads=" << heads << "/" << kv_heads << " dim=" << dim
                                    << " block=" << block_size << " seqs=" << seqs.size());
    Random rng(seed);
    ref::AttentionInput in;
    in.block_size = block_size;
    int32_t max_blocks = 0, total_blocks = 0;
    in.query_start.push_back(0);
    for (const SeqSpec& s : seqs) {
      const int32_t blocks = (s.context_len + block_size - 1) / block_size;
      max_blocks = std::max(max_blocks, blocks + 1);  // a spare column, as a real table has
      total_blocks += blocks;
      in.query_start.push_back(in.query_start.back() + s.q_len);
      in.context_len.push_back(s.context_len);
    }
    in.max_blocks_per_seq = max_blocks;
    const int32_t num_blocks = total_blocks + 3;  // some blocks belong to nobody
    std::vector<int32_t> pool(num_blocks);
    std::iota(pool.begin(), pool.end(), 0);
    std::shuffle(pool.begin(), pool.end(), rng.gen());
    in.block_table.assign(seqs.size() * max_blocks, -1);
    size_t next = 0;
    for (size_t s = 0; s < seqs.size(); ++s) {
      const int32_t blocks = (seqs[s].context_len + block_size - 1) / block_size;
      for (int32_t b = 0; b < blocks; ++b) in.block_table[s * max_blocks + b] = pool[next++];
    }

    const int64_t n = in.query_start.back(), qw = int64_t{heads} * dim,
                  kvw = int64_t{kv_heads} * dim, slots = int64_t{num_blocks} * block_size;
    const std::vector<float> q = rng.uniform(n * qw, -2.0f, 2.0f);
    const std::vector<float> kc = rng.uniform(slots * kvw, -2.0f, 2.0f);
    const std::vector<float> vc = rng.uniform(slots * kvw);
    AttentionShape shape{heads, kv_heads, dim, 1.0f / std::sqrt(static_cast<float>(dim))};

    DeviceTensor dq(backend(), DType::F32, n, qw, (qw + 2 * kvw) * 4);  // q slice of qkv
    DeviceTensor dk(backend(), DType::F32, slots, kvw), dv(backend(), DType::F32, slots, kvw);
    DeviceTensor out(backend(), DType::F32, n, qw, (qw + 3) * 4, 8);
    dq.set_f32(q);
    dk.set_f32(kc);
    dv.set_f32(vc);
    DeviceArray qs(backend(), in.query_start), cl(backend(), in.context_len),
        bt(backend(), in.block_table);
    AttentionBatch batch{
        static_cast<int32_t>(seqs.size()), qs.i32(), cl.i32(), bt.i32(), max_blocks, block_size};
    ops->attention(dq, dk, dv, batch, shape, out);

    EXPECT_LE(max_norm_error(out.get_f32(), ref::attention(q, kc, vc, in, shape)), kTol);
    out.check_untouched("out");
    dq.check_untouched("q", true);
    dk.check_untouched("k_cache", true);
    dv.check_untouched("v_cache", true);
  }
};

TEST_P(Attention, DecodeSingleSequence) { run({{1, 1}}, 4, 4, 16, 16, 1); }

TEST_P(Attention, GqaMixedBatch) {
  // Decode rows, a chunked prefill continuing a cached prefix, a fresh prefill.
  run({{1, 37}, {5, 21}, {1, 1}, {12, 12}}, 9, 3, 64, 16, 2);
}

TEST_P(Attention, MhaOddSizes) { run({{3, 50}, {1, 17}, {7, 7}}, 4, 4, 24, 5, 3); }

TEST_P(Attention, LongContextSmallBlocks) { run({{2, 300}, {1, 129}}, 6, 2, 32, 1, 4); }

TEST_P(Attention, RejectsBadBatches) {
  DeviceTensor q(backend(), DType::F32, 2, 32), out(backend(), DType::F32, 2, 32);
  DeviceTensor k(backend(), DType::F32, 16, 16), v(backend(), DType::F32, 16, 16);
  AttentionShape shape{2, 1, 16, 0.25f};
  DeviceArray qs(backend(), std::vector<int32_t>{0, 2});
  DeviceArray cl(backend(), std::vector<int32_t>{5});
  DeviceArray bt(backend(), std::vector<int32_t>{0, 1});
  AttentionBatch ok{1, qs.i32(), cl.i32(), bt.i32(), 2, 4};
  EXPECT_NO_THROW(ops->attention(q, k, v, ok, shape, out));
  DeviceArray bad_block(backend(), std::vector<int32_t>{0, 4});  // block 4 is past 16 slots
  AttentionBatch b1 = ok;
  b1.block_table = bad_block.i32();
  EXPECT_THROW(ops->attention(q, k, v, b1, shape, out), Error);
  DeviceArray short_ctx(backend(), std::vector<int32_t>{1});  // 2 queries, context 1
  AttentionBatch b2 = ok;
  b2.context_len = short_ctx.i32();
  EXPECT_THROW(ops->attention(q, k, v, b2, shape, out), Error);
  AttentionShape bad_shape{3, 2, 16, 0.25f};
  EXPECT_THROW(ops->attention(q, k, v, ok, bad_shape, out), Error);
}

MIL_INSTANTIATE_OPS_TEST(Attention);

}  // namespace
}  // namespace mil::test
