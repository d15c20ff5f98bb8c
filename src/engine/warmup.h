// The engine's start-up: warm-up, then the size of the KV cache (see EngineOptions in
// engine.h). Apart from engine.cpp so that the sizing can be read (and tested) on its own.
#pragma once

#include <cstdint>

#include "engine/engine.h"

namespace mil {

class DeviceSampler;
class LlamaModel;

struct KvSizing {
  int64_t blocks = 0;
  int64_t bytes_per_block = 0;
  // Device bytes measured at warm-up (0 where the backend cannot report its memory).
  int64_t device_total = 0;
  int64_t free_before = 0;
  int64_t free_after = 0;
  int64_t graph_reserve = 0;
};

// Reserves every per-step buffer of `model` for the engine's largest steps (`step_logit_rows`:
// the engine's budget of prompt-logprob rows per step), runs the warm-up steps and measures
// the decode graphs where the backend reports its memory (or options.always_warm_up), and
// returns how many KV blocks the cache gets. Fails with the measurements when none fits.
// `sampler` (the engine's device path of token choice, or null) is reserved with the model's
// buffers, so that its memory is in use when the cache is sized.
KvSizing warm_up_and_size_kv(LlamaModel& model, const EngineOptions& options,
                             int64_t step_logit_rows, DeviceSampler* sampler);

}  // namespace mil
