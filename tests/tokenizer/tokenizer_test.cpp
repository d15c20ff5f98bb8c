// Unit tests of the tokenizer parts on small hand-written tokenizer.json / GGUF vocabularies:
// each component's HF semantics, refusals of unsupported components, hostile files, invalid
// UTF-8 input, id bounds, and streaming decode. Real tokenizers are checked against HF in
// tokenizer_fixtures_test.cpp.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "common/file_writers.h"
#include "formats/gguf.h"
#include "tokenizer/pre_tokenizers.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace mil {
namespace {

using nlohmann::json;
using Ids = std::vector<int32_t>;

// A byte-level BPE: the 256 byte characters (ids 0..255), then the given merges' results.
json byte_level_json(const std::vector<std::pair<std::string, std::string>>& merges) {
  const auto& alphabet = tok::ByteLevelAlphabet::get();
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[alphabet.byte_to_utf8[b]] = b;
  json merge_list = json::array();
  for (const auto& [l, r] : merges) {
    if (!vocab.contains(l + r)) vocab[l + r] = static_cast<int>(vocab.size());
    merge_list.push_back(l + " " + r);
  }
  return {{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merge_list}}},
          {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
          {"decoder", {{"type", "ByteLevel"}}}};
}

// A character vocabulary with whole words: with ignore_merges, a piece in the vocab is one id,
// so the ids show how the pre-tokenizer split the text.
json word_json(const std::vector<std::string>& words, const json& pre_tokenizer) {
  json vocab = json::object();
  for (int c = 32; c < 127; ++c) vocab[std::string(1, static_cast<char>(c))] = c;
  int next = 200;
  for (const auto& w : words) vocab[w] = next++;
  return {{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array()},
                     {"ignore_merges", true}}},
          {"pre_tokenizer", pre_tokenizer}};
}

std::unique_ptr<Tokenizer> load(const json& j) { return Tokenizer::from_hf_json_text(j.dump(), "t.json"); }

void expect_load_error(const std::string& text, std::initializer_list<std::string_view> needles) {
  try {
    Tokenizer::from_hf_json_text(text, "bad_tokenizer.json");
    ADD_FAILURE() << "expected an error for " << text.substr(0, 200);
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("bad_tokenizer.json"), std::string::npos) << message;
    for (auto needle : needles) {
      EXPECT_NE(message.find(needle), std::string::npos) << "'" << needle << "' not in " << message;
    }
  }
}

std::string stream(const Tokenizer& t, const Ids& ids, bool skip) {
  IncrementalDecoder dec(t, skip);
  std::string out;
  for (int32_t id : ids) {
    const std::string piece = dec.push(id);
    EXPECT_TRUE(tok::is_valid_utf8(piece));
    out += piece;
  }
  return out + dec.flush();
}

TEST(Utf8, LossyMatchesRustFromUtf8Lossy) {
  EXPECT_EQ(tok::utf8_lossy("abc"), "abc");
  EXPECT_EQ(tok::utf8_lossy("a\xFF" "b"), "a\uFFFD" "b");
  EXPECT_EQ(tok::utf8_lossy("\xE4\xB8"), "\uFFFD");            // truncated: one maximal subpart
  EXPECT_EQ(tok::utf8_lossy("\xE4\xB8" "a"), "\uFFFD" "a");
  EXPECT_EQ(tok::utf8_lossy("\xF0\x9F\x98"), "\uFFFD");
  EXPECT_EQ(tok::utf8_lossy("\xED\xA0\x80"), "\uFFFD\uFFFD\uFFFD");  // surrogate: 3 subparts
  EXPECT_EQ(tok::utf8_lossy("\xC0\xAF"), "\uFFFD\uFFFD");          // overlong
  EXPECT_EQ(tok::utf8_lossy("\xF4\x90\x80\x80"), "\uFFFD\uFFFD\uFFFD\uFFFD");
  EXPECT_TRUE(tok::ends_with_incomplete_utf8("a\xE4\xB8"));
  EXPECT_FALSE(tok::ends_with_incomplete_utf8("a\xE4\xB8\xAD"));
}

