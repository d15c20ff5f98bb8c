// The HTTP API (server::Api) driven directly: a scripted fake Engine records the
// EngineRequests and replies with the events a test writes, fake Responder/StreamWriter record
// the answers, and the tokenizer (SmolLM2's) and AdapterResolver (over a tiny base's store with
// fixture adapters) are real. Covers the routes of docs/SERVING.md: JSON shapes of TGI and
// OpenAI, SSE framing, parameter mapping, validation messages and status codes, auth, 429,
// draining, adapters and the Prometheus text.
#include "server/api.h"

#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "core/error.h"
#include "core/shard.h"
#include "engine/engine.h"
#include "formats/model_config.h"
#include "lora/adapter_store.h"
#include "server/adapter_resolver.h"
#include "server/metrics.h"
#include "tokenizer/model_tokenizer.h"

namespace mil::server {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace std::chrono_literals;

const fs::path kFixtures = fs::path(MIL_FIXTURES_DIR);

// Waits (briefly) for a condition another thread makes true (the blocking pool).
template <typename F>
bool eventually(F condition) {
  for (int i = 0; i < 2000; ++i) {
    if (condition()) return true;
    std::this_thread::sleep_for(1ms);
  }
  return condition();
}

// ---- fakes ----

class FakeHandle : public RequestHandle {
 public:
  explicit FakeHandle(uint64_t id) : id_(id) {}
  void cancel() override { cancelled = true; }
  uint64_t id() const override { return id_; }
  std::atomic<bool> cancelled{false};

 private:
  uint64_t id_;
};

class FakeEngine : public Engine {
 public:
  struct Submitted {
    EngineRequest request;
    EventSink sink;
    std::shared_ptr<FakeHandle> handle;
  };

  std::shared_ptr<RequestHandle> submit(EngineRequest request, EventSink sink) override {
    std::unique_lock lock(mu);
    if (submitted.size() == fail_previous_then_refuse_at) {
      // A real engine's race: an earlier prompt of the request fails before a later one is
      // refused.
      EventSink first = submitted.back().sink;
      lock.unlock();
      RequestEvent e;
      e.finished = true;
      e.finish = FinishReason::Error;
      e.error = "earlier prompt failed";
      first(std::move(e));
      throw Error("refused");
    }
    if (!refuse.empty()) throw Error(refuse);
    if (!explode.empty()) throw std::logic_error(explode);
    auto handle = std::make_shared<FakeHandle>(submitted.size());
    submitted.push_back({std::move(request), std::move(sink), handle});
    return handle;
  }
  EngineStats stats() const override { return engine_stats; }
  void set_step_observer(StepObserver o) override { observer = std::move(o); }
  void drain() override {}
  void shutdown() override {}

  size_t count() {
    const std::lock_guard lock(mu);
    return submitted.size();
  }
  Submitted& at(size_t i) {
    const std::lock_guard lock(mu);
    return submitted.at(i);
  }
  // Sends a generated token to request i.
  void token(size_t i, int32_t id, std::string text, float logprob = -0.5f, bool special = false,
             std::vector<TokenInfo> top = {}) {
    RequestEvent e;
    e.token = TokenInfo{id, logprob, text, special};
    e.top_tokens = std::move(top);
    e.index = ++indices[i];
    e.text = special ? "" : text;
    e.visible_text = e.text;
    at(i).sink(std::move(e));
  }
  // Sends the last token of request i.
  void finish(size_t i, int32_t id, std::string text, FinishReason reason,
              std::string visible = "\x01", bool special = false) {
    RequestEvent e;
    e.token = TokenInfo{id, -0.25f, text, special};
    e.index = ++indices[i];
    e.text = special ? "" : text;
    e.visible_text = visible == "\x01" ? e.text : visible;
    e.finished = true;
    e.finish = reason;
    e.generated_tokens = e.index;
    e.prompt_tokens = static_cast<int32_t>(at(i).request.prompt.size());
    e.queue_seconds = 0.001;
    e.inference_seconds = 0.01;
    at(i).sink(std::move(e));
  }
  void fail(size_t i, std::string error) {
    RequestEvent e;
    e.finished = true;
    e.finish = FinishReason::Error;
    e.error = std::move(error);
    at(i).sink(std::move(e));
  }

  std::mutex mu;
  std::vector<Submitted> submitted;
  std::map<size_t, int32_t> indices;
  std::string refuse;  // submit throws this when set
  std::string explode;  // submit throws this as a std::logic_error (not a mil::Error) when set
  size_t fail_previous_then_refuse_at = SIZE_MAX;  // the submission that does so; see submit
  EngineStats engine_stats;
  StepObserver observer;
};

class FakeStream : public StreamWriter {
 public:
  void write(std::string chunk) override {
    const std::lock_guard lock(mu);
    if (!closed_) chunks.push_back(std::move(chunk));
  }
  void finish() override {
    const std::lock_guard lock(mu);
    finished = true;
  }
  bool closed() const override { return closed_; }
  void on_disconnect(std::function<void()> callback) override { disconnect = std::move(callback); }
  void drop() {
    closed_ = true;
    if (disconnect) disconnect();
  }
  std::string text() {
    const std::lock_guard lock(mu);
    std::string all;
    for (const auto& c : chunks) all += c;
    return all;
  }
  // The JSON payloads of `data:` events (TGI's "data:" or OpenAI's "data: ").
  std::vector<std::string> events() {
    std::vector<std::string> out;
    const std::string all = text();
    size_t pos = 0;
    while (pos < all.size()) {
      const size_t end = all.find("\n\n", pos);
      EXPECT_NE(end, std::string::npos) << "unterminated event in: " << all;
      if (end == std::string::npos) break;
      std::string event = all.substr(pos, end - pos);
      EXPECT_EQ(event.rfind("data:", 0), 0u) << event;
      event = event.substr(5);
      if (!event.empty() && event[0] == ' ') event = event.substr(1);
      out.push_back(event);
      pos = end + 2;
    }
    return out;
  }

  std::mutex mu;
  std::vector<std::string> chunks;
  bool finished = false;
  std::atomic<bool> closed_{false};
  std::function<void()> disconnect;
};

class FakeResponder : public Responder {
 public:
  void respond(HttpResponse r) override {
    const std::lock_guard lock(mu);
    EXPECT_FALSE(answered) << "answered twice";
    response = std::move(r);
    answered = true;
    disconnect = nullptr;  // as the transport: never called back after respond()
  }
  std::shared_ptr<StreamWriter> stream(
      std::vector<std::pair<std::string, std::string>> headers) override {
    const std::lock_guard lock(mu);
    EXPECT_FALSE(answered) << "answered twice";
    answered = true;
    stream_headers = std::move(headers);
    writer = std::make_shared<FakeStream>();
    return writer;
  }
  void on_disconnect(std::function<void()> callback) override {
    const std::lock_guard lock(mu);
    disconnect = std::move(callback);
  }
  // The client goes away before the answer (what the transport reports).
  void drop() {
    std::function<void()> callback;
    {
      const std::lock_guard lock(mu);
      callback = std::move(disconnect);
    }
    if (callback) callback();
  }
  bool done() {
    const std::lock_guard lock(mu);
    return answered;
  }
  json body() const { return json::parse(response->body); }

  std::mutex mu;
  bool answered = false;
  std::optional<HttpResponse> response;
  std::vector<std::pair<std::string, std::string>> stream_headers;
  std::shared_ptr<FakeStream> writer;
  std::function<void()> disconnect;
};

// ---- fixture ----

class ApiTest : public ::testing::Test {
 protected:
  ApiTest()
      : tokenizer_(ModelTokenizer::load((kFixtures / "tokenizer" / "smollm2").string())),
        store_(parse_hf_config((kFixtures / "tiny" / "llama_gqa" / "config.json").string()),
               ShardSpec{}, AdapterStore::Limits{4, size_t{1} << 30}),
        resolver_(store_,
                  AdapterResolverOptions{(kFixtures / "lora" / "llama_gqa").string(), "", "", ""}),
        metrics_(100, 128) {
    engine_.engine_stats.kv_blocks = 64;
    engine_.engine_stats.block_size = 16;
    engine_.engine_stats.free_blocks = 60;
    engine_.engine_stats.max_batch_prefill_tokens = 2048;
    engine_.engine_stats.max_batch_total_tokens = 1024;
  }

