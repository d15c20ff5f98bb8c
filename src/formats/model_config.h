// The architecture description of a Llama-family model, read from an HF config.json or
// from GGUF metadata. Plain data: the model/ part decides what to do with it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mil {

class GGUFFile;

enum class RopeScaling : uint8_t { None, Linear, Llama3 };

struct RopeConfig {
  double theta = 10000.0;
  RopeScaling scaling = RopeScaling::None;
  double factor = 1.0;
  // llama3 only
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position = 8192;
  // GGUF llama files store q/k rows permuted so that rotation pairs are adjacent.
  bool interleaved = false;
};

struct ModelConfig {
  std::string architecture;  // "LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  RopeConfig rope;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;        // Qwen2 always; Llama with attention_bias
  bool o_proj_bias = false;     // Llama with attention_bias
  bool mlp_bias = false;
  std::vector<int32_t> eos_token_ids;
  int32_t bos_token_id = -1;

  // Checks ranges and divisibility; `source` names the file in errors.
  void validate(const std::string& source) const;
};

// Parses an HF config.json. Errors name the file and the field.
ModelConfig parse_hf_config(const std::string& path);
ModelConfig parse_hf_config_text(const std::string& text, const std::string& source);

// Reads the llama.* (or qwen2.*) metadata of a GGUF file.
ModelConfig config_from_gguf(const GGUFFile& gguf);

}  // namespace mil
