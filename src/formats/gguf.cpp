#include "formats/gguf.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
#include <limits>

#include "core/error.h"

namespace mil {
namespace {

static_assert(std::endian::native == std::endian::little,
              "GGUF values are decoded in host byte order");

enum ValueType : uint32_t {
  kU8 = 0, kI8 = 1, kU16 = 2, kI16 = 3, kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7,
  kString = 8, kArray = 9, kU64 = 10, kI64 = 11, kF64 = 12,
};

std::string_view value_type_name(uint32_t type) {
  static constexpr std::array<std::string_view, 13> kNames{
      "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64"};
  return type < kNames.size() ? kNames[type] : "unknown type";
}

// Bytes of one scalar of `type`; 0 for strings, arrays and unknown ids.
uint64_t scalar_bytes(uint32_t type) {
  switch (type) {
    case kU8: case kI8: case kBool: return 1;
    case kU16: case kI16: return 2;
    case kU32: case kI32: case kF32: return 4;
    case kU64: case kI64: case kF64: return 8;
    default: return 0;
  }
}

bool is_integer(uint32_t type) {
  switch (type) {
    case kU8: case kI8: case kU16: case kI16: case kU32: case kI32: case kU64: case kI64:
      return true;
    default:
      return false;
  }
}

bool is_number(uint32_t type) { return is_integer(type) || type == kF32 || type == kF64; }

// ggml's type table (ggml.c type_traits): every id a GGUF file may hold, so that files with
// types MIL cannot compute with still open and describe their tensors exactly.
struct GgmlType {
  uint32_t id;
  std::string_view name;
  int64_t block_elems;
  uint64_t block_bytes;
  std::optional<DType> dtype;
};

constexpr std::array<GgmlType, 33> kGgmlTypes{{
    {0, "F32", 1, 4, DType::F32},
    {1, "F16", 1, 2, DType::F16},
    {2, "Q4_0", 32, 18, DType::Q4_0},
    {3, "Q4_1", 32, 20, DType::Q4_1},
    {6, "Q5_0", 32, 22, std::nullopt},
    {7, "Q5_1", 32, 24, std::nullopt},
    {8, "Q8_0", 32, 34, DType::Q8_0},
    {9, "Q8_1", 32, 36, std::nullopt},
    {10, "Q2_K", 256, 84, std::nullopt},
    {11, "Q3_K", 256, 110, std::nullopt},
    {12, "Q4_K", 256, 144, std::nullopt},
    {13, "Q5_K", 256, 176, std::nullopt},
    {14, "Q6_K", 256, 210, std::nullopt},
    {15, "Q8_K", 256, 292, std::nullopt},
    {16, "IQ2_XXS", 256, 66, std::nullopt},
    {17, "IQ2_XS", 256, 74, std::nullopt},
    {18, "IQ3_XXS", 256, 98, std::nullopt},
    {19, "IQ1_S", 256, 50, std::nullopt},
    {20, "IQ4_NL", 32, 18, std::nullopt},
    {21, "IQ3_S", 256, 110, std::nullopt},
    {22, "IQ2_S", 256, 82, std::nullopt},
    {23, "IQ4_XS", 256, 136, std::nullopt},
    {24, "I8", 1, 1, std::nullopt},
    {25, "I16", 1, 2, std::nullopt},
    {26, "I32", 1, 4, std::nullopt},
    {27, "I64", 1, 8, std::nullopt},
    {28, "F64", 1, 8, std::nullopt},
    {29, "IQ1_M", 256, 56, std::nullopt},
    {30, "BF16", 1, 2, DType::BF16},
    {34, "TQ1_0", 256, 54, std::nullopt},
    {35, "TQ2_0", 256, 66, std::nullopt},
    {39, "MXFP4", 32, 17, std::nullopt},
    // Ids 4, 5 and 31-33, 36-38 were removed from ggml; files holding them are rejected.
}};

const GgmlType* find_ggml_type(uint32_t id) {
  for (const auto& t : kGgmlTypes) {
    if (t.id == id) return &t;
  }
  return nullptr;
}

constexpr uint32_t kMaxDims = 4;
constexpr uint64_t kDefaultAlignment = 32;
// Smallest possible encodings, to reject absurd counts before reserving anything.
constexpr uint64_t kMinKvBytes = 8 + 4 + 1;            // empty key, type, one-byte value
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 4 + 8;  // empty name, n_dims = 0, type, offset
// Counts come from the file: reserve at most this many up front and let real entries grow the
// vectors, so a multi-gigabyte file with a forged count cannot make us commit memory for it.
constexpr uint64_t kMaxReserve = 1 << 16;

template <typename T>
T load(const std::byte* p) {
  T value;
  std::memcpy(&value, p, sizeof value);
  return value;
}

// Sequential bounds-checked reads; errors name the file and what was being read.
class Reader {
 public:
  explicit Reader(const MappedFile& file) : file_(file) {}

  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return file_.size() - pos_; }
  void set_context(std::string context) { context_ = std::move(context); }
  const std::string& context() const { return context_; }