  void make_api(ApiOptions options = {}) {
    if (options.served_model_name.empty()) options.served_model_name = "smol";
    if (options.model_id.empty()) options.model_id = "/models/smol.gguf";
    if (options.max_total_tokens == 0) options.max_total_tokens = 128;
    if (options.max_input_tokens == 0) options.max_input_tokens = 100;
    api_ = std::make_unique<Api>(engine_, tokenizer_, resolver_, metrics_, options);
  }

  std::shared_ptr<FakeResponder> call(
      const std::string& method, const std::string& path, const std::string& body = "",
      std::map<std::string, std::string, std::less<>> headers = {}) {
    if (!api_) make_api();
    HttpRequest request;
    request.method = method;
    request.path = path;
    request.body = body;
    request.headers = std::move(headers);
    auto responder = std::make_shared<FakeResponder>();
    api_->handle(request, responder);
    return responder;
  }
  std::shared_ptr<FakeResponder> post(const std::string& path, const json& body) {
    return call("POST", path, body.dump());
  }

  // A request that fails before reaching the engine: its status, type and message.
  void expect_error(const std::string& path, const std::string& body, int status,
                    const std::string& type, const std::string& message_part) {
    const size_t before = engine_.count();
    const int64_t in_flight_before = api_ ? api_->in_flight() : 0;
    auto r = call("POST", path, body);
    ASSERT_TRUE(eventually([&] { return r->done(); })) << body;
    ASSERT_TRUE(r->response.has_value()) << body;
    EXPECT_EQ(r->response->status, status) << body << " -> " << r->response->body;
    const json answer = r->body();
    if (path.starts_with("/v1/")) {
      EXPECT_EQ(answer["error"]["type"], type) << body;
      EXPECT_EQ(answer["error"]["code"], status) << body;
      EXPECT_NE(answer["error"]["message"].get<std::string>().find(message_part), std::string::npos)
          << body << " -> " << answer.dump();
    } else {
      EXPECT_EQ(answer["error_type"], type) << body;
      EXPECT_NE(answer["error"].get<std::string>().find(message_part), std::string::npos)
          << body << " -> " << answer.dump();
    }
    EXPECT_EQ(engine_.count(), before) << body;
    EXPECT_EQ(api_->in_flight(), in_flight_before) << body;  // the slot came back
  }

  std::string header(const HttpResponse& r, const std::string& name) {
    for (const auto& [k, v] : r.headers) {
      if (k == name) return v;
    }
    return "";
  }

