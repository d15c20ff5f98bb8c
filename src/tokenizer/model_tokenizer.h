// Everything text-side a model brings: its tokenizer, its chat template and the special
// tokens the template refers to. From an HF directory (tokenizer.json, tokenizer_config.json)
// or a GGUF file (tokenizer.ggml.*, tokenizer.chat_template).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace mil {

struct ChatMessage {
  std::string role;
  std::string content;
};

class ModelTokenizer {
 public:
  // `path` is an HF model directory or a .gguf file (or a directory holding one).
  static ModelTokenizer load(const std::string& path);

  const Tokenizer& tokenizer() const { return *tokenizer_; }
  bool has_chat_template() const { return chat_template_ != nullptr; }
  const std::string& bos_token() const { return bos_token_; }
  const std::string& eos_token() const { return eos_token_; }

  // The model's chat template applied to `messages`; errors when the model has none.
  std::string render_chat(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const;
  // Token ids of a chat prompt, as transformers' apply_chat_template(tokenize=True): the
  // rendered text already holds its special tokens, so none are added.
  std::vector<int32_t> encode_chat(const std::vector<ChatMessage>& messages,
                                   bool add_generation_prompt = true) const;

 private:
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<ChatTemplate> chat_template_;
  std::string bos_token_, eos_token_;
};

}  // namespace mil
