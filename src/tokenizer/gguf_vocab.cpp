// GGUF tokenizer.ggml.* -> the same pipeline HF builds from the model's tokenizer.json, so a
// model tokenizes from its GGUF alone exactly as transformers does:
// - "gpt2" (byte-level BPE): tokenizer.ggml.pre names the pre-tokenizer (llama.cpp's table,
//   mapped to HF's components); the decoder is ByteLevel.
// - "llama" (SentencePiece): merges are rebuilt from the scores as transformers' generate_merges
//   does, and the pipeline is transformers 5's LlamaTokenizer (Metaspace "first", byte fallback,
//   fused unk), which is what transformers builds when it loads such a GGUF.
// Token types: 2 unknown and 3 control become special added tokens, 4 user-defined non-special
// ones; bos/eos come from the ids and add_bos_token / add_eos_token.
#include <algorithm>
#include <unordered_map>

#include "core/error.h"
#include "formats/gguf.h"
#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/utf8.h"

namespace mil {

namespace {

constexpr int kTypeNormal = 1, kTypeUnknown = 2, kTypeControl = 3, kTypeUserDefined = 4;

struct PreTokenizerChoice {
  std::unique_ptr<tok::PreTokenizer> pre;
  std::unique_ptr<tok::Normalizer> normalizer;
  bool ignore_merges = false;
  bool default_add_bos = false;
};

std::unique_ptr<tok::PreTokenizer> split_then_bytes(std::string_view pattern,
                                                    const std::string& origin) {
  std::vector<std::unique_ptr<tok::PreTokenizer>> parts;
  parts.push_back(std::make_unique<tok::SplitPreTokenizer>(
      "", std::make_unique<tok::Regex>(std::string(pattern), origin),
      tok::SplitBehavior::kIsolated, false));
  parts.push_back(std::make_unique<tok::ByteLevelPreTokenizer>(false, false));
  return std::make_unique<tok::SequencePreTokenizer>(std::move(parts));
}

PreTokenizerChoice choose_pre_tokenizer(std::string_view pre, const std::string& origin) {
  PreTokenizerChoice c;
  if (pre == "default" || pre == "gpt-2" || pre == "gpt2") {
    c.pre = std::make_unique<tok::ByteLevelPreTokenizer>(false, true);
  } else if (pre == "llama-bpe" || pre == "llama3" || pre == "llama-v3") {
    c.pre = split_then_bytes(tok::kLlama3Pattern, origin);
    c.ignore_merges = true;  // Llama 3's tokenizer.json sets it (llama.cpp does too)
    c.default_add_bos = true;
  } else if (pre == "qwen2") {
    c.pre = split_then_bytes(tok::kQwen2Pattern, origin);
    c.normalizer = std::make_unique<tok::NfcNormalizer>();  // Qwen2's tokenizer.json has NFC
  } else if (pre == "smollm" || pre == "starcoder") {
    // llama.cpp: {"\p{N}", GPT-2 regex}; HF: Sequence[Digits(individual), ByteLevel(regex)].
    std::vector<std::unique_ptr<tok::PreTokenizer>> parts;
    parts.push_back(std::make_unique<tok::DigitsPreTokenizer>(true));
    parts.push_back(std::make_unique<tok::ByteLevelPreTokenizer>(false, true));
    c.pre = std::make_unique<tok::SequencePreTokenizer>(std::move(parts));
  } else {
    fail("{}: tokenizer.ggml.pre \"{}\" is not supported (supported: default, gpt-2, llama-bpe, "
         "llama3, qwen2, smollm, starcoder)",
         origin, pre);
  }
  return c;
}

// transformers' SentencePieceExtractor: every split of every piece into two vocab pieces is a
// merge, ordered by the merged piece's score (highest first), then longer left part first; ties
// keep vocab order.
std::vector<std::pair<std::string, std::string>> merges_from_scores(
    const std::vector<std::string_view>& tokens, const std::vector<double>& scores,
    const std::unordered_map<std::string_view, int32_t>& ids) {
  struct Merge {
    double score;
    size_t left_chars, right_chars;
    std::string_view left, right;
  };
  std::vector<Merge> merges;
  for (size_t id = 0; id < tokens.size(); ++id) {
    const std::string_view piece = tokens[id];
    std::vector<Merge> local;
    size_t chars_total = 0;
    for (size_t pos = 0; pos < piece.size(); pos += std::max<size_t>(1, tok::utf8_len(piece[pos]))) {
      ++chars_total;
    }
    size_t chars_left = 0;
    for (size_t pos = 0; pos < piece.size();) {
      pos += std::max<size_t>(1, tok::utf8_len(static_cast<uint8_t>(piece[pos])));
      ++chars_left;
      if (pos >= piece.size()) break;
      const std::string_view l = piece.substr(0, pos), r = piece.substr(pos);
      if (ids.contains(l) && ids.contains(r)) {
        local.push_back({scores[id], chars_left, chars_total - chars_left, l, r});
      }
    }
    std::stable_sort(local.begin(), local.end(), [&](const Merge& a, const Merge& b) {
      const int32_t al = ids.at(a.left), bl = ids.at(b.left);
      return al != bl ? al < bl : ids.at(a.right) < ids.at(b.right);
    });
    merges.insert(merges.end(), local.begin(), local.end());
  }
  std::stable_sort(merges.begin(), merges.end(), [](const Merge& a, const Merge& b) {
    if (a.score != b.score) return a.score > b.score;
    if (a.left_chars != b.left_chars) return a.left_chars > b.left_chars;
    return a.right_chars > b.right_chars;
  });
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(merges.size());
  for (const auto& m : merges) out.emplace_back(std::string(m.left), std::string(m.right));
  return out;
}

}  // namespace

std::unique_ptr<Tokenizer> Tokenizer::from_gguf(const GGUFFile& gguf) {
  const std::string& origin = gguf.path();
  const auto model = gguf.get_string("tokenizer.ggml.model");
  MIL_CHECK(model.has_value(), "{}: tokenizer.ggml.model is missing", origin);
  MIL_CHECK(*model == "gpt2" || *model == "llama",
            "{}: tokenizer.ggml.model \"{}\" is not supported (gpt2 or llama)", origin, *model);
  const bool spm = *model == "llama";

  const auto tokens = gguf.get_string_array("tokenizer.ggml.tokens");
  MIL_CHECK(tokens.has_value() && !tokens->empty(), "{}: tokenizer.ggml.tokens is missing",
            origin);
  MIL_CHECK(tokens->size() < (1u << 24), "{}: tokenizer.ggml.tokens has {} entries (too many)",
            origin, tokens->size());
  const size_t n = tokens->size();
  std::vector<int64_t> types(n, kTypeNormal);
  if (auto t = gguf.get_int_array("tokenizer.ggml.token_type")) {
    MIL_CHECK(t->size() == n, "{}: tokenizer.ggml.token_type has {} entries, tokens has {}",
              origin, t->size(), n);
    types = std::move(*t);
  }

  std::unordered_map<std::string_view, int32_t> ids;
  std::vector<std::pair<std::string, int32_t>> vocab;
  vocab.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const std::string_view t = (*tokens)[i];
    MIL_CHECK(!t.empty() && tok::is_valid_utf8(t),
              "{}: tokenizer.ggml.tokens[{}] is empty or not valid UTF-8", origin, i);
    MIL_CHECK(ids.emplace(t, static_cast<int32_t>(i)).second,
              "{}: tokenizer.ggml.tokens[{}] {:?} appears twice", origin, i, t);
    vocab.emplace_back(std::string(t), static_cast<int32_t>(i));
  }

