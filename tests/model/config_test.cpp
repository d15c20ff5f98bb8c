// HF config.json parsing: both transformers 4.x (rope_theta + rope_scaling) and 5.x
// (rope_parameters) spellings, defaults, and clear errors on bad or unsupported input.
#include <gtest/gtest.h>

#include "core/error.h"
#include "formats/model_config.h"
#include "model/rope.h"
#include "model/weight_source.h"

namespace mil {
namespace {

const char* kLlama = R"({
  "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 256,
  "hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 2,
  "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
  "max_position_embeddings": 128, "rope_theta": 10000.0, "hidden_act": "silu",
  "tie_word_embeddings": true, "eos_token_id": [2, 3], "bos_token_id": 1
})";

std::string with(const std::string& base, const std::string& extra) {
  std::string s = base;
  s.insert(s.rfind('}'), ", " + extra);
  return s;
}

std::string error_of(const std::string& text) {
  try {
    parse_hf_config_text(text, "config.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(HfConfig, ReadsLlamaFieldsAndDerivesHeadDim) {
  const ModelConfig c = parse_hf_config_text(kLlama, "config.json");
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int32_t>{2, 3}));
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.rope.scaling, RopeScaling::None);
  EXPECT_FALSE(c.rope.interleaved);
}

TEST(HfConfig, ExplicitHeadDimAndQwen2Bias) {
  std::string qwen = kLlama;
  qwen.replace(qwen.find("\"llama\""), 7, "\"qwen2\"");
  qwen.replace(qwen.find("LlamaForCausalLM"), 16, "Qwen2ForCausalLM");
  const ModelConfig c = parse_hf_config_text(with(qwen, "\"head_dim\": 32"), "config.json");
  EXPECT_EQ(c.head_dim, 32);
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_FALSE(c.o_proj_bias);
}

TEST(HfConfig, RopeScalingOldAndNewSpelling) {
  const ModelConfig old_style = parse_hf_config_text(
      with(kLlama, R"("rope_scaling": {"type": "linear", "factor": 2.0})"), "config.json");
  EXPECT_EQ(old_style.rope.scaling, RopeScaling::Linear);
  EXPECT_EQ(old_style.rope.factor, 2.0);
  std::string v5 = kLlama;
  v5.replace(v5.find("\"rope_theta\": 10000.0"), 21,
             R"("rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64})");
  const ModelConfig c = parse_hf_config_text(v5, "config.json");
  EXPECT_EQ(c.rope.scaling, RopeScaling::Llama3);
  EXPECT_EQ(c.rope.theta, 500000.0);
  EXPECT_EQ(c.rope.original_max_position, 64);
}

TEST(HfConfig, ErrorsNameTheFileAndField) {
  EXPECT_NE(error_of("{").find("config.json: invalid JSON"), std::string::npos);
  EXPECT_NE(error_of("[1]").find("expected a JSON object"), std::string::npos);
  std::string no_hidden = kLlama;
  no_hidden.replace(no_hidden.find("\"hidden_size\": 64,"), 18, "");
  EXPECT_NE(error_of(no_hidden).find("missing field 'hidden_size'"), std::string::npos);
  std::string bad_type = kLlama;
  bad_type.replace(bad_type.find("\"hidden_size\": 64"), 17, "\"hidden_size\": \"64\"");
  EXPECT_NE(error_of(bad_type).find("'hidden_size' must be an integer"), std::string::npos);
  std::string gpt2 = kLlama;
  gpt2.replace(gpt2.find("\"llama\""), 7, "\"gpt2\"");
  gpt2.replace(gpt2.find("LlamaForCausalLM"), 16, "GPT2LMHeadModel");
  EXPECT_NE(error_of(gpt2).find("unsupported architecture"), std::string::npos);
  EXPECT_NE(error_of(with(kLlama, R"("rope_scaling": {"rope_type": "yarn", "factor": 4.0})"))
                .find("'yarn' is not supported"),
            std::string::npos);
  std::string bad_heads = kLlama;
  bad_heads.replace(bad_heads.find("\"num_key_value_heads\": 2"), 24, "\"num_key_value_heads\": 3");
  EXPECT_NE(error_of(bad_heads).find("must be a multiple of num_key_value_heads"), std::string::npos);
  std::string huge = kLlama;
  huge.replace(huge.find("\"num_hidden_layers\": 2"), 22, "\"num_hidden_layers\": 99999999");
  EXPECT_NE(error_of(huge).find("out of range"), std::string::npos);
}

TEST(Rope, Llama3ScalingMatchesTransformersFormula) {
  ModelConfig c = parse_hf_config_text(kLlama, "config.json");
  c.head_dim = 128;
  c.rope.theta = 500000.0;
  c.rope.scaling = RopeScaling::Llama3;
  c.rope.factor = 8.0;
  c.rope.original_max_position = 8192;
  const std::vector<float> f = rope_inv_freq(c);
  ASSERT_EQ(f.size(), 64u);
  // High frequencies (short wavelengths) are unchanged, low ones divided by the factor.
  EXPECT_FLOAT_EQ(f[0], 1.0f);
  const float base_last = 1.0f / std::pow(500000.0f, 126.0f / 128.0f);
  EXPECT_NEAR(f[63], base_last / 8.0f, 1e-12);
  // Index 32: wavelength 2*pi/inv_freq lies in the smoothed band for these settings.
  const double inv = 1.0 / std::pow(500000.0, 64.0 / 128.0);
  const double wavelen = 2 * M_PI / inv;
  ASSERT_GT(wavelen, 8192.0 / 4.0);
  ASSERT_LT(wavelen, 8192.0 / 1.0);
  const double smooth = (8192.0 / wavelen - 1.0) / (4.0 - 1.0);
  EXPECT_NEAR(f[32], (1 - smooth) * inv / 8.0 + smooth * inv, inv * 1e-5);
}

TEST(WeightNames, HfNamesMapToGgufNames) {
  EXPECT_EQ(gguf_tensor_name("model.embed_tokens.weight"), "token_embd.weight");
  EXPECT_EQ(gguf_tensor_name("lm_head.weight"), "output.weight");
  EXPECT_EQ(gguf_tensor_name("model.layers.12.self_attn.q_proj.bias"), "blk.12.attn_q.bias");
  EXPECT_EQ(gguf_tensor_name("model.layers.0.mlp.down_proj.weight"), "blk.0.ffn_down.weight");
  EXPECT_EQ(gguf_tensor_name("model.layers.0.post_attention_layernorm.weight"),
            "blk.0.ffn_norm.weight");
  EXPECT_EQ(gguf_tensor_name("model.layers.x.mlp.down_proj.weight"), "");
}

}  // namespace
}  // namespace mil
