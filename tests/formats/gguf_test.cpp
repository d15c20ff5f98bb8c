#include "formats/gguf.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "common/file_writers.h"

namespace mil {
namespace {

using test::Bytes;
using test::expect_error;
using test::gguf_bytes;
using test::GgufSpec;
using test::GgufTensor;
using test::gv;
using test::gv_array;
using test::gv_string;
using test::gv_strings;
using test::pattern_bytes;
using test::TempFile;
using test::Writer;
using namespace test;  // GGUF value type ids

constexpr std::string_view kName = "model.gguf";

void expect_gguf_error(const Bytes& bytes, std::initializer_list<std::string_view> needles) {
  expect_error<GGUFFile>(bytes, kName, needles);
}
void expect_gguf_error(const GgufSpec& spec, std::initializer_list<std::string_view> needles) {
  expect_gguf_error(gguf_bytes(spec), needles);
}

// A small valid file with one value of every type and tensors of several ggml types.
GgufSpec valid_spec() {
  GgufSpec spec;
  spec.kvs = {
      {"general.architecture", gv_string("llama")},
      {"u8", gv<uint8_t>(kU8, 200)},
      {"i8", gv<int8_t>(kI8, -5)},
      {"u16", gv<uint16_t>(kU16, 60000)},
      {"i16", gv<int16_t>(kI16, -30000)},
      {"u32", gv<uint32_t>(kU32, 4000000000u)},
      {"i32", gv<int32_t>(kI32, -7)},
      {"f32", gv<float>(kF32, 0.5f)},
      {"bool", gv<uint8_t>(kBool, 1)},
      {"u64", gv<uint64_t>(kU64, uint64_t{1} << 40)},
      {"i64", gv<int64_t>(kI64, -(int64_t{1} << 40))},
      {"f64", gv<double>(kF64, 1e-6)},
      {"tokens", gv_strings({"<s>", "", "hello", std::string("a\0b", 3)})},
      {"ids", gv_array<int32_t>(kI32, {1, -2, 3})},
      {"scores", gv_array<float>(kF32, {0.25f, -1.0f})},
      {"big_ids", gv_array<uint64_t>(kU64, {7, uint64_t{1} << 62})},
      {"empty", gv_array<uint8_t>(kU8, {})},
  };
  spec.tensors = {
      {"f32", {3, 2}, 0, pattern_bytes(24, 1), {}},
      {"q4_1", {32, 2}, 3, pattern_bytes(40, 2), {}},
      {"q8_0", {64}, 8, pattern_bytes(68, 3), {}},
      {"q4_k", {256, 1, 1}, 12, pattern_bytes(144, 4), {}},
      {"bf16", {2, 1, 1, 2}, 30, pattern_bytes(8, 5), {}},
  };
  return spec;
}

TEST(GGUF, RoundTripValues) {
  TempFile file(gguf_bytes(valid_spec()), kName);
  GGUFFile g(file.path());
  EXPECT_EQ(g.path(), file.path());
  EXPECT_EQ(g.version(), 3u);
  EXPECT_EQ(g.get_string("general.architecture"), "llama");
  EXPECT_EQ(g.get_int("u8"), 200);
  EXPECT_EQ(g.get_int("i8"), -5);
  EXPECT_EQ(g.get_int("u16"), 60000);
  EXPECT_EQ(g.get_int("i16"), -30000);
  EXPECT_EQ(g.get_int("u32"), 4000000000);
  EXPECT_EQ(g.get_int("i32"), -7);
  EXPECT_EQ(g.get_int("u64"), int64_t{1} << 40);
  EXPECT_EQ(g.get_int("i64"), -(int64_t{1} << 40));
  EXPECT_EQ(g.get_float("f32"), 0.5);
  EXPECT_EQ(g.get_float("f64"), 1e-6);
  EXPECT_EQ(g.get_float("i32"), -7.0);  // integers read as floats
  EXPECT_EQ(g.get_float("u64"), std::ldexp(1.0, 40));
  EXPECT_EQ(g.get_bool("bool"), true);
  EXPECT_EQ(g.get_string_array("tokens"),
            (std::vector<std::string_view>{"<s>", "", "hello", std::string_view("a\0b", 3)}));
  EXPECT_EQ(g.get_int_array("ids"), (std::vector<int64_t>{1, -2, 3}));
  EXPECT_EQ(g.get_float_array("scores"), (std::vector<double>{0.25, -1.0}));
  EXPECT_EQ(g.get_float_array("ids"), (std::vector<double>{1, -2, 3}));
  EXPECT_EQ(g.get_int_array("big_ids"), (std::vector<int64_t>{7, int64_t{1} << 62}));
  EXPECT_EQ(g.get_int_array("empty"), std::vector<int64_t>{});

  EXPECT_TRUE(g.has("u8"));
  EXPECT_FALSE(g.has("absent"));
  EXPECT_EQ(g.get_int("absent"), std::nullopt);
  EXPECT_EQ(g.get_float("absent"), std::nullopt);
  EXPECT_EQ(g.get_bool("absent"), std::nullopt);
  EXPECT_EQ(g.get_string("absent"), std::nullopt);
  EXPECT_EQ(g.get_string_array("absent"), std::nullopt);
  EXPECT_EQ(g.get_int_array("absent"), std::nullopt);
  EXPECT_EQ(g.get_float_array("absent"), std::nullopt);

  std::vector<std::string> expected_keys;
  for (const auto& [key, value] : valid_spec().kvs) expected_keys.push_back(key);
  EXPECT_EQ(g.keys(), expected_keys);
}

TEST(GGUF, GetterTypeMismatchesNameFileAndKey) {
  TempFile file(gguf_bytes(valid_spec()), kName);
  GGUFFile g(file.path());
  auto expect_mismatch = [&](auto&& call, std::string_view key) {
    try {
      call();
      ADD_FAILURE() << "expected a type error for " << key;
    } catch (const Error& e) {
      const std::string message = e.what();
      EXPECT_NE(message.find(kName), std::string::npos) << message;
      EXPECT_NE(message.find("'" + std::string(key) + "'"), std::string::npos) << message;
    }
  };
  expect_mismatch([&] { g.get_int("f32"); }, "f32");
  expect_mismatch([&] { g.get_int("bool"); }, "bool");
  expect_mismatch([&] { g.get_int("general.architecture"); }, "general.architecture");
  expect_mismatch([&] { g.get_int("ids"); }, "ids");
  expect_mismatch([&] { g.get_float("bool"); }, "bool");
  expect_mismatch([&] { g.get_float("tokens"); }, "tokens");
  expect_mismatch([&] { g.get_bool("u8"); }, "u8");
  expect_mismatch([&] { g.get_string("tokens"); }, "tokens");
  expect_mismatch([&] { g.get_string_array("ids"); }, "ids");
  expect_mismatch([&] { g.get_string_array("general.architecture"); }, "general.architecture");
  expect_mismatch([&] { g.get_int_array("scores"); }, "scores");
  expect_mismatch([&] { g.get_int_array("tokens"); }, "tokens");
  expect_mismatch([&] { g.get_float_array("tokens"); }, "tokens");
}

TEST(GGUF, OutOfRangeScalars) {
  GgufSpec spec;
  spec.kvs = {{"huge", gv<uint64_t>(kU64, ~uint64_t{0})},
              {"huge_list", gv_array<uint64_t>(kU64, {1, ~uint64_t{0}})},
              {"flag", gv<uint8_t>(kBool, 2)}};
  TempFile file(gguf_bytes(spec), kName);
  GGUFFile g(file.path());
  EXPECT_THROW(g.get_int("huge"), Error);
  EXPECT_THROW(g.get_int_array("huge_list"), Error);
  EXPECT_EQ(g.get_float("huge"), std::ldexp(1.0, 64));
  EXPECT_THROW(g.get_bool("flag"), Error);
}

TEST(GGUF, RoundTripTensors) {
  const GgufSpec spec = valid_spec();
  TempFile file(gguf_bytes(spec), kName);
  GGUFFile g(file.path());
  ASSERT_EQ(g.tensors().size(), spec.tensors.size());
  struct Expect {
    const char* name;
    const char* dtype_name;
    std::optional<DType> dtype;
    std::vector<int64_t> shape;
  };
  const Expect expected[] = {
      {"f32", "F32", DType::F32, {2, 3}},
      {"q4_1", "Q4_1", DType::Q4_1, {2, 32}},
      {"q8_0", "Q8_0", DType::Q8_0, {64}},
      {"q4_k", "Q4_K", std::nullopt, {1, 1, 256}},
      {"bf16", "BF16", DType::BF16, {2, 1, 1, 2}},
  };
  for (size_t i = 0; i < spec.tensors.size(); ++i) {
    SCOPED_TRACE(expected[i].name);
    const TensorInfo& t = g.tensors()[i];
    EXPECT_EQ(&t, g.find(expected[i].name));
    EXPECT_EQ(t.name, expected[i].name);
    EXPECT_EQ(t.dtype_name, expected[i].dtype_name);
    EXPECT_EQ(t.dtype, expected[i].dtype);
    EXPECT_EQ(t.shape, expected[i].shape);
    ASSERT_EQ(t.data.size(), spec.tensors[i].data.size());
    EXPECT_EQ(std::memcmp(t.data.data(), spec.tensors[i].data.data(), t.data.size()), 0);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data.data()) % 32, 0u);
  }
  EXPECT_EQ(g.find("absent"), nullptr);
}

