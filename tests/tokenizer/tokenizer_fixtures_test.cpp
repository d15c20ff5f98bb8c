// Golden fixtures from HF tokenizers (scripts/make_tokenizer_golden.py): every tokenizer under
// tests/fixtures/tokenizer/<name>/ must reproduce golden.jsonl token for token (encode with and
// without special tokens, decode with and without skipping them, streaming decode) and
// decode_cases.jsonl (decodes of id prefixes that cut UTF-8 sequences). The default model's GGUF
// must tokenize like smollm2/tokenizer.json, and spm_gguf/tokenizer.gguf (a SentencePiece GGUF)
// like transformers' tokenizer for it.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "formats/gguf.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace mil {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const fs::path kRoot = fs::path(MIL_FIXTURES_DIR) / "tokenizer";

std::vector<json> read_jsonl(const fs::path& path) {
  std::vector<json> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty()) out.push_back(json::parse(line));
  }
  return out;
}

std::vector<std::string> fixture_names() {
  std::vector<std::string> names;
  if (!fs::is_directory(kRoot)) return names;
  for (const auto& entry : fs::directory_iterator(kRoot)) {
    if (fs::is_regular_file(entry.path() / "golden.jsonl") &&
        fs::is_regular_file(entry.path() / "tokenizer.json")) {
      names.push_back(entry.path().filename().string());
    }
  }
  std::sort(names.begin(), names.end());
  return names;
}

std::string stream_decode(const Tokenizer& tok, const std::vector<int32_t>& ids, bool skip,
                          bool& pieces_valid) {
  IncrementalDecoder dec(tok, skip);
  std::string out;
  for (const int32_t id : ids) {
    const std::string piece = dec.push(id);
    pieces_valid = pieces_valid && tok::is_valid_utf8(piece);
    out += piece;
  }
  const std::string tail = dec.flush();
  pieces_valid = pieces_valid && tok::is_valid_utf8(tail);
  return out + tail;
}

struct Tally {
  size_t total = 0, encode = 0, encode_plain = 0, decode = 0, decode_skip = 0, stream = 0;
  size_t reported = 0;
};

// Compares one golden line; prints the first few mismatches of each tokenizer.
void check_line(const Tokenizer& tok, const json& g, const std::string& name, Tally& t,
                bool check_decode) {
  const std::string text = g["text"].get<std::string>();
  const auto ids = g["ids"].get<std::vector<int32_t>>();
  const auto plain = g["ids_plain"].get<std::vector<int32_t>>();
  ++t.total;
  auto report = [&](const char* what, const std::string& detail) {
    if (t.reported++ < 5) {
      ADD_FAILURE() << name << ": " << what << " mismatch for " << json(text).dump() << "\n"
                    << detail;
    }
  };
  const auto got = tok.encode(text, true);
  if (got == ids) {
    ++t.encode;
  } else {
    report("encode", "got " + json(got).dump() + "\nwant " + json(ids).dump());
  }
  const auto got_plain = tok.encode(text, false);
  if (got_plain == plain) {
    ++t.encode_plain;
  } else {
    report("encode(plain)", "got " + json(got_plain).dump() + "\nwant " + json(plain).dump());
  }
  if (!check_decode) return;
  const std::string decoded = tok.decode(ids, false);
  if (decoded == g["decoded"].get<std::string>()) {
    ++t.decode;
  } else {
    report("decode", "got " + json(decoded).dump());
  }
  const std::string decoded_skip = tok.decode(ids, true);
  if (decoded_skip == g["decoded_skip"].get<std::string>()) {
    ++t.decode_skip;
  } else {
    report("decode(skip)", "got " + json(decoded_skip).dump());
  }
  bool valid = true;
  const bool stream_ok = stream_decode(tok, ids, false, valid) == decoded &&
                         stream_decode(tok, ids, true, valid) == decoded_skip && valid;
  if (stream_ok) {
    ++t.stream;
  } else {
    report("incremental decode", "");
  }
}

// Every golden line of <dir>/golden.jsonl: encode both ways, decode both ways, streaming decode.
void check_golden(const Tokenizer& tok, const fs::path& golden, const std::string& name) {
  Tally t;
  for (const auto& g : read_jsonl(golden)) check_line(tok, g, name, t, true);
  std::printf(
      "[%s] %zu lines: encode %zu, encode_plain %zu, decode %zu, decode_skip %zu, "
      "stream %zu\n",
      name.c_str(), t.total, t.encode, t.encode_plain, t.decode, t.decode_skip, t.stream);
  EXPECT_GT(t.total, 0u);
  EXPECT_EQ(t.encode, t.total);
  EXPECT_EQ(t.encode_plain, t.total);
  EXPECT_EQ(t.decode, t.total);
  EXPECT_EQ(t.decode_skip, t.total);
  EXPECT_EQ(t.stream, t.total);
}

// decode_cases.jsonl: decodes (and streaming decodes) of id prefixes that cut UTF-8 sequences.
void check_decode_cases(const Tokenizer& tok, const fs::path& cases, const std::string& name) {
  size_t total = 0, ok = 0;
  for (const auto& c : read_jsonl(cases)) {
    const auto ids = c["ids"].get<std::vector<int32_t>>();
    ++total;
    const std::string d = tok.decode(ids, false), ds = tok.decode(ids, true);
    bool valid = true;
    const bool stream_ok = stream_decode(tok, ids, false, valid) == d && valid;
    if (d == c["decoded"].get<std::string>() && ds == c["decoded_skip"].get<std::string>() &&
        stream_ok) {
      ++ok;
    } else if (total - ok <= 5) {
      ADD_FAILURE() << name << ": decode case " << json(ids).dump() << " got " << json(d).dump()
                    << " / " << json(ds).dump() << " want " << c["decoded"].dump() << " / "
                    << c["decoded_skip"].dump();
    }
  }
  std::printf("[%s] decode_cases: %zu / %zu\n", name.c_str(), ok, total);
  EXPECT_GT(total, 0u);
  EXPECT_EQ(ok, total);
}

