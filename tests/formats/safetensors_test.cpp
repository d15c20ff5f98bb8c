#include "formats/safetensors.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <random>

#include "common/file_writers.h"

namespace mil {
namespace {

using nlohmann::json;
using test::Bytes;
using test::expect_error;
using test::pattern_bytes;
using test::safetensors_bytes;
using test::TempFile;

constexpr std::string_view kName = "model.safetensors";

void expect_st_error(const std::string& header, const Bytes& data,
                     std::initializer_list<std::string_view> needles) {
  expect_error<SafetensorsFile>(safetensors_bytes(header, data), kName, needles);
}

// A small valid file: several dtypes, a scalar, an empty tensor and metadata.
struct ValidFile {
  Bytes data = pattern_bytes(24 + 8 + 32 + 1, 3);
  std::string header = json{
      {"__metadata__", {{"format", "pt"}, {"note", "hi"}}},
      {"w.f32", {{"dtype", "F32"}, {"shape", {2, 3}}, {"data_offsets", {0, 24}}}},
      {"w.bf16", {{"dtype", "BF16"}, {"shape", {4}}, {"data_offsets", {24, 32}}}},
      {"ids", {{"dtype", "I64"}, {"shape", {2, 2}}, {"data_offsets", {32, 64}}}},
      {"flag", {{"dtype", "BOOL"}, {"shape", json::array()}, {"data_offsets", {64, 65}}}},
      {"empty", {{"dtype", "F16"}, {"shape", {0, 5}}, {"data_offsets", {65, 65}}}},
  }.dump();
  Bytes bytes() const { return safetensors_bytes(header, data); }
};

TEST(Safetensors, RoundTrip) {
  ValidFile v;
  TempFile file(v.bytes(), kName);
  SafetensorsFile st(file.path());
  EXPECT_EQ(st.path(), file.path());
  ASSERT_EQ(st.tensors().size(), 5u);
  EXPECT_EQ(st.metadata(), (std::map<std::string, std::string>{{"format", "pt"}, {"note", "hi"}}));
  EXPECT_EQ(st.find("missing"), nullptr);
  EXPECT_EQ(st.find("__metadata__"), nullptr);

  struct Expect {
    const char* name;
    const char* dtype_name;
    std::optional<DType> dtype;
    std::vector<int64_t> shape;
    size_t begin, end;
  };
  const Expect expected[] = {
      {"w.f32", "F32", DType::F32, {2, 3}, 0, 24},
      {"w.bf16", "BF16", DType::BF16, {4}, 24, 32},
      {"ids", "I64", std::nullopt, {2, 2}, 32, 64},
      {"flag", "BOOL", std::nullopt, {}, 64, 65},
      {"empty", "F16", DType::F16, {0, 5}, 65, 65},
  };
  for (const Expect& e : expected) {
    SCOPED_TRACE(e.name);
    const TensorInfo* t = st.find(e.name);
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->name, e.name);
    EXPECT_EQ(t->dtype_name, e.dtype_name);
    EXPECT_EQ(t->dtype, e.dtype);
    EXPECT_EQ(t->shape, e.shape);
    ASSERT_EQ(t->data.size(), e.end - e.begin);
    if (!t->data.empty()) {
      EXPECT_EQ(std::memcmp(t->data.data(), v.data.data() + e.begin, t->data.size()), 0);
    }
  }
  // tensors() follows the data layout.
  EXPECT_EQ(st.tensors().front().name, "w.f32");
}

TEST(Safetensors, AllKnownDtypes) {
  const std::pair<const char*, size_t> dtypes[] = {
      {"BOOL", 1}, {"U8", 1}, {"I8", 1}, {"I16", 2}, {"U16", 2}, {"F16", 2}, {"BF16", 2},
      {"I32", 4}, {"U32", 4}, {"F32", 4}, {"F64", 8}, {"I64", 8}, {"U64", 8}, {"F8_E4M3", 1},
      {"F8_E5M2", 1}};
  json header = json::object();
  size_t offset = 0;
  for (const auto& [name, bytes] : dtypes) {
    header[name] = {{"dtype", name}, {"shape", {3}}, {"data_offsets", {offset, offset + 3 * bytes}}};
    offset += 3 * bytes;
  }
  TempFile file(safetensors_bytes(header.dump(), pattern_bytes(offset, 1)), kName);
  SafetensorsFile st(file.path());
  EXPECT_EQ(st.tensors().size(), std::size(dtypes));
  EXPECT_TRUE(st.metadata().empty());
}

TEST(Safetensors, EmptyHeaderObjectAndUnpaddedHeader) {
  TempFile empty(safetensors_bytes("{}", {}), kName);
  EXPECT_TRUE(SafetensorsFile(empty.path()).tensors().empty());
  // Nothing forces the data to be aligned; such spans are valid, just unaligned.
  const std::string header = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  TempFile odd(safetensors_bytes(header, pattern_bytes(4, 0), /*pad=*/false), kName);
  EXPECT_EQ(SafetensorsFile(odd.path()).find("a")->data.size(), 4u);
}

TEST(Safetensors, EveryTruncationFails) {
  const Bytes full = ValidFile{}.bytes();
  for (size_t n = 0; n < full.size(); ++n) {
    TempFile file{std::span<const std::byte>(full).first(n), kName};
    EXPECT_THROW(SafetensorsFile{file.path()}, Error) << "prefix of " << n << " bytes";
  }
}

TEST(Safetensors, RandomCorruptionNeverCrashes) {
  const Bytes full = ValidFile{}.bytes();
  std::mt19937 rng(1234);
  int opened = 0;
  for (int iter = 0; iter < 1500; ++iter) {
    Bytes bytes = full;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) {
      // Bias towards the header length and header, where the parser's decisions are.
      const size_t at = rng() % 2 ? rng() % 16 : rng() % bytes.size();
      bytes[at] = static_cast<std::byte>(rng());
    }
    TempFile file(bytes, kName);
    try {
      SafetensorsFile st(file.path());
      for (const TensorInfo& t : st.tensors()) {
        for (std::byte b : t.data) (void)b;  // every span must be readable
      }
      ++opened;
    } catch (const Error&) {
    }
  }
  EXPECT_GT(opened, 0);
}

