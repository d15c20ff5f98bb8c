#include "engine/generator.h"

#include <algorithm>
#include <chrono>

#include "core/error.h"

namespace mil {
namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

Generator::Generator(LlamaModel& model, int64_t kv_tokens, int32_t block_size)
    : model_(model),
      cache_(model.make_kv_cache((kv_tokens + block_size - 1) / block_size, block_size)),
      allocator_(cache_.num_blocks()),
      kv_tokens_(kv_tokens) {}

Tensor Generator::run(const std::vector<int32_t>& tokens, int32_t start,
                      std::vector<int32_t>& blocks, bool all_logits) {
  const int32_t bs = cache_.block_size();
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t context = start + n;
  const int64_t needed = (context + bs - 1) / bs - static_cast<int64_t>(blocks.size());
  if (needed > 0 && !allocator_.allocate(needed, blocks)) {
    fail("KV cache full: {} tokens do not fit in {} slots", context, kv_tokens_);
  }
  StepBatch step;
  step.token_ids = tokens;
  for (int64_t i = 0; i < n; ++i) {
    const int32_t pos = static_cast<int32_t>(start + i);
    step.positions.push_back(pos);
    step.slots.push_back(blocks[pos / bs] * bs + pos % bs);
  }
  step.query_start = {0, static_cast<int32_t>(n)};
  step.context_len = {static_cast<int32_t>(context)};
  step.block_table = blocks;
  step.max_blocks_per_seq = static_cast<int32_t>(blocks.size());
  if (all_logits) {
    for (int64_t i = 0; i < n; ++i) step.logit_rows.push_back(static_cast<int32_t>(i));
  } else {
    step.logit_rows = {static_cast<int32_t>(n - 1)};
  }
  return model_.forward(step, cache_);
}

Tensor Generator::prompt_logits(const std::vector<int32_t>& prompt) {
  MIL_CHECK(!prompt.empty(), "empty prompt");
  std::vector<int32_t> blocks;
  try {
    // Chunks of at most max_tokens_per_step, like chunked prefill.
    const int64_t chunk = model_.max_tokens_per_step();
    OwnedTensor all(DType::F32, static_cast<int64_t>(prompt.size()), model_.config().vocab_size);
    for (size_t begin = 0; begin < prompt.size(); begin += chunk) {
      const size_t end = std::min(prompt.size(), begin + static_cast<size_t>(chunk));
      std::vector<int32_t> part(prompt.begin() + begin, prompt.begin() + end);
      const Tensor l = run(part, static_cast<int32_t>(begin), blocks, true);
      for (int64_t r = 0; r < l.rows; ++r) {
        std::copy_n(l.row<float>(r), l.cols, all.view().row<float>(begin + r));
      }
    }
    allocator_.release(blocks);
    last_logits_ = std::move(all);
    return last_logits_.view();
  } catch (...) {
    allocator_.release(blocks);
    throw;
  }
}

int32_t Generator::choose(const Tensor& logits_row, Sampler& sampler) {
  int32_t token = 0;
  if (sampler.greedy()) {
    model_.ops().argmax(logits_row, &token);
  } else {
    const float u = sampler.next_uniform();
    model_.ops().sample(logits_row, &sampler.params(), &u, &token);
  }
  return token;
}

GenerationResult Generator::generate(const std::vector<int32_t>& prompt,
                                     const GenerationParams& params,
                                     const TokenCallback& on_token) {
  MIL_CHECK(!prompt.empty(), "empty prompt");
  MIL_CHECK(params.max_new_tokens >= 0, "max_new_tokens must not be negative");
  const int64_t vocab = model_.config().vocab_size;
  for (int32_t id : prompt) MIL_CHECK(id >= 0 && id < vocab, "token id {} is outside the vocabulary ({})", id, vocab);
  MIL_CHECK(static_cast<int64_t>(prompt.size()) + params.max_new_tokens <= kv_tokens_,
            "prompt ({} tokens) + max_new_tokens ({}) exceed the context of {} tokens",
            prompt.size(), params.max_new_tokens, kv_tokens_);

  std::vector<int32_t> stops = params.stop_token_ids;
  GenerationResult result;
  Sampler sampler(params.sampling, params.seed);
  std::vector<int32_t> blocks;
  try {
    auto t0 = std::chrono::steady_clock::now();
    Tensor logits;
    const int64_t chunk = model_.max_tokens_per_step();
    for (size_t begin = 0; begin < prompt.size(); begin += chunk) {
      const size_t end = std::min(prompt.size(), begin + static_cast<size_t>(chunk));
      std::vector<int32_t> part(prompt.begin() + begin, prompt.begin() + end);
      logits = run(part, static_cast<int32_t>(begin), blocks, false);
    }
    result.prefill_seconds = seconds_since(t0);
    t0 = std::chrono::steady_clock::now();
    int32_t position = static_cast<int32_t>(prompt.size());
    while (static_cast<int32_t>(result.tokens.size()) < params.max_new_tokens) {
      const int32_t token = choose(logits, sampler);
      result.tokens.push_back(token);
      const auto& eos = model_.config().eos_token_ids;
      if (params.stop_at_eos && std::find(eos.begin(), eos.end(), token) != eos.end()) {
        result.finish = FinishReason::EndOfSequence;
        if (on_token) on_token(token);
        break;
      }
      if (std::find(stops.begin(), stops.end(), token) != stops.end()) {
        result.finish = FinishReason::StopToken;
        if (on_token) on_token(token);
        break;
      }
      if (on_token && !on_token(token)) {
        result.finish = FinishReason::Cancelled;
        break;
      }
      if (static_cast<int32_t>(result.tokens.size()) == params.max_new_tokens) break;
      logits = run({token}, position++, blocks, false);
    }
    result.decode_seconds = seconds_since(t0);
  } catch (...) {
    allocator_.release(blocks);
    throw;
  }
  allocator_.release(blocks);
  return result;
}

}  // namespace mil
