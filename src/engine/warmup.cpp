#include "engine/warmup.h"

#include "engine/device_sampler.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "model/llama.h"

namespace mil {
namespace {

constexpr double kMiB = 1 << 20;

// Free device bytes now (after the backend's queued work).
int64_t free_now(Ops& ops) {
  ops.synchronize();
  size_t free_bytes = 0, total_bytes = 0;
  MIL_CHECK(ops.memory_info(&free_bytes, &total_bytes),
            "warm-up: the backend stopped reporting its memory");
  return static_cast<int64_t>(free_bytes);
}

}  // namespace

KvSizing warm_up_and_size_kv(LlamaModel& model, const EngineOptions& o, int64_t step_logit_rows,
                             DeviceSampler* sampler) {
  MIL_CHECK(o.block_size > 0, "engine: block_size must be positive, got {}", o.block_size);
  MIL_CHECK(o.max_batch_prefill_tokens > 0, "engine: max_batch_prefill_tokens must be positive");
  MIL_CHECK(o.memory_fraction >= 0 && o.memory_fraction <= 1,
            "engine: the memory fraction must be in (0, 1] (0: off), got {}", o.memory_fraction);
  MIL_CHECK(o.max_lora_rank >= 0, "engine: max_lora_rank must be >= 0, got {}", o.max_lora_rank);
  const ModelConfig& c = model.config();
  Ops& ops = model.ops();
  KvSizing k;
  k.bytes_per_block = model.kv_bytes_per_block(o.block_size);

  // The engine's largest step (scheduler.h): step_tokens rows, of which at most one per
  // running sequence decodes; logits for every sequence that completes its prompt or decodes,
  // plus the prompt-logprob rows; a block table as wide as the model's positions.
  const int64_t step_tokens = std::min(o.max_batch_prefill_tokens, model.max_tokens_per_step());
  const int64_t seqs =
      o.max_batch_size > 0 ? std::min<int64_t>(o.max_batch_size, step_tokens) : step_tokens;
  StepMaxima mx;
  mx.seqs = static_cast<int32_t>(seqs);
  mx.logit_rows = std::min(step_tokens, seqs + std::max<int64_t>(step_logit_rows, 0));
  // Device sampling (device_sampler.h) samples every logits row of a step at most.
  mx.sample_rows = sampler != nullptr ? mx.logit_rows : 0;
  const int64_t widest = (c.max_position_embeddings + o.block_size - 1) / o.block_size;
  mx.blocks_per_seq = static_cast<int32_t>(std::max<int64_t>(widest, 1));
  mx.lora_rank = o.max_lora_rank;

  size_t free0 = 0, total = 0;
  ops.synchronize();  // what the weights' upload queued is allocated and done
  const bool measured = ops.memory_info(&free0, &total);
  if (measured) {
    k.device_total = static_cast<int64_t>(total);
    k.free_before = static_cast<int64_t>(free0);
  }
  model.reserve(mx);
  // A sequence has seen at most as many distinct ids as the model has positions.
  if (sampler != nullptr) {
    sampler->reserve(mx.logit_rows, int64_t{mx.seqs} * c.max_position_embeddings);
  }
  if (measured || o.always_warm_up) model.warm_up(mx, o.block_size);
  // The decode graphs are captured after the cache is sized; what they take beyond their
  // buffers (kept from this capture) is measured here, over a one-block scratch cache, with
  // their block tables as wide as they will be.
  if (measured && ops.supports_graphs() && model.decode_graphs_enabled() &&
      !o.decode_graph_batch_sizes.empty()) {
    const KVCache scratch = model.make_kv_cache(1, o.block_size);
    if (model.capture_decode_graphs(scratch, o.decode_graph_batch_sizes, mx.blocks_per_seq) > 0) {
      const int64_t with_graphs = free_now(ops);
      model.release_decode_graphs(scratch);
      k.graph_reserve = std::max<int64_t>(free_now(ops) - with_graphs, 0);
    }
  }
  if (measured) k.free_after = free_now(ops);

  if (o.kv_blocks > 0) {
    k.blocks = o.kv_blocks;
  } else if (measured && o.memory_fraction > 0) {
    const double unused = (1.0 - o.memory_fraction) * static_cast<double>(total);
    const double budget =
        static_cast<double>(k.free_after) - unused - static_cast<double>(k.graph_reserve);
    k.blocks =
        budget > 0
            ? static_cast<int64_t>(std::floor(budget / static_cast<double>(k.bytes_per_block)))
            : 0;
    MIL_CHECK(
        k.blocks >= 1,
        "engine: no memory left for the KV cache: after warm-up {:.1f} of {:.1f} MiB are free, "
        "memory fraction {} keeps {:.1f} MiB unused and the decode graphs need {:.1f} MiB, "
        "while one block of {} tokens takes {:.2f} MiB (raise --cuda-memory-fraction, lower "
        "--max-batch-prefill-tokens, or pass --kv-cache-memory)",
        k.free_after / kMiB, static_cast<double>(total) / kMiB, o.memory_fraction, unused / kMiB,
        k.graph_reserve / kMiB, o.block_size, k.bytes_per_block / kMiB);
  } else {
    k.blocks = o.kv_memory_bytes / k.bytes_per_block;
    MIL_CHECK(k.blocks >= 1, "engine: {} bytes of KV memory hold no block of {} tokens ({} bytes)",
              o.kv_memory_bytes, o.block_size, k.bytes_per_block);
  }
  return k;
}

}  // namespace mil
