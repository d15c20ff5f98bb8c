#include "tokenizer/pre_tokenizers.h"

#include "tokenizer/json_util.h"
#include "tokenizer/normalizers.h"
#include "tokenizer/utf8.h"

namespace mil::tok {

namespace {

struct Span {
  size_t start, end;
  bool match;
};

// HF's Pattern::find_matches for a regex: matches and the gaps between them, covering the text.
void regex_spans(const Regex& regex, std::string_view text, std::vector<Span>& spans) {
  thread_local std::vector<std::pair<size_t, size_t>> matches;
  matches.clear();
  regex.find_all(text, matches);
  size_t prev = 0;
  for (const auto& [start, end] : matches) {
    if (prev != start) spans.push_back({prev, start, false});
    spans.push_back({start, end, true});
    prev = end;
  }
  if (prev != text.size()) spans.push_back({prev, text.size(), false});
}

// HF's Pattern::find_matches for a char predicate: every matching char is its own match.
template <typename Pred>
void char_spans(std::string_view text, Pred pred, std::vector<Span>& spans) {
  size_t last = 0, pos = 0;
  while (pos < text.size()) {
    char32_t cp;
    size_t bad;
    size_t n = decode_utf8(text, pos, cp, bad);
    if (n == 0) {  // cannot happen on sanitized text; step over defensively
      n = bad;
      cp = kReplacementChar;
    }
    if (pred(cp)) {
      if (last < pos) spans.push_back({last, pos, false});
      spans.push_back({pos, pos + n, true});
      last = pos + n;
    }
    pos += n;
  }
  if (pos > last) spans.push_back({last, pos, false});
}

// HF's NormalizedString::split: merge spans per behavior, then keep the non-empty ones.
void emit_splits(const Piece& piece, std::vector<Span>& spans, SplitBehavior behavior,
                 std::vector<Piece>& out) {
  thread_local std::vector<Span> merged;
  merged.clear();
  switch (behavior) {
    case SplitBehavior::kIsolated:
      merged = spans;
      break;
    case SplitBehavior::kRemoved:
      for (const auto& s : spans) {
        if (!s.match) merged.push_back(s);
      }
      break;
    case SplitBehavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (const auto& s : spans) {
        if (s.match && !previous_match && !merged.empty()) {
          merged.back().end = s.end;
        } else {
          merged.push_back(s);
        }
        previous_match = s.match;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool previous_match = false;
      for (size_t i = spans.size(); i-- > 0;) {
        const auto& s = spans[i];
        if (s.match && !previous_match && !merged.empty()) {
          merged.back().start = s.start;
        } else {
          merged.push_back(s);
        }
        previous_match = s.match;
      }
      std::reverse(merged.begin(), merged.end());
      break;
    }
    case SplitBehavior::kContiguous: {
      bool previous_match = false;
      for (const auto& s : spans) {
        if (s.match == previous_match && !merged.empty()) {
          merged.back().end = s.end;
        } else {
          merged.push_back(s);
        }
        previous_match = s.match;
      }
      break;
    }
  }
  for (const auto& s : merged) {
    if (s.end <= s.start) continue;
    if (s.start == 0 && s.end == piece.text.size()) {
      out.push_back(piece);
    } else {
      out.push_back({piece.text.substr(s.start, s.end - s.start), piece.at_start && s.start == 0});
    }
  }
}

}  // namespace

const ByteLevelAlphabet& ByteLevelAlphabet::get() {
  static const ByteLevelAlphabet table = [] {
    ByteLevelAlphabet t;
    t.char_to_byte.fill(-1);
    int next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const int cp = printable ? b : next++;
      append_utf8(t.byte_to_utf8[b], static_cast<char32_t>(cp));
      t.char_to_byte[cp] = static_cast<int16_t>(b);
    }
    return t;
  }();
  return table;
}