  const std::byte* take(uint64_t n, std::string_view field) {
    if (n > remaining()) {
      fail("{}: {}: {} ({} bytes at offset {}) runs past the end of the file ({} bytes)",
           file_.path(), context_, field, n, pos_, file_.size());
    }
    const std::byte* p = file_.data() + pos_;
    pos_ += n;
    return p;
  }

  template <typename T>
  T read(std::string_view field) {
    return load<T>(take(sizeof(T), field));
  }

  std::string_view read_string(std::string_view field) {
    const auto length = read<uint64_t>(field);
    if (length > remaining()) {
      fail("{}: {}: {} of {} bytes at offset {} runs past the end of the file ({} bytes)",
           file_.path(), context_, field, length, pos_, file_.size());
    }
    return {reinterpret_cast<const char*>(take(length, field)), static_cast<size_t>(length)};
  }

 private:
  const MappedFile& file_;
  uint64_t pos_ = 0;
  std::string context_ = "header";
};

// Steps over one array, checking that all of it lies inside the file.
void skip_array(Reader& reader, const std::string& path, uint32_t elem_type, uint64_t count) {
  if (elem_type == kArray) fail("{}: {}: arrays of arrays are not supported", path, reader.context());
  if (elem_type == kString) {
    if (count > reader.remaining() / 8) {
      fail("{}: {}: array of {} strings cannot fit in the {} bytes left in the file", path,
           reader.context(), count, reader.remaining());
    }
    for (uint64_t i = 0; i < count; ++i) reader.read_string("array string");
    return;
  }
  const uint64_t elem_bytes = scalar_bytes(elem_type);
  if (elem_bytes == 0) fail("{}: {}: unknown array element type {}", path, reader.context(), elem_type);
  if (count > reader.remaining() / elem_bytes) {
    fail("{}: {}: array of {} {} values cannot fit in the {} bytes left in the file", path,
         reader.context(), count, value_type_name(elem_type), reader.remaining());
  }
  reader.take(count * elem_bytes, "array");
}

// A tensor description as stored, before its data is located.
struct RawTensor {
  std::string_view name;
  std::array<uint64_t, kMaxDims> ne{1, 1, 1, 1};
  uint32_t n_dims = 0;
  uint32_t type = 0;
  uint64_t offset = 0;
};

}  // namespace

