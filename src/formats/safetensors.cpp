#include "formats/safetensors.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
#include <limits>
#include <set>

#include "core/error.h"

namespace mil {
namespace {

using nlohmann::json;

// The header of a 7B model is ~30 KB; the cap only keeps hostile files from making us parse
// (and allocate for) gigabytes of JSON.
constexpr uint64_t kMaxHeaderBytes = uint64_t{100} << 20;
// A valid header nests three deep ({name: {shape: [..]}}); the cap bounds the parser's stack
// and the recursive destruction of the document.
constexpr int kMaxJsonDepth = 16;

struct SafetensorsDtype {
  std::string_view name;
  uint64_t bytes;
  std::optional<DType> dtype;
};

constexpr std::array<SafetensorsDtype, 15> kDtypes{{
    {"BOOL", 1, std::nullopt},
    {"U8", 1, std::nullopt},
    {"I8", 1, std::nullopt},
    {"I16", 2, std::nullopt},
    {"U16", 2, std::nullopt},
    {"F16", 2, DType::F16},
    {"BF16", 2, DType::BF16},
    {"I32", 4, std::nullopt},
    {"U32", 4, std::nullopt},
    {"F32", 4, DType::F32},
    {"F64", 8, std::nullopt},
    {"I64", 8, std::nullopt},
    {"U64", 8, std::nullopt},
    {"F8_E4M3", 1, std::nullopt},
    {"F8_E5M2", 1, std::nullopt},
}};

const SafetensorsDtype* find_dtype(std::string_view name) {
  for (const auto& d : kDtypes) {
    if (d.name == name) return &d;
  }
  return nullptr;
}

// Parses the header, rejecting what nlohmann would silently accept: duplicate keys (the last
// one would win, so two readers could disagree about a tensor) and deep nesting.
json parse_header(const std::string& path, std::span<const std::byte> bytes) {
  const char* begin = reinterpret_cast<const char*>(bytes.data());
  const char* end = begin + bytes.size();
  std::vector<std::set<std::string>> open_objects;
  auto callback = [&](int depth, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
      case json::parse_event_t::array_start:
        if (depth >= kMaxJsonDepth) fail("{}: header JSON nests deeper than {} levels", path, kMaxJsonDepth);
        if (event == json::parse_event_t::object_start) open_objects.emplace_back();
        break;
      case json::parse_event_t::object_end:
        if (!open_objects.empty()) open_objects.pop_back();
        break;
      case json::parse_event_t::key: {
        const auto& key = parsed.get_ref<const std::string&>();
        if (!open_objects.empty() && !open_objects.back().insert(key).second) {
          fail("{}: header JSON has the key '{}' twice in one object", path, printable_name(key));
        }
        break;
      }
      default:
        break;
    }
    return true;
  };
  try {
    return json::parse(begin, end, callback);
  } catch (const json::exception& e) {
    fail("{}: header is not valid JSON: {}", path, e.what());
  }
}

uint64_t unsigned_field(const json& value) { return value.get<uint64_t>(); }

void read_metadata(const std::string& path, const json& value,
                   std::map<std::string, std::string>& out) {
  if (value.is_null()) return;
  if (!value.is_object()) fail("{}: '__metadata__' must be an object of strings", path);
  for (const auto& [key, entry] : value.items()) {
    if (!entry.is_string()) {
      fail("{}: '__metadata__' entry '{}' must be a string", path, printable_name(key));
    }
    out.emplace(key, entry.get<std::string>());
  }
}

// Validates one header entry against the data section [0, data_size) and returns its tensor
// (data still relative to the data section; the caller rebases it) plus its [begin, end).
struct ParsedEntry {
  TensorInfo info;
  uint64_t begin = 0;
  uint64_t end = 0;
};

ParsedEntry read_entry(const std::string& path, const std::string& name, const json& entry,
                       uint64_t data_size) {
  const std::string shown = printable_name(name);
  if (!entry.is_object()) fail("{}: tensor '{}': entry must be an object", path, shown);

  auto field = [&](const char* key) -> const json& {
    const auto it = entry.find(key);
    if (it == entry.end()) fail("{}: tensor '{}': missing field '{}'", path, shown, key);
    return *it;
  };

  ParsedEntry out;
  out.info.name = name;

  const json& dtype = field("dtype");
  if (!dtype.is_string()) fail("{}: tensor '{}': 'dtype' must be a string", path, shown);
  out.info.dtype_name = dtype.get<std::string>();
  const SafetensorsDtype* known = find_dtype(out.info.dtype_name);
  if (known == nullptr) {
    fail("{}: tensor '{}': unknown dtype '{}'", path, shown, printable_name(out.info.dtype_name));
  }
  out.info.dtype = known->dtype;

  const json& shape = field("shape");
  if (!shape.is_array()) fail("{}: tensor '{}': 'shape' must be a list", path, shown);
  for (const json& dim : shape) {
    if (!dim.is_number_unsigned() ||
        unsigned_field(dim) > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      fail("{}: tensor '{}': 'shape' must hold non-negative integers, got {}", path, shown,
           printable_name(dim.dump()));
    }
    out.info.shape.push_back(static_cast<int64_t>(unsigned_field(dim)));
  }
  const std::optional<int64_t> numel = checked_numel(out.info.shape);
  uint64_t nbytes = 0;
  if (!numel || __builtin_mul_overflow(static_cast<uint64_t>(*numel), known->bytes, &nbytes)) {
    fail("{}: tensor '{}': shape {} overflows", path, shown, printable_name(shape.dump()));
  }

  const json& offsets = field("data_offsets");
  if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
      !offsets[1].is_number_unsigned()) {
    fail("{}: tensor '{}': 'data_offsets' must be two non-negative integers, got {}", path, shown,
         printable_name(offsets.dump()));
  }
  out.begin = unsigned_field(offsets[0]);
  out.end = unsigned_field(offsets[1]);
  if (out.begin > out.end) {
    fail("{}: tensor '{}': data_offsets [{}, {}] end before they begin", path, shown, out.begin,
         out.end);
  }
  if (out.end > data_size) {
    fail("{}: tensor '{}': data_offsets [{}, {}] exceed the data section ({} bytes)", path, shown,
         out.begin, out.end, data_size);
  }
  if (out.end - out.begin != nbytes) {
    fail("{}: tensor '{}': data_offsets [{}, {}] hold {} bytes but {} of shape {} needs {}", path,
         shown, out.begin, out.end, out.end - out.begin, out.info.dtype_name,
         printable_name(shape.dump()), nbytes);
  }
  return out;
}

}  // namespace