TEST(Safetensors, TooShortAndBadHeaderLength) {
  expect_error<SafetensorsFile>(Bytes{}, kName, {"too short"});
  expect_error<SafetensorsFile>(Bytes(7), kName, {"too short"});
  test::Writer w;
  w.put<uint64_t>(uint64_t{1} << 63).raw("{}");
  expect_error<SafetensorsFile>(w.bytes, kName, {"header length 9223372036854775808"});
  test::Writer w2;
  w2.put<uint64_t>(3).raw("{}");
  expect_error<SafetensorsFile>(w2.bytes, kName, {"header length 3 exceeds the 2 bytes"});
}

TEST(Safetensors, HeaderLengthCap) {
  // A sparse file: the cap must trip before anything reads 200 MB of zeros.
  TempFile file(Bytes{}, kName);
  const uint64_t header_len = uint64_t{200} << 20;
  {
    const int fd = ::open(file.path().c_str(), O_WRONLY);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::write(fd, &header_len, 8), 8);
    ASSERT_EQ(::ftruncate(fd, static_cast<off_t>(8 + header_len)), 0);
    ::close(fd);
  }
  try {
    SafetensorsFile st(file.path());
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("limit"), std::string::npos) << e.what();
  }
}

TEST(Safetensors, MalformedJson) {
  expect_st_error("{\"a\": ", {}, {"not valid JSON"});
  expect_st_error("[1, 2]", {}, {"must be an object", "array"});
  expect_st_error("\"text\"", {}, {"must be an object"});
  expect_st_error(std::string(100, '[') + std::string(100, ']'), {}, {"nests deeper"});
  expect_st_error(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},
                      "a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                  pattern_bytes(8, 0), {"'a' twice"});
  expect_st_error(R"({"a":{"dtype":"F32","dtype":"F16","shape":[1],"data_offsets":[0,4]}})",
                  pattern_bytes(4, 0), {"'dtype' twice"});
}

TEST(Safetensors, Metadata) {
  expect_st_error(R"({"__metadata__":{"format":1}})", {}, {"__metadata__", "format"});
  expect_st_error(R"({"__metadata__":[1]})", {}, {"__metadata__"});
  TempFile null_meta(safetensors_bytes(R"({"__metadata__":null})", {}), kName);
  EXPECT_TRUE(SafetensorsFile(null_meta.path()).metadata().empty());
}

