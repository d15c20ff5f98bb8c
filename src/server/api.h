// The HTTP API over the engine: TGI (/generate, /generate_stream, /, /tokenize, /info,
// /health, /metrics), OpenAI (/v1/completions, /v1/chat/completions, /v1/models), LoRAX's
// adapter parameters and vLLM's adapter management routes. JSON in, validated EngineRequests
// to the engine, JSON or SSE out. See docs/SERVING.md.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "server/http.h"

namespace mil {
class Engine;
class ModelTokenizer;
}

namespace mil::server {

class AdapterResolver;
class Metrics;

struct ApiOptions {
  std::string model_id;           // as given on the command line (in /info)
  std::string served_model_name;  // base model name for /v1/models and OpenAI `model`
  int64_t max_input_tokens = 0;
  int64_t max_total_tokens = 0;
  int32_t max_concurrent_requests = 128;
  int32_t max_stop_sequences = 4;
  int32_t max_top_n_tokens = 5;
  int32_t max_client_batch_size = 4;
  std::string api_key;            // "" = no auth
  int32_t blocking_threads = 2;   // adapter resolution (downloads) and other blocking work
};

class Api {
 public:
  // All references must outlive the Api. Registers the engine's step observer for metrics.
  Api(Engine& engine, const ModelTokenizer& tokenizer, AdapterResolver& adapters,
      Metrics& metrics, ApiOptions options);
  ~Api();

  // The transport's handler (any I/O thread).
  void handle(const HttpRequest& request, std::shared_ptr<Responder> responder);
  // From now on generation routes answer 503 and /health answers 503.
  void start_draining();
  // Requests admitted and not yet finished.
  int64_t in_flight() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mil::server
