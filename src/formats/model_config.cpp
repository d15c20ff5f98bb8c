#include "formats/model_config.h"

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "formats/gguf.h"

namespace mil {
namespace {

using nlohmann::json;

class ConfigReader {
 public:
  ConfigReader(const json& j, std::string source) : j_(j), source_(std::move(source)) {}

  int64_t get_int(const char* key) const {
    const json* v = find(key);
    if (v == nullptr) fail("{}: missing field '{}'", source_, key);
    return as_int(*v, key);
  }
  int64_t get_int(const char* key, int64_t fallback) const {
    const json* v = find(key);
    return v == nullptr ? fallback : as_int(*v, key);
  }
  double get_float(const json& obj, const char* key, double fallback) const {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return fallback;
    if (!it->is_number()) fail("{}: field '{}' must be a number", source_, key);
    return it->get<double>();
  }
  double get_float(const char* key, double fallback) const { return get_float(j_, key, fallback); }
  bool get_bool(const char* key, bool fallback) const {
    const json* v = find(key);
    if (v == nullptr) return fallback;
    if (!v->is_boolean()) fail("{}: field '{}' must be true or false", source_, key);
    return v->get<bool>();
  }
  const json* find(const char* key) const {
    auto it = j_.find(key);
    return it == j_.end() || it->is_null() ? nullptr : &*it;
  }
  int64_t as_int(const json& v, const char* key) const {
    if (!v.is_number_integer()) fail("{}: field '{}' must be an integer", source_, key);
    return v.get<int64_t>();
  }
  const std::string& source() const { return source_; }