// Streaming decode of random id sequences (any token, byte tokens and specials included):
// pieces are valid UTF-8 and their concatenation is decode(ids).
void check_streaming_random_ids(const Tokenizer& tok) {
  std::mt19937 rng(1234);
  for (int round = 0; round < 300; ++round) {
    std::vector<int32_t> ids(1 + rng() % 24);
    for (auto& id : ids) id = static_cast<int32_t>(rng() % static_cast<uint32_t>(tok.vocab_size()));
    for (const bool skip : {false, true}) {
      bool valid = true;
      ASSERT_EQ(stream_decode(tok, ids, skip, valid), tok.decode(ids, skip))
          << json(ids).dump() << " skip=" << skip;
      ASSERT_TRUE(valid) << json(ids).dump();
    }
  }
}

TEST(TokenizerFixtures, GoldenFilesPresent) {
  if (!fs::is_directory(kRoot)) GTEST_SKIP() << "no fixtures at " << kRoot;
  EXPECT_GE(fixture_names().size(), 5u);
}

class TokenizerGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(TokenizerGolden, MatchesHf) {
  const fs::path dir = kRoot / GetParam();
  const auto tok = Tokenizer::from_hf_json((dir / "tokenizer.json").string());
  check_golden(*tok, dir / "golden.jsonl", GetParam());
  const fs::path cases = dir / "decode_cases.jsonl";
  if (fs::is_regular_file(cases)) check_decode_cases(*tok, cases, GetParam());
}

TEST_P(TokenizerGolden, StreamingRandomIds) {
  const auto tok = Tokenizer::from_hf_json((kRoot / GetParam() / "tokenizer.json").string());
  check_streaming_random_ids(*tok);
}

INSTANTIATE_TEST_SUITE_P(All, TokenizerGolden, ::testing::ValuesIn(fixture_names()),
                         [](const auto& p) { return p.param; });
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(TokenizerGolden);

TEST(TokenizerFixtures, DefaultModelGgufMatchesSmolLM2Json) {
  const char* path = std::getenv("MIL_DEFAULT_MODEL");
  if (path == nullptr || !fs::is_regular_file(path)) {
    GTEST_SKIP() << "set MIL_DEFAULT_MODEL to SmolLM2-135M-Instruct.Q4_1.gguf to run";
  }
  const fs::path golden = kRoot / "smollm2" / "golden.jsonl";
  if (!fs::is_regular_file(golden)) GTEST_SKIP() << "no " << golden;
  GGUFFile gguf(path);
  const auto tok = Tokenizer::from_gguf(gguf);
  EXPECT_EQ(tok->vocab_size(), 49152);
  EXPECT_TRUE(tok->is_special(0));
  EXPECT_EQ(tok->token_to_id("<|im_start|>"), 1);
  Tally t;
  for (const auto& g : read_jsonl(golden)) check_line(*tok, g, "smollm2 (GGUF)", t, true);
  std::printf(
      "[smollm2 GGUF] %zu lines: encode %zu, encode_plain %zu, decode %zu, decode_skip "
      "%zu, stream %zu\n",
      t.total, t.encode, t.encode_plain, t.decode, t.decode_skip, t.stream);
  EXPECT_EQ(t.encode, t.total);
  EXPECT_EQ(t.encode_plain, t.total);
  EXPECT_EQ(t.decode, t.total);
  EXPECT_EQ(t.decode_skip, t.total);
  EXPECT_EQ(t.stream, t.total);
}

// spm_gguf/tokenizer.gguf: sentencepiece_bpe's vocabulary as a SentencePiece GGUF
// (tokenizer.ggml.model "llama": tokens, scores, token types, no merges). The goldens come from
// transformers' tokenizer for that GGUF: merges rebuilt from the scores, LlamaTokenizer's
// Metaspace/byte-fallback pipeline, <s> added from add_bos_token.
class SpmGguf : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::is_regular_file(kDir / "tokenizer.gguf")) GTEST_SKIP() << "no " << kDir;
    gguf_ = std::make_unique<GGUFFile>((kDir / "tokenizer.gguf").string());
    tok_ = Tokenizer::from_gguf(*gguf_);
  }
  const fs::path kDir = kRoot / "spm_gguf";
  std::unique_ptr<GGUFFile> gguf_;
  std::unique_ptr<Tokenizer> tok_;
};

TEST_F(SpmGguf, Vocabulary) {
  EXPECT_EQ(tok_->vocab_size(), 2999);
  EXPECT_EQ(tok_->token_to_id("<unk>"), 0);
  EXPECT_EQ(tok_->token_to_id("<s>"), 1);
  EXPECT_EQ(tok_->token_to_id("</s>"), 2);
  EXPECT_EQ(tok_->token_to_id("<0x41>"), 3 + 0x41);
  EXPECT_TRUE(tok_->is_special(1));
  EXPECT_TRUE(tok_->is_special(2));
  EXPECT_FALSE(tok_->is_special(3 + 0x41));  // byte tokens are ordinary vocabulary
}

TEST_F(SpmGguf, MatchesTransformers) { check_golden(*tok_, kDir / "golden.jsonl", "spm_gguf"); }

TEST_F(SpmGguf, DecodeCases) { check_decode_cases(*tok_, kDir / "decode_cases.jsonl", "spm_gguf"); }

TEST_F(SpmGguf, StreamingRandomIds) { check_streaming_random_ids(*tok_); }

}  // namespace
}  // namespace mil
