// A read-only memory map of a whole file. Model files are untrusted: every access goes
// through `bytes()`, which checks the range against the file size.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

namespace mil {

class MappedFile {
 public:
  explicit MappedFile(std::string path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::string& path() const { return path_; }
  size_t size() const { return size_; }
  const std::byte* data() const { return data_; }

  // [offset, offset + length) or an error naming the file and `what`.
  std::span<const std::byte> bytes(uint64_t offset, uint64_t length, const std::string& what) const;

 private:
  std::string path_;
  const std::byte* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace mil