 private:
  const json& j_;
  std::string source_;
};

// transformers <= 4.x writes rope_theta + rope_scaling; 5.x writes rope_parameters.
RopeConfig parse_rope(const ConfigReader& r, const json& j) {
  RopeConfig rope;
  const json* params = nullptr;
  if (auto it = j.find("rope_parameters"); it != j.end() && it->is_object()) params = &*it;
  if (auto it = j.find("rope_scaling"); params == nullptr && it != j.end() && it->is_object()) {
    params = &*it;
  }
  rope.theta = r.get_float("rope_theta", 10000.0);
  if (params == nullptr) return rope;
  rope.theta = r.get_float(*params, "rope_theta", rope.theta);
  std::string type = "default";
  for (const char* key : {"rope_type", "type"}) {
    if (auto it = params->find(key); it != params->end()) {
      if (!it->is_string()) fail("{}: field 'rope_parameters.{}' must be a string", r.source(), key);
      type = it->get<std::string>();
      break;
    }
  }
  if (type == "default") return rope;
  rope.factor = r.get_float(*params, "factor", 1.0);
  if (!(rope.factor > 0)) fail("{}: rope scaling factor must be positive", r.source());
  if (type == "linear") {
    rope.scaling = RopeScaling::Linear;
  } else if (type == "llama3") {
    rope.scaling = RopeScaling::Llama3;
    rope.low_freq_factor = r.get_float(*params, "low_freq_factor", 1.0);
    rope.high_freq_factor = r.get_float(*params, "high_freq_factor", 4.0);
    auto it = params->find("original_max_position_embeddings");
    if (it == params->end() || !it->is_number_integer()) {
      fail("{}: llama3 rope scaling needs integer 'original_max_position_embeddings'", r.source());
    }
    rope.original_max_position = it->get<int64_t>();
    if (!(rope.high_freq_factor > rope.low_freq_factor)) {
      fail("{}: llama3 rope scaling needs high_freq_factor > low_freq_factor", r.source());
    }
  } else {
    fail("{}: rope scaling type '{}' is not supported (supported: default, linear, llama3)",
         r.source(), type);
  }
  return rope;
}

std::vector<int32_t> parse_token_ids(const ConfigReader& r, const json& j, const char* key) {
  std::vector<int32_t> ids;
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return ids;
  auto add = [&](const json& v) { ids.push_back(static_cast<int32_t>(r.as_int(v, key))); };
  if (it->is_array()) {
    for (const json& v : *it) add(v);
  } else {
    add(*it);
  }
  return ids;
}

}  // namespace

void ModelConfig::validate(const std::string& source) const {
  auto positive = [&](int64_t v, const char* field, int64_t max) {
    if (v <= 0 || v > max) fail("{}: {} = {} is out of range (1..{})", source, field, v, max);
  };
  positive(vocab_size, "vocab_size", int64_t{1} << 24);
  positive(hidden_size, "hidden_size", int64_t{1} << 17);
  positive(intermediate_size, "intermediate_size", int64_t{1} << 19);
  positive(num_layers, "num_hidden_layers", 1024);
  positive(num_heads, "num_attention_heads", 1024);
  positive(num_kv_heads, "num_key_value_heads", 1024);
  positive(head_dim, "head_dim", 1024);
  positive(max_position_embeddings, "max_position_embeddings", int64_t{1} << 24);
  if (num_heads % num_kv_heads != 0) {
    fail("{}: num_attention_heads ({}) must be a multiple of num_key_value_heads ({})", source,
         num_heads, num_kv_heads);
  }
  if (head_dim % 2 != 0) fail("{}: head_dim ({}) must be even for rotary embeddings", source, head_dim);
  if (!(rms_norm_eps > 0) || !std::isfinite(rms_norm_eps)) {
    fail("{}: rms_norm_eps must be positive", source);
  }
  if (!(rope.theta > 0) || !std::isfinite(rope.theta)) fail("{}: rope_theta must be positive", source);
}

ModelConfig parse_hf_config_text(const std::string& text, const std::string& source) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    fail("{}: invalid JSON: {}", source, e.what());
  }
  if (!j.is_object()) fail("{}: expected a JSON object", source);
  ConfigReader r(j, source);
  ModelConfig c;

  std::string model_type;
  if (auto it = j.find("model_type"); it != j.end() && it->is_string()) model_type = *it;
  if (auto it = j.find("architectures"); it != j.end() && it->is_array() && !it->empty() &&
                                         (*it)[0].is_string()) {
    c.architecture = (*it)[0].get<std::string>();
  }
  static const std::pair<const char*, const char*> kSupported[] = {
      {"llama", "LlamaForCausalLM"}, {"mistral", "MistralForCausalLM"}, {"qwen2", "Qwen2ForCausalLM"}};
  bool known = false;
  for (const auto& [type, arch] : kSupported) {
    if (model_type == type || c.architecture == arch) {
      known = true;
      model_type = type;
      c.architecture = arch;
    }
  }
  if (!known) {
    fail("{}: unsupported architecture (model_type '{}', architectures '{}'); supported: llama, "
         "mistral, qwen2",
         source, model_type, c.architecture);
  }

  c.vocab_size = r.get_int("vocab_size");
  c.hidden_size = r.get_int("hidden_size");
  c.intermediate_size = r.get_int("intermediate_size");
  c.num_layers = r.get_int("num_hidden_layers");
  c.num_heads = r.get_int("num_attention_heads");
  c.num_kv_heads = r.get_int("num_key_value_heads", c.num_heads);
  c.head_dim = r.get_int("head_dim", c.num_heads > 0 ? c.hidden_size / c.num_heads : 0);
  c.max_position_embeddings = r.get_int("max_position_embeddings", 2048);
  c.rms_norm_eps = r.get_float("rms_norm_eps", 1e-6);
  c.rope = parse_rope(r, j);
  c.tie_word_embeddings = r.get_bool("tie_word_embeddings", false);
  if (model_type == "qwen2") {
    c.qkv_bias = true;
    if (r.get_bool("use_sliding_window", false)) {
      fail("{}: use_sliding_window = true is not supported (full attention only)", source);
    }
  } else {
    c.qkv_bias = c.o_proj_bias = r.get_bool("attention_bias", false);
    c.mlp_bias = r.get_bool("mlp_bias", false);
  }
  if (model_type == "mistral") {
    // Full attention only: a sliding window is honoured by capping the context at it.
    const int64_t window = r.get_int("sliding_window", 0);
    if (window > 0 && window < c.max_position_embeddings) c.max_position_embeddings = window;
  }
  if (const json* act = r.find("hidden_act"); act != nullptr && *act != "silu") {
    fail("{}: hidden_act '{}' is not supported (silu only)", source, act->dump());
  }
  c.eos_token_ids = parse_token_ids(r, j, "eos_token_id");
  if (auto ids = parse_token_ids(r, j, "bos_token_id"); !ids.empty()) c.bos_token_id = ids[0];
  c.validate(source);
  return c;
}