TEST(ByteLevelBpe, MergesByRankThenLeftmost) {
  // "aaa": the merge a+a applies at the leftmost pair first -> "aa" "a".
  const auto t = load(byte_level_json({{"a", "a"}}));
  EXPECT_EQ(t->encode("aaa", false), (Ids{256, 'a'}));
  EXPECT_EQ(t->encode("aaaa", false), (Ids{256, 256}));
  // Rank order: "b c" (rank 0) beats "a b" (rank 1) in "abc".
  const auto t2 = load(byte_level_json({{"b", "c"}, {"a", "b"}, {"a", "bc"}}));
  EXPECT_EQ(t2->encode("abc", false), (Ids{258}));
  EXPECT_EQ(t2->decode(t2->encode("abc ab", false)), "abc ab");
  // The space is mapped to 'Ġ' and the GPT-2 regex keeps it with the next word.
  const auto t3 = load(byte_level_json({{"\u0120", "a"}}));
  EXPECT_EQ(t3->encode("a a", false), (Ids{'a', 256}));
}

TEST(ByteLevelBpe, InvalidUtf8InputIsReplacedNotFatal) {
  const auto t = load(byte_level_json({}));
  const auto ids = t->encode("ok\xFF\xFE" "end\xE4", false);
  EXPECT_EQ(ids, t->encode("ok\uFFFD\uFFFDend\uFFFD", false));
  EXPECT_EQ(t->decode(ids), "ok\uFFFD\uFFFDend\uFFFD");
}

TEST(ByteLevelBpe, DecodeChecksIdsAndIsLossy) {
  const auto t = load(byte_level_json({}));
  EXPECT_THROW(t->decode(Ids{256}), Error);
  EXPECT_THROW(t->decode(Ids{-1}), Error);
  EXPECT_EQ(t->id_to_token(999), "");
  // Byte 0xE4 alone is an incomplete sequence: U+FFFD, as String::from_utf8_lossy.
  const auto han = t->encode("\xE4\xB8\xAD", false);
  ASSERT_EQ(han.size(), 3u);
  EXPECT_EQ(t->decode(Ids{han[0]}), "\uFFFD");
  EXPECT_EQ(t->decode(Ids{han[0], han[1]}), "\uFFFD");
  IncrementalDecoder dec(*t, false);
  EXPECT_THROW(dec.push(5000), Error);
}

TEST(ByteLevelBpe, StreamingNeverSplitsACharacter) {
  const auto t = load(byte_level_json({}));
  const std::string text = "h\u00e9llo \u4e16\u754c \U0001F600!";
  const auto ids = t->encode(text, false);
  EXPECT_EQ(stream(*t, ids, false), text);
  // Random ids (random bytes): concatenation still equals decode.
  std::mt19937 rng(7);
  for (int round = 0; round < 200; ++round) {
    Ids random(1 + rng() % 12);
    for (auto& id : random) id = static_cast<int32_t>(rng() % 256);
    EXPECT_EQ(stream(*t, random, false), t->decode(random));
  }
}

TEST(PreTokenizers, SplitBehaviors) {
  auto split = [](const char* behavior, bool invert = false) {
    return json{{"type", "Split"}, {"pattern", {{"String", "-"}}}, {"behavior", behavior},
                {"invert", invert}};
  };
  const std::vector<std::string> words = {"ab", "cd", "ab-", "-cd", "--", "-"};
  const int ab = 200, cd = 201, ab_ = 202, _cd = 203, dash = 205;  // "-" is a word too
  EXPECT_EQ(load(word_json(words, split("Isolated")))->encode("ab-cd", false), (Ids{ab, dash, cd}));
  EXPECT_EQ(load(word_json(words, split("Removed")))->encode("ab-cd", false), (Ids{ab, cd}));
  EXPECT_EQ(load(word_json(words, split("MergedWithPrevious")))->encode("ab-cd", false),
            (Ids{ab_, cd}));
  EXPECT_EQ(load(word_json(words, split("MergedWithNext")))->encode("ab-cd", false),
            (Ids{ab, _cd}));
  // Contiguous keeps runs of matches together: "--" is one piece.
  EXPECT_EQ(load(word_json(words, split("Contiguous")))->encode("ab--cd", false),
            (Ids{ab, 204, cd}));
  // invert: the non-dash runs are the matches; Removed drops the dashes... inverted: keeps them.
  EXPECT_EQ(load(word_json(words, split("Removed", true)))->encode("ab-cd", false), (Ids{dash}));
}