  FakeEngine engine_;
  ModelTokenizer tokenizer_;
  AdapterStore store_;
  AdapterResolver resolver_;
  Metrics metrics_;
  std::unique_ptr<Api> api_;
};

// ---- TGI ----

TEST_F(ApiTest, GenerateMapsParametersAndAnswersWithDetails) {
  auto r = post("/generate", {{"inputs", "Hello world"},
                              {"parameters",
                               {{"max_new_tokens", 3},
                                {"details", true},
                                {"temperature", 0.5},
                                {"top_k", 10},
                                {"top_p", 0.9},
                                {"repetition_penalty", 1.2},
                                {"frequency_penalty", 0.5},
                                {"seed", 42},
                                {"stop", {"\n\n"}},
                                {"top_n_tokens", 2}}}});
  ASSERT_EQ(engine_.count(), 1u);
  EXPECT_FALSE(r->done());
  EXPECT_EQ(api_->in_flight(), 1);
  const EngineRequest& req = engine_.at(0).request;
  EXPECT_EQ(req.prompt, tokenizer_.tokenizer().encode("Hello world"));
  EXPECT_EQ(req.params.max_new_tokens, 3);
  EXPECT_TRUE(req.params.do_sample);
  EXPECT_FLOAT_EQ(req.params.temperature, 0.5f);
  EXPECT_EQ(req.params.top_k, 10);
  EXPECT_FLOAT_EQ(req.params.top_p, 0.9f);
  EXPECT_FLOAT_EQ(req.params.repetition_penalty, 1.2f);
  EXPECT_FLOAT_EQ(req.params.frequency_penalty, 0.5f);
  EXPECT_EQ(req.params.seed, 42u);
  EXPECT_EQ(req.params.stop, std::vector<std::string>{"\n\n"});
  EXPECT_EQ(req.params.top_n_tokens, 2);
  EXPECT_FALSE(req.params.prompt_logprobs);
  EXPECT_EQ(req.params.adapter, "");

  engine_.token(0, 11, " a", -0.5f, false, {{11, -0.5f, " a", false}, {12, -1.5f, " b", false}});
  engine_.token(0, 12, " b");
  EXPECT_FALSE(r->done());
  engine_.finish(0, 2, "<|im_end|>", FinishReason::EndOfSequence, "", /*special=*/true);
  ASSERT_TRUE(r->done());
  EXPECT_EQ(api_->in_flight(), 0);
  EXPECT_EQ(r->response->status, 200);
  const json body = r->body();
  EXPECT_EQ(body["generated_text"], " a b");
  const json& d = body["details"];
  EXPECT_EQ(d["finish_reason"], "eos_token");
  EXPECT_EQ(d["generated_tokens"], 3);
  EXPECT_EQ(d["seed"], 42);
  EXPECT_EQ(d["prefill"], json::array());
  ASSERT_EQ(d["tokens"].size(), 3u);
  EXPECT_EQ(d["tokens"][0],
            json({{"id", 11}, {"text", " a"}, {"logprob", -0.5}, {"special", false}}));
  EXPECT_EQ(d["tokens"][2]["text"], "<|im_end|>");
  EXPECT_EQ(d["tokens"][2]["special"], true);
  ASSERT_EQ(d["top_tokens"].size(), 3u);
  EXPECT_EQ(d["top_tokens"][0][1]["text"], " b");
  EXPECT_EQ(header(*r->response, "x-generated-tokens"), "3");
  EXPECT_EQ(header(*r->response, "x-prompt-tokens"), std::to_string(req.prompt.size()));
  EXPECT_FALSE(header(*r->response, "x-compute-time").empty());
}

TEST_F(ApiTest, GenerateDefaultsFollowTgi) {
  // No `parameters` at all: TGI samples (default_parameters) and generates up to the context.
  auto r = post("/generate", {{"inputs", "Hi"}});
  ASSERT_EQ(engine_.count(), 1u);
  const RequestParams& p = engine_.at(0).request.params;
  const int64_t n = static_cast<int64_t>(engine_.at(0).request.prompt.size());
  EXPECT_TRUE(p.do_sample);
  EXPECT_EQ(p.max_new_tokens, 128 - n);
  // With parameters but no sampling fields: greedy; seed shown as null.
  auto g = post("/generate",
                {{"inputs", "Hi"}, {"parameters", {{"details", true}, {"max_new_tokens", 1}}}});
  ASSERT_EQ(engine_.count(), 2u);
  EXPECT_FALSE(engine_.at(1).request.params.do_sample);
  engine_.finish(1, 5, "x", FinishReason::Length);
  EXPECT_EQ(g->body()["details"]["seed"], nullptr);
  EXPECT_EQ(g->body()["details"]["finish_reason"], "length");
  EXPECT_FALSE(g->body()["details"].contains("top_tokens"));
  // Sampling without a seed draws one and shows it.
  auto s = post("/generate",
                {{"inputs", "Hi"},
                 {"parameters", {{"details", true}, {"do_sample", true}, {"max_new_tokens", 1}}}});
  ASSERT_EQ(engine_.count(), 3u);
  engine_.finish(2, 5, "x", FinishReason::Length);
  EXPECT_EQ(s->body()["details"]["seed"].get<uint64_t>(), engine_.at(2).request.params.seed);
  // top_p = 1.0 is accepted as "off" (TGI refuses it) and does not imply sampling.
  post("/generate", {{"inputs", "Hi"}, {"parameters", {{"top_p", 1.0}, {"max_new_tokens", 1}}}});
  ASSERT_EQ(engine_.count(), 4u);
  EXPECT_FALSE(engine_.at(3).request.params.do_sample);
}

TEST_F(ApiTest, GenerateTruncateKeepsTheLastTokensAndFullText) {
  const std::vector<int32_t> ids = tokenizer_.tokenizer().encode("one two three four five");
  ASSERT_GT(ids.size(), 3u);
  auto r = post("/generate", {{"inputs", "one two three four five"},
                              {"parameters",
                               {{"truncate", 3},
                                {"max_new_tokens", 2},
                                {"return_full_text", true},
                                {"decoder_input_details", true},
                                {"details", true}}}});
  ASSERT_EQ(engine_.count(), 1u);
  EXPECT_EQ(engine_.at(0).request.prompt, std::vector<int32_t>(ids.end() - 3, ids.end()));
  EXPECT_TRUE(engine_.at(0).request.params.prompt_logprobs);
  RequestEvent e;
  e.token = TokenInfo{7, -1.0f, " six", false};
  e.index = 1;
  e.text = e.visible_text = " six";
  e.finished = true;
  e.finish = FinishReason::StopSequence;
  e.generated_tokens = 1;
  e.prefill = {{1, std::nanf(""), " three", false}, {2, -2.0f, " four", false}};
  engine_.at(0).sink(std::move(e));
  const json body = r->body();
  EXPECT_EQ(body["generated_text"], "one two three four five six");
  EXPECT_EQ(body["details"]["finish_reason"], "stop_sequence");
  EXPECT_EQ(body["details"]["prefill"][0]["logprob"], nullptr);
  EXPECT_EQ(body["details"]["prefill"][1], json({{"id", 2}, {"text", " four"}, {"logprob", -2.0}}));
}

TEST_F(ApiTest, GenerateValidationErrors) {
  make_api();
  const std::string g = "/generate";
  auto params = [](json p) { return json({{"inputs", "Hello"}, {"parameters", p}}).dump(); };
  expect_error(g, params({{"temperature", 0}}), 422, "validation",
               "Input validation error: `temperature` must be strictly positive");
  expect_error(g, params({{"temperature", -1}}), 422, "validation",
               "`temperature` must be strictly positive");
  expect_error(g, params({{"top_p", 0}}), 422, "validation", "`top_p` must be > 0.0 and < 1.0");
  expect_error(g, params({{"top_p", 1.5}}), 422, "validation", "`top_p` must be > 0.0 and < 1.0");
  expect_error(g, params({{"typical_p", 1.0}}), 422, "validation",
               "`typical_p` must be > 0.0 and < 1.0");
  expect_error(g, params({{"top_k", 0}}), 422, "validation", "`top_k` must be strictly positive");
  expect_error(g, params({{"repetition_penalty", 0}}), 422, "validation",
               "`repetition_penalty` must be strictly positive");
  expect_error(g, params({{"frequency_penalty", 2.5}}), 422, "validation",
               "`frequency_penalty` must be >= -2.0 and <= 2.0");
  expect_error(g, params({{"max_new_tokens", 0}}), 422, "validation",
               "`max_new_tokens` must be strictly positive");
  expect_error(g, params({{"stop", {"a", "b", "c", "d", "e"}}}), 422, "validation",
               "`stop` supports up to 4 stop sequences. Given: 5");
  expect_error(g, params({{"top_n_tokens", 6}}), 422, "validation",
               "`top_n_tokens` must be >= 0 and <= 5. Given: 6");
  expect_error(g, params({{"truncate", 0}}), 422, "validation",
               "`truncate` must be strictly positive and less than 100. Given: 0");
  expect_error(g, params({{"truncate", 101}}), 422, "validation", "Given: 101");
  expect_error(g, params({{"best_of", 2}}), 422, "validation", "`best_of` != 1");
  expect_error(g, params({{"watermark", true}}), 422, "validation", "watermark");
  expect_error(g, params({{"grammar", {{"type", "regex"}, {"value", "a+"}}}}), 422, "validation",
               "grammar is not supported");
  expect_error(g, params({{"adapter_source", "s3"}, {"adapter_id", "x"}}), 422, "validation",
               "adapter_source");
  expect_error(
      g, params({{"max_new_tokens", 200}}), 422, "validation",
      "`inputs` tokens + `max_new_tokens` must be <= 128. Given: 1 `inputs` tokens and 200 "
      "`max_new_tokens`");
  std::string long_input;
  for (int i = 0; i < 110; ++i) long_input += " hello";
  const size_t long_tokens = tokenizer_.tokenizer().encode(long_input).size();
  ASSERT_GT(long_tokens, 100u);
  ASSERT_LT(long_tokens, 128u);
  expect_error(g, json({{"inputs", long_input}, {"parameters", {{"max_new_tokens", 1}}}}).dump(),
               422, "validation",
               "`inputs` must have less than 100 tokens. Given: " + std::to_string(long_tokens));
  expect_error(g, R"({"inputs": ""})", 422, "validation", "`inputs` cannot be empty");
  expect_error(g, R"({"parameters": {}})", 422, "validation", "`inputs`");
  expect_error("/generate_stream", params({{"decoder_input_details", true}}), 422, "validation",
               "`decoder_input_details` == true is not supported when streaming tokens");
  // Wrong JSON: 400.
  expect_error(g, params({{"temperature", "hot"}}), 400, "bad_request",
               "`temperature` must be a number");
  expect_error(g, params({{"max_new_tokens", 1.5}}), 400, "bad_request",
               "`max_new_tokens` must be an integer");
  expect_error(g, params({{"seed", -1}}), 400, "bad_request", "`seed`");
  expect_error(g, params({{"stop", "x"}}), 400, "bad_request", "`stop`");
  expect_error(g, R"({"inputs": 5})", 400, "bad_request", "`inputs` must be a string");
  expect_error(g, R"({"inputs": "x", "parameters": []})", 400, "bad_request", "`parameters`");
  expect_error(g, "{not json", 400, "bad_request", "not valid JSON");
  expect_error(g, "[1]", 400, "bad_request", "JSON object");
  // Unknown fields are ignored, null is "not given".
  auto ok = call(
      "POST", g,
      R"({"inputs": "x", "parameters": {"foo": 1, "temperature": null, "max_new_tokens": 1}})");
  EXPECT_FALSE(ok->done());
  EXPECT_EQ(engine_.count(), 1u);
}

TEST_F(ApiTest, EngineRefusalIs422AndGenerationErrorIs424) {
  engine_.refuse = "prompt holds ids outside the vocabulary";
  expect_error("/generate", R"({"inputs": "x", "parameters": {"max_new_tokens": 1}})", 422,
               "validation", "Input validation error: prompt holds ids outside the vocabulary");
  engine_.refuse.clear();
  auto r = post("/generate", {{"inputs", "x"}, {"parameters", {{"max_new_tokens", 2}}}});
  engine_.token(0, 3, "a");
  engine_.fail(0, "device lost");
  ASSERT_TRUE(r->done());
  EXPECT_EQ(r->response->status, 424);
  EXPECT_EQ(r->body(), json({{"error", "device lost"}, {"error_type", "generation"}}));
  EXPECT_EQ(api_->in_flight(), 0);
}

TEST_F(ApiTest, EarlierPromptFailingBeforeALaterRefusalAnswersOnce) {
  engine_.fail_previous_then_refuse_at = 1;
  auto r = post("/v1/completions", {{"prompt", {"a", "b"}}, {"max_tokens", 2}});
  ASSERT_TRUE(r->done());  // FakeResponder fails the test when answered twice
  EXPECT_EQ(r->response->status, 424);
  EXPECT_EQ(r->body()["error"]["message"], "earlier prompt failed");
  EXPECT_EQ(api_->in_flight(), 0);
  EXPECT_TRUE(engine_.at(0).handle->cancelled);

  engine_.fail_previous_then_refuse_at = 2;
  auto s = post("/v1/completions", {{"prompt", {"a", "b"}}, {"max_tokens", 2}, {"stream", true}});
  ASSERT_TRUE(s->writer);
  EXPECT_TRUE(s->writer->finished);
  const auto events = s->writer->events();
  ASSERT_EQ(events.size(), 1u);  // the generation error only, no second (validation) one
  EXPECT_EQ(json::parse(events[0])["error"]["message"], "earlier prompt failed");
  EXPECT_EQ(api_->in_flight(), 0);
  const std::string metrics = metrics_.render();
  EXPECT_NE(metrics.find("tgi_request_failure{err=\"generation\"} 2"), std::string::npos)
      << metrics;
  EXPECT_EQ(metrics.find("tgi_request_failure{err=\"validation\"}"), std::string::npos);
}

TEST_F(ApiTest, HugeAndTinyNumbersAreRefusedNotWrappedOrRounded) {
  make_api();
  auto params = [](json p) { return json({{"inputs", "Hello"}, {"parameters", p}}).dump(); };
  // INT64_MAX would overflow prompt + max_new_tokens and reach the engine as -1.
  expect_error("/generate", params({{"max_new_tokens", INT64_MAX}}), 422, "validation",
               "`inputs` tokens + `max_new_tokens` must be <= 128");
  expect_error("/v1/completions", json({{"prompt", "x"}, {"max_tokens", INT64_MAX}}).dump(), 422,
               "validation", "must be <= 128");
  // 1e-50 is 0 as a float (the engine divides by it), 1e300 is inf.
  expect_error("/generate", params({{"temperature", 1e-50}}), 422, "validation",
               "`temperature` must be strictly positive");
  expect_error("/generate", params({{"temperature", 1e300}}), 422, "validation",
               "`temperature` is out of range");
  expect_error("/generate", params({{"repetition_penalty", 1e-50}}), 422, "validation",
               "`repetition_penalty` must be strictly positive");
  expect_error("/v1/chat/completions",
               json({{"messages", {{{"role", "user"}, {"content", "hi"}}}},
                     {"repetition_penalty", 1e300}})
                   .dump(),
               422, "validation", "`repetition_penalty` is out of range");
  expect_error("/generate",
               params({{"adapter_id", ""},
                       {"merged_adapters", {{"ids", {"a", "b"}}, {"weights", {1e300, 1.0}}}}}),
               422, "validation", "`merged_adapters.weights` are out of range");
  // OpenAI's temperature rounding to 0 is greedy, as 0 is.
  auto greedy = post("/v1/completions", {{"prompt", "x"}, {"temperature", 1e-50}});
  ASSERT_EQ(engine_.count(), 1u);
  EXPECT_FALSE(engine_.at(0).request.params.do_sample);
  EXPECT_EQ(engine_.at(0).request.params.temperature, 1.0f);
}

TEST_F(ApiTest, GenerateStreamSendsTgiEvents) {
  auto r = post("/generate_stream",
                {{"inputs", "Hi"},
                 {"parameters",
                  {{"max_new_tokens", 3}, {"top_n_tokens", 1}, {"do_sample", true}, {"seed", 7}}}});
  ASSERT_TRUE(r->writer);
  ASSERT_EQ(engine_.count(), 1u);
  engine_.token(0, 11, "Hel", -0.1f, false, {{11, -0.1f, "Hel", false}});
  engine_.token(0, 12, "lo", -0.2f, false, {{12, -0.2f, "lo", false}});
  EXPECT_FALSE(r->writer->finished);
  engine_.finish(0, 13, "!", FinishReason::Length);
  EXPECT_TRUE(r->writer->finished);
  EXPECT_EQ(api_->in_flight(), 0);
  const std::string raw = r->writer->text();
  EXPECT_EQ(raw.rfind("data:{", 0), 0u) << raw;  // axum's json_data: no space
  EXPECT_EQ(raw.find("[DONE]"), std::string::npos);
  const auto events = r->writer->events();
  ASSERT_EQ(events.size(), 3u);
  const json first = json::parse(events[0]);
  EXPECT_EQ(first["index"], 1);
  EXPECT_EQ(first["token"],
            json({{"id", 11}, {"text", "Hel"}, {"logprob", -0.1f}, {"special", false}}));
  EXPECT_EQ(first["top_tokens"].size(), 1u);
  EXPECT_EQ(first["generated_text"], nullptr);
  EXPECT_EQ(first["details"], nullptr);
  const json last = json::parse(events[2]);
  EXPECT_EQ(last["index"], 3);
  EXPECT_EQ(last["generated_text"], "Hello!");
  EXPECT_EQ(last["details"]["finish_reason"], "length");
  EXPECT_EQ(last["details"]["generated_tokens"], 3);
  EXPECT_EQ(last["details"]["seed"], 7);
  EXPECT_EQ(last["details"]["input_length"], engine_.at(0).request.prompt.size());
}

TEST_F(ApiTest, StreamDisconnectCancelsAndErrorsBecomeEvents) {
  auto r = post("/generate_stream", {{"inputs", "Hi"}, {"parameters", {{"max_new_tokens", 5}}}});
  ASSERT_TRUE(r->writer);
  engine_.token(0, 11, "a");
  EXPECT_EQ(api_->in_flight(), 1);
  r->writer->drop();
  EXPECT_TRUE(engine_.at(0).handle->cancelled);
  EXPECT_EQ(api_->in_flight(), 0);
  engine_.token(0, 12, "b");  // a late event is dropped
  EXPECT_EQ(r->writer->events().size(), 1u);

  auto e = post("/generate_stream", {{"inputs", "Hi"}, {"parameters", {{"max_new_tokens", 5}}}});
  engine_.token(1, 11, "a");
  engine_.fail(1, "out of memory");
  EXPECT_TRUE(e->writer->finished);
  const auto events = e->writer->events();
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(json::parse(events[1]),
            json({{"error", "out of memory"}, {"error_type", "generation"}}));

  // The engine refusing after the stream opened: an SSE error event.
  engine_.refuse = "too long for the cache";
  auto f = post("/generate_stream", {{"inputs", "Hi"}, {"parameters", {{"max_new_tokens", 5}}}});
  ASSERT_TRUE(f->writer);
  EXPECT_TRUE(f->writer->finished);
  const json err = json::parse(f->writer->events().at(0));
  EXPECT_EQ(err["error_type"], "validation");
  EXPECT_EQ(api_->in_flight(), 0);
}

TEST_F(ApiTest, CompatRouteAnswersAListOrStreams) {
  auto r = post("/", {{"inputs", "Hi"}, {"parameters", {{"max_new_tokens", 1}}}});
  engine_.finish(0, 11, " there", FinishReason::Length);
  const json body = r->body();
  ASSERT_TRUE(body.is_array());
  EXPECT_EQ(body[0]["generated_text"], "Hi there");  // return_full_text defaults to true here
  auto s = post("/", {{"inputs", "Hi"}, {"stream", true}, {"parameters", {{"max_new_tokens", 1}}}});
  ASSERT_TRUE(s->writer);
  engine_.finish(1, 11, " there", FinishReason::Length);
  EXPECT_EQ(json::parse(s->writer->events().at(0))["generated_text"], "Hi there");
}

TEST_F(ApiTest, TokenizeGivesByteOffsets) {
  const std::string text = "Hello wörld, tokenize me!";
  auto r = post("/tokenize", {{"inputs", text}});
  ASSERT_TRUE(r->done());
  ASSERT_EQ(r->response->status, 200);
  const json tokens = r->body();
  const auto ids = tokenizer_.tokenizer().encode(text);
  ASSERT_EQ(tokens.size(), ids.size());
  size_t position = 0;
  std::string joined;
  for (size_t i = 0; i < tokens.size(); ++i) {
    EXPECT_EQ(tokens[i]["id"], ids[i]);
    EXPECT_EQ(tokens[i]["start"], position);
    const std::string piece = tokens[i]["text"];
    EXPECT_EQ(text.substr(tokens[i]["start"], tokens[i]["stop"].get<size_t>() - position), piece);
    position = tokens[i]["stop"];
    joined += piece;
  }
  EXPECT_EQ(joined, text);
  expect_error("/tokenize", R"({"inputs": ""})", 422, "validation", "`inputs` cannot be empty");
}

TEST_F(ApiTest, InfoHealthAndUnknownRoutes) {
  auto info = call("GET", "/info");
  const json body = info->body();
  EXPECT_EQ(body["model_id"], "/models/smol.gguf");
  EXPECT_EQ(body["max_input_tokens"], 100);
  EXPECT_EQ(body["max_total_tokens"], 128);
  EXPECT_EQ(body["max_stop_sequences"], 4);
  EXPECT_EQ(body["max_best_of"], 1);
  EXPECT_EQ(body["max_client_batch_size"], 4);
  EXPECT_EQ(body["kv_blocks"], 64);
  EXPECT_EQ(body["block_size"], 16);
  EXPECT_EQ(body["max_batch_prefill_tokens"], 2048);
  EXPECT_EQ(body["max_batch_total_tokens"], 1024);
  EXPECT_TRUE(body["adapters"].is_array());
  EXPECT_TRUE(body.contains("version"));
  auto health = call("GET", "/health");
  EXPECT_EQ(health->response->status, 200);
  EXPECT_EQ(health->response->body, "");
  EXPECT_EQ(call("GET", "/nope")->response->status, 404);
  EXPECT_EQ(call("GET", "/generate")->response->status, 405);
  EXPECT_EQ(call("POST", "/v1/nope")->body()["error"]["code"], 404);
}

TEST_F(ApiTest, BearerTokenGuardsGenerationAndManagement) {
  ApiOptions options;
  options.api_key = "s3cret";
  make_api(options);
  const std::string body = R"({"inputs": "x", "parameters": {"max_new_tokens": 1}})";
  auto none = call("POST", "/generate", body);
  EXPECT_EQ(none->response->status, 401);
  EXPECT_EQ(none->body()["error_type"], "unauthorized");
  EXPECT_EQ(call("POST", "/generate", body, {{"authorization", "Bearer wrong"}})->response->status,
            401);
  EXPECT_EQ(call("POST", "/generate", body, {{"authorization", "Bearer s3cre"}})->response->status,
            401);
  EXPECT_EQ(call("POST", "/generate", body, {{"authorization", "s3cret"}})->response->status, 401);
  EXPECT_EQ(call("GET", "/v1/models")->response->status, 401);
  EXPECT_EQ(call("GET", "/v1/adapters")->body()["error"]["type"], "unauthorized");
  EXPECT_EQ(call("POST", "/tokenize", body)->response->status, 401);
  EXPECT_EQ(engine_.count(), 0u);
  auto ok = call("POST", "/generate", body, {{"authorization", "Bearer s3cret"}});
  EXPECT_EQ(engine_.count(), 1u);
  call("POST", "/generate", body, {{"authorization", "bearer s3cret"}});
  EXPECT_EQ(engine_.count(), 2u);
  EXPECT_EQ(call("GET", "/v1/models", "", {{"authorization", "Bearer s3cret"}})->response->status,
            200);
  // Open routes.
  EXPECT_EQ(call("GET", "/health")->response->status, 200);
  EXPECT_EQ(call("GET", "/info")->response->status, 200);
  EXPECT_EQ(call("GET", "/metrics")->response->status, 200);
}

TEST_F(ApiTest, OverloadIs429AndSlotsComeBack) {
  ApiOptions options;
  options.max_concurrent_requests = 1;
  make_api(options);
  const std::string body = R"({"inputs": "x", "parameters": {"max_new_tokens": 1}})";
  auto first = call("POST", "/generate", body);
  EXPECT_EQ(api_->in_flight(), 1);
  auto second = call("POST", "/generate", body);
  EXPECT_EQ(second->response->status, 429);
  EXPECT_EQ(second->body(), json({{"error", "Model is overloaded"}, {"error_type", "overloaded"}}));
  auto openai = post("/v1/completions", {{"prompt", "x"}});
  EXPECT_EQ(openai->response->status, 429);
  EXPECT_EQ(openai->body()["error"]["type"], "overloaded");
  engine_.finish(0, 1, "y", FinishReason::Length);
  EXPECT_EQ(api_->in_flight(), 0);
  call("POST", "/generate", body);
  EXPECT_EQ(engine_.count(), 2u);
  // A validation failure gives its slot back too.
  engine_.finish(1, 1, "y", FinishReason::Length);
  expect_error("/generate", R"({"inputs": ""})", 422, "validation", "empty");
  EXPECT_EQ(api_->in_flight(), 0);
}

TEST_F(ApiTest, NonStreamingDisconnectCancelsAndFreesTheSlot) {
  ApiOptions options;
  options.max_concurrent_requests = 1;
  make_api(options);
  const std::string body = R"({"inputs": "x", "parameters": {"max_new_tokens": 50}})";
  for (const std::string path : {"/generate", "/"}) {
    auto r = call("POST", path, body);
    ASSERT_EQ(engine_.count(), 1u) << path;
    engine_.token(0, 11, "a");
    EXPECT_EQ(api_->in_flight(), 1);
    EXPECT_EQ(call("POST", path, body)->response->status, 429);  // the slot is taken
    r->drop();                                                    // the client goes away
    EXPECT_TRUE(engine_.at(0).handle->cancelled) << path;
    EXPECT_EQ(api_->in_flight(), 0) << path;
    engine_.token(0, 12, "b");  // late events change nothing
    engine_.finish(0, 13, "c", FinishReason::Length);
    EXPECT_FALSE(r->done()) << path;  // nothing is answered after the disconnect
    // The slot came back: a new request is admitted.
    auto next = call("POST", path, body);
    ASSERT_EQ(engine_.count(), 2u) << path;
    engine_.finish(1, 1, "y", FinishReason::Length);
    ASSERT_TRUE(next->done());
    EXPECT_EQ(next->response->status, 200);
    EXPECT_EQ(api_->in_flight(), 0);
    engine_.submitted.clear();
    engine_.indices.clear();
  }

  // OpenAI, several prompts: every engine request is cancelled.
  auto c = post("/v1/completions", {{"prompt", {"a", "b"}}, {"max_tokens", 20}});
  ASSERT_EQ(engine_.count(), 2u);
  c->drop();
  EXPECT_TRUE(engine_.at(0).handle->cancelled);
  EXPECT_TRUE(engine_.at(1).handle->cancelled);
  EXPECT_EQ(api_->in_flight(), 0);
  engine_.finish(0, 1, "y", FinishReason::Length);
  EXPECT_FALSE(c->done());
  auto chat = post("/v1/chat/completions",
                   {{"messages", {{{"role", "user"}, {"content", "hi"}}}}, {"max_tokens", 20}});
  ASSERT_EQ(engine_.count(), 3u);
  chat->drop();
  EXPECT_TRUE(engine_.at(2).handle->cancelled);
  EXPECT_EQ(api_->in_flight(), 0);
  EXPECT_FALSE(chat->done());
  // Dropped after the answer: nothing happens (the transport does not call back then either).
  auto done = post("/v1/completions", {{"prompt", "a"}, {"max_tokens", 1}});
  engine_.finish(3, 1, "y", FinishReason::Length);
  ASSERT_TRUE(done->done());
  done->drop();
  EXPECT_EQ(api_->in_flight(), 0);

  const std::string metrics = metrics_.render();
  EXPECT_NE(metrics.find("tgi_request_failure{err=\"cancelled\"} 4"), std::string::npos)
      << metrics;
}

TEST_F(ApiTest, DisconnectBeforeSubmissionSubmitsNothingThatRuns) {
  // The client is already gone when the route registers its callback (the transport calls it
  // at once): the run ends before or right after submission and nothing is answered.
  class GoneResponder : public FakeResponder {
   public:
    void on_disconnect(std::function<void()> callback) override { callback(); }
  };
  make_api();
  HttpRequest request;
  request.method = "POST";
  request.path = "/generate";
  request.body = R"({"inputs": "x", "parameters": {"max_new_tokens": 5}})";
  auto responder = std::make_shared<GoneResponder>();
  api_->handle(request, responder);
  EXPECT_FALSE(responder->done());
  EXPECT_EQ(engine_.count(), 0u);
  EXPECT_EQ(api_->in_flight(), 0);
}

TEST_F(ApiTest, UnexpectedExceptionsAreAnsweredOnceAndNeverEscape) {
  make_api();
  engine_.explode = "boom";
  // Before anything was answered: a 500.
  auto r = post("/generate", {{"inputs", "x"}, {"parameters", {{"max_new_tokens", 2}}}});
  ASSERT_TRUE(r->done());
  EXPECT_EQ(r->response->status, 500);
  EXPECT_EQ(r->body()["error_type"], "internal");
  EXPECT_EQ(api_->in_flight(), 0);
  // After the stream opened: an error event ends it (no second answer, nothing thrown).
  auto s = post("/generate_stream", {{"inputs", "x"}, {"parameters", {{"max_new_tokens", 2}}}});
  ASSERT_TRUE(s->writer);
  EXPECT_TRUE(s->writer->finished);
  const auto events = s->writer->events();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(json::parse(events[0])["error_type"], "internal");
  auto o = post("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "hi"}}}},
                                         {"max_tokens", 2},
                                         {"stream", true}});
  ASSERT_TRUE(o->writer);
  EXPECT_TRUE(o->writer->finished);
  const auto chat_events = o->writer->events();
  ASSERT_FALSE(chat_events.empty());
  EXPECT_EQ(json::parse(chat_events.back())["error"]["type"], "internal");
  EXPECT_EQ(api_->in_flight(), 0);
  // On the blocking pool (an adapter to resolve first): also answered, the process lives on.
  auto a = post("/generate",
                {{"inputs", "x"},
                 {"parameters",
                  {{"max_new_tokens", 2}, {"adapter_id", "a_r4_qv"}, {"adapter_source", "local"}}}});
  ASSERT_TRUE(eventually([&] { return a->done(); }));
  EXPECT_EQ(a->response->status, 500);
  EXPECT_TRUE(eventually([&] { return api_->in_flight() == 0; }));
  const std::string metrics = metrics_.render();
  EXPECT_NE(metrics.find("tgi_request_failure{err=\"internal\"} 4"), std::string::npos)
      << metrics;
}