SafetensorsFile::SafetensorsFile(std::string path)
    : file_(std::make_unique<MappedFile>(std::move(path))) {
  const std::string& p = file_->path();
  const uint64_t size = file_->size();
  if (size < 8) {
    fail("{}: {} bytes is too short for a safetensors file (the header length alone takes 8)", p,
         size);
  }
  uint64_t header_len = 0;
  static_assert(std::endian::native == std::endian::little, "the length is read in host order");
  std::memcpy(&header_len, file_->data(), sizeof header_len);
  if (header_len > size - 8) {
    fail("{}: header length {} exceeds the {} bytes that follow it", p, header_len, size - 8);
  }
  if (header_len > kMaxHeaderBytes) {
    fail("{}: header length {} exceeds the {} byte limit", p, header_len, kMaxHeaderBytes);
  }
  const uint64_t data_begin = 8 + header_len;
  const uint64_t data_size = size - data_begin;

  json header = parse_header(p, file_->bytes(8, header_len, "header"));
  if (!header.is_object()) fail("{}: header JSON must be an object, got {}", p, header.type_name());

  std::vector<ParsedEntry> entries;
  entries.reserve(header.size());
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      read_metadata(p, entry, metadata_);
    } else {
      entries.push_back(read_entry(p, name, entry, data_size));
    }
  }

  // Overlapping tensors would alias each other's bytes: a corrupt or crafted file.
  std::sort(entries.begin(), entries.end(), [](const ParsedEntry& a, const ParsedEntry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  const ParsedEntry* previous = nullptr;
  for (const ParsedEntry& e : entries) {
    if (e.begin == e.end) continue;
    if (previous != nullptr && e.begin < previous->end) {
      fail("{}: tensors '{}' [{}, {}] and '{}' [{}, {}] overlap in the data section", p,
           printable_name(previous->info.name), previous->begin, previous->end,
           printable_name(e.info.name), e.begin, e.end);
    }
    previous = &e;
  }

  tensors_.reserve(entries.size());
  for (ParsedEntry& e : entries) {
    e.info.data = file_->bytes(data_begin + e.begin, e.end - e.begin, "tensor data");
    index_.emplace(e.info.name, tensors_.size());
    tensors_.push_back(std::move(e.info));
  }
}

SafetensorsFile::~SafetensorsFile() = default;

const TensorInfo* SafetensorsFile::find(std::string_view name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

}  // namespace mil