  auto optional_id = [&](const char* key) -> std::optional<int32_t> {
    const auto v = gguf.get_int(key);
    if (!v) return std::nullopt;
    MIL_CHECK(*v >= 0 && static_cast<size_t>(*v) < n, "{}: {} = {} is not a token id", origin,
              key, *v);
    return static_cast<int32_t>(*v);
  };
  const auto bos = optional_id("tokenizer.ggml.bos_token_id");
  const auto eos = optional_id("tokenizer.ggml.eos_token_id");
  auto unk = optional_id("tokenizer.ggml.unknown_token_id");

  tok::TokenizerParts parts;
  parts.origin = origin;
  tok::BpeOptions options;
  std::vector<std::pair<std::string, std::string>> merges;
  bool default_add_bos = false;
  if (spm) {
    const auto scores = gguf.get_float_array("tokenizer.ggml.scores");
    MIL_CHECK(scores.has_value() && scores->size() == n,
              "{}: tokenizer.ggml.scores is missing or does not match tokens", origin);
    merges = merges_from_scores(*tokens, *scores, ids);
    if (!unk) {
      for (size_t i = 0; i < n && !unk; ++i) {
        if (types[i] == kTypeUnknown) unk = static_cast<int32_t>(i);
      }
    }
    options.byte_fallback = true;
    options.fuse_unk = true;
    if (unk) options.unk_token = std::string((*tokens)[*unk]);
    // transformers' LlamaTokenizer (legacy=False): Metaspace with prepend_scheme "first", no
    // split, no normalizer.
    const bool add_space = gguf.get_bool("tokenizer.ggml.add_space_prefix").value_or(true);
    parts.pre_tokenizer = std::make_unique<tok::MetaspacePreTokenizer>(
        U'\u2581',
        add_space ? tok::MetaspacePreTokenizer::Prepend::kFirst
                  : tok::MetaspacePreTokenizer::Prepend::kNever,
        false);
    std::vector<std::unique_ptr<tok::Decoder>> dec;
    dec.push_back(std::make_unique<tok::ReplaceDecoder>("\u2581", nullptr, " "));
    dec.push_back(std::make_unique<tok::ByteFallbackDecoder>());
    dec.push_back(std::make_unique<tok::FuseDecoder>());
    if (add_space) dec.push_back(std::make_unique<tok::StripDecoder>(U' ', 1, 0));
    parts.decoder = std::make_unique<tok::SequenceDecoder>(std::move(dec));
    default_add_bos = true;
  } else {
    const auto merge_strings = gguf.get_string_array("tokenizer.ggml.merges");
    MIL_CHECK(merge_strings.has_value(), "{}: tokenizer.ggml.merges is missing", origin);
    merges.reserve(merge_strings->size());
    for (size_t i = 0; i < merge_strings->size(); ++i) {
      const std::string_view s = (*merge_strings)[i];
      const size_t space = s.find(' ', 1);  // llama.cpp's split: a token may start with ' '
      MIL_CHECK(space != std::string_view::npos,
                "{}: tokenizer.ggml.merges[{}] {:?} is not \"left right\"", origin, i, s);
      merges.emplace_back(std::string(s.substr(0, space)), std::string(s.substr(space + 1)));
    }
    const auto pre = gguf.get_string("tokenizer.ggml.pre").value_or("default");
    PreTokenizerChoice choice = choose_pre_tokenizer(pre, origin + " tokenizer.ggml.pre");
    parts.pre_tokenizer = std::move(choice.pre);
    parts.normalizer = std::move(choice.normalizer);
    options.ignore_merges = choice.ignore_merges;
    default_add_bos = choice.default_add_bos;
    parts.decoder = std::make_unique<tok::ByteLevelDecoder>();
  }
  parts.model = std::make_unique<tok::BpeModel>(std::move(vocab), merges, std::move(options),
                                                origin + " tokenizer.ggml");

  for (size_t i = 0; i < n; ++i) {
    const int64_t type = types[i];
    if (type != kTypeUnknown && type != kTypeControl && type != kTypeUserDefined) continue;
    tok::AddedToken t;
    t.id = static_cast<int32_t>(i);
    t.content = std::string((*tokens)[i]);
    t.special = type != kTypeUserDefined;
    parts.added.push_back(std::move(t));
  }

  std::vector<tok::PostProcessor::Item> items;
  const bool add_bos = gguf.get_bool("tokenizer.ggml.add_bos_token").value_or(default_add_bos);
  const bool add_eos = gguf.get_bool("tokenizer.ggml.add_eos_token").value_or(false);
  if (add_bos) {
    MIL_CHECK(bos.has_value(), "{}: add_bos_token is set but bos_token_id is missing", origin);
    items.push_back({false, {*bos}});
  }
  items.push_back({true, {}});
  if (add_eos) {
    MIL_CHECK(eos.has_value(), "{}: add_eos_token is set but eos_token_id is missing", origin);
    items.push_back({false, {*eos}});
  }
  if (add_bos || add_eos) parts.post_processor.set_items(std::move(items));
  return std::make_unique<tok::TokenizerImpl>(std::move(parts));
}

}  // namespace mil
