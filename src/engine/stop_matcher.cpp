#include "engine/stop_matcher.h"

#include <algorithm>
#include <string_view>

namespace mil {

StopMatcher::StopMatcher(const std::vector<std::string>& stops) {
  for (const std::string& s : stops) {
    if (s.empty()) continue;
    stops_.push_back(s);
    longest_ = std::max(longest_, s.size());
  }
}

bool StopMatcher::append(const std::string& piece) {
  if (matched()) return true;
  const size_t old_size = output_.size();
  output_ += piece;
  if (stops_.empty() || piece.empty()) return false;
  // A new occurrence ends inside the new piece, so it starts at most longest_ - 1 bytes back.
  const size_t from = old_size >= longest_ - 1 ? old_size - (longest_ - 1) : 0;
  const std::string_view out(output_);
  for (const std::string& s : stops_) {
    const size_t at = out.find(s, from);
    if (at != std::string_view::npos && at < match_) match_ = at;
  }
  return matched();
}

std::string StopMatcher::take_visible(bool finished) {
  size_t end = output_.size();
  if (matched()) {
    end = match_;
  } else if (!finished) {
    // Hold back the longest tail that is a proper prefix of some stop sequence.
    const std::string_view out(output_);
    const size_t earliest =
        std::max(visible_, out.size() >= longest_ ? out.size() - longest_ + 1 : size_t{0});
    for (size_t j = earliest; j < out.size(); ++j) {
      const std::string_view tail = out.substr(j);
      const bool could_start = std::any_of(stops_.begin(), stops_.end(), [&](const std::string& s) {
        return s.size() > tail.size() && std::string_view(s).starts_with(tail);
      });
      if (could_start) {
        end = j;
        break;
      }
    }
  }
  if (end <= visible_) return {};
  std::string piece = output_.substr(visible_, end - visible_);
  visible_ = end;
  return piece;
}

}  // namespace mil