GGUFFile::GGUFFile(std::string path) : file_(std::make_unique<MappedFile>(std::move(path))) {
  const std::string& p = file_->path();
  const uint64_t size = file_->size();
  Reader reader(*file_);

  if (size < 4) fail("{}: {} bytes is too short for a GGUF file", p, size);
  const std::byte* magic = reader.take(4, "magic");
  if (std::memcmp(magic, "FUGG", 4) == 0) fail("{}: big-endian GGUF files are not supported", p);
  if (std::memcmp(magic, "GGUF", 4) != 0) fail("{}: not a GGUF file (bad magic)", p);
  version_ = reader.read<uint32_t>("version");
  if ((version_ & 0xffff) == 0 && version_ != 0) {
    fail("{}: GGUF version {:#x} looks byte-swapped: big-endian files are not supported", p,
         version_);
  }
  if (version_ != 2 && version_ != 3) {
    fail("{}: GGUF version {} is not supported (only 2 and 3)", p, version_);
  }
  const auto n_tensors = reader.read<uint64_t>("tensor count");
  const auto n_kv = reader.read<uint64_t>("key/value count");
  if (n_kv > reader.remaining() / kMinKvBytes) {
    fail("{}: {} key/value pairs cannot fit in the {} bytes left in the file", p, n_kv,
         reader.remaining());
  }

  kvs_.reserve(std::min(n_kv, kMaxReserve));
  for (uint64_t i = 0; i < n_kv; ++i) {
    reader.set_context(fmt::format("key/value #{}", i));
    const std::string_view key = reader.read_string("key");
    reader.set_context(fmt::format("key '{}'", printable_name(key)));
    Value value;
    value.type = reader.read<uint32_t>("value type");
    if (value.type == kArray) {
      value.elem_type = reader.read<uint32_t>("array element type");
      value.count = reader.read<uint64_t>("array length");
      value.offset = reader.pos();
      skip_array(reader, p, value.elem_type, value.count);
    } else if (value.type == kString) {
      value.offset = reader.pos();
      reader.read_string("string value");
    } else if (const uint64_t bytes = scalar_bytes(value.type); bytes != 0) {
      value.offset = reader.pos();
      reader.take(bytes, "value");
    } else {
      fail("{}: key '{}': unknown value type {}", p, printable_name(key), value.type);
    }
    if (!kv_index_.emplace(key, kvs_.size()).second) {
      fail("{}: key '{}' appears twice", p, printable_name(key));
    }
    kvs_.emplace_back(key, value);
  }

  reader.set_context("tensor infos");
  if (n_tensors > reader.remaining() / kMinTensorInfoBytes) {
    fail("{}: {} tensor infos cannot fit in the {} bytes left in the file", p, n_tensors,
         reader.remaining());
  }
  std::vector<RawTensor> raw;
  raw.reserve(std::min(n_tensors, kMaxReserve));
  for (uint64_t i = 0; i < n_tensors; ++i) {
    RawTensor& t = raw.emplace_back();
    reader.set_context(fmt::format("tensor info #{}", i));
    t.name = reader.read_string("tensor name");
    reader.set_context(fmt::format("tensor '{}'", printable_name(t.name)));
    t.n_dims = reader.read<uint32_t>("n_dims");
    if (t.n_dims > kMaxDims) {
      fail("{}: tensor '{}': n_dims {} exceeds {}", p, printable_name(t.name), t.n_dims, kMaxDims);
    }
    for (uint32_t d = 0; d < t.n_dims; ++d) t.ne[d] = reader.read<uint64_t>("dimension");
    t.type = reader.read<uint32_t>("type");
    t.offset = reader.read<uint64_t>("data offset");
  }

  uint64_t alignment = kDefaultAlignment;
  if (const std::optional<int64_t> a = get_int("general.alignment")) {
    if (*a <= 0 || !std::has_single_bit(static_cast<uint64_t>(*a))) {
      fail("{}: key 'general.alignment': {} is not a power of two", p, *a);
    }
    alignment = static_cast<uint64_t>(*a);
  }
  // The data section may start past the end of a file whose tensors are all empty; the bounds
  // check below only needs it when a tensor has bytes.
  const uint64_t unaligned = reader.pos();
  const uint64_t data_begin =
      unaligned > std::numeric_limits<uint64_t>::max() - (alignment - 1)
          ? std::numeric_limits<uint64_t>::max()
          : (unaligned + alignment - 1) & ~(alignment - 1);
  const uint64_t data_size = data_begin <= size ? size - data_begin : 0;

  tensors_.reserve(raw.size());
  for (const RawTensor& t : raw) {
    const std::string shown = printable_name(t.name);
    const GgmlType* type = find_ggml_type(t.type);
    if (type == nullptr) fail("{}: tensor '{}': unknown ggml type id {}", p, shown, t.type);

    TensorInfo info;
    info.name = std::string(t.name);
    info.dtype_name = std::string(type->name);
    info.dtype = type->dtype;
    for (uint32_t d = t.n_dims; d-- > 0;) {
      if (t.ne[d] > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        fail("{}: tensor '{}': dimension {} is {}, beyond int64", p, shown, d, t.ne[d]);
      }
      info.shape.push_back(static_cast<int64_t>(t.ne[d]));
    }
    const std::optional<int64_t> numel = checked_numel(info.shape);
    if (!numel) fail("{}: tensor '{}': element count of its shape overflows int64", p, shown);
    if (t.ne[0] % static_cast<uint64_t>(type->block_elems) != 0) {
      fail("{}: tensor '{}': ne[0] = {} is not a multiple of the {} block size {}", p, shown,
           t.ne[0], type->name, type->block_elems);
    }
    uint64_t bytes = 0;
    if (__builtin_mul_overflow(static_cast<uint64_t>(*numel / type->block_elems),
                               type->block_bytes, &bytes)) {
      fail("{}: tensor '{}': byte size of its shape overflows", p, shown);
    }
    if (t.offset % alignment != 0) {
      fail("{}: tensor '{}': data offset {} is not a multiple of the alignment {}", p, shown,
           t.offset, alignment);
    }
    if (bytes > 0 && (t.offset > data_size || bytes > data_size - t.offset)) {
      fail("{}: tensor '{}': {} bytes at data offset {} exceed the data section ({} bytes)", p,
           shown, bytes, t.offset, data_size);
    }
    info.data = bytes == 0 ? std::span<const std::byte>{}
                           : file_->bytes(data_begin + t.offset, bytes, "tensor data");
    if (!tensor_index_.emplace(t.name, tensors_.size()).second) {
      fail("{}: tensor '{}' appears twice", p, shown);
    }
    tensors_.push_back(std::move(info));
  }

  // Overlapping tensors would alias each other's bytes: a corrupt or crafted file.
  std::vector<const TensorInfo*> by_offset;
  for (const TensorInfo& t : tensors_) {
    if (!t.data.empty()) by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const TensorInfo* a, const TensorInfo* b) { return a->data.data() < b->data.data(); });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const TensorInfo& a = *by_offset[i - 1];
    const TensorInfo& b = *by_offset[i];
    if (b.data.data() < a.data.data() + a.data.size()) {
      fail("{}: tensors '{}' and '{}' overlap in the data section", p, printable_name(a.name),
           printable_name(b.name));
    }
  }
}

