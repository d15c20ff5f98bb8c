// Chat templates: the subset of Jinja that real model templates use, interpreted in a
// sandbox. A template comes from an untrusted model file: it can only produce text (no
// files, environment or processes), and loops, recursion and output size are bounded.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>

namespace mil {

class ChatTemplate {
 public:
  // Parses `source`; an unsupported construct fails here, naming it and its line.
  ChatTemplate(const std::string& source, const std::string& origin);
  ~ChatTemplate();
  ChatTemplate(ChatTemplate&&) noexcept;
  ChatTemplate& operator=(ChatTemplate&&) noexcept;

  // context: {"messages": [{"role", "content"}...], "add_generation_prompt": bool,
  //           "bos_token": str, "eos_token": str, ...anything else the caller passes}.
  // Objects become Python-like dicts in the order given, which `tojson` and `items()`
  // reproduce: pass an ordered_json to keep the client's key order (tool schemas).
  // To match transformers exactly, pass "tools" and "documents" (null when absent), as
  // apply_chat_template always does. Failures (including the template's raise_exception and
  // exceeded limits) throw mil::Error naming the origin and the template line.
  std::string render(const nlohmann::ordered_json& context) const;
  // Same, with nlohmann::json's sorted key order.
  std::string render(const nlohmann::json& context) const;

 private:
  struct Program;
  std::unique_ptr<Program> program_;
  std::string origin_;
};

}  // namespace mil
