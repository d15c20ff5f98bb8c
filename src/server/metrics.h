// Prometheus metrics of the server: TGI's names, labels and buckets (so TGI dashboards work
// unchanged) plus MIL's adapter, KV-cache and scheduler series. Request-level series are fed by
// the routes, batch-level ones by the engine's StepObserver; render() writes the text
// exposition format 0.0.4. Every method is thread-safe; the engine-thread ones (observe_step,
// set_engine_stats) only touch atomics and never wait on a lock.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace mil {
struct StepReport;
struct EngineStats;
}  // namespace mil

namespace mil::server {

// A fixed-bucket histogram updated with atomics. `bounds` are the finite upper bounds,
// strictly increasing; the +Inf bucket is implicit.
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void observe(double value);
  // Appends `name_bucket{labels,le=...}`, `name_sum{labels}` and `name_count{labels}` lines.
  // `labels` is "" or `key="value"` pairs joined by commas (already escaped).
  void render(std::string& out, std::string_view name, std::string_view labels) const;

 private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;  // per bucket (not cumulative), +Inf last
  std::atomic<double> sum_{0.0};
  std::atomic<uint64_t> count_{0};
};

// Bucket sets TGI uses (router/src/server.rs).
std::vector<double> duration_buckets();                     // 35 geometric: 0.15 ms × 1.5^i
std::vector<double> linear_buckets(double max, int count);  // max/count × (i+1)

// Escapes a label value for the text format (backslash, double quote, newline).
std::string escape_label_value(std::string_view value);

class Metrics {
 public:
  Metrics(int64_t max_input_tokens, int64_t max_total_tokens);
  ~Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // Request level (routes). One HTTP generation request counts once in count/success/failure.
  void request_received();
  void request_succeeded();
  void request_failed(std::string_view err);  // "validation", "overloaded", "generation", ...
  // After validation: seconds spent parsing/tokenizing and the request's sizes (per prompt).
  void request_validated(double validation_seconds, int64_t input_length, int64_t max_new_tokens);
  // A prompt's generation that finished (per prompt).
  void request_generated(double total_seconds, double queue_seconds, double inference_seconds,
                         int64_t generated_tokens);
  // Per adapter ("" is the base model, shown as adapter="__base__").
  void adapter_request(std::string_view adapter);
  void set_adapters(int64_t registered, int64_t resident);

  // Batch level (engine thread).
  void observe_step(const StepReport& step, const EngineStats& stats);
  // Gauges from a stats snapshot (also refreshed before each render by the Api).
  void set_engine_stats(const EngineStats& stats);

  // The whole exposition, text format 0.0.4.
  std::string render() const;

 private:
  struct BatchMethod;  // per `method` label: prefill, decode
  std::atomic<uint64_t> request_count_{0};
  std::atomic<uint64_t> request_success_{0};
  Histogram request_duration_, validation_duration_, queue_duration_, inference_duration_,
      time_per_token_;
  Histogram input_length_, max_new_tokens_, generated_tokens_;
  Histogram batch_next_size_;
  std::unique_ptr<BatchMethod> prefill_, decode_;

  std::atomic<int64_t> queue_size_{0}, batch_current_size_{0}, batch_current_max_tokens_{0},
      batch_max_total_tokens_{0}, kv_blocks_total_{0}, kv_blocks_free_{0},
      prefix_cache_hit_tokens_{0}, preemptions_{0}, adapters_registered_{0}, adapters_resident_{0};

  mutable std::mutex labeled_mu_;  // request threads only, never the engine thread
  std::map<std::string, uint64_t, std::less<>> failures_;          // by err
  std::map<std::string, uint64_t, std::less<>> adapter_requests_;  // by adapter
};

}  // namespace mil::server