TEST_F(ApiTest, DrainingRefusesNewWork) {
  make_api();
  auto running =
      call("POST", "/generate", R"({"inputs": "x", "parameters": {"max_new_tokens": 1}})");
  api_->start_draining();
  auto refused = call("POST", "/generate", R"({"inputs": "x"})");
  EXPECT_EQ(refused->response->status, 503);
  EXPECT_EQ(refused->body()["error_type"], "unavailable");
  EXPECT_EQ(post("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "x"}}}}})
                ->body()["error"]["code"],
            503);
  auto health = call("GET", "/health");
  EXPECT_EQ(health->response->status, 503);
  EXPECT_EQ(health->body(), json({{"error", "unhealthy"}, {"error_type", "healthcheck"}}));
  EXPECT_EQ(call("GET", "/info")->response->status, 200);
  engine_.finish(0, 1, "y", FinishReason::Length);  // the one in flight still finishes
  EXPECT_EQ(running->response->status, 200);
}

// ---- adapters ----

TEST_F(ApiTest, AdaptersResolveManageAndList) {
  make_api();
  // Unknown adapter: 404 from the resolver (on the blocking pool).
  expect_error("/generate", R"({"inputs": "x", "parameters": {"adapter_id": "nope"}})", 404,
               "not_found", "nope");
  // A folder inside --adapter-dir.
  auto r =
      post("/generate",
           {{"inputs", "x"},
            {"parameters",
             {{"max_new_tokens", 1}, {"adapter_id", "a_r4_qv"}, {"adapter_source", "local"}}}});
  ASSERT_TRUE(eventually([&] { return engine_.count() == 1; }));
  const std::string local_name = engine_.at(0).request.params.adapter;
  EXPECT_NE(local_name, "");
  engine_.finish(0, 1, "y", FinishReason::Length);
  ASSERT_TRUE(r->done());

  // vLLM's management routes.
  auto load = post("/v1/load_lora_adapter", {{"lora_name", "qv"}, {"lora_path", "a_r4_qv"}});
  ASSERT_TRUE(eventually([&] { return load->done(); }));
  ASSERT_EQ(load->response->status, 200) << load->response->body;
  auto duplicate = post("/v1/load_lora_adapter", {{"lora_name", "qv"}, {"lora_path", "a_r4_qv"}});
  ASSERT_TRUE(eventually([&] { return duplicate->done(); }));
  EXPECT_EQ(duplicate->response->status, 400);
  EXPECT_EQ(duplicate->body()["error"]["code"], 400);
  auto missing = post("/v1/load_lora_adapter", {{"lora_name", "qv2"}});
  ASSERT_TRUE(eventually([&] { return missing->done(); }));
  EXPECT_EQ(missing->response->status, 400);

  auto list = call("GET", "/v1/adapters");
  bool found = false;
  for (const json& a : list->body()) {
    if (a["name"] == "qv") {
      found = true;
      EXPECT_EQ(a["source"], "runtime");
      EXPECT_TRUE(a.contains("resident"));
      EXPECT_TRUE(a.contains("pins"));
    }
  }
  EXPECT_TRUE(found) << list->response->body;

  auto models = call("GET", "/v1/models")->body();
  EXPECT_EQ(models["object"], "list");
  EXPECT_EQ(models["data"][0]["id"], "smol");
  EXPECT_EQ(models["data"][0]["object"], "model");
  EXPECT_EQ(models["data"][0]["owned_by"], "mil");
  std::set<std::string> ids;
  for (const json& m : models["data"]) ids.insert(m["id"]);
  EXPECT_TRUE(ids.contains("qv"));
  EXPECT_TRUE(ids.contains(local_name));

  // OpenAI `model` picks it; the served name is the base model.
  post("/v1/completions", {{"model", "qv"}, {"prompt", "x"}, {"max_tokens", 1}});
  ASSERT_TRUE(eventually([&] { return engine_.count() == 2; }));
  EXPECT_EQ(engine_.at(1).request.params.adapter, "qv");
  post("/v1/completions", {{"model", "smol"}, {"prompt", "x"}, {"max_tokens", 1}});
  ASSERT_EQ(engine_.count(), 3u);
  EXPECT_EQ(engine_.at(2).request.params.adapter, "");
  expect_error("/v1/chat/completions",
               R"({"model": "unknown-model", "messages": [{"role": "user", "content": "x"}]})", 404,
               "not_found", "unknown-model");

  auto unload = post("/v1/unload_lora_adapter", {{"lora_name", "qv"}});
  ASSERT_TRUE(eventually([&] { return unload->done(); }));
  EXPECT_EQ(unload->response->status, 200) << unload->response->body;
  auto again = post("/v1/unload_lora_adapter", {{"lora_name", "qv"}});
  ASSERT_TRUE(eventually([&] { return again->done(); }));
  EXPECT_EQ(again->response->status, 404);
}

// ---- OpenAI ----

TEST_F(ApiTest, CompletionsShapeAndMapping) {
  auto r = post("/v1/completions", {{"model", "smol"},
                                    {"prompt", "Once upon"},
                                    {"temperature", 0},
                                    {"stop", "\n"},
                                    {"logprobs", 2}});
  ASSERT_EQ(engine_.count(), 1u);
  const RequestParams& p = engine_.at(0).request.params;
  EXPECT_FALSE(p.do_sample);
  EXPECT_EQ(p.max_new_tokens, 16);  // OpenAI's default
  EXPECT_EQ(p.stop, std::vector<std::string>{"\n"});
  EXPECT_EQ(p.top_n_tokens, 2);
  engine_.token(0, 11, " a", -0.5f, false, {{11, -0.5f, " a", false}, {12, -1.0f, " b", false}});
  engine_.finish(0, 13, " time\n", FinishReason::StopSequence, " time");
  ASSERT_TRUE(r->done());
  const json body = r->body();
  EXPECT_EQ(body["object"], "text_completion");
  EXPECT_EQ(body["id"].get<std::string>().rfind("cmpl-", 0), 0u);
  EXPECT_EQ(body["model"], "smol");
  EXPECT_TRUE(body["created"].is_number_integer());
  const json& choice = body["choices"][0];
  EXPECT_EQ(choice["index"], 0);
  EXPECT_EQ(choice["text"], " a time");  // the stop sequence is removed
  EXPECT_EQ(choice["finish_reason"], "stop");
  const json& lp = choice["logprobs"];
  EXPECT_EQ(lp["tokens"], json({" a", " time\n"}));
  EXPECT_EQ(lp["token_logprobs"][0], -0.5);
  EXPECT_EQ(lp["text_offset"], json({0, 2}));
  EXPECT_EQ(lp["top_logprobs"][0][" b"], -1.0);
  EXPECT_EQ(body["usage"]["completion_tokens"], 2);
  EXPECT_EQ(body["usage"]["prompt_tokens"], engine_.at(0).request.prompt.size());
  EXPECT_EQ(body["usage"]["total_tokens"], 2 + engine_.at(0).request.prompt.size());
}

TEST_F(ApiTest, CompletionsBatchEchoAndTokenIds) {
  auto r = post("/v1/completions", {{"prompt", {"A", "B"}}, {"max_tokens", 2}, {"echo", true}});
  ASSERT_EQ(engine_.count(), 2u);
  EXPECT_TRUE(engine_.at(0).request.params.do_sample);  // OpenAI samples by default
  engine_.finish(1, 5, "b", FinishReason::Length);
  EXPECT_FALSE(r->done());
  engine_.finish(0, 5, "a", FinishReason::EndOfSequence);
  ASSERT_TRUE(r->done());
  const json body = r->body();
  ASSERT_EQ(body["choices"].size(), 2u);
  EXPECT_EQ(body["choices"][0]["text"], "Aa");
  EXPECT_EQ(body["choices"][1]["text"], "Bb");
  EXPECT_EQ(body["choices"][1]["index"], 1);
  EXPECT_EQ(body["choices"][1]["finish_reason"], "length");
  EXPECT_EQ(body["choices"][0]["logprobs"], nullptr);

  const auto ids = tokenizer_.tokenizer().encode("Hello");
  post("/v1/completions", {{"prompt", ids}, {"max_tokens", 1}});
  ASSERT_EQ(engine_.count(), 3u);
  EXPECT_EQ(engine_.at(2).request.prompt, ids);

  expect_error("/v1/completions", R"({"prompt": ["a","b","c","d","e"]})", 422, "validation",
               "maximum allowed batch size of 4");
  expect_error("/v1/completions", R"({"prompt": "a", "suffix": "b"})", 422, "validation", "Suffix");
  expect_error("/v1/completions", R"({"prompt": "a", "n": 2})", 422, "validation", "`n`");
  expect_error("/v1/completions", R"({"prompt": [99999999]})", 422, "validation", "vocabulary");
  expect_error("/v1/completions", R"({"prompt": "a", "logprobs": 9})", 422, "validation",
               "`logprobs`");
  expect_error("/v1/completions", R"({"prompt": "a", "temperature": -1})", 422, "validation",
               "`temperature`");
  expect_error("/v1/completions", R"({"prompt": "a", "max_tokens": 0})", 422, "validation",
               "`max_tokens` must be strictly positive");
  expect_error("/v1/completions", R"({"prompt": "a", "max_tokens": 500})", 422, "validation",
               "must be <= 128. Given:");
  expect_error("/v1/completions", R"({"prompt": {"a": 1}})", 400, "bad_request", "`prompt`");
  expect_error("/v1/completions", R"({"max_tokens": 1})", 422, "validation",
               "`prompt` is required");
  expect_error("/v1/completions", R"({"prompt": "a", "stream": "yes"})", 400, "bad_request",
               "`stream`");
}

TEST_F(ApiTest, CompletionsStream) {
  auto r = post("/v1/completions", {{"prompt", "Hi"},
                                    {"max_tokens", 2},
                                    {"stream", true},
                                    {"stream_options", {{"include_usage", true}}}});
  ASSERT_TRUE(r->writer);
  engine_.token(0, 11, " a");
  engine_.finish(0, 12, " b", FinishReason::Length);
  EXPECT_TRUE(r->writer->finished);
  const std::string raw = r->writer->text();
  EXPECT_EQ(raw.rfind("data: {", 0), 0u) << raw;
  const auto events = r->writer->events();
  ASSERT_EQ(events.size(), 4u) << raw;
  EXPECT_EQ(json::parse(events[0])["choices"][0]["text"], " a");
  EXPECT_EQ(json::parse(events[0])["choices"][0]["finish_reason"], nullptr);
  EXPECT_EQ(json::parse(events[1])["choices"][0]["finish_reason"], "length");
  const json usage = json::parse(events[2]);
  EXPECT_EQ(usage["choices"], json::array());
  EXPECT_EQ(usage["usage"]["completion_tokens"], 2);
  EXPECT_EQ(events[3], "[DONE]");
  EXPECT_EQ(api_->in_flight(), 0);
}

TEST_F(ApiTest, ChatCompletions) {
  auto r = post("/v1/chat/completions",
                {{"messages",
                  {{{"role", "system"}, {"content", "Be brief."}},
                   {{"role", "user"}, {"content", {{{"type", "text"}, {"text", "Hi"}}}}}}},
                 {"max_completion_tokens", 3},
                 {"logprobs", true},
                 {"top_logprobs", 1},
                 {"presence_penalty", 0.5},
                 {"seed", 3}});
  ASSERT_EQ(engine_.count(), 1u);
  const EngineRequest& req = engine_.at(0).request;
  EXPECT_EQ(req.prompt, tokenizer_.encode_chat({{"system", "Be brief."}, {"user", "Hi"}}, true));
  EXPECT_EQ(req.params.max_new_tokens, 3);
  EXPECT_EQ(req.params.top_n_tokens, 1);
  EXPECT_FLOAT_EQ(req.params.presence_penalty, 0.5f);
  EXPECT_EQ(req.params.seed, 3u);
  engine_.token(0, 11, "Hello", -0.5f, false, {{11, -0.5f, "Hello", false}});
  engine_.finish(0, 2, "<|im_end|>", FinishReason::EndOfSequence, "", true);
  ASSERT_TRUE(r->done());
  const json body = r->body();
  EXPECT_EQ(body["object"], "chat.completion");
  EXPECT_EQ(body["id"].get<std::string>().rfind("chatcmpl-", 0), 0u);
  EXPECT_EQ(body["model"], "smol");
  const json& choice = body["choices"][0];
  EXPECT_EQ(choice["message"], json({{"role", "assistant"}, {"content", "Hello"}}));
  EXPECT_EQ(choice["finish_reason"], "stop");
  const json& content = choice["logprobs"]["content"];
  ASSERT_EQ(content.size(), 2u);
  EXPECT_EQ(content[0]["token"], "Hello");
  EXPECT_EQ(content[0]["logprob"], -0.5);
  EXPECT_EQ(content[0]["bytes"], json({72, 101, 108, 108, 111}));
  EXPECT_EQ(content[0]["top_logprobs"][0]["token"], "Hello");
  EXPECT_EQ(body["usage"]["completion_tokens"], 2);

  // Without max_tokens: up to the context.
  post("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "Hi"}}}}});
  ASSERT_EQ(engine_.count(), 2u);
  EXPECT_EQ(engine_.at(1).request.params.max_new_tokens,
            128 - static_cast<int32_t>(engine_.at(1).request.prompt.size()));

  expect_error("/v1/chat/completions", R"({"messages": []})", 422, "validation", "`messages`");
  expect_error("/v1/chat/completions", R"({"messages": "hi"})", 400, "bad_request", "`messages`");
  expect_error(
      "/v1/chat/completions",
      R"({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 9, "logprobs": true})",
      422, "validation", "`top_logprobs` must be >= 0 and <= 5. Given: 9");
  expect_error(
      "/v1/chat/completions",
      R"({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]})", 422,
      "validation", "`tools`");
  expect_error("/v1/chat/completions",
               R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})", 422,
               "validation", "text");
}