GGUFFile::~GGUFFile() = default;

const GGUFFile::Value* GGUFFile::lookup(std::string_view key) const {
  const auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kvs_[it->second].second;
}

void GGUFFile::type_error(std::string_view key, const Value& value, const char* wanted) const {
  if (value.type == kArray) {
    fail("{}: key '{}' holds an array of {}, not {}", path(), printable_name(key),
         value_type_name(value.elem_type), wanted);
  }
  fail("{}: key '{}' holds a {}, not {}", path(), printable_name(key), value_type_name(value.type),
       wanted);
}

int64_t GGUFFile::read_int(std::string_view key, uint32_t type, uint64_t offset) const {
  const std::byte* p = file_->data() + offset;
  switch (type) {
    case kU8: return load<uint8_t>(p);
    case kI8: return load<int8_t>(p);
    case kU16: return load<uint16_t>(p);
    case kI16: return load<int16_t>(p);
    case kU32: return load<uint32_t>(p);
    case kI32: return load<int32_t>(p);
    case kI64: return load<int64_t>(p);
    case kU64: {
      const auto v = load<uint64_t>(p);
      if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        fail("{}: key '{}': value {} does not fit in int64", path(), printable_name(key), v);
      }
      return static_cast<int64_t>(v);
    }
    default: fail("{}: key '{}': not an integer", path(), printable_name(key));
  }
}