TEST(PreTokenizers, DigitsAndMetaspace) {
  const std::vector<std::string> words = {"12", "\u2581ab", "\u2581", "ab"};
  const json digits = {{"type", "Digits"}, {"individual_digits", true}};
  EXPECT_EQ(load(word_json(words, digits))->encode("a12", false), (Ids{'a', '1', '2'}));
  const json contiguous = {{"type", "Digits"}, {"individual_digits", false}};
  EXPECT_EQ(load(word_json(words, contiguous))->encode("a12", false), (Ids{'a', 200}));
  json meta = {{"type", "Metaspace"}, {"replacement", "\u2581"}, {"prepend_scheme", "first"},
               {"split", true}};
  // "ab  ab" -> "▁ab", "▁", "▁ab".
  EXPECT_EQ(load(word_json(words, meta))->encode("ab  ab", false), (Ids{201, 202, 201}));
  meta["prepend_scheme"] = "never";
  EXPECT_EQ(load(word_json(words, meta))->encode("ab ab", false), (Ids{203, 201}));
}

TEST(AddedTokens, StripSingleWordAndNormalized) {
  json j = byte_level_json({});
  j["added_tokens"] = json::array({
      {{"id", 300}, {"content", "<L>"}, {"special", true}, {"lstrip", true}, {"normalized", false}},
      {{"id", 301}, {"content", "<R>"}, {"special", true}, {"rstrip", true}, {"normalized", false}},
      {{"id", 302}, {"content", "cat"}, {"special", false}, {"single_word", true},
       {"normalized", true}},
  });
  const auto t = load(j);
  EXPECT_EQ(t->vocab_size(), 303);
  EXPECT_TRUE(t->is_special(300));
  EXPECT_FALSE(t->is_special(302));
  EXPECT_EQ(t->encode("x  <L>y", false), (Ids{'x', 300, 'y'}));       // lstrip eats the spaces
  EXPECT_EQ(t->encode("x<R>  y", false), (Ids{'x', 301, 'y'}));       // rstrip too
  EXPECT_EQ(t->encode("cat", false), (Ids{302}));
  EXPECT_EQ(t->encode("a cat!", false).size(), 4u);                    // a Ġ cat ! -> [a, Ġ, 302, !]
  EXPECT_EQ(t->encode("cats", false), (Ids{'c', 'a', 't', 's'}));      // not a single word
  EXPECT_EQ(t->decode(Ids{'x', 300, 'y'}, true), "xy");
  EXPECT_EQ(t->decode(Ids{'x', 300, 'y'}, false), "x<L>y");
  EXPECT_EQ(t->token_to_id("<R>"), 301);
  EXPECT_EQ(stream(*t, Ids{'x', 300, 'y', 301}, true), "xy");
}