TEST_F(ApiTest, ChatTemplateErrorsAre422) {
  // SmolLM2's template raises for a role it does not know? Use a model without a template.
  const fs::path dir = fs::temp_directory_path() / "mil_api_no_template";
  fs::remove_all(dir);
  fs::create_directories(dir);
  fs::copy_file(kFixtures / "tokenizer" / "bytelevel_llama3" / "tokenizer.json",
                dir / "tokenizer.json");
  const ModelTokenizer plain = ModelTokenizer::load(dir.string());
  ApiOptions options;
  options.served_model_name = "plain";
  options.max_input_tokens = 100;
  options.max_total_tokens = 128;
  Api api(engine_, plain, resolver_, metrics_, options);
  HttpRequest request;
  request.method = "POST";
  request.path = "/v1/chat/completions";
  request.body = R"({"messages": [{"role": "user", "content": "x"}]})";
  auto responder = std::make_shared<FakeResponder>();
  api.handle(request, responder);
  ASSERT_TRUE(responder->done());
  EXPECT_EQ(responder->response->status, 422);
  EXPECT_EQ(responder->body()["error"]["type"], "template_error");
  fs::remove_all(dir);
}

TEST_F(ApiTest, ChatStream) {
  auto r = post(
      "/v1/chat/completions",
      {{"messages", {{{"role", "user"}, {"content", "Hi"}}}}, {"stream", true}, {"max_tokens", 4}});
  ASSERT_TRUE(r->writer);
  engine_.token(0, 11, "Hel");
  engine_.token(0, 12, "lo");
  engine_.finish(0, 2, "<|im_end|>", FinishReason::EndOfSequence, "", true);
  const auto events = r->writer->events();
  ASSERT_EQ(events.size(), 5u) << r->writer->text();
  const json first = json::parse(events[0]);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"], json({{"role", "assistant"}, {"content", ""}}));
  EXPECT_EQ(json::parse(events[1])["choices"][0]["delta"]["content"], "Hel");
  EXPECT_EQ(json::parse(events[2])["choices"][0]["delta"]["content"], "lo");
  const json last = json::parse(events[3]);
  EXPECT_EQ(last["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(last["choices"][0]["delta"], json::object());
  EXPECT_EQ(events[4], "[DONE]");
  std::set<std::string> ids;
  for (size_t i = 0; i < 4; ++i) ids.insert(json::parse(events[i])["id"].get<std::string>());
  EXPECT_EQ(ids.size(), 1u);

  auto e = post(
      "/v1/chat/completions",
      {{"messages", {{{"role", "user"}, {"content", "Hi"}}}}, {"stream", true}, {"max_tokens", 4}});
  engine_.fail(1, "boom");
  const auto failed = e->writer->events();
  ASSERT_EQ(failed.size(), 2u);
  EXPECT_EQ(json::parse(failed[1])["error"]["message"], "boom");
  EXPECT_TRUE(e->writer->finished);
}

// ---- metrics ----

struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

// A small parser of the text format: checks every line's syntax and returns the samples and
// each family's type.
std::vector<Sample> parse_exposition(const std::string& text,
                                     std::map<std::string, std::string>& types) {
  std::vector<Sample> samples;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("# HELP ", 0) == 0) continue;
    if (line.rfind("# TYPE ", 0) == 0) {
      std::istringstream words(line.substr(7));
      std::string name, type;
      words >> name >> type;
      EXPECT_TRUE(type == "counter" || type == "gauge" || type == "histogram") << line;
      EXPECT_FALSE(types.contains(name)) << "TYPE twice: " << name;
      types[name] = type;
      continue;
    }
    EXPECT_FALSE(line.empty() || line[0] == '#') << "unexpected line: " << line;
    Sample s;
    size_t i = line.find_first_of("{ ");
    s.name = line.substr(0, i);
    if (line[i] == '{') {
      ++i;
      while (line[i] != '}') {
        const size_t eq = line.find('=', i);
        const std::string key = line.substr(i, eq - i);
        EXPECT_EQ(line[eq + 1], '"') << line;
        std::string value;
        size_t j = eq + 2;
        for (; line[j] != '"'; ++j) {
          if (line[j] == '\\') ++j;
          value += line[j];
        }
        s.labels[key] = value;
        i = j + 1;
        if (line[i] == ',') ++i;
      }
      ++i;
    }
    EXPECT_EQ(line[i], ' ') << line;
    s.value = std::stod(line.substr(i + 1));
    samples.push_back(std::move(s));
  }
  return samples;
}

