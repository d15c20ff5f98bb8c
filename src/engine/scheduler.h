// The batching policy of the serving engine, apart from the mechanism (engine.cpp): given
// the running sequences, the head of the waiting queue, the free KV blocks and the budgets,
// plan_step() decides what the next forward step holds. No model, no tensors: it sees only
// lengths, block counts and two questions it asks the engine (prefix cache, adapter room),
// so that it can be tested step by step with tables.
//
// One step, as TGI with prefill chunking and vLLM's allocate-as-you-go:
//   1. Running sequences, oldest first, get their next tokens: one row for a decoding
//      sequence, the next prompt chunk for one still prefilling. Every row counts against
//      the step's token budget (max_batch_prefill_tokens), and decode rows come first.
//   2. The KV blocks (and max_batch_total_tokens) these need must be there. When they are
//      not, the most recently admitted running sequences are preempted by recompute until
//      they are: the engine frees their blocks and puts them back at the front of the queue
//      with prompt + generated tokens as the prompt to recompute.
//   3. With no preemption this step, waiting requests are admitted strictly FIFO (the first
//      that does not fit stops admission: no starvation of large requests): each needs room
//      in the batch (max_batch_size), budget for its first chunk (a long prompt is chunked
//      across steps), the KV blocks of that chunk only (not of its whole max_new_tokens), and
//      its adapter resident (asked last: a yes means the request is admitted).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "engine/block_manager.h"

namespace mil {

struct SchedulerBudgets {
  int32_t block_size = 16;
  int64_t step_tokens = 4096;         // rows per step: prefill chunk tokens + decode rows
  int64_t total_tokens = 0;           // KV tokens of all running sequences; 0 = unlimited
  int64_t max_batch_size = 0;         // running sequences; 0 = unlimited
  int64_t step_logit_rows = 0;        // rows of prompt logits (prompt_logprobs) per step; 0 = unlimited
};

// A sequence in the batch. tokens - computed tokens are still to run (>= 1).
struct RunningSeq {
  int64_t tokens = 0;            // prompt (or recompute prompt) + generated tokens
  int64_t computed = 0;          // tokens whose keys and values are in the cache
  int64_t blocks = 0;            // KV blocks it holds
  int64_t exclusive_blocks = 0;  // of those, how many only it references (freed if preempted)
  bool all_logits = false;       // prefilling with prompt_logprobs: every row needs logits
};

// A request in the waiting queue (front first).
struct WaitingSeq {
  int64_t tokens = 0;       // to compute: the prompt, or prompt + generated when recomputing
  bool use_prefix = true;   // may reuse the prefix cache (not with prompt_logprobs)
  bool all_logits = false;  // prompt_logprobs: every prompt row needs logits
};

struct SchedulerState {
  const std::vector<RunningSeq>* running = nullptr;  // oldest (first admitted) first
  const std::vector<WaitingSeq>* waiting = nullptr;  // the queue, front first
  int64_t available_blocks = 0;                      // free + evictable cached blocks
  // The prefix cache's hit for waiting[i] limited to `max_tokens` (optional).
  std::function<PrefixHit(size_t i, int64_t max_tokens)> prefix;
  // Whether waiting[i]'s adapter can be made resident now; asked only once everything else
  // fits, and a true answer means waiting[i] is admitted (the engine pins it there and then).
  std::function<bool(size_t i)> adapter_fits;
};

struct StepPlan {
  struct Chunk {
    size_t index = 0;           // into running (for `run`) or waiting (for `admit`)
    int64_t tokens = 0;         // tokens computed this step
    int64_t cached_tokens = 0;  // admissions: tokens taken from the prefix cache
    int64_t new_blocks = 0;     // blocks to allocate for this chunk
  };
  std::vector<Chunk> run;            // running sequences with rows this step, oldest first
  std::vector<size_t> preempt;       // running indices to preempt, most recently admitted first
  std::vector<Chunk> admit;          // waiting[0 .. admit.size()), in queue order
  int64_t step_tokens() const;
  bool empty() const { return run.empty() && admit.empty(); }
};

StepPlan plan_step(const SchedulerState& state, const SchedulerBudgets& budgets);

}  // namespace mil
