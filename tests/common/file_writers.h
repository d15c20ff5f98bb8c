// Test helpers: serialize safetensors and GGUF files byte by byte (so tests can also write
// hostile ones) and put them in temporary files.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/error.h"

namespace mil::test {

using Bytes = std::vector<std::byte>;

// Little-endian append-only writer.
struct Writer {
  Bytes bytes;

  template <typename T>
  Writer& put(T value) {
    const auto* p = reinterpret_cast<const std::byte*>(&value);
    bytes.insert(bytes.end(), p, p + sizeof value);
    return *this;
  }
  Writer& raw(std::span<const std::byte> data) {
    bytes.insert(bytes.end(), data.begin(), data.end());
    return *this;
  }
  Writer& raw(std::string_view text) {
    return raw(std::as_bytes(std::span<const char>(text.data(), text.size())));
  }
  Writer& str(std::string_view text) {  // GGUF string: u64 length + bytes
    put<uint64_t>(text.size());
    return raw(text);
  }
  Writer& pad_to(size_t alignment) {
    while (bytes.size() % alignment != 0) bytes.push_back(std::byte{0});
    return *this;
  }
};

inline Bytes pattern_bytes(size_t n, uint8_t seed) {
  Bytes out(n);
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<std::byte>(seed + i * 7);
  return out;
}

// A file in the temp directory, removed when the object dies. `name` ends the path, so error
// messages can be checked for it.
class TempFile {
 public:
  explicit TempFile(std::span<const std::byte> contents, std::string_view name = "model.bin") {
    static int counter = 0;
    path_ = (std::filesystem::temp_directory_path() /
             ("mil_formats_" + std::to_string(::getpid()) + "_" + std::to_string(counter++) + "_" +
              std::string(name)))
                .string();
    std::ofstream out(path_, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(contents.data()),
              static_cast<std::streamsize>(contents.size()));
    if (!out) throw std::runtime_error("cannot write " + path_);
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  ~TempFile() {
    std::error_code ignored;
    std::filesystem::remove(path_, ignored);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Opens `bytes` as a `File`; expects a mil::Error whose message holds every one of `needles`.
template <typename File>
void expect_error(std::span<const std::byte> bytes, std::string_view name,
                  std::initializer_list<std::string_view> needles) {
  TempFile file(bytes, name);
  try {
    File parsed(file.path());
    ADD_FAILURE() << "expected an error for " << name;
  } catch (const mil::Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find(name), std::string::npos) << message;
    for (std::string_view needle : needles) {
      EXPECT_NE(message.find(needle), std::string::npos) << "'" << needle << "' not in: " << message;
    }
  }
}

// ---- safetensors ----

// 8-byte header length, the header, then the data; the header is space-padded to 8 bytes as
// the reference writer does.
inline Bytes safetensors_bytes(std::string header, std::span<const std::byte> data,
                               bool pad = true) {
  if (pad) {
    while ((8 + header.size()) % 8 != 0) header.push_back(' ');
  }
  Writer w;
  w.put<uint64_t>(header.size()).raw(header).raw(data);
  return std::move(w.bytes);
}

// ---- GGUF ----

enum GgufType : uint32_t {
  kU8 = 0, kI8 = 1, kU16 = 2, kI16 = 3, kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7,
  kString = 8, kArray = 9, kU64 = 10, kI64 = 11, kF64 = 12,
};

// A value as stored after its key: the type id, then `payload`.
struct GgufValue {
  uint32_t type;
  Bytes payload;
};

template <typename T>
GgufValue gv(uint32_t type, T value) {
  Writer w;
  w.put(value);
  return {type, std::move(w.bytes)};
}
inline GgufValue gv_string(std::string_view s) {
  Writer w;
  w.str(s);
  return {kString, std::move(w.bytes)};
}
inline GgufValue gv_strings(const std::vector<std::string>& items) {
  Writer w;
  w.put<uint32_t>(kString).put<uint64_t>(items.size());
  for (const auto& s : items) w.str(s);
  return {kArray, std::move(w.bytes)};
}
template <typename T>
GgufValue gv_array(uint32_t elem_type, const std::vector<T>& items) {
  Writer w;
  w.put<uint32_t>(elem_type).put<uint64_t>(items.size());
  for (const T& v : items) w.put(v);
  return {kArray, std::move(w.bytes)};
}

struct GgufTensor {
  std::string name;
  std::vector<uint64_t> ne;  // ne[0] contiguous
  uint32_t type;
  Bytes data;
  std::optional<uint64_t> offset;  // default: packed in order at the alignment
};

struct GgufSpec {
  uint32_t version = 3;
  std::vector<std::pair<std::string, GgufValue>> kvs;
  std::vector<GgufTensor> tensors;
  uint64_t alignment = 32;  // layout only: add "general.alignment" to kvs when not 32
};

inline Bytes gguf_bytes(const GgufSpec& spec) {
  Writer w;
  w.raw("GGUF").put<uint32_t>(spec.version);
  w.put<uint64_t>(spec.tensors.size()).put<uint64_t>(spec.kvs.size());
  for (const auto& [key, value] : spec.kvs) {
    w.str(key).put<uint32_t>(value.type).raw(value.payload);
  }
  std::vector<uint64_t> offsets;
  uint64_t next = 0;
  for (const GgufTensor& t : spec.tensors) {
    const uint64_t offset = t.offset.value_or(next);
    offsets.push_back(offset);
    next = offset + t.data.size();
    next = (next + spec.alignment - 1) / spec.alignment * spec.alignment;
    w.str(t.name).put<uint32_t>(static_cast<uint32_t>(t.ne.size()));
    for (uint64_t n : t.ne) w.put<uint64_t>(n);
    w.put<uint32_t>(t.type).put<uint64_t>(offset);
  }
  w.pad_to(spec.alignment);
  const size_t data_begin = w.bytes.size();
  for (size_t i = 0; i < spec.tensors.size(); ++i) {
    const Bytes& data = spec.tensors[i].data;
    if (data.empty()) continue;  // lets hostile specs name offsets far past the end
    if (w.bytes.size() < data_begin + offsets[i]) w.bytes.resize(data_begin + offsets[i]);
    if (w.bytes.size() < data_begin + offsets[i] + data.size()) {
      w.bytes.resize(data_begin + offsets[i] + data.size());
    }
    std::memcpy(w.bytes.data() + data_begin + offsets[i], data.data(), data.size());
  }
  return std::move(w.bytes);
}

}  // namespace mil::test
