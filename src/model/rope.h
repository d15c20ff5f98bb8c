// Rotary embedding frequencies as transformers computes them (default, linear and llama3
// scaling), so the rope op only multiplies positions by a table.
#pragma once

#include <vector>

#include "formats/model_config.h"

namespace mil {

// inv_freq[i] for i in [0, head_dim/2), scaling folded in. `freq_factors` (GGUF's
// rope_freqs.weight, llama3 files) divides each frequency when given.
std::vector<float> rope_inv_freq(const ModelConfig& config, const float* freq_factors = nullptr);

}  // namespace mil
