#include "model/weight_source.h"

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>

#include "core/error.h"
#include "formats/gguf.h"
#include "formats/safetensors.h"

namespace mil {
namespace fs = std::filesystem;

namespace {

class HfDirectorySource final : public WeightSource {
 public:
  explicit HfDirectorySource(const fs::path& dir) : origin_(dir.string()) {
    config_ = parse_hf_config((dir / "config.json").string());
    const fs::path index = dir / "model.safetensors.index.json";
    if (fs::exists(index)) {
      load_index(dir, index.string());
    } else if (fs::exists(dir / "model.safetensors")) {
      files_.push_back(std::make_unique<SafetensorsFile>((dir / "model.safetensors").string()));
      for (const TensorInfo& t : files_.back()->tensors()) by_name_[t.name] = 0;
    } else {
      fail("{}: no model.safetensors or model.safetensors.index.json (pickled .bin weights are "
           "not loaded)", origin_);
    }
  }

  const ModelConfig& config() const override { return config_; }
  const std::string& origin() const override { return origin_; }

  SourceTensor find(const std::string& hf_name) const override {
    auto it = by_name_.find(hf_name);
    if (it == by_name_.end()) return {nullptr, &origin_, hf_name};
    const SafetensorsFile& f = *files_[it->second];
    const TensorInfo* info = f.find(hf_name);
    if (info == nullptr) {
      fail("{}: the index maps tensor '{}' to this file but the file does not hold it", f.path(),
           hf_name);
    }
    return {info, &f.path(), hf_name};
  }

 private:
  void load_index(const fs::path& dir, const std::string& index_path) {
    std::ifstream in(index_path, std::ios::binary);
    std::ostringstream text;
    text << in.rdbuf();
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(text.str());
    } catch (const nlohmann::json::exception& e) {
      fail("{}: invalid JSON: {}", index_path, e.what());
    }
    auto map = j.find("weight_map");
    if (!j.is_object() || map == j.end() || !map->is_object()) {
      fail("{}: missing object field 'weight_map'", index_path);
    }
    std::map<std::string, size_t> file_ids;
    for (const auto& [tensor, file] : map->items()) {
      if (!file.is_string()) fail("{}: weight_map['{}'] must be a file name", index_path, tensor);
      const std::string name = file.get<std::string>();
      // Shards must sit beside the index: no paths that climb out of the directory.
      if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..") {
        fail("{}: weight_map['{}'] = '{}' is not a plain file name", index_path, tensor, name);
      }
      auto [it, inserted] = file_ids.emplace(name, files_.size());
      if (inserted) files_.push_back(std::make_unique<SafetensorsFile>((dir / name).string()));
      by_name_[tensor] = it->second;
    }
  }

  std::string origin_;
  ModelConfig config_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> by_name_;
};

class GgufSource final : public WeightSource {
 public:
  explicit GgufSource(const std::string& path) : file_(path) { config_ = config_from_gguf(file_); }

  const ModelConfig& config() const override { return config_; }
  const std::string& origin() const override { return file_.path(); }

  SourceTensor find(const std::string& hf_name) const override {
    std::string name = gguf_tensor_name(hf_name);
    if (name.empty()) name = hf_name;  // GGUF-only tensors (rope_freqs.weight) pass through
    return {file_.find(name), &file_.path(), name};
  }

  const GGUFFile& gguf() const { return file_; }

 private:
  GGUFFile file_;
  ModelConfig config_;
};

}  // namespace

std::string gguf_tensor_name(const std::string& hf_name) {
  static const std::map<std::string, std::string> kGlobal = {
      {"model.embed_tokens.weight", "token_embd.weight"},
      {"model.norm.weight", "output_norm.weight"},
      {"lm_head.weight", "output.weight"},
  };
  static const std::map<std::string, std::string> kLayer = {
      {"input_layernorm", "attn_norm"},   {"self_attn.q_proj", "attn_q"},
      {"self_attn.k_proj", "attn_k"},     {"self_attn.v_proj", "attn_v"},
      {"self_attn.o_proj", "attn_output"}, {"post_attention_layernorm", "ffn_norm"},
      {"mlp.gate_proj", "ffn_gate"},      {"mlp.up_proj", "ffn_up"},
      {"mlp.down_proj", "ffn_down"},
  };
  if (auto it = kGlobal.find(hf_name); it != kGlobal.end()) return it->second;
  static const std::regex kLayerName(R"(model\.layers\.(\d+)\.(.+)\.(weight|bias))");
  std::smatch m;
  if (!std::regex_match(hf_name, m, kLayerName)) return "";
  auto it = kLayer.find(m[2].str());
  if (it == kLayer.end()) return "";
  return "blk." + m[1].str() + "." + it->second + "." + m[3].str();
}

std::unique_ptr<WeightSource> open_weight_source(const std::string& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    if (fs::exists(fs::path(path) / "config.json")) return std::make_unique<HfDirectorySource>(path);
    // A directory holding exactly one GGUF file is that file.
    std::vector<fs::path> ggufs;
    for (const auto& entry : fs::directory_iterator(path)) {
      if (entry.path().extension() == ".gguf") ggufs.push_back(entry.path());
    }
    if (ggufs.size() == 1) return std::make_unique<GgufSource>(ggufs[0].string());
    fail("{}: neither an HF model directory (config.json) nor a directory with one .gguf file",
         path);
  }
  if (!fs::exists(path, ec)) fail("{}: no such file or directory", path);
  return std::make_unique<GgufSource>(path);
}

}  // namespace mil
