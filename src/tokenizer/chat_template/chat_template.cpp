// ChatTemplate: the public face of the interpreter; turns internal failures into mil::Error
// messages that name the model file and the template line.
#include "tokenizer/chat_template.h"

#include <fmt/format.h>

#include "core/error.h"
#include "tokenizer/chat_template/interpreter.h"
#include "tokenizer/chat_template/lexer.h"
#include "tokenizer/chat_template/parser.h"

namespace mil {

struct ChatTemplate::Program {
  chat_template::Body body;
};

ChatTemplate::ChatTemplate(const std::string& source, const std::string& origin)
    : program_(std::make_unique<Program>()), origin_(origin) {
  try {
    program_->body = chat_template::parse_template(source);
  } catch (const chat_template::SyntaxError& e) {
    fail("chat template in {}, line {}: {}", origin_, e.line, e.what());
  }
}

ChatTemplate::~ChatTemplate() = default;
ChatTemplate::ChatTemplate(ChatTemplate&&) noexcept = default;
ChatTemplate& ChatTemplate::operator=(ChatTemplate&&) noexcept = default;

std::string ChatTemplate::render(const nlohmann::ordered_json& context) const {
  MIL_CHECK(context.is_object(), "chat template in {}: the context must be a JSON object", origin_);
  chat_template::Value values;
  try {
    values = chat_template::from_json(context);
  } catch (const chat_template::RenderError& e) {
    fail("chat template in {}: {}", origin_, e.what());
  }
  chat_template::Interpreter interpreter(program_->body, values);
  try {
    return interpreter.render();
  } catch (const chat_template::RenderError& e) {
    fail("chat template in {}, line {}: {}", origin_, interpreter.line(), e.what());
  } catch (const std::bad_alloc&) {
    fail("chat template in {}, line {}: template exceeded the available memory", origin_, interpreter.line());
  }
}

std::string ChatTemplate::render(const nlohmann::json& context) const {
  return render(nlohmann::ordered_json::parse(context.dump()));
}

}  // namespace mil
