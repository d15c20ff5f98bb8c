// The generation loop over a batch of sequences: every step runs the pending tokens of all
// unfinished sequences together (prompt chunks while prefilling, one token each while
// decoding), each row with its own adapter, until EOS, a stop token or the token limit.
// A fixed set of requests; the server's continuous batching admits new ones between steps.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/block_allocator.h"
#include "engine/device_sampler.h"
#include "engine/request.h"
#include "engine/sampler.h"
#include "model/llama.h"

namespace mil {

struct GenerationParams {
  int32_t max_new_tokens = 32;
  SamplingParams sampling;
  uint64_t seed = 0;
  bool stop_at_eos = true;
  std::vector<int32_t> stop_token_ids;  // in addition to the model's EOS ids
  std::string adapter;                  // LoRA adapter name; "" = the base model
};

struct GenerationRequest {
  std::vector<int32_t> prompt;
  GenerationParams params;
};

struct GenerationResult {
  std::vector<int32_t> tokens;  // generated tokens (the stop token included, as HF does)
  // request.h's reasons: Length, EndOfSequence (EOS or a stop token id), Cancelled.
  FinishReason finish = FinishReason::Length;
  double prefill_seconds = 0;   // until the first new token
  double decode_seconds = 0;    // from the first new token to the last
};

// Called after each token of request `request`; return false to stop that request.
using BatchTokenCallback = std::function<bool(size_t request, int32_t token)>;
using TokenCallback = std::function<bool(int32_t token)>;

class Generator {
 public:
  // `kv_tokens` bounds the prompt + generated tokens of all sequences run together.
  // Captures the model's decode graphs for its cache when the backend can (LlamaModel).
  Generator(LlamaModel& model, int64_t kv_tokens, int32_t block_size = 16);
  ~Generator();
  Generator(const Generator&) = delete;
  Generator& operator=(const Generator&) = delete;

  GenerationResult generate(const std::vector<int32_t>& prompt, const GenerationParams& params,
                            const TokenCallback& on_token = {});
  std::vector<GenerationResult> generate_batch(const std::vector<GenerationRequest>& requests,
                                               const BatchTokenCallback& on_token = {});

  // Where tokens are chosen (sampler.h; Auto by default). On the device, every sequence's
  // token comes from one Ops::sample (or argmax) on the device's logits with the same
  // uniform the host path draws, and only the ids are downloaded.
  void set_sample_on_device(SampleOnDevice where) { sample_on_device_ = where; }

  // Logits at every prompt position of each request ([prompt.size(), vocab] each), all
  // requests in one forward step (they must fit in max_tokens_per_step), for golden tests.
  std::vector<OwnedTensor> prompt_logits_batch(const std::vector<GenerationRequest>& requests);
  Tensor prompt_logits(const std::vector<int32_t>& prompt);

 private:
  struct Sequence;
  class SequenceSet;
  // Checks ids and that the requests fit the cache (with their new tokens unless prompt_only).
  void validate(const std::vector<GenerationRequest>& requests, bool prompt_only) const;
  // Builds the next step from the pending tokens of `active` sequences, within the step's
  // token budget; `logit_rows_of` gets, per sequence, its logit row or -1.
  StepBatch build_step(std::vector<Sequence*>& active, bool all_logits,
                       std::vector<int32_t>& logit_row_of);
  int32_t choose(const Tensor& logits, int64_t row, Sampler& sampler);
  // The device path: the token of every logit row (sequence i's row is logit_row_of[i]).
  void choose_on_device(const Tensor& logits, const std::vector<Sequence*>& active,
                        const std::vector<int32_t>& logit_row_of, std::vector<int32_t>& tokens);

  LlamaModel& model_;
  // Token choice on the host logits forward() returns, whatever the model's backend.
  std::unique_ptr<Ops> host_ops_ = make_cpu_ops(1);
  SampleOnDevice sample_on_device_ = SampleOnDevice::Auto;
  std::unique_ptr<DeviceSampler> device_sampler_;  // made on first use
  std::vector<DeviceSampleRow> device_rows_;
  std::vector<TokenChoice> device_choices_;
  KVCache cache_;
  BlockAllocator allocator_;
  int64_t kv_tokens_;
  OwnedTensor last_logits_;
};

}  // namespace mil