TEST(GGUF, Version2CustomAlignmentAndNoTensors) {
  GgufSpec spec = valid_spec();
  spec.version = 2;
  spec.alignment = 64;
  spec.kvs.push_back({"general.alignment", gv<uint32_t>(kU32, 64)});
  TempFile file(gguf_bytes(spec), kName);
  GGUFFile g(file.path());
  EXPECT_EQ(g.version(), 2u);
  for (const TensorInfo& t : g.tensors()) {
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data.data()) % 64, 0u) << t.name;
  }

  GgufSpec bare;
  Bytes bytes = gguf_bytes(bare);
  bytes.resize(24);  // no padding after the header: fine when there is no data
  TempFile empty(bytes, kName);
  GGUFFile e(empty.path());
  EXPECT_TRUE(e.tensors().empty());
  EXPECT_TRUE(e.keys().empty());
}

TEST(GGUF, EveryTruncationFails) {
  const Bytes full = gguf_bytes(valid_spec());
  for (size_t n = 0; n < full.size(); ++n) {
    TempFile file{std::span<const std::byte>(full).first(n), kName};
    EXPECT_THROW(GGUFFile{file.path()}, Error) << "prefix of " << n << " bytes";
  }
}

TEST(GGUF, RandomCorruptionNeverCrashes) {
  const Bytes full = gguf_bytes(valid_spec());
  std::mt19937 rng(99);
  int opened = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    Bytes bytes = full;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) {
      const size_t at = rng() % bytes.size();
      // Mostly small values or all-ones, which make counts and lengths interesting.
      const uint32_t kind = rng() % 3;
      bytes[at] = static_cast<std::byte>(kind == 0 ? rng() : kind == 1 ? 0xff : rng() % 8);
    }
    TempFile file(bytes, kName);
    try {
      GGUFFile g(file.path());
      for (const std::string& key : g.keys()) {
        try {
          (void)g.get_int(key);
        } catch (const Error&) {
        }
        try {
          (void)g.get_string_array(key);
        } catch (const Error&) {
        }
        try {
          (void)g.get_float_array(key);
        } catch (const Error&) {
        }
      }
      for (const TensorInfo& t : g.tensors()) {
        for (std::byte b : t.data) (void)b;
      }
      ++opened;
    } catch (const Error&) {
    }
  }
  EXPECT_GT(opened, 0);
}