ByteLevelPreTokenizer::ByteLevelPreTokenizer(bool add_prefix_space, bool use_regex)
    : add_prefix_space_(add_prefix_space) {
  if (use_regex) regex_ = std::make_unique<Regex>(std::string(kGpt2Pattern), "ByteLevel");
}

void ByteLevelPreTokenizer::pre_tokenize(std::vector<Piece>& pieces,
                                         std::vector<Piece>& scratch) const {
  const auto& alphabet = ByteLevelAlphabet::get();
  thread_local std::vector<Span> spans;
  scratch.clear();
  for (auto& piece : pieces) {
    if (add_prefix_space_ && (piece.text.empty() || piece.text[0] != ' ')) {
      piece.text.insert(0, 1, ' ');
    }
    if (regex_) {
      spans.clear();
      regex_spans(*regex_, piece.text, spans);
      emit_splits(piece, spans, SplitBehavior::kIsolated, scratch);
    } else if (!piece.text.empty()) {
      scratch.push_back(std::move(piece));
    }
  }
  // Map every byte of every word to its printable stand-in.
  for (auto& piece : scratch) {
    std::string mapped;
    mapped.reserve(piece.text.size() + piece.text.size() / 2);
    for (const char c : piece.text) mapped += alphabet.byte_to_utf8[static_cast<uint8_t>(c)];
    piece.text = std::move(mapped);
  }
  pieces.swap(scratch);
}

SplitPreTokenizer::SplitPreTokenizer(std::string literal, std::unique_ptr<Regex> regex,
                                     SplitBehavior behavior, bool invert)
    : regex_(std::move(regex)),
      behavior_(behavior),
      invert_(invert),
      empty_literal_(!regex_ && literal.empty()) {
  if (!regex_ && !literal.empty()) regex_ = std::make_unique<Regex>(regex_escape(literal), "Split");
}

void SplitPreTokenizer::pre_tokenize(std::vector<Piece>& pieces,
                                     std::vector<Piece>& scratch) const {
  thread_local std::vector<Span> spans;
  scratch.clear();
  for (const auto& piece : pieces) {
    spans.clear();
    if (empty_literal_) {
      spans.push_back({0, piece.text.size(), false});
    } else {
      regex_spans(*regex_, piece.text, spans);
    }
    if (invert_) {
      for (auto& s : spans) s.match = !s.match;
    }
    emit_splits(piece, spans, behavior_, scratch);
  }
  pieces.swap(scratch);
}

MetaspacePreTokenizer::MetaspacePreTokenizer(char32_t replacement, Prepend prepend, bool split)
    : replacement_(replacement), prepend_(prepend), split_(split) {
  append_utf8(replacement_utf8_, replacement);
}

void MetaspacePreTokenizer::pre_tokenize(std::vector<Piece>& pieces,
                                         std::vector<Piece>& scratch) const {
  thread_local std::vector<Span> spans;
  scratch.clear();
  for (auto& piece : pieces) {
    replace_all(piece.text, " ", replacement_utf8_);
    const bool starts = piece.text.compare(0, replacement_utf8_.size(), replacement_utf8_) == 0;
    if (!starts && (prepend_ == Prepend::kAlways || (prepend_ == Prepend::kFirst && piece.at_start))) {
      piece.text.insert(0, replacement_utf8_);
    }
    if (split_) {
      spans.clear();
      char_spans(piece.text, [this](char32_t c) { return c == replacement_; }, spans);
      emit_splits(piece, spans, SplitBehavior::kMergedWithNext, scratch);
    } else if (!piece.text.empty()) {
      scratch.push_back(std::move(piece));
    }
  }
  pieces.swap(scratch);
}

void DigitsPreTokenizer::pre_tokenize(std::vector<Piece>& pieces,
                                      std::vector<Piece>& scratch) const {
  thread_local std::vector<Span> spans;
  scratch.clear();
  for (const auto& piece : pieces) {
    spans.clear();
    char_spans(piece.text, is_numeric, spans);
    emit_splits(piece, spans,
                individual_ ? SplitBehavior::kIsolated : SplitBehavior::kContiguous, scratch);
  }
  pieces.swap(scratch);
}

