#include "tokenizer/post_processor.h"

#include "tokenizer/json_util.h"

namespace mil::tok {

void PostProcessor::apply(std::vector<int32_t>& ids) const {
  if (items_.empty()) return;
  std::vector<int32_t> out;
  out.reserve(ids.size() + 4);
  for (const auto& item : items_) {
    if (item.is_sequence) {
      out.insert(out.end(), ids.begin(), ids.end());
    } else {
      out.insert(out.end(), item.ids.begin(), item.ids.end());
    }
  }
  ids = std::move(out);
}

namespace {

void add_template(const nlohmann::json& j, const std::string& origin,
                  std::vector<PostProcessor::Item>& items) {
  const std::string where = "post_processor";
  const auto& single = json_field(j, "single", origin, where);
  MIL_CHECK(single.is_array(), "{}: post_processor.single must be an array", origin);
  const auto& specials = j.contains("special_tokens") ? j["special_tokens"] : nlohmann::json();
  // Several TemplateProcessing in a Sequence nest: the later template wraps the earlier result.
  std::vector<PostProcessor::Item> wrapped;
  for (const auto& piece : single) {
    MIL_CHECK(piece.is_object() && piece.size() == 1,
              "{}: post_processor.single entries must be {{\"Sequence\"|\"SpecialToken\": ...}}",
              origin);
    if (piece.contains("Sequence")) {
      const std::string id = json_string(piece["Sequence"], "id", origin, where + ".single");
      MIL_CHECK(id == "A", "{}: post_processor.single uses sequence \"{}\" (only A exists)", origin,
                id);
      if (items.empty()) {
        wrapped.push_back({true, {}});
      } else {
        wrapped.insert(wrapped.end(), items.begin(), items.end());
      }
      continue;
    }
    MIL_CHECK(piece.contains("SpecialToken"),
              "{}: post_processor.single entries must be Sequence or SpecialToken", origin);
    const std::string name = json_string(piece["SpecialToken"], "id", origin, where + ".single");
    MIL_CHECK(specials.is_object() && specials.contains(name),
              "{}: post_processor.special_tokens has no entry \"{}\"", origin, name);
    const auto& ids = json_field(specials[name], "ids", origin, where + ".special_tokens");
    MIL_CHECK(ids.is_array(), "{}: post_processor.special_tokens.{}.ids must be an array", origin,
              name);
    PostProcessor::Item item;
    for (const auto& id : ids) {
      MIL_CHECK(id.is_number_integer() && id.get<int64_t>() >= 0 && id.get<int64_t>() <= INT32_MAX,
                "{}: post_processor.special_tokens.{}.ids holds a bad id", origin, name);
      item.ids.push_back(static_cast<int32_t>(id.get<int64_t>()));
    }
    wrapped.push_back(std::move(item));
  }
  items = std::move(wrapped);
}

void collect(const nlohmann::json& j, const std::string& origin,
             std::vector<PostProcessor::Item>& items) {
  if (j.is_null()) return;
  const std::string type = json_type(j, origin, "post_processor");
  if (type == "ByteLevel") return;
  if (type == "TemplateProcessing") {
    add_template(j, origin, items);
    return;
  }
  if (type == "Sequence") {
    const auto& list = json_field(j, "processors", origin, "post_processor");
    MIL_CHECK(list.is_array(), "{}: post_processor.processors must be an array", origin);
    for (const auto& p : list) collect(p, origin, items);
    return;
  }
  fail("{}: post_processor type \"{}\" is not supported (supported: TemplateProcessing, "
       "ByteLevel, Sequence)",
       origin, type);
}

}  // namespace

PostProcessor post_processor_from_json(const nlohmann::json& j, const std::string& origin) {
  std::vector<PostProcessor::Item> items;
  collect(j, origin, items);
  PostProcessor p;
  p.set_items(std::move(items));
  return p;
}

}  // namespace mil::tok