TEST(PostProcessor, TemplateAddsSpecialTokensOnlyWhenAsked) {
  json j = byte_level_json({});
  j["added_tokens"] = json::array({{{"id", 256}, {"content", "<s>"}, {"special", true}}});
  j["post_processor"] = {
      {"type", "TemplateProcessing"},
      {"single", json::array({{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
                              {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
      {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {256}}, {"tokens", {"<s>"}}}}}}};
  const auto t = load(j);
  EXPECT_EQ(t->encode("a", true), (Ids{256, 'a'}));
  EXPECT_EQ(t->encode("a", false), (Ids{'a'}));
  EXPECT_EQ(t->encode("", true), (Ids{256}));
}

TEST(Decoders, SentencePieceStyleChain) {
  // Replace ▁ -> ' ', ByteFallback, Fuse, Strip one leading space (Llama 2's decoder).
  json vocab = {{"<unk>", 0}, {"\u2581hi", 1}, {"<0xE4>", 2}, {"<0xB8>", 3}, {"<0xAD>", 4},
                {"\u2581", 5}, {"<0xFF>", 6}};
  json j = {{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array()},
                       {"byte_fallback", true}, {"unk_token", "<unk>"}, {"fuse_unk", true}}},
            {"normalizer", {{"type", "Sequence"}, {"normalizers", json::array({
                {{"type", "Prepend"}, {"prepend", "\u2581"}},
                {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\u2581"}}})}}},
            {"decoder", {{"type", "Sequence"}, {"decoders", json::array({
                {{"type", "Replace"}, {"pattern", {{"String", "\u2581"}}}, {"content", " "}},
                {{"type", "ByteFallback"}}, {{"type", "Fuse"}},
                {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}})}}}};
  const auto t = load(j);
  EXPECT_EQ(t->encode("\u4e2d", false), (Ids{5, 2, 3, 4}));  // byte fallback
  EXPECT_EQ(t->encode("xy", false), (Ids{5, 0}));            // unknown chars fused into one unk
  EXPECT_EQ(t->decode(Ids{5, 2, 3, 4}), "\u4e2d");
  EXPECT_EQ(t->decode(Ids{1, 2, 3, 1}), "hi\uFFFD\uFFFD hi");  // invalid run: U+FFFD per byte
  EXPECT_EQ(t->decode(Ids{1, 5, 1}), "hi  hi");
  for (const Ids& ids : {Ids{1, 2, 3, 4, 1}, Ids{1, 2, 3, 1}, Ids{2, 3}, Ids{1, 6, 2}}) {
    EXPECT_EQ(stream(*t, ids, false), t->decode(ids));
  }
}

TEST(Decoders, MetaspaceDropsReplacementInFirstTokenOnly) {
  json j = word_json({"\u2581a", "\u2581b"}, {{"type", "Metaspace"}, {"replacement", "\u2581"},
                                              {"prepend_scheme", "always"}});
  j["decoder"] = {{"type", "Metaspace"}, {"replacement", "\u2581"}, {"prepend_scheme", "always"}};
  const auto t = load(j);
  EXPECT_EQ(t->encode("a b", false), (Ids{200, 201}));
  EXPECT_EQ(t->decode(Ids{200, 201}), "a b");
  EXPECT_EQ(stream(*t, Ids{200, 201, 200}, false), "a b a");
}

TEST(HfJson, RefusesUnsupportedComponentsByName) {
  json j = byte_level_json({});
  j["normalizer"] = {{"type", "Lowercase"}};
  expect_load_error(j.dump(), {"normalizer", "Lowercase"});
  j = byte_level_json({});
  j["normalizer"] = {{"type", "Sequence"}, {"normalizers", json::array({{{"type", "NFKC"}}})}};
  expect_load_error(j.dump(), {"NFKC"});
  j = byte_level_json({});
  j["pre_tokenizer"] = {{"type", "Whitespace"}};
  expect_load_error(j.dump(), {"pre_tokenizer", "Whitespace"});
  j = byte_level_json({});
  j["decoder"] = {{"type", "WordPiece"}};
  expect_load_error(j.dump(), {"decoder", "WordPiece"});
  j = byte_level_json({});
  j["post_processor"] = {{"type", "BertProcessing"}};
  expect_load_error(j.dump(), {"post_processor", "BertProcessing"});
  j = byte_level_json({});
  j["model"]["type"] = "WordPiece";
  expect_load_error(j.dump(), {"model", "WordPiece"});
  j = byte_level_json({});
  j["model"]["dropout"] = 0.1;
  expect_load_error(j.dump(), {"dropout"});
  j = byte_level_json({});
  j["model"]["continuing_subword_prefix"] = "##";
  expect_load_error(j.dump(), {"continuing_subword_prefix"});
}

TEST(HfJson, HostileFilesFailWithFileAndField) {
  expect_load_error("{not json", {"JSON"});
  expect_load_error("[]", {"object"});
  expect_load_error("{}", {"model"});
  expect_load_error(R"({"model": {"type": "BPE", "vocab": []}})", {"model.vocab"});
  expect_load_error(R"({"model": {"type": "BPE", "vocab": {"a": -1}}})", {"model.vocab"});
  expect_load_error(R"({"model": {"type": "BPE", "vocab": {"a": 99999999999}}})", {"model.vocab"});
  expect_load_error(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 0}}})", {"id 0"});
  expect_load_error(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}})",
                    {"model.merges[0]"});
  expect_load_error(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["ab"]}})",
                    {"model.merges[0]"});
  expect_load_error(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [[1, 2]]}})",
                    {"model.merges[0]"});
  expect_load_error(R"({"model": {"type": "BPE", "vocab": {"a": 0}}, "added_tokens": [{"content": "x"}]})",
                    {"added_tokens[0]"});
  expect_load_error(R"({"model": {"type": "BPE", "vocab": {"a": 0}},
                        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(("},
                                          "behavior": "Isolated"}})",
                    {"regex"});
  expect_load_error(R"({"model": {"type": "BPE", "vocab": {"a": 0}},
                        "pre_tokenizer": {"type": "Metaspace", "replacement": "ab"}})",
                    {"replacement"});
  expect_load_error(R"({"model": {"type": "BPE", "vocab": {"a": 0}},
                        "post_processor": {"type": "TemplateProcessing",
                                           "single": [{"SpecialToken": {"id": "<x>"}}]}})",
                    {"special_tokens"});
  EXPECT_THROW(Tokenizer::from_hf_json("/nonexistent/tokenizer.json"), Error);
}