Bytes header(const char* magic, uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
  Writer w;
  w.raw(magic).put<uint32_t>(version).put<uint64_t>(n_tensors).put<uint64_t>(n_kv);
  return std::move(w.bytes);
}

TEST(GGUF, BadHeaders) {
  expect_gguf_error(Bytes{}, {"too short"});
  expect_gguf_error(header("GGML", 3, 0, 0), {"bad magic"});
  expect_gguf_error(header("FUGG", 3, 0, 0), {"big-endian"});
  expect_gguf_error(header("GGUF", 1, 0, 0), {"version 1"});
  expect_gguf_error(header("GGUF", 4, 0, 0), {"version 4"});
  expect_gguf_error(header("GGUF", 0x03000000, 0, 0), {"big-endian"});
}

TEST(GGUF, AbsurdCountsFailFast) {
  expect_gguf_error(header("GGUF", 3, uint64_t{1} << 60, 0), {"1152921504606846976 tensor infos"});
  expect_gguf_error(header("GGUF", 3, 0, uint64_t{1} << 60), {"1152921504606846976 key/value"});
  expect_gguf_error(header("GGUF", 3, ~uint64_t{0}, ~uint64_t{0}), {"key/value"});

  Writer key_len;  // key length far past the end of the file
  key_len.raw(header("GGUF", 3, 0, 1)).put<uint64_t>(uint64_t{1} << 62).raw("abcdefgh");
  expect_gguf_error(key_len.bytes, {"key/value #0", "runs past the end"});

  Writer value_len;
  value_len.raw(header("GGUF", 3, 0, 1)).str("name").put<uint32_t>(kString);
  value_len.put<uint64_t>(~uint64_t{0}).raw("x");
  expect_gguf_error(value_len.bytes, {"'name'", "runs past the end"});

  for (uint32_t elem : {kU8, kU64, kString}) {
    Writer array;
    array.raw(header("GGUF", 3, 0, 1)).str("tokenizer.ggml.tokens").put<uint32_t>(kArray);
    array.put<uint32_t>(elem).put<uint64_t>(uint64_t{1} << 60).raw("0123456789abcdef");
    expect_gguf_error(array.bytes, {"'tokenizer.ggml.tokens'", "1152921504606846976"});
  }
  GgufSpec strings;  // each string fits, the last one's length does not
  Writer w;
  w.put<uint32_t>(kString).put<uint64_t>(2).str("ok").put<uint64_t>(1000).raw("short");
  strings.kvs = {{"tokenizer.ggml.merges", {kArray, w.bytes}}};
  expect_gguf_error(strings, {"'tokenizer.ggml.merges'", "1000 bytes"});
}

