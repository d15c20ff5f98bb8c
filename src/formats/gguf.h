// GGUF files (llama.cpp's format, versions 2 and 3, little-endian): a key/value metadata store,
// tensor descriptions, then the aligned data section. The file is untrusted: the constructor
// walks and bounds-checks every key, value and tensor, so the getters only decode bytes already
// known to lie inside the file. Values are not copied: strings are views into the mapping and
// arrays are decoded on each get_* call (cheap next to what callers do with a 49k-token vocab).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/mapped_file.h"
#include "formats/tensor_info.h"

namespace mil {

class GGUFFile {
 public:
  explicit GGUFFile(std::string path);
  GGUFFile(const GGUFFile&) = delete;
  GGUFFile& operator=(const GGUFFile&) = delete;
  GGUFFile(GGUFFile&&) noexcept = default;
  GGUFFile& operator=(GGUFFile&&) noexcept = default;
  ~GGUFFile();

  const std::string& path() const { return file_->path(); }
  uint32_t version() const { return version_; }
  bool has(std::string_view key) const { return kv_index_.contains(key); }

  // nullopt when the key is absent; mil::Error naming file and key when the stored type doesn't
  // fit. get_int takes any integer type (not bool) that fits int64; get_float takes f32, f64 and
  // integers; get_bool only bool.
  std::optional<int64_t> get_int(std::string_view key) const;
  std::optional<double> get_float(std::string_view key) const;
  std::optional<bool> get_bool(std::string_view key) const;
  std::optional<std::string_view> get_string(std::string_view key) const;
  std::optional<std::vector<std::string_view>> get_string_array(std::string_view key) const;
  std::optional<std::vector<int64_t>> get_int_array(std::string_view key) const;
  std::optional<std::vector<double>> get_float_array(std::string_view key) const;
  std::vector<std::string> keys() const;  // in file order

  const TensorInfo* find(std::string_view name) const;  // nullptr if absent
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // in file order

 private:
  // Where a value lives in the file; validated at open.
  struct Value {
    uint32_t type = 0;       // GGUF value type id
    uint32_t elem_type = 0;  // arrays only
    uint64_t count = 0;      // arrays only
    uint64_t offset = 0;     // file offset of the scalar or string, or of the first array element
  };

  const Value* lookup(std::string_view key) const;
  [[noreturn]] void type_error(std::string_view key, const Value& value, const char* wanted) const;
  int64_t read_int(std::string_view key, uint32_t type, uint64_t offset) const;
  double read_float(uint32_t type, uint64_t offset) const;
  std::string_view read_string(uint64_t offset) const;

  std::unique_ptr<MappedFile> file_;  // owns the bytes every view and span points into
  uint32_t version_ = 0;
  std::vector<std::pair<std::string_view, Value>> kvs_;  // file order; keys view the mapping
  std::unordered_map<std::string_view, size_t> kv_index_;
  std::vector<TensorInfo> tensors_;
  std::unordered_map<std::string_view, size_t> tensor_index_;  // names view the mapping
};

}  // namespace mil