TEST(Safetensors, BadEntries) {
  const Bytes data = pattern_bytes(16, 0);
  auto entry = [](const std::string& body) { return "{\"layer.w\":" + body + "}"; };
  expect_st_error(entry("5"), data, {"'layer.w'", "must be an object"});
  expect_st_error(entry(R"({"shape":[1],"data_offsets":[0,4]})"), data, {"'layer.w'", "'dtype'"});
  expect_st_error(entry(R"({"dtype":"F32","data_offsets":[0,4]})"), data, {"'layer.w'", "'shape'"});
  expect_st_error(entry(R"({"dtype":"F32","shape":[1]})"), data, {"'layer.w'", "'data_offsets'"});
  expect_st_error(entry(R"({"dtype":7,"shape":[1],"data_offsets":[0,4]})"), data, {"'dtype'"});
  expect_st_error(entry(R"({"dtype":"Q4_K","shape":[1],"data_offsets":[0,4]})"), data,
                  {"'layer.w'", "unknown dtype 'Q4_K'"});
  expect_st_error(entry(R"({"dtype":"F32","shape":3,"data_offsets":[0,4]})"), data, {"'shape'"});
  expect_st_error(entry(R"({"dtype":"F32","shape":[-1],"data_offsets":[0,4]})"), data,
                  {"'layer.w'", "non-negative"});
  expect_st_error(entry(R"({"dtype":"F32","shape":[1.5],"data_offsets":[0,4]})"), data,
                  {"non-negative"});
  expect_st_error(entry(R"({"dtype":"F32","shape":["1"],"data_offsets":[0,4]})"), data,
                  {"non-negative"});
  expect_st_error(entry(R"({"dtype":"F32","shape":[1],"data_offsets":[0]})"), data,
                  {"'data_offsets'"});
  expect_st_error(entry(R"({"dtype":"F32","shape":[1],"data_offsets":[0,4,8]})"), data,
                  {"'data_offsets'"});
  expect_st_error(entry(R"({"dtype":"F32","shape":[1],"data_offsets":[-4,0]})"), data,
                  {"'data_offsets'"});
}

TEST(Safetensors, ShapeOverflow) {
  const Bytes data = pattern_bytes(16, 0);
  expect_st_error(
      R"({"big":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}})", data,
      {"'big'", "overflows"});
  // numel fits int64 but numel * 8 bytes does not.
  expect_st_error(R"({"big":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,8]}})",
                  data, {"'big'", "overflows"});
  // Dims beyond int64.
  expect_st_error(R"({"big":{"dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,1]}})",
                  data, {"'big'", "non-negative"});
  // A zero dim does not excuse the others from fitting.
  expect_st_error(
      R"({"big":{"dtype":"U8","shape":[0,4294967296,4294967296],"data_offsets":[0,0]}})", data,
      {"'big'", "overflows"});
}

TEST(Safetensors, OffsetsOutOfRange) {
  const Bytes data = pattern_bytes(4096, 0);
  expect_st_error(
      R"({"model.layers.0.mlp.up_proj.weight":
            {"dtype":"U8","shape":[99989],"data_offsets":[10,99999]}})",
      data,
      {"tensor 'model.layers.0.mlp.up_proj.weight': data_offsets [10, 99999] exceed the data "
       "section (4096 bytes)"});
  expect_st_error(
      R"({"w":{"dtype":"U8","shape":[0],"data_offsets":[18446744073709551615,18446744073709551615]}})",
      data, {"'w'", "exceed the data section"});
  expect_st_error(R"({"w":{"dtype":"U8","shape":[0],"data_offsets":[8,4]}})", data,
                  {"'w'", "end before they begin"});
  expect_st_error(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", data,
                  {"'w'", "hold 4 bytes", "needs 8"});
}

TEST(Safetensors, Overlap) {
  const Bytes data = pattern_bytes(16, 0);
  expect_st_error(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},
                      "b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                  data, {"'a'", "'b'", "overlap"});
  // Empty tensors overlap nothing, and touching ranges are fine.
  TempFile ok(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},
                      "e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},
                      "b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                                data),
              kName);
  EXPECT_EQ(SafetensorsFile(ok.path()).tensors().size(), 3u);
}

TEST(Safetensors, HostileNamesStayPrintable) {
  const std::string name = "bad\x01name" + std::string(1000, 'x');
  json header = {{name, {{"dtype", "NOPE"}, {"shape", {1}}, {"data_offsets", {0, 1}}}}};
  TempFile file(safetensors_bytes(header.dump(), pattern_bytes(1, 0)), kName);
  try {
    SafetensorsFile st(file.path());
    ADD_FAILURE();
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("bad\\x01name"), std::string::npos) << message;
    EXPECT_LT(message.size(), 500u);
  }
}

TEST(Safetensors, MissingFile) {
  EXPECT_THROW(SafetensorsFile("/nonexistent/model.safetensors"), Error);
}

}  // namespace
}  // namespace mil
