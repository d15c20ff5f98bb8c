// Where a model's tensors come from: an HF directory (config.json + one or more
// safetensors files) or a GGUF file. The model asks for tensors by their HF names;
// a GGUF source translates them to llama.cpp's names.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "formats/model_config.h"
#include "formats/tensor_info.h"

namespace mil {

struct SourceTensor {
  const TensorInfo* info = nullptr;  // nullptr when absent
  const std::string* file = nullptr;  // the file that holds it, for errors
  std::string name;                   // the name inside that file
};

class WeightSource {
 public:
  virtual ~WeightSource() = default;
  virtual const ModelConfig& config() const = 0;
  virtual SourceTensor find(const std::string& hf_name) const = 0;
  // What to call the model in messages (the directory or file).
  virtual const std::string& origin() const = 0;
};

// `path` is a directory with config.json (HF) or a .gguf file.
std::unique_ptr<WeightSource> open_weight_source(const std::string& path);

// The llama.cpp name for an HF tensor name ("" when there is none).
std::string gguf_tensor_name(const std::string& hf_name);

}  // namespace mil
