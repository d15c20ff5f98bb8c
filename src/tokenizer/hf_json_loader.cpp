// tokenizer.json (HF tokenizers' serialization) -> TokenizerImpl. The file is untrusted: every
// field is type-checked and errors name the file and the field. truncation and padding are
// ignored on purpose: transformers turns them off unless a call asks for them, and the engine
// checks prompt lengths itself.
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "tokenizer/json_util.h"
#include "tokenizer/tokenizer_impl.h"

namespace mil {

namespace {

using nlohmann::json;
using tok::json_bool;
using tok::json_field;
using tok::json_string;

std::unique_ptr<tok::BpeModel> bpe_from_json(const json& m, const std::string& origin) {
  const std::string where = "model";
  MIL_CHECK(m.is_object(), "{}: model must be an object", origin);
  const std::string type = m.contains("type") ? json_string(m, "type", origin, where) : "BPE";
  MIL_CHECK(type == "BPE",
            "{}: model type \"{}\" is not supported (only BPE: Llama-family tokenizers)", origin,
            type);
  if (m.contains("dropout") && !m["dropout"].is_null()) {
    MIL_CHECK(m["dropout"].is_number() && m["dropout"].get<double>() == 0.0,
              "{}: model.dropout must be null (BPE dropout is a training feature)", origin);
  }
  for (const char* field : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (m.contains(field) && !m[field].is_null()) {
      MIL_CHECK(m[field].is_string() && m[field].get<std::string>().empty(),
                "{}: model.{} is not supported (not used by Llama-family tokenizers)", origin,
                field);
    }
  }
  tok::BpeOptions options;
  options.byte_fallback = json_bool(m, "byte_fallback", false, origin, where);
  options.fuse_unk = json_bool(m, "fuse_unk", false, origin, where);
  options.ignore_merges = json_bool(m, "ignore_merges", false, origin, where);
  if (m.contains("unk_token") && !m["unk_token"].is_null()) {
    options.unk_token = json_string(m, "unk_token", origin, where);
  }

  const json& vocab_json = json_field(m, "vocab", origin, where);
  MIL_CHECK(vocab_json.is_object(), "{}: model.vocab must be an object", origin);
  std::vector<std::pair<std::string, int32_t>> vocab;
  vocab.reserve(vocab_json.size());
  for (const auto& [token, id] : vocab_json.items()) {
    MIL_CHECK(id.is_number_integer() && id.get<int64_t>() >= 0 && id.get<int64_t>() < (1 << 24),
              "{}: model.vocab[{:?}] must be an id in [0, 2^24)", origin, token);
    vocab.emplace_back(token, static_cast<int32_t>(id.get<int64_t>()));
  }

  std::vector<std::pair<std::string, std::string>> merges;
  if (m.contains("merges") && !m["merges"].is_null()) {
    const json& list = m["merges"];
    MIL_CHECK(list.is_array(), "{}: model.merges must be an array", origin);
    merges.reserve(list.size());
    for (size_t i = 0; i < list.size(); ++i) {
      const json& e = list[i];
      if (e.is_string()) {  // legacy "left right"
        const std::string s = e.get<std::string>();
        const size_t space = s.find(' ', 1);
        MIL_CHECK(space != std::string::npos, "{}: model.merges[{}] {:?} is not \"left right\"",
                  origin, i, s);
        merges.emplace_back(s.substr(0, space), s.substr(space + 1));
      } else {
        MIL_CHECK(e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string(),
                  "{}: model.merges[{}] must be \"left right\" or [left, right]", origin, i);
        merges.emplace_back(e[0].get<std::string>(), e[1].get<std::string>());
      }
    }
  }
  return std::make_unique<tok::BpeModel>(std::move(vocab), merges, std::move(options), origin);
}

std::vector<tok::AddedToken> added_from_json(const json& list, const std::string& origin) {
  std::vector<tok::AddedToken> out;
  if (list.is_null()) return out;
  MIL_CHECK(list.is_array(), "{}: added_tokens must be an array", origin);
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string where = fmt::format("added_tokens[{}]", i);
    const json& e = list[i];
    tok::AddedToken t;
    t.id = static_cast<int32_t>(tok::json_uint(e, "id", -1, origin, where));
    MIL_CHECK(t.id >= 0 && t.id < (1 << 24), "{}: {}.id is missing or out of range", origin,
              where);
    t.content = json_string(e, "content", origin, where);
    t.special = json_bool(e, "special", false, origin, where);
    t.single_word = json_bool(e, "single_word", false, origin, where);
    t.lstrip = json_bool(e, "lstrip", false, origin, where);
    t.rstrip = json_bool(e, "rstrip", false, origin, where);
    t.normalized = json_bool(e, "normalized", !t.special, origin, where);
    out.push_back(std::move(t));
  }
  return out;
}

}  // namespace

std::unique_ptr<Tokenizer> Tokenizer::from_hf_json_text(const std::string& text,
                                                        const std::string& source) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    fail("{}: not valid JSON: {}", source, e.what());
  }
  MIL_CHECK(j.is_object(), "{}: a tokenizer.json must be a JSON object", source);
  tok::TokenizerParts parts;
  parts.origin = source;
  auto field = [&](const char* key) -> const json& {
    static const json null_value;
    const auto it = j.find(key);
    return it == j.end() ? null_value : *it;
  };
  parts.model = bpe_from_json(json_field(j, "model", source, "tokenizer.json"), source);
  parts.normalizer = tok::normalizer_from_json(field("normalizer"), source);
  parts.pre_tokenizer = tok::pre_tokenizer_from_json(field("pre_tokenizer"), source);
  parts.post_processor = tok::post_processor_from_json(field("post_processor"), source);
  parts.decoder = tok::decoder_from_json(field("decoder"), source);
  parts.added = added_from_json(field("added_tokens"), source);
  return std::make_unique<tok::TokenizerImpl>(std::move(parts));
}

std::unique_ptr<Tokenizer> Tokenizer::from_hf_json(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  MIL_CHECK(in.good(), "{}: cannot open tokenizer file", path);
  std::ostringstream buffer;
  buffer << in.rdbuf();
  MIL_CHECK(!in.bad(), "{}: read error", path);
  return from_hf_json_text(buffer.str(), path);
}

}  // namespace mil