TEST_F(ApiTest, MetricsExposition) {
  make_api();
  auto ok = post("/generate", {{"inputs", "Hi"}, {"parameters", {{"max_new_tokens", 2}}}});
  engine_.token(0, 11, "a");
  engine_.finish(0, 12, "b", FinishReason::Length);
  expect_error("/generate", R"({"inputs": ""})", 422, "validation", "empty");
  // The engine's step observer feeds the batch series.
  ASSERT_TRUE(engine_.observer);
  StepReport step;
  step.prefill_sequences = 1;
  step.prefill_tokens = 5;
  step.admitted = 1;
  step.forward_seconds = 0.01;
  step.step_seconds = 0.02;
  EngineStats stats = engine_.engine_stats;
  stats.preemptions = 3;
  stats.prefix_cache_hits = 40;
  engine_.engine_stats = stats;
  engine_.observer(step, stats);
  step.prefill_sequences = 0;
  step.decode_sequences = 2;
  engine_.observer(step, stats);
  engine_.observer(step, stats);

  auto r = call("GET", "/metrics");
  ASSERT_EQ(r->response->status, 200);
  EXPECT_EQ(r->response->content_type.rfind("text/plain; version=0.0.4", 0), 0u);
  std::map<std::string, std::string> types;
  const auto samples = parse_exposition(r->response->body, types);

  auto value = [&](const std::string& name, std::map<std::string, std::string> labels = {}) {
    for (const Sample& s : samples) {
      if (s.name == name && s.labels == labels) return s.value;
    }
    ADD_FAILURE() << "no sample " << name;
    return -1.0;
  };
  EXPECT_EQ(value("tgi_request_count"), 2);
  EXPECT_EQ(value("tgi_request_success"), 1);
  EXPECT_EQ(value("tgi_request_failure", {{"err", "validation"}}), 1);
  EXPECT_EQ(value("tgi_request_generated_tokens_count"), 1);
  EXPECT_EQ(value("tgi_request_generated_tokens_sum"), 2);
  EXPECT_EQ(value("tgi_batch_inference_count", {{"method", "prefill"}}), 1);
  EXPECT_EQ(value("tgi_batch_inference_count", {{"method", "decode"}}), 2);
  EXPECT_EQ(value("tgi_batch_forward_duration_count", {{"method", "decode"}}), 2);
  EXPECT_EQ(value("mil_adapter_requests_total", {{"adapter", "__base__"}}), 1);
  EXPECT_EQ(value("mil_kv_blocks_total"), 64);
  EXPECT_EQ(value("mil_kv_blocks_free"), 60);
  EXPECT_EQ(value("mil_preemptions_total"), 3);
  EXPECT_EQ(value("mil_prefix_cache_hit_tokens_total"), 40);
  EXPECT_EQ(value("tgi_batch_max_total_tokens"), 1024);

  const std::vector<std::pair<std::string, std::string>> expected = {
      {"tgi_request_count", "counter"},
      {"tgi_request_success", "counter"},
      {"tgi_request_failure", "counter"},
      {"tgi_request_duration", "histogram"},
      {"tgi_request_validation_duration", "histogram"},
      {"tgi_request_queue_duration", "histogram"},
      {"tgi_request_inference_duration", "histogram"},
      {"tgi_request_mean_time_per_token_duration", "histogram"},
      {"tgi_request_input_length", "histogram"},
      {"tgi_request_max_new_tokens", "histogram"},
      {"tgi_request_generated_tokens", "histogram"},
      {"tgi_queue_size", "gauge"},
      {"tgi_batch_current_size", "gauge"},
      {"tgi_batch_current_max_tokens", "gauge"},
      {"tgi_batch_max_total_tokens", "gauge"},
      {"tgi_batch_next_size", "histogram"},
      {"tgi_batch_inference_count", "counter"},
      {"tgi_batch_inference_success", "counter"},
      {"tgi_batch_inference_duration", "histogram"},
      {"tgi_batch_forward_duration", "histogram"},
      {"tgi_batch_decode_duration", "histogram"},
      {"mil_adapter_requests_total", "counter"},
      {"mil_adapters_resident", "gauge"},
      {"mil_adapters_registered", "gauge"},
      {"mil_kv_blocks_total", "gauge"},
      {"mil_kv_blocks_free", "gauge"},
      {"mil_prefix_cache_hit_tokens_total", "counter"},
      {"mil_preemptions_total", "counter"}};
  for (const auto& [name, type] : expected) EXPECT_EQ(types[name], type) << name;

  // Every sample belongs to a declared family; histogram buckets rise with `le` and end in +Inf
  // equal to _count.
  std::map<std::string, std::vector<std::pair<double, double>>> buckets;  // series -> (le, n)
  std::map<std::string, double> counts;
  for (const Sample& s : samples) {
    std::string family = s.name;
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
      const std::string sfx = suffix;
      if (family.size() > sfx.size() && family.ends_with(sfx) &&
          types.contains(family.substr(0, family.size() - sfx.size())) &&
          types[family.substr(0, family.size() - sfx.size())] == "histogram") {
        family = family.substr(0, family.size() - sfx.size());
        break;
      }
    }
    ASSERT_TRUE(types.contains(family)) << s.name;
    std::string series = family;
    for (const auto& [k, v] : s.labels) {
      if (k != "le") series += "," + k + "=" + v;
    }
    if (s.name == family + "_bucket") {
      const std::string le = s.labels.at("le");
      buckets[series].emplace_back(le == "+Inf" ? INFINITY : std::stod(le), s.value);
    } else if (s.name == family + "_count") {
      counts[series] = s.value;
    }
  }
  EXPECT_GE(buckets.size(), 15u);
  for (const auto& [series, list] : buckets) {
    ASSERT_FALSE(list.empty());
    for (size_t i = 1; i < list.size(); ++i) {
      EXPECT_LT(list[i - 1].first, list[i].first) << series;
      EXPECT_LE(list[i - 1].second, list[i].second) << series;
    }
    EXPECT_TRUE(std::isinf(list.back().first)) << series;
    EXPECT_EQ(list.back().second, counts.at(series)) << series;
  }
  EXPECT_EQ(buckets.at("tgi_request_duration").size(), 36u);       // 35 + +Inf
  EXPECT_EQ(buckets.at("tgi_request_input_length").size(), 101u);  // 100 + +Inf
  EXPECT_DOUBLE_EQ(buckets.at("tgi_request_input_length").back().first, INFINITY);
  EXPECT_DOUBLE_EQ(buckets.at("tgi_request_input_length")[99].first, 100.0);
  EXPECT_DOUBLE_EQ(buckets.at("tgi_request_duration")[0].first, 0.00015);
}

TEST(Metrics, LabelValuesAreEscaped) {
  EXPECT_EQ(escape_label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
  Metrics metrics(10, 20);
  metrics.adapter_request("we\"ird");
  EXPECT_NE(metrics.render().find("mil_adapter_requests_total{adapter=\"we\\\"ird\"} 1"),
            std::string::npos);
}

}  // namespace
}  // namespace mil::server
