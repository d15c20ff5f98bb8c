// Stop sequences on the decoded output text of one request, and the two text streams of
// request.h: `text` (everything, a matched stop sequence included, as TGI) and `visible_text`
// (OpenAI's: text that could still start a stop sequence is held back until it cannot, and a
// matched stop sequence and what follows never appear).
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace mil {

class StopMatcher {
 public:
  explicit StopMatcher(const std::vector<std::string>& stops);

  // Appends newly final output text; true when a stop sequence now occurs in the output (the
  // earliest occurrence counts; it may span earlier pieces and end mid-piece).
  bool append(const std::string& piece);
  bool matched() const { return match_ != std::string::npos; }
  // The visible text that became final since the last call. With `finished`, everything
  // held back is released (up to the match when there is one).
  std::string take_visible(bool finished);
  const std::string& output() const { return output_; }

 private:
  std::vector<std::string> stops_;  // non-empty ones
  size_t longest_ = 0;
  std::string output_;
  size_t visible_ = 0;              // output_[0, visible_) was handed out as visible text
  size_t match_ = std::string::npos;
};

}  // namespace mil