// ---- GGUF vocabularies ----

using test::gguf_bytes;
using test::GgufSpec;
using test::gv;
using test::gv_array;
using test::gv_string;
using test::gv_strings;

std::unique_ptr<Tokenizer> from_gguf_spec(const GgufSpec& spec, const char* name = "vocab.gguf") {
  test::TempFile file(gguf_bytes(spec), name);
  GGUFFile gguf(file.path());
  return Tokenizer::from_gguf(gguf);
}

GgufSpec gpt2_spec(const std::string& pre) {
  const auto& alphabet = tok::ByteLevelAlphabet::get();
  std::vector<std::string> tokens = {"<|endoftext|>"};
  for (int b = 0; b < 256; ++b) tokens.push_back(alphabet.byte_to_utf8[b]);
  tokens.push_back("ab");
  std::vector<int32_t> types(tokens.size(), 1);
  types[0] = 3;
  GgufSpec spec;
  spec.kvs = {{"tokenizer.ggml.model", gv_string("gpt2")},
              {"tokenizer.ggml.pre", gv_string(pre)},
              {"tokenizer.ggml.tokens", gv_strings(tokens)},
              {"tokenizer.ggml.token_type", gv_array<int32_t>(test::kI32, types)},
              {"tokenizer.ggml.merges", gv_strings({"a b"})},
              {"tokenizer.ggml.bos_token_id", gv<uint32_t>(test::kU32, 0)},
              {"tokenizer.ggml.add_bos_token", gv<bool>(test::kBool, true)}};
  return spec;
}

TEST(GgufVocab, ByteLevelWithControlTokensAndBos) {
  const auto t = from_gguf_spec(gpt2_spec("smollm"));
  const int32_t a = 1 + 'a', one = 1 + '1', two = 1 + '2';
  EXPECT_EQ(t->encode("ab12", true), (Ids{0, 257, one, two}));  // Digits split 1 | 2
  EXPECT_EQ(t->encode("<|endoftext|>a", false), (Ids{0, a}));
  EXPECT_TRUE(t->is_special(0));
  EXPECT_EQ(t->decode(Ids{0, 257}, true), "ab");
}

