// The minimal generation loop: prefill the prompt, then decode one token at a time with
// the KV cache, until EOS, a stop token or the token limit. One sequence at a time; the
// server's continuous batching (engine/scheduler) builds on the same step structure.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include "engine/block_allocator.h"
#include "engine/sampler.h"
#include "model/llama.h"

namespace mil {

struct GenerationParams {
  int32_t max_new_tokens = 32;
  SamplingParams sampling;
  uint64_t seed = 0;
  bool stop_at_eos = true;
  std::vector<int32_t> stop_token_ids;  // in addition to the model's EOS ids
};

enum class FinishReason { Length, EndOfSequence, StopToken, Cancelled };

struct GenerationResult {
  std::vector<int32_t> tokens;  // generated tokens (the stop token included, as HF does)
  FinishReason finish = FinishReason::Length;
  double prefill_seconds = 0;
  double decode_seconds = 0;
};

// Called after each token; return false to stop.
using TokenCallback = std::function<bool(int32_t token)>;

class Generator {
 public:
  // `kv_tokens` bounds prompt + generated tokens.
  Generator(LlamaModel& model, int64_t kv_tokens, int32_t block_size = 16);

  GenerationResult generate(const std::vector<int32_t>& prompt, const GenerationParams& params,
                            const TokenCallback& on_token = {});

  // Logits of every prompt position, for golden tests ([prompt.size(), vocab]).
  Tensor prompt_logits(const std::vector<int32_t>& prompt);

 private:
  // Runs `tokens` (at positions start..) for the sequence in `blocks`; wants logits of
  // the last row only unless `all_logits`.
  Tensor run(const std::vector<int32_t>& tokens, int32_t start, std::vector<int32_t>& blocks,
             bool all_logits);
  int32_t choose(const Tensor& logits_row, Sampler& sampler);

  LlamaModel& model_;
  KVCache cache_;
  BlockAllocator allocator_;
  int64_t kv_tokens_;
  OwnedTensor last_logits_;
};

}  // namespace mil