TEST(GGUF, BadValues) {
  GgufSpec nested;
  Writer inner;
  inner.put<uint32_t>(kArray).put<uint64_t>(1).put<uint32_t>(kU8).put<uint64_t>(1).put<uint8_t>(1);
  nested.kvs = {{"nested", {kArray, inner.bytes}}};
  expect_gguf_error(nested, {"'nested'", "arrays of arrays"});

  GgufSpec unknown;
  unknown.kvs = {{"weird", {13, pattern_bytes(8, 0)}}};
  expect_gguf_error(unknown, {"'weird'", "unknown value type 13"});

  GgufSpec unknown_elem;
  Writer elems;
  elems.put<uint32_t>(99).put<uint64_t>(1).put<uint64_t>(0);
  unknown_elem.kvs = {{"weird", {kArray, elems.bytes}}};
  expect_gguf_error(unknown_elem, {"'weird'", "element type 99"});

  GgufSpec dup;
  dup.kvs = {{"a", gv<uint32_t>(kU32, 1)}, {"a", gv<uint32_t>(kU32, 2)}};
  expect_gguf_error(dup, {"'a' appears twice"});
}

TEST(GGUF, BadAlignment) {
  for (uint32_t bad : {0u, 3u, 48u}) {
    GgufSpec spec = valid_spec();
    spec.kvs.push_back({"general.alignment", gv<uint32_t>(kU32, bad)});
    expect_gguf_error(spec, {"'general.alignment'", "power of two"});
  }
  GgufSpec spec = valid_spec();
  spec.kvs.push_back({"general.alignment", gv_string("32")});
  expect_gguf_error(spec, {"'general.alignment'", "string"});
}

GgufSpec one_tensor(GgufTensor t) {
  GgufSpec spec;
  spec.kvs = {{"general.architecture", gv_string("llama")}};
  spec.tensors = {std::move(t)};
  return spec;
}

