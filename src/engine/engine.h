// The serving engine: one engine thread runs continuous batching over the paged KV cache.
// Requests come in from any thread (submit), each step mixes decode rows of running
// sequences with prefill chunks of new ones (scheduler.h decides, the engine carries it out),
// and every generated token goes back through the request's EventSink.
//
// Engine is an interface so that the HTTP server can be tested against a scripted engine;
// make_engine builds the real one over a model.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/request.h"
#include "engine/sampler.h"

namespace mil {

class LlamaModel;
class ModelTokenizer;
class AdapterStore;

// Start-up (warm-up, then sizing): the engine first allocates every per-step buffer and
// workspace at its largest (LlamaModel::reserve: max_batch_prefill_tokens rows, the largest
// decode batch, logits rows, LoRA rank) and, where the backend reports its free memory (CUDA),
// runs a prefill and a decode step of the largest shapes over a scratch cache and captures
// the decode graphs once to measure them; then it sizes the KV cache, then captures the
// decode graphs for it. Steps within those maxima allocate nothing afterwards.
struct EngineOptions {
  int32_t block_size = 16;
  // KV cache size: kv_blocks when > 0; else, when memory_fraction > 0 and the backend
  // reports its free memory (CUDA), what is left after warm-up (see memory_fraction); else as
  // many blocks as kv_memory_bytes holds.
  int64_t kv_blocks = 0;
  int64_t kv_memory_bytes = int64_t{1} << 30;
  // TGI's --cuda-memory-fraction: the share of the device's total memory that may be in use
  // once the KV cache is allocated (the KV cache takes free memory after warm-up less
  // (1 - memory_fraction) x total, less the decode graphs' reserve). In (0, 1]; 0: off.
  double memory_fraction = 0;
  // The LoRA rank reserved at warm-up (with the largest resident adapter's, if larger). An
  // adapter of a larger rank still runs; its first step grows the workspace.
  int32_t max_lora_rank = 64;
  // Runs the warm-up steps even where the backend cannot report free memory (the CPU, where
  // there is nothing to measure and reserving alone sizes every buffer). For tests.
  bool always_warm_up = false;
  int64_t max_batch_prefill_tokens = 4096;  // prompt tokens (and decode rows) per step
  int64_t max_batch_total_tokens = 0;       // KV tokens of all running sequences; 0 = the cache
  int32_t max_batch_size = 0;               // running sequences; 0 = unlimited
  bool prefix_caching = true;
  // Decode steps of up to the largest of these batch sizes run as CUDA graphs, captured at
  // start-up (LlamaModel::capture_decode_graphs); empty: no graphs. Ignored on the CPU.
  std::vector<int32_t> decode_graph_batch_sizes = {1, 2, 4, 8, 16, 32, 64, 128};
  // Where tokens are chosen (sampler.h). A step in which some request needs what only the
  // host path does (logprob alternatives, prompt logprobs, frequency/presence penalties,
  // typical_p) runs on the host either way, with the same tokens.
  SampleOnDevice sample_on_device = SampleOnDevice::Auto;
};

// What the engine sized and is doing now; cheap, callable from any thread.
struct EngineStats {
  int64_t kv_blocks = 0;        // in the cache
  int32_t block_size = 0;
  int64_t kv_bytes = 0;         // memory of the cache
  int64_t free_blocks = 0;      // neither used nor cached
  int64_t cached_blocks = 0;    // prefix-cache blocks no running sequence uses
  int64_t max_batch_prefill_tokens = 0;
  int64_t max_batch_total_tokens = 0;
  int64_t queue_size = 0;       // submitted, not yet running
  int64_t running = 0;          // sequences in the batch
  int64_t running_tokens = 0;   // KV tokens they hold
  int64_t preemptions = 0;      // total sequences preempted (recompute)
  int64_t prefix_cache_hits = 0;  // total prompt tokens served from the prefix cache
  // Start-up measurements (device bytes; all 0 where the backend cannot report its memory).
  int64_t device_total_bytes = 0;
  int64_t free_before_warmup = 0;   // after loading the weights, before the engine allocated
  int64_t free_after_warmup = 0;    // every step buffer and workspace allocated, no KV cache
  int64_t graph_reserve_bytes = 0;  // kept back for the decode graphs (measured at warm-up)
};

// Reported after every step, on the engine thread (for metrics; must not block).
struct StepReport {
  int32_t prefill_sequences = 0;  // sequences with a prompt chunk in this step
  int32_t prefill_tokens = 0;
  int32_t decode_sequences = 0;
  int32_t admitted = 0;           // sequences that started this step
  int32_t preempted = 0;
  bool sampled_on_device = false;  // the step's tokens were chosen on the device (device_sampler.h)
  double forward_seconds = 0;
  double sample_seconds = 0;      // sampling, stop criteria, detokenization
  double step_seconds = 0;
};
using StepObserver = std::function<void(const StepReport&, const EngineStats&)>;

class RequestHandle {
 public:
  virtual ~RequestHandle() = default;
  // Stops the request: its KV blocks and adapter pin are freed at the next step and no more
  // events are sent (not even a final one). Safe from any thread, any number of times.
  virtual void cancel() = 0;
  virtual uint64_t id() const = 0;
};

class Engine {
 public:
  virtual ~Engine() = default;

  // Queues a request. Throws mil::Error (nothing queued) for a request the engine can never
  // run: empty prompt, ids outside the vocabulary, an unknown adapter, prompt + max_new_tokens
  // over the model's positions or larger than the whole cache. Events go to `sink`.
  virtual std::shared_ptr<RequestHandle> submit(EngineRequest request, EventSink sink) = 0;

  virtual EngineStats stats() const = 0;
  virtual void set_step_observer(StepObserver observer) = 0;  // before the first submit

  // Stops admitting; returns once every running and queued request has finished.
  virtual void drain() = 0;
  // Stops the engine thread; unfinished requests get a final Error event.
  virtual void shutdown() = 0;
};

// The real engine over `model` (and its tokenizer for detokenization and stop sequences). The
// model, tokenizer and adapter store must outlive it. Starts the engine thread.
std::unique_ptr<Engine> make_engine(LlamaModel& model, const ModelTokenizer& tokenizer,
                                    EngineOptions options);

}  // namespace mil