double GGUFFile::read_float(uint32_t type, uint64_t offset) const {
  const std::byte* p = file_->data() + offset;
  switch (type) {
    case kF32: return load<float>(p);
    case kF64: return load<double>(p);
    case kU64: return static_cast<double>(load<uint64_t>(p));
    case kI64: return static_cast<double>(load<int64_t>(p));
    default: return static_cast<double>(read_int({}, type, offset));  // narrower integers
  }
}

std::string_view GGUFFile::read_string(uint64_t offset) const {
  const auto length = load<uint64_t>(file_->data() + offset);
  return {reinterpret_cast<const char*>(file_->data() + offset + 8), static_cast<size_t>(length)};
}

std::optional<int64_t> GGUFFile::get_int(std::string_view key) const {
  const Value* v = lookup(key);
  if (v == nullptr) return std::nullopt;
  if (!is_integer(v->type)) type_error(key, *v, "an integer");
  return read_int(key, v->type, v->offset);
}

std::optional<double> GGUFFile::get_float(std::string_view key) const {
  const Value* v = lookup(key);
  if (v == nullptr) return std::nullopt;
  if (!is_number(v->type)) type_error(key, *v, "a number");
  return read_float(v->type, v->offset);
}

std::optional<bool> GGUFFile::get_bool(std::string_view key) const {
  const Value* v = lookup(key);
  if (v == nullptr) return std::nullopt;
  if (v->type != kBool) type_error(key, *v, "a bool");
  const auto byte = load<uint8_t>(file_->data() + v->offset);
  if (byte > 1) fail("{}: key '{}': bool byte is {}, not 0 or 1", path(), printable_name(key), byte);
  return byte == 1;
}

std::optional<std::string_view> GGUFFile::get_string(std::string_view key) const {
  const Value* v = lookup(key);
  if (v == nullptr) return std::nullopt;
  if (v->type != kString) type_error(key, *v, "a string");
  return read_string(v->offset);
}

std::optional<std::vector<std::string_view>> GGUFFile::get_string_array(
    std::string_view key) const {
  const Value* v = lookup(key);
  if (v == nullptr) return std::nullopt;
  if (v->type != kArray || v->elem_type != kString) type_error(key, *v, "an array of strings");
  std::vector<std::string_view> out;
  out.reserve(v->count);
  uint64_t offset = v->offset;
  for (uint64_t i = 0; i < v->count; ++i) {
    out.push_back(read_string(offset));
    offset += 8 + out.back().size();
  }
  return out;
}

std::optional<std::vector<int64_t>> GGUFFile::get_int_array(std::string_view key) const {
  const Value* v = lookup(key);
  if (v == nullptr) return std::nullopt;
  if (v->type != kArray || !is_integer(v->elem_type)) type_error(key, *v, "an array of integers");
  const uint64_t stride = scalar_bytes(v->elem_type);
  std::vector<int64_t> out(v->count);
  for (uint64_t i = 0; i < v->count; ++i) out[i] = read_int(key, v->elem_type, v->offset + i * stride);
  return out;
}

std::optional<std::vector<double>> GGUFFile::get_float_array(std::string_view key) const {
  const Value* v = lookup(key);
  if (v == nullptr) return std::nullopt;
  if (v->type != kArray || !is_number(v->elem_type)) type_error(key, *v, "an array of numbers");
  const uint64_t stride = scalar_bytes(v->elem_type);
  std::vector<double> out(v->count);
  for (uint64_t i = 0; i < v->count; ++i) out[i] = read_float(v->elem_type, v->offset + i * stride);
  return out;
}

std::vector<std::string> GGUFFile::keys() const {
  std::vector<std::string> out;
  out.reserve(kvs_.size());
  for (const auto& [key, value] : kvs_) out.emplace_back(key);
  return out;
}

const TensorInfo* GGUFFile::find(std::string_view name) const {
  const auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

}  // namespace mil