TEST(GGUF, BadTensorInfos) {
  const std::string name = "blk.0.attn_q.weight";
  expect_gguf_error(one_tensor({name, {1, 1, 1, 1, 1}, 0, pattern_bytes(4, 0), {}}),
                    {"'blk.0.attn_q.weight'", "n_dims 5"});
  expect_gguf_error(one_tensor({name, {4}, 77, pattern_bytes(16, 0), {}}),
                    {"'blk.0.attn_q.weight'", "unknown ggml type id 77"});
  expect_gguf_error(one_tensor({name, {4}, 4, pattern_bytes(16, 0), {}}),
                    {"'blk.0.attn_q.weight'", "type id 4"});  // removed Q4_2
  expect_gguf_error(one_tensor({name, {48, 2}, 3, pattern_bytes(60, 0), {}}),
                    {"'blk.0.attn_q.weight'", "ne[0] = 48", "Q4_1"});
  expect_gguf_error(one_tensor({name, {128}, 12, pattern_bytes(72, 0), {}}),
                    {"'blk.0.attn_q.weight'", "Q4_K", "256"});
  expect_gguf_error(one_tensor({name, {uint64_t{1} << 32, uint64_t{1} << 32}, 0, {}, {}}),
                    {"'blk.0.attn_q.weight'", "overflows"});
  expect_gguf_error(one_tensor({name, {~uint64_t{0}}, 0, {}, {}}),
                    {"'blk.0.attn_q.weight'", "beyond int64"});
  // numel fits int64 but the byte size does not.
  expect_gguf_error(one_tensor({name, {uint64_t{1} << 62}, 0, {}, {}}),
                    {"'blk.0.attn_q.weight'", "byte size"});
}

TEST(GGUF, BadTensorData) {
  const std::string name = "output.weight";
  expect_gguf_error(one_tensor({name, {8}, 0, {}, uint64_t{1} << 40}),
                    {"'output.weight'", "32 bytes at data offset 1099511627776",
                     "exceed the data section"});
  expect_gguf_error(one_tensor({name, {8}, 0, {}, ~uint64_t{0} - 31}),
                    {"'output.weight'", "exceed the data section"});
  expect_gguf_error(one_tensor({name, {8}, 0, pattern_bytes(32, 0), 16}),
                    {"'output.weight'", "offset 16", "alignment 32"});
  // Data that starts inside the section but runs off the end of the file.
  Bytes cut = gguf_bytes(one_tensor({name, {8}, 0, pattern_bytes(32, 0), {}}));
  cut.resize(cut.size() - 1);
  expect_gguf_error(cut, {"'output.weight'", "31 bytes"});

  GgufSpec overlap;
  overlap.tensors = {{"a", {16}, 0, pattern_bytes(64, 0), 0}, {"b", {16}, 0, pattern_bytes(64, 1), 32}};
  expect_gguf_error(overlap, {"'a'", "'b'", "overlap"});

  GgufSpec dup;
  dup.tensors = {{"a", {8}, 0, pattern_bytes(32, 0), {}}, {"a", {8}, 0, pattern_bytes(32, 1), {}}};
  expect_gguf_error(dup, {"'a' appears twice"});
}

TEST(GGUF, EmptyTensorsAndOtherGgmlTypes) {
  GgufSpec spec;
  spec.tensors = {
      {"empty", {0, 4}, 2, {}, {}},
      {"q6_k", {256}, 14, pattern_bytes(210, 0), {}},
      {"i64", {3}, 27, pattern_bytes(24, 1), {}},
      {"q5_0", {32}, 6, pattern_bytes(22, 2), {}},
  };
  TempFile file(gguf_bytes(spec), kName);
  GGUFFile g(file.path());
  EXPECT_TRUE(g.find("empty")->data.empty());
  EXPECT_EQ(g.find("empty")->shape, (std::vector<int64_t>{4, 0}));
  EXPECT_EQ(g.find("q6_k")->data.size(), 210u);
  EXPECT_EQ(g.find("q6_k")->dtype, std::nullopt);
  EXPECT_EQ(g.find("i64")->dtype_name, "I64");
  EXPECT_EQ(g.find("q5_0")->dtype_name, "Q5_0");
}

TEST(GGUF, MissingFile) { EXPECT_THROW(GGUFFile("/nonexistent/model.gguf"), Error); }

}  // namespace
}  // namespace mil
