// Paged causal attention on the CPU. One work item is (query row, head): it scores every
// visible cached key, takes a max-subtracted softmax in f32 and sums the values. Work items
// are independent, so threads split them without synchronisation.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "backends/cpu/cpu_internal.h"
#include "backends/cpu/kernels.h"

namespace mil::cpu {
namespace {

void check_batch(const Tensor& q, const Tensor& k_cache, const AttentionBatch& batch) {
  MIL_CHECK(batch.num_seqs >= 0 && batch.query_start != nullptr && batch.context_len != nullptr &&
                (batch.num_seqs == 0 || batch.block_table != nullptr),
            "attention: batch arrays are missing");
  MIL_CHECK(batch.block_size > 0 && batch.max_blocks_per_seq >= 0,
            "attention: block_size {} / max_blocks_per_seq {} invalid", batch.block_size,
            batch.max_blocks_per_seq);
  MIL_CHECK(batch.query_start[0] == 0 && batch.query_start[batch.num_seqs] == q.rows,
            "attention: query_start spans [{}, {}) but q has {} rows", batch.query_start[0],
            batch.query_start[batch.num_seqs], q.rows);
  for (int32_t s = 0; s < batch.num_seqs; ++s) {
    const int32_t q_len = batch.query_start[s + 1] - batch.query_start[s];
    const int32_t ctx = batch.context_len[s];
    MIL_CHECK(q_len >= 0 && ctx >= q_len, "attention: sequence {} has {} queries but context {}", s,
              q_len, ctx);
    const int64_t blocks = (static_cast<int64_t>(ctx) + batch.block_size - 1) / batch.block_size;
    MIL_CHECK(blocks <= batch.max_blocks_per_seq,
              "attention: sequence {} needs {} blocks, block table has {}", s, blocks,
              batch.max_blocks_per_seq);
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t id = batch.block_table[s * batch.max_blocks_per_seq + b];
      const int64_t used = std::min<int64_t>(batch.block_size, ctx - b * batch.block_size);
      MIL_CHECK(id >= 0 && id * batch.block_size + used <= k_cache.rows,
                "attention: sequence {} block {} -> {} is outside the cache ({} slots)", s, b, id,
                k_cache.rows);
    }
  }
}

}  // namespace

void attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
               const AttentionBatch& batch, const AttentionShape& shape, const Tensor& out,
               int threads, Workspace& ws) {
  check_f32(q, "attention", "q");
  check_f32(out, "attention", "out");
  check_f32(k_cache, "attention", "k_cache");
  check_f32(v_cache, "attention", "v_cache");
  const int32_t heads = shape.num_heads, kv_heads = shape.num_kv_heads, dim = shape.head_dim;
  MIL_CHECK(heads > 0 && kv_heads > 0 && dim > 0 && heads % kv_heads == 0,
            "attention: {} heads / {} kv heads / head_dim {} invalid", heads, kv_heads, dim);
  MIL_CHECK(q.cols == int64_t{heads} * dim && out.rows == q.rows && out.cols == q.cols,
            "attention: q {} / out {} do not match {} heads x {}", shape_string(q),
            shape_string(out), heads, dim);
  MIL_CHECK(k_cache.cols == int64_t{kv_heads} * dim && v_cache.cols == k_cache.cols &&
                v_cache.rows == k_cache.rows,
            "attention: caches {} / {} do not match {} kv heads x {}", shape_string(k_cache),
            shape_string(v_cache), kv_heads, dim);
  check_batch(q, k_cache, batch);
  if (q.rows == 0) return;

  // Sequence of each query row, so that a flat (row, head) index finds its context.
  auto* seq_of_row = reinterpret_cast<int32_t*>(ws.get(static_cast<size_t>(q.rows) * 4));
  for (int32_t s = 0; s < batch.num_seqs; ++s) {
    for (int32_t j = batch.query_start[s]; j < batch.query_start[s + 1]; ++j) seq_of_row[j] = s;
  }
  const int32_t group = heads / kv_heads;
  const int64_t items = q.rows * heads;
  const Kernels& kern = kernels();
  const int nt = items < 2 ? 1 : threads;
#pragma omp parallel num_threads(nt)
  {
    thread_local std::vector<float> scores, qh;
    qh.resize(static_cast<size_t>(dim));
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t row = item / heads;
      const int32_t h = static_cast<int32_t>(item % heads);
      const int32_t s = seq_of_row[row];
      const int32_t q_len = batch.query_start[s + 1] - batch.query_start[s];
      const int64_t pos = batch.context_len[s] - q_len + (row - batch.query_start[s]);
      const int32_t* table = batch.block_table + int64_t{s} * batch.max_blocks_per_seq;
      const int64_t kv_col = int64_t{h / group} * dim;
      // Copy of the query so that out may alias q.
      std::memcpy(qh.data(), q.row<const float>(row) + int64_t{h} * dim, dim * sizeof(float));
      if (scores.size() < static_cast<size_t>(pos + 1)) scores.resize(pos + 1);

      float max_score = -std::numeric_limits<float>::infinity();
      for (int64_t t = 0; t <= pos; ++t) {
        const int64_t slot =
            int64_t{table[t / batch.block_size]} * batch.block_size + t % batch.block_size;
        const float sc =
            kern.dot_f32(qh.data(), k_cache.row<const float>(slot) + kv_col, dim) * shape.scale;
        scores[t] = sc;
        max_score = std::max(max_score, sc);
      }
      float sum = 0.0f;
      for (int64_t t = 0; t <= pos; ++t) {
        scores[t] = std::exp(scores[t] - max_score);
        sum += scores[t];
      }
      float* o = out.row<float>(row) + int64_t{h} * dim;
      std::fill(o, o + dim, 0.0f);
      const float inv = 1.0f / sum;
      for (int64_t t = 0; t <= pos; ++t) {
        const int64_t slot =
            int64_t{table[t / batch.block_size]} * batch.block_size + t % batch.block_size;
        kern.axpy_f32(scores[t] * inv, v_cache.row<const float>(slot) + kv_col, o, dim);
      }
    }
  }
}

}  // namespace mil::cpu
