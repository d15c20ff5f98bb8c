// Post-processors: what add_special_tokens=true wraps around the ids of one sequence (HF's
// TemplateProcessing "single" template; ByteLevel only touches offsets, so it is a no-op here).
#pragma once

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

namespace mil::tok {

class PostProcessor {
 public:
  // The single-sequence template as a list of items: ids to insert, or the sequence itself.
  struct Item {
    bool is_sequence = false;
    std::vector<int32_t> ids;
  };

  void apply(std::vector<int32_t>& ids) const;
  bool empty() const { return items_.empty(); }
  void set_items(std::vector<Item> items) { items_ = std::move(items); }

 private:
  std::vector<Item> items_;  // empty: leave the ids as they are
};

// The "post_processor" field of tokenizer.json (null -> a no-op).
PostProcessor post_processor_from_json(const nlohmann::json& j, const std::string& origin);

}  // namespace mil::tok