TEST(GgufVocab, BadVocabulariesFailNamingTheKey) {
  auto expect_gguf_error = [](const GgufSpec& spec, std::string_view needle) {
    try {
      from_gguf_spec(spec, "bad_vocab.gguf");
      ADD_FAILURE() << "expected an error mentioning " << needle;
    } catch (const Error& e) {
      const std::string message = e.what();
      EXPECT_NE(message.find("bad_vocab.gguf"), std::string::npos) << message;
      EXPECT_NE(message.find(needle), std::string::npos) << message;
    }
  };
  expect_gguf_error(gpt2_spec("no-such-pre"), "tokenizer.ggml.pre");
  GgufSpec spec = gpt2_spec("default");
  spec.kvs[0].second = gv_string("bert");
  expect_gguf_error(spec, "tokenizer.ggml.model");
  spec = gpt2_spec("default");
  spec.kvs[3].second = gv_array<int32_t>(test::kI32, {1, 2});
  expect_gguf_error(spec, "tokenizer.ggml.token_type");
  spec = gpt2_spec("default");
  spec.kvs[4].second = gv_strings({"a x"});
  expect_gguf_error(spec, "merges");
  spec = gpt2_spec("default");
  spec.kvs[5].second = gv<uint32_t>(test::kU32, 100000);
  expect_gguf_error(spec, "bos_token_id");
  spec = gpt2_spec("default");
  spec.kvs[2].second = gv_strings({"a", "a"});
  spec.kvs.erase(spec.kvs.begin() + 3);
  expect_gguf_error(spec, "tokenizer.ggml.tokens[1]");
  spec = gpt2_spec("default");
  spec.kvs.erase(spec.kvs.begin() + 2);
  expect_gguf_error(spec, "tokenizer.ggml.tokens");
}

TEST(GgufVocab, SentencePieceMergesFromScores) {
  // SentencePiece: merges come from the scores of the merged pieces, highest first.
  const std::vector<std::string> tokens = {"<unk>", "<s>", "</s>", "\u2581", "a", "b", "c",
                                           "\u2581a", "bc", "\u2581ab", "<0x21>"};
  const std::vector<float> scores = {0, 0, 0, -10, -10, -10, -10, -3, -2, -1, 0};
  std::vector<int32_t> types(tokens.size(), 1);
  types[0] = 2;
  types[1] = types[2] = 3;
  types[10] = 6;
  GgufSpec spec;
  spec.kvs = {{"tokenizer.ggml.model", gv_string("llama")},
              {"tokenizer.ggml.tokens", gv_strings(tokens)},
              {"tokenizer.ggml.scores", gv_array<float>(test::kF32, scores)},
              {"tokenizer.ggml.token_type", gv_array<int32_t>(test::kI32, types)},
              {"tokenizer.ggml.bos_token_id", gv<uint32_t>(test::kU32, 1)},
              {"tokenizer.ggml.unknown_token_id", gv<uint32_t>(test::kU32, 0)}};
  const auto t = from_gguf_spec(spec);
  // Ranks: ▁a+b (-1) < b+c (-2) < ▁+a (-3). "▁ab": ▁+a, then ▁a+b. "▁abc": b+c comes first
  // (a+b is no merge), then ▁+a; ▁a+bc is no merge.
  EXPECT_EQ(t->encode("ab", true), (Ids{1, 9}));
  EXPECT_EQ(t->encode("abc", true), (Ids{1, 7, 8}));
  EXPECT_EQ(t->encode("bc!", false), (Ids{3, 8, 10}));  // '!' by byte fallback
  EXPECT_EQ(t->encode("x", false), (Ids{3, 0}));
  EXPECT_EQ(t->decode(Ids{1, 9, 6, 3, 8}, true), "abc bc");
  EXPECT_EQ(stream(*t, Ids{1, 9, 6, 3, 8}, true), "abc bc");
}

}  // namespace
}  // namespace mil
