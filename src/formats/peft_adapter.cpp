#include "formats/peft_adapter.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>
#include <sstream>

#include "core/error.h"

namespace mil {
namespace {

namespace fs = std::filesystem;
// Ordered: PEFT takes the FIRST rank_pattern/alpha_pattern key that matches, in file order.
using json = nlohmann::ordered_json;

constexpr LoraTarget kTargets[kNumLoraTargets] = {LoraTarget::Q,    LoraTarget::K,  LoraTarget::V,
                                                  LoraTarget::O,    LoraTarget::Gate, LoraTarget::Up,
                                                  LoraTarget::Down};
constexpr uintmax_t kMaxConfigBytes = 1 << 20;  // real configs are ~1 KB
constexpr int kMaxJsonDepth = 16;
constexpr size_t kMaxPatternChars = 4096;  // bounds std::regex compile cost on hostile input

std::string shape_of(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

json read_config_json(const std::string& path) {
  std::error_code ec;
  const uintmax_t size = fs::file_size(path, ec);
  if (ec) fail("{}: cannot read the adapter config: {}", path, ec.message());
  if (size > kMaxConfigBytes) fail("{}: {} bytes is too large for an adapter config", path, size);
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  if (!in) fail("{}: cannot read the adapter config", path);
  auto depth_guard = [&](int depth, json::parse_event_t event, json&) {
    if ((event == json::parse_event_t::object_start || event == json::parse_event_t::array_start) &&
        depth >= kMaxJsonDepth) {
      fail("{}: JSON nests deeper than {} levels", path, kMaxJsonDepth);
    }
    return true;
  };
  json j;
  try {
    j = json::parse(text.str(), depth_guard);
  } catch (const json::exception& e) {
    fail("{}: not valid JSON: {}", path, e.what());
  }
  if (!j.is_object()) fail("{}: the adapter config must be a JSON object", path);
  return j;
}

// How PEFT decides whether a module path is targeted (tuners_utils.check_target_module_exists):
// a string is a regex that must match the whole path; list entries match the whole path or a
// dotted suffix of it.
bool name_matches(const std::string& path, const std::string& name) {
  return path == name || (path.size() > name.size() && path.ends_with(name) &&
                          path[path.size() - name.size() - 1] == '.');
}

struct NameMatcher {
  std::vector<std::string> names;
  std::optional<std::regex> regex;
  bool set = false;

  bool matches(const std::string& path) const {
    if (regex) return std::regex_match(path, *regex);
    return std::any_of(names.begin(), names.end(),
                       [&](const std::string& n) { return name_matches(path, n); });
  }
  bool matches_exactly(const std::string& path) const {
    return !regex && std::find(names.begin(), names.end(), path) != names.end();
  }
};

std::regex compile_regex(const std::string& pattern, const std::string& file, const std::string& field) {
  if (pattern.size() > kMaxPatternChars) {
    fail("{}: field '{}': pattern longer than {} characters", file, field, kMaxPatternChars);
  }
  try {
    return std::regex(pattern, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    fail("{}: field '{}': '{}' is not a regular expression MIL can use: {}", file, field,
         printable_name(pattern), e.what());
  }
}

struct PatternValue {
  std::string key;
  std::regex regex;
  double value;
};

struct LoraConfig {
  int64_t r = 8;  // PEFT's defaults, for hand-written configs that omit fields
  double alpha = 8;
  bool rslora = false;
  NameMatcher targets, excludes;
  std::optional<std::vector<int64_t>> layers;  // layers_to_transform
  std::vector<std::regex> layer_patterns;      // layers_pattern, as `.*\.P\.(\d+)\.`
  std::vector<PatternValue> rank_pattern, alpha_pattern;
};

class ConfigReader {
 public:
  ConfigReader(const json& j, const std::string& path) : j_(j), path_(path) {}

  const json* find(const char* key) const {
    auto it = j_.find(key);
    return it == j_.end() || it->is_null() ? nullptr : &*it;
  }
  bool get_bool(const char* key, bool fallback) const {
    const json* v = find(key);
    if (v == nullptr) return fallback;
    if (!v->is_boolean()) fail("{}: field '{}' must be true or false", path_, key);
    return v->get<bool>();
  }
  std::string get_string(const char* key, const std::string& fallback) const {
    const json* v = find(key);
    if (v == nullptr) return fallback;
    if (!v->is_string()) fail("{}: field '{}' must be a string", path_, key);
    return v->get<std::string>();
  }
  int64_t positive_int(const json& v, const std::string& field) const {
    if (!v.is_number_integer() || v.get<int64_t>() <= 0 || v.get<int64_t>() > (1 << 16)) {
      fail("{}: field '{}' must be a positive integer (at most 65536), got {}", path_, field,
           printable_name(v.dump()));
    }
    return v.get<int64_t>();
  }
  double finite_number(const json& v, const std::string& field) const {
    if (!v.is_number() || !std::isfinite(v.get<double>())) {
      fail("{}: field '{}' must be a finite number, got {}", path_, field, printable_name(v.dump()));
    }
    return v.get<double>();
  }
  // A field that, when set to anything but its neutral value, changes the math MIL would do.
  void refuse_if(bool cond, const char* key, const char* why) const {
    if (cond) fail("{}: field '{}': {}", path_, key, why);
  }
  NameMatcher names(const char* key) const {
    NameMatcher m;
    const json* v = find(key);
    if (v == nullptr) return m;
    m.set = true;
    if (v->is_string()) {
      std::string s = v->get<std::string>();
      std::string lower = s;
      std::transform(lower.begin(), lower.end(), lower.begin(),
                     [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
      if (lower == "all-linear") {  // PEFT: every linear layer but the output head
        for (LoraTarget t : kTargets) m.names.emplace_back(lora_target_name(t));
      } else {
        m.regex = compile_regex(s, path_, key);
      }
      return m;
    }
    if (!v->is_array()) fail("{}: field '{}' must be a list of module names or a regex string", path_, key);
    for (const json& e : *v) {
      if (!e.is_string() || e.get<std::string>().empty()) {
        fail("{}: field '{}' must hold non-empty strings, got {}", path_, key, printable_name(e.dump()));
      }
      m.names.push_back(e.get<std::string>());
    }
    return m;
  }
  std::vector<PatternValue> patterns(const char* key, bool integer) const {
    std::vector<PatternValue> out;
    const json* v = find(key);
    if (v == nullptr) return out;
    if (!v->is_object()) fail("{}: field '{}' must be an object of module patterns", path_, key);
    for (const auto& [k, value] : v->items()) {
      const std::string field = std::string(key) + "." + k;
      // PEFT's get_pattern_key: re.match(rf"(.*\.)?({key})$", module_path).
      std::regex re = compile_regex("(.*\\.)?(" + k + ")", path_, field);
      const double x = integer ? static_cast<double>(positive_int(value, field)) : finite_number(value, field);
      out.push_back({k, std::move(re), x});
    }
    return out;
  }

 private:
  const json& j_;
  const std::string& path_;
};

const PatternValue* first_match(const std::vector<PatternValue>& patterns, const std::string& path) {
  for (const PatternValue& p : patterns) {
    if (std::regex_match(path, p.regex)) return &p;
  }
  return nullptr;
}

LoraConfig parse_config(const json& j, const std::string& path, std::string& base_model) {
  ConfigReader r(j, path);
  const json* type = r.find("peft_type");
  if (type == nullptr) fail("{}: missing field 'peft_type' (expected \"LORA\")", path);
  if (!type->is_string() || type->get<std::string>() != "LORA") {
    fail("{}: field 'peft_type' is {}; MIL serves only LoRA adapters (\"LORA\")", path,
         printable_name(type->dump()));
  }
  base_model = r.get_string("base_model_name_or_path", "");

  LoraConfig c;
  if (const json* v = r.find("r")) c.r = r.positive_int(*v, "r");
  if (const json* v = r.find("lora_alpha")) c.alpha = r.finite_number(*v, "lora_alpha");
  c.rslora = r.get_bool("use_rslora", false);

  r.refuse_if(r.get_bool("use_dora", false), "use_dora", "DoRA adapters are not supported");
  r.refuse_if(r.get_bool("fan_in_fan_out", false), "fan_in_fan_out",
              "must be false (Conv1D-style weights are not Llama projections)");
  r.refuse_if(r.get_string("bias", "none") != "none", "bias",
              "must be \"none\" (adapters that train biases are not supported)");
  r.refuse_if(r.get_bool("lora_bias", false), "lora_bias", "LoRA B biases are not supported");
  // Fields whose non-empty values add weights outside the LoRA pairs MIL applies.
  for (const char* key : {"modules_to_save", "layer_replication", "target_parameters",
                          "trainable_token_indices", "alora_invocation_tokens"}) {
    const json* v = r.find(key);
    r.refuse_if(v != nullptr && !v->empty(), key, "must be empty: MIL applies LoRA pairs only");
  }

  c.targets = r.names("target_modules");
  if (!c.targets.set) fail("{}: missing field 'target_modules'", path);
  c.excludes = r.names("exclude_modules");

  if (const json* v = r.find("layers_to_transform")) {
    if (c.targets.regex) {
      fail("{}: field 'layers_to_transform' cannot be combined with a regex 'target_modules' "
           "(PEFT refuses it too)", path);
    }
    std::vector<int64_t> layers;
    if (v->is_number_integer()) {
      layers.push_back(v->get<int64_t>());
    } else if (v->is_array()) {
      for (const json& e : *v) {
        if (!e.is_number_integer()) fail("{}: field 'layers_to_transform' must hold integers", path);
        layers.push_back(e.get<int64_t>());
      }
    } else {
      fail("{}: field 'layers_to_transform' must be an integer or a list of integers", path);
    }
    if (!layers.empty()) c.layers = std::move(layers);
  }
  if (const json* v = r.find("layers_pattern")) {
    std::vector<std::string> patterns;
    if (v->is_string()) {
      patterns.push_back(v->get<std::string>());
    } else if (v->is_array()) {
      for (const json& e : *v) {
        if (!e.is_string()) fail("{}: field 'layers_pattern' must hold strings", path);
        patterns.push_back(e.get<std::string>());
      }
    } else {
      fail("{}: field 'layers_pattern' must be a string or a list of strings", path);
    }
    if (!patterns.empty() && !c.layers) {
      fail("{}: field 'layers_pattern' is set without 'layers_to_transform' (PEFT refuses it too)", path);
    }
    for (const std::string& p : patterns) {
      c.layer_patterns.push_back(compile_regex(".*\\." + p + "\\.(\\d+)\\..*", path, "layers_pattern"));
    }
  }
  c.rank_pattern = r.patterns("rank_pattern", true);
  c.alpha_pattern = r.patterns("alpha_pattern", false);
  return c;
}

// PEFT's layer filter: only suffix matches of a list are filtered, by the index found after
// the layers_pattern component (or after any component when no pattern is given).
bool in_transformed_layers(const LoraConfig& c, const std::string& path) {
  if (!c.layers || c.targets.matches_exactly(path)) return true;
  static const std::regex kAnyLayer(R"(.*\.[^.]*\.(\d+)\..*)");
  std::smatch m;
  bool found = false;
  if (c.layer_patterns.empty()) {
    found = std::regex_match(path, m, kAnyLayer);
  } else {
    for (const std::regex& re : c.layer_patterns) {
      if ((found = std::regex_match(path, m, re))) break;
    }
  }
  if (!found) return false;
  const int64_t index = std::stoll(m[1].str());
  return std::find(c.layers->begin(), c.layers->end(), index) != c.layers->end();
}

// Modules of a Llama model that PEFT could target but MIL's LoRA does not handle. A config
// that targets one would change the model in a way MIL would silently skip.
constexpr const char* kUnsupportedModules[] = {"lm_head", "model.embed_tokens"};

std::string locate_weights(const std::string& dir) {
  const fs::path d(dir);
  std::error_code ec;
  if (!fs::is_directory(d, ec)) fail("{}: not a directory (expected a PEFT adapter folder)", dir);
  const fs::path st = d / "adapter_model.safetensors";
  if (fs::exists(st, ec)) return st.string();
  if (fs::exists(d / "adapter_model.bin", ec)) {
    fail("{}: only a pickle checkpoint; MIL never unpickles files. Convert it to "
         "adapter_model.safetensors (e.g. PeftModel.save_pretrained(..., safe_serialization=True))",
         (d / "adapter_model.bin").string());
  }
  fail("{}: missing adapter weights (adapter_model.safetensors)", st.string());
}

std::string locate_config(const std::string& dir) {
  const fs::path p = fs::path(dir) / "adapter_config.json";
  std::error_code ec;
  if (!fs::is_regular_file(p, ec)) fail("{}: missing adapter config", p.string());
  return p.string();
}

}  // namespace

std::string_view lora_target_name(LoraTarget t) {
  switch (t) {
    case LoraTarget::Q: return "q_proj";
    case LoraTarget::K: return "k_proj";
    case LoraTarget::V: return "v_proj";
    case LoraTarget::O: return "o_proj";
    case LoraTarget::Gate: return "gate_proj";
    case LoraTarget::Up: return "up_proj";
    case LoraTarget::Down: return "down_proj";
  }
  return "?";
}

std::string lora_module_path(int64_t layer, LoraTarget t) {
  const bool attn = t == LoraTarget::Q || t == LoraTarget::K || t == LoraTarget::V || t == LoraTarget::O;
  return "model.layers." + std::to_string(layer) + (attn ? ".self_attn." : ".mlp.") +
         std::string(lora_target_name(t));
}

int64_t lora_in_features(const ModelConfig& c, LoraTarget t) {
  switch (t) {
    case LoraTarget::O: return c.num_heads * c.head_dim;
    case LoraTarget::Down: return c.intermediate_size;
    default: return c.hidden_size;
  }
}

int64_t lora_out_features(const ModelConfig& c, LoraTarget t) {
  switch (t) {
    case LoraTarget::Q: return c.num_heads * c.head_dim;
    case LoraTarget::K:
    case LoraTarget::V: return c.num_kv_heads * c.head_dim;
    case LoraTarget::Gate:
    case LoraTarget::Up: return c.intermediate_size;
    default: return c.hidden_size;
  }
}

PeftAdapter::PeftAdapter(const std::string& dir, const ModelConfig& base)
    : config_path_(locate_config(dir)), file_(locate_weights(dir)) {
  const std::string& cfg = config_path_;
  const std::string& st = file_.path();
  const LoraConfig c = parse_config(read_config_json(cfg), cfg, base_model_);
  config_rank_ = static_cast<int32_t>(c.r);
  config_scale_ = static_cast<float>(c.rslora ? c.alpha / std::sqrt(static_cast<double>(c.r))
                                              : c.alpha / static_cast<double>(c.r));

  // Which modules the config targets, with their rank and scale.
  struct Planned {
    bool targeted = false;
    int32_t rank = 0;
    float scale = 0;
    std::string rank_source;  // the config field the rank came from, for errors
  };
  const int64_t n_modules = base.num_layers * kNumLoraTargets;
  std::vector<Planned> plan(n_modules);
  std::map<std::string, int64_t, std::less<>> index_of;  // module path -> plan index
  std::vector<bool> entry_used(c.targets.names.size(), false);
  bool any_matched = false;
  for (int64_t layer = 0; layer < base.num_layers; ++layer) {
    for (LoraTarget t : kTargets) {
      const int64_t i = layer * kNumLoraTargets + static_cast<int>(t);
      const std::string path = lora_module_path(layer, t);
      index_of.emplace(path, i);
      if (!c.targets.matches(path)) continue;
      for (size_t e = 0; e < c.targets.names.size(); ++e) {
        if (name_matches(path, c.targets.names[e])) entry_used[e] = true;
      }
      any_matched = true;
      if (c.excludes.set && c.excludes.matches(path)) continue;
      if (!in_transformed_layers(c, path)) continue;
      Planned& p = plan[i];
      p.targeted = true;
      const PatternValue* rp = first_match(c.rank_pattern, path);
      const PatternValue* ap = first_match(c.alpha_pattern, path);
      p.rank = static_cast<int32_t>(rp ? rp->value : c.r);
      p.rank_source = rp ? "rank_pattern." + rp->key : std::string("r");
      const double alpha = ap ? ap->value : c.alpha;
      p.scale = static_cast<float>(c.rslora ? alpha / std::sqrt(static_cast<double>(p.rank))
                                            : alpha / static_cast<double>(p.rank));
    }
  }
  // A target MIL cannot apply must not be dropped silently.
  for (const char* other : kUnsupportedModules) {
    if (c.targets.matches(other) && !(c.excludes.set && c.excludes.matches(other))) {
      fail("{}: field 'target_modules' targets '{}'; MIL applies LoRA to q/k/v/o/gate/up/down "
           "projections only", cfg, other);
    }
  }
  for (size_t e = 0; e < entry_used.size(); ++e) {
    if (!entry_used[e]) {
      fail("{}: field 'target_modules': '{}' names no q/k/v/o/gate/up/down projection of the "
           "{}-layer base model; MIL applies LoRA to those only", cfg,
           printable_name(c.targets.names[e]), base.num_layers);
    }
  }
  if (c.targets.regex && !any_matched) {
    fail("{}: field 'target_modules': the regex matches no q/k/v/o/gate/up/down projection of the "
         "base model", cfg);
  }

  // Every tensor must be the A or B of a targeted module.
  constexpr std::string_view kPrefix = "base_model.model.";
  constexpr std::string_view kA = ".lora_A.weight", kB = ".lora_B.weight";
  std::vector<const TensorInfo*> a_of(n_modules, nullptr), b_of(n_modules, nullptr);
  for (const TensorInfo& info : file_.tensors()) {
    const std::string shown = printable_name(info.name);
    std::string_view name = info.name;
    const bool is_a = name.ends_with(kA), is_b = name.ends_with(kB);
    if (!name.starts_with(kPrefix) || (!is_a && !is_b)) {
      fail("{}: unexpected tensor '{}': MIL reads only base_model.model.<module>.lora_A/lora_B.weight "
           "of q/k/v/o/gate/up/down projections", st, shown);
    }
    name.remove_prefix(kPrefix.size());
    name.remove_suffix(kA.size());
    const auto it = index_of.find(name);
    if (it == index_of.end()) {
      fail("{}: tensor '{}' belongs to '{}', which is not a q/k/v/o/gate/up/down projection of the "
           "{}-layer base model", st, shown, printable_name(name), base.num_layers);
    }
    const int64_t i = it->second;
    if (!plan[i].targeted) {
      fail("{}: tensor '{}': module '{}' is not targeted by {} (target_modules / "
           "layers_to_transform / exclude_modules)", st, shown, it->first, cfg);
    }
    if (!info.dtype || (*info.dtype != DType::F32 && *info.dtype != DType::F16 &&
                        *info.dtype != DType::BF16)) {
      fail("{}: tensor '{}' has dtype {}; LoRA weights must be F32, F16 or BF16", st, shown,
           info.dtype_name);
    }
    if (info.shape.size() != 2) {
      fail("{}: tensor '{}' has shape {}; LoRA weights are 2-D", st, shown, shape_of(info.shape));
    }
    (is_a ? a_of : b_of)[i] = &info;
  }

  for (int64_t i = 0; i < n_modules; ++i) {
    const TensorInfo* a = a_of[i];
    const TensorInfo* b = b_of[i];
    if (a == nullptr && b == nullptr) continue;
    const int64_t layer = i / kNumLoraTargets;
    const LoraTarget t = kTargets[i % kNumLoraTargets];
    const std::string path = lora_module_path(layer, t);
    if (a == nullptr || b == nullptr) {
      fail("{}: module '{}' has {} but no {}", st, path, a ? "lora_A" : "lora_B", a ? "lora_B" : "lora_A");
    }
    const Planned& p = plan[i];
    const int64_t in = lora_in_features(base, t), out = lora_out_features(base, t);
    if (a->shape[0] != p.rank || b->shape[1] != p.rank) {
      fail("{}: module '{}': lora_A {} and lora_B {} have rank {}, but {} field '{}' says {}", st,
           path, shape_of(a->shape), shape_of(b->shape), a->shape[0] != p.rank ? a->shape[0] : b->shape[1],
           cfg, p.rank_source, p.rank);
    }
    if (a->shape[1] != in || b->shape[0] != out) {
      fail("{}: module '{}': lora_A {} / lora_B {} do not fit the base model, whose {} is [{}, {}] "
           "(out, in); is this adapter for another base model?", st, path, shape_of(a->shape),
           shape_of(b->shape), lora_target_name(t), out, in);
    }
    modules_.push_back({layer, t, p.rank, p.scale, a, b});
    max_rank_ = std::max(max_rank_, p.rank);
  }
  if (modules_.empty()) fail("{}: holds no LoRA tensors", st);
}

}  // namespace mil