void SequencePreTokenizer::pre_tokenize(std::vector<Piece>& pieces,
                                        std::vector<Piece>& scratch) const {
  for (const auto& part : parts_) part->pre_tokenize(pieces, scratch);
}

namespace {

SplitBehavior behavior_from_json(const std::string& name, const std::string& origin) {
  if (name == "Removed") return SplitBehavior::kRemoved;
  if (name == "Isolated") return SplitBehavior::kIsolated;
  if (name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (name == "Contiguous") return SplitBehavior::kContiguous;
  fail("{}: pre_tokenizer Split behavior \"{}\" is unknown", origin, name);
}

}  // namespace

std::unique_ptr<PreTokenizer> pre_tokenizer_from_json(const nlohmann::json& j,
                                                      const std::string& origin) {
  if (j.is_null()) return nullptr;
  const std::string where = "pre_tokenizer";
  const std::string type = json_type(j, origin, where);
  if (type == "ByteLevel") {
    return std::make_unique<ByteLevelPreTokenizer>(
        json_bool(j, "add_prefix_space", true, origin, where),
        json_bool(j, "use_regex", true, origin, where));
  }
  if (type == "Split") {
    std::string literal;
    auto regex = pattern_from_json(json_field(j, "pattern", origin, where),
                                   origin + " pre_tokenizer Split", literal);
    return std::make_unique<SplitPreTokenizer>(
        std::move(literal), std::move(regex),
        behavior_from_json(json_string(j, "behavior", origin, where), origin),
        json_bool(j, "invert", false, origin, where));
  }
  if (type == "Metaspace") {
    const std::string replacement = json_string(j, "replacement", origin, where);
    char32_t cp = 0;
    size_t bad = 0;
    MIL_CHECK(!replacement.empty() &&
                  decode_utf8(replacement, 0, cp, bad) == replacement.size(),
              "{}: pre_tokenizer Metaspace replacement must be one character", origin);
    MetaspacePreTokenizer::Prepend prepend = MetaspacePreTokenizer::Prepend::kAlways;
    if (j.contains("prepend_scheme") && !j["prepend_scheme"].is_null()) {
      const std::string scheme = json_string(j, "prepend_scheme", origin, where);
      if (scheme == "always") {
        prepend = MetaspacePreTokenizer::Prepend::kAlways;
      } else if (scheme == "first") {
        prepend = MetaspacePreTokenizer::Prepend::kFirst;
      } else if (scheme == "never") {
        prepend = MetaspacePreTokenizer::Prepend::kNever;
      } else {
        fail("{}: pre_tokenizer Metaspace prepend_scheme \"{}\" is unknown", origin, scheme);
      }
    } else if (!json_bool(j, "add_prefix_space", true, origin, where)) {
      prepend = MetaspacePreTokenizer::Prepend::kNever;  // the pre-0.15 field
    }
    return std::make_unique<MetaspacePreTokenizer>(cp, prepend,
                                                   json_bool(j, "split", true, origin, where));
  }
  if (type == "Digits") {
    return std::make_unique<DigitsPreTokenizer>(
        json_bool(j, "individual_digits", false, origin, where));
  }
  if (type == "Sequence") {
    const auto& list = json_field(j, "pretokenizers", origin, where);
    MIL_CHECK(list.is_array(), "{}: pre_tokenizer.pretokenizers must be an array", origin);
    std::vector<std::unique_ptr<PreTokenizer>> parts;
    for (const auto& part : list) {
      if (auto p = pre_tokenizer_from_json(part, origin)) parts.push_back(std::move(p));
    }
    return std::make_unique<SequencePreTokenizer>(std::move(parts));
  }
  fail("{}: pre_tokenizer type \"{}\" is not supported (supported: ByteLevel, Split, Metaspace, "
       "Digits, Sequence)",
       origin, type);
}

}  // namespace mil::tok
