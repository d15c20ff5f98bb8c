#include "model/rope.h"

#include <cmath>
#include <numbers>

namespace mil {

std::vector<float> rope_inv_freq(const ModelConfig& config, const float* freq_factors) {
  const RopeConfig& rope = config.rope;
  const int64_t dim = config.head_dim;
  std::vector<float> inv_freq(dim / 2);
  for (int64_t i = 0; i < dim / 2; ++i) {
    // transformers: 1 / base ** (arange(0, dim, 2).float() / dim), in float32.
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(dim);
    inv_freq[i] = 1.0f / std::pow(static_cast<float>(rope.theta), exponent);
  }
  switch (rope.scaling) {
    case RopeScaling::None:
      break;
    case RopeScaling::Linear:
      for (float& f : inv_freq) f = static_cast<float>(f / rope.factor);
      break;
    case RopeScaling::Llama3: {
      const double old_len = static_cast<double>(rope.original_max_position);
      const double low_wavelen = old_len / rope.low_freq_factor;
      const double high_wavelen = old_len / rope.high_freq_factor;
      for (float& f : inv_freq) {
        const double wavelen = 2 * std::numbers::pi / f;
        if (wavelen > low_wavelen) {
          f = static_cast<float>(f / rope.factor);
        } else if (wavelen >= high_wavelen) {  // medium band: interpolate
          const double smooth = (old_len / wavelen - rope.low_freq_factor) /
                                (rope.high_freq_factor - rope.low_freq_factor);
          f = static_cast<float>((1 - smooth) * f / rope.factor + smooth * f);
        }
      }
      break;
    }
  }
  if (freq_factors != nullptr) {
    for (int64_t i = 0; i < dim / 2; ++i) inv_freq[i] /= freq_factors[i];
  }
  return inv_freq;
}

}  // namespace mil