ModelConfig parse_hf_config(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open", path);
  std::ostringstream text;
  text << in.rdbuf();
  return parse_hf_config_text(text.str(), path);
}

ModelConfig config_from_gguf(const GGUFFile& gguf) {
  const std::string& source = gguf.path();
  const std::string arch{gguf.get_string("general.architecture").value_or("")};
  ModelConfig c;
  if (arch == "llama") {
    c.architecture = "LlamaForCausalLM";
    c.rope.interleaved = true;  // convert_hf_to_gguf permutes llama q/k rows
  } else if (arch == "qwen2") {
    c.architecture = "Qwen2ForCausalLM";
    c.qkv_bias = true;
  } else {
    fail("{}: general.architecture '{}' is not supported (supported: llama, qwen2)", source, arch);
  }
  auto need_int = [&](const std::string& key) {
    auto v = gguf.get_int(key);
    if (!v) fail("{}: missing metadata '{}'", source, key);
    return *v;
  };
  const std::string p = arch + ".";
  c.num_layers = need_int(p + "block_count");
  c.hidden_size = need_int(p + "embedding_length");
  c.intermediate_size = need_int(p + "feed_forward_length");
  c.num_heads = need_int(p + "attention.head_count");
  c.num_kv_heads = gguf.get_int(p + "attention.head_count_kv").value_or(c.num_heads);
  c.head_dim = gguf.get_int(p + "attention.key_length")
                   .value_or(gguf.get_int(p + "rope.dimension_count")
                                 .value_or(c.num_heads > 0 ? c.hidden_size / c.num_heads : 0));
  c.max_position_embeddings = gguf.get_int(p + "context_length").value_or(2048);
  c.rms_norm_eps = gguf.get_float(p + "attention.layer_norm_rms_epsilon").value_or(1e-5);
  c.rope.theta = gguf.get_float(p + "rope.freq_base").value_or(10000.0);
  if (auto type = gguf.get_string(p + "rope.scaling.type"); type && *type != "none") {
    if (*type != "linear") {
      fail("{}: {}rope.scaling.type '{}' is not supported (linear only; llama3 comes as "
           "rope_freqs.weight)", source, p, *type);
    }
    c.rope.scaling = RopeScaling::Linear;
    c.rope.factor = gguf.get_float(p + "rope.scaling.factor").value_or(1.0);
  }
  if (auto v = gguf.get_int(p + "vocab_size")) {
    c.vocab_size = *v;
  } else if (auto tokens = gguf.get_string_array("tokenizer.ggml.tokens")) {
    c.vocab_size = static_cast<int64_t>(tokens->size());
  } else if (const TensorInfo* emb = gguf.find("token_embd.weight"); emb && !emb->shape.empty()) {
    c.vocab_size = emb->shape[0];
  }
  c.tie_word_embeddings = gguf.find("output.weight") == nullptr;
  if (auto v = gguf.get_int("tokenizer.ggml.bos_token_id")) c.bos_token_id = static_cast<int32_t>(*v);
  if (auto v = gguf.get_int("tokenizer.ggml.eos_token_id")) c.eos_token_ids.push_back(static_cast<int32_t>(*v));
  if (auto v = gguf.get_int("tokenizer.ggml.eot_token_id")) {
    if (c.eos_token_ids.empty() || c.eos_token_ids[0] != *v) c.eos_token_ids.push_back(static_cast<int32_t>(*v));
  }
  c.validate(source);
  return c;
}

}  // namespace mil
