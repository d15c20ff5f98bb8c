// A compiled PCRE2 pattern (UTF + UCP, JIT when available) that lists its matches. HF tokenizers
// runs these patterns with Oniguruma; the patterns Llama-family tokenizers use (GPT-2, Llama 3,
// Qwen2: classes, \p{..}, (?i:..), lookahead) mean the same in PCRE2.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace mil::tok {

class Regex {
 public:
  // `origin` names the file and field for errors (an invalid pattern throws mil::Error).
  Regex(const std::string& pattern, const std::string& origin);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Non-overlapping matches left to right as [start, end) byte offsets. An empty match is kept
  // and the search resumes one character later, as Rust's find_iter does. Thread-safe.
  void find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>& out) const;

  const std::string& pattern() const { return pattern_; }

 private:
  struct Code;
  std::unique_ptr<Code> code_;
  std::string pattern_;
  std::string origin_;
};

// Quotes a literal string for use as a PCRE2 pattern (HF compiles String patterns that way).
std::string regex_escape(std::string_view literal);

}  // namespace mil::tok
