// Per-request token choice: greedy or sampled (temperature, top-k, top-p) with a seeded
// generator, so the same seed gives the same tokens.
#pragma once

#include <cstdint>
#include <random>

#include "backends/ops.h"

namespace mil {

// Where the engine and the generator choose tokens (device_sampler.h). Auto: on the device
// when the model's backend is not the host CPU; On: always through the device path (on the
// CPU backend too, which runs the same ops on host memory: how CPU tests exercise it); Off:
// always on the host, from logits copied there. Both choose the same tokens.
enum class SampleOnDevice { Auto, On, Off };

// Whether `where` means the device path for a model whose ops are `ops`.
inline bool samples_on_device(SampleOnDevice where, const Ops& ops) {
  return where == SampleOnDevice::On ||
         (where == SampleOnDevice::Auto && ops.device() != Device::CPU);
}

class Sampler {
 public:
  Sampler(SamplingParams params, uint64_t seed) : params_(params), rng_(seed) {}

  const SamplingParams& params() const { return params_; }
  bool greedy() const { return params_.temperature <= 0.0f; }
  // A uniform draw in [0, 1) with 24 random bits (exactly representable as float).
  float next_uniform() { return static_cast<float>(rng_() >> 40) * 0x1.0p-24f; }

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
};

}  // namespace mil
