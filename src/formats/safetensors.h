// safetensors files (HF weights and PEFT adapters): an 8-byte little-endian header length, a JSON
// header describing every tensor, then the raw data. The file is untrusted: the constructor
// validates the whole header, so every TensorInfo::data span lies inside the data section.
//
// Tensors may start at any byte offset (the format promises no alignment), so readers of
// TensorInfo::data must not assume the span is aligned for its element type.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/mapped_file.h"
#include "formats/tensor_info.h"

namespace mil {

class SafetensorsFile {
 public:
  explicit SafetensorsFile(std::string path);  // maps and validates the whole header
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  SafetensorsFile(SafetensorsFile&&) noexcept = default;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept = default;
  ~SafetensorsFile();

  const std::string& path() const { return file_->path(); }
  const TensorInfo* find(std::string_view name) const;  // nullptr if absent
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // in data-offset order
  const std::map<std::string, std::string>& metadata() const { return metadata_; }  // "__metadata__"

 private:
  std::unique_ptr<MappedFile> file_;  // owns the bytes every TensorInfo::data points into
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> index_;  // name -> position in tensors_
  std::map<std::string, std::string> metadata_;
};

}  // namespace mil
