// Metrics: TGI's Prometheus series and MIL's additions, rendered in text format 0.0.4.
#include "server/metrics.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "engine/engine.h"

namespace mil::server {

namespace {

// Prometheus floats: shortest round-trip form; +Inf/-Inf/NaN spelled as the format wants.
std::string format_value(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  return fmt::format("{}", v);
}

void header(std::string& out, std::string_view name, std::string_view type, std::string_view help) {
  fmt::format_to(std::back_inserter(out), "# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

void sample(std::string& out, std::string_view name, std::string_view labels, double value) {
  if (labels.empty()) {
    fmt::format_to(std::back_inserter(out), "{} {}\n", name, format_value(value));
  } else {
    fmt::format_to(std::back_inserter(out), "{}{{{}}} {}\n", name, labels, format_value(value));
  }
}

void counter(std::string& out, std::string_view name, std::string_view help, double value) {
  header(out, name, "counter", help);
  sample(out, name, "", value);
}

void gauge(std::string& out, std::string_view name, std::string_view help, double value) {
  header(out, name, "gauge", help);
  sample(out, name, "", value);
}

void histogram(std::string& out, std::string_view name, std::string_view help, const Histogram& h) {
  header(out, name, "histogram", help);
  h.render(out, name, "");
}

void add_double(std::atomic<double>& target, double value) {
  target.fetch_add(value, std::memory_order_relaxed);
}

}  // namespace

std::string escape_label_value(std::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (const char c : value) {
    switch (c) {
      case '\\':
        out += "\\\\";
        break;
      case '"':
        out += "\\\"";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::vector<double> duration_buckets() {
  std::vector<double> bounds;
  double value = 0.0001;
  for (int i = 0; i < 35; ++i) {
    value *= 1.5;
    bounds.push_back(value);
  }
  return bounds;
}

std::vector<double> linear_buckets(double max, int count) {
  const double step = std::max(max, 1.0) / count;
  std::vector<double> bounds;
  for (int i = 0; i < count; ++i) bounds.push_back(step * (i + 1));
  return bounds;
}

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)),
      counts_(std::make_unique<std::atomic<uint64_t>[]>(bounds_.size() + 1)) {
  for (size_t i = 0; i <= bounds_.size(); ++i) counts_[i].store(0, std::memory_order_relaxed);
}

void Histogram::observe(double value) {
  // The first bound >= value (Prometheus buckets are "less than or equal").
  const size_t bucket = static_cast<size_t>(
      std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin());
  counts_[bucket].fetch_add(1, std::memory_order_relaxed);
  add_double(sum_, value);
  count_.fetch_add(1, std::memory_order_relaxed);
}

void Histogram::render(std::string& out, std::string_view name, std::string_view labels) const {
  // Built with append: GCC 12's -Wrestrict misfires on `std::string(labels) + ","` at -O3.
  std::string prefix(labels);
  if (!prefix.empty()) prefix.push_back(',');
  uint64_t cumulative = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    cumulative += counts_[i].load(std::memory_order_relaxed);
    const std::string le = i < bounds_.size() ? format_value(bounds_[i]) : "+Inf";
    fmt::format_to(std::back_inserter(out), "{}_bucket{{{}le=\"{}\"}} {}\n", name, prefix, le,
                   cumulative);
  }
  // _count equals the +Inf bucket: both come from the same snapshot of the buckets, so a
  // concurrent observe() never makes them disagree.
  std::string suffix_labels;
  if (!labels.empty()) {
    suffix_labels.push_back('{');
    suffix_labels.append(labels);
    suffix_labels.push_back('}');
  }
  fmt::format_to(std::back_inserter(out), "{}_sum{} {}\n", name, suffix_labels,
                 format_value(sum_.load(std::memory_order_relaxed)));
  fmt::format_to(std::back_inserter(out), "{}_count{} {}\n", name, suffix_labels, cumulative);
}

struct Metrics::BatchMethod {
  std::atomic<uint64_t> count{0}, success{0};
  Histogram inference{duration_buckets()}, forward{duration_buckets()}, decode{duration_buckets()};
};

Metrics::Metrics(int64_t max_input_tokens, int64_t max_total_tokens)
    : request_duration_(duration_buckets()),
      validation_duration_(duration_buckets()),
      queue_duration_(duration_buckets()),
      inference_duration_(duration_buckets()),
      time_per_token_(duration_buckets()),
      input_length_(linear_buckets(static_cast<double>(max_input_tokens), 100)),
      max_new_tokens_(linear_buckets(static_cast<double>(max_total_tokens), 100)),
      generated_tokens_(linear_buckets(static_cast<double>(max_total_tokens), 100)),
      batch_next_size_(linear_buckets(1024, 1024)),
      prefill_(std::make_unique<BatchMethod>()),
      decode_(std::make_unique<BatchMethod>()) {}

Metrics::~Metrics() = default;

void Metrics::request_received() { request_count_.fetch_add(1, std::memory_order_relaxed); }

void Metrics::request_succeeded() { request_success_.fetch_add(1, std::memory_order_relaxed); }

void Metrics::request_failed(std::string_view err) {
  const std::lock_guard lock(labeled_mu_);
  auto it = failures_.find(err);
  if (it == failures_.end()) it = failures_.emplace(std::string(err), 0).first;
  ++it->second;
}

void Metrics::request_validated(double validation_seconds, int64_t input_length,
                                int64_t max_new_tokens) {
  validation_duration_.observe(validation_seconds);
  input_length_.observe(static_cast<double>(input_length));
  max_new_tokens_.observe(static_cast<double>(max_new_tokens));
}

void Metrics::request_generated(double total_seconds, double queue_seconds,
                                double inference_seconds, int64_t generated_tokens) {
  request_duration_.observe(total_seconds);
  queue_duration_.observe(queue_seconds);
  inference_duration_.observe(inference_seconds);
  generated_tokens_.observe(static_cast<double>(generated_tokens));
  if (generated_tokens > 0) {
    time_per_token_.observe(inference_seconds / static_cast<double>(generated_tokens));
  }
}

void Metrics::adapter_request(std::string_view adapter) {
  const std::string_view label = adapter.empty() ? std::string_view("__base__") : adapter;
  const std::lock_guard lock(labeled_mu_);
  auto it = adapter_requests_.find(label);
  if (it == adapter_requests_.end()) it = adapter_requests_.emplace(std::string(label), 0).first;
  ++it->second;
}

void Metrics::set_adapters(int64_t registered, int64_t resident) {
  adapters_registered_.store(registered, std::memory_order_relaxed);
  adapters_resident_.store(resident, std::memory_order_relaxed);
}

void Metrics::observe_step(const StepReport& step, const EngineStats& stats) {
  BatchMethod& m = step.prefill_sequences > 0 ? *prefill_ : *decode_;
  m.count.fetch_add(1, std::memory_order_relaxed);
  m.success.fetch_add(1, std::memory_order_relaxed);
  m.inference.observe(step.step_seconds);
  m.forward.observe(step.forward_seconds);
  m.decode.observe(step.sample_seconds);
  if (step.admitted > 0) batch_next_size_.observe(static_cast<double>(step.admitted));
  set_engine_stats(stats);
}

void Metrics::set_engine_stats(const EngineStats& stats) {
  constexpr auto relaxed = std::memory_order_relaxed;
  queue_size_.store(stats.queue_size, relaxed);
  batch_current_size_.store(stats.running, relaxed);
  batch_current_max_tokens_.store(stats.running_tokens, relaxed);
  batch_max_total_tokens_.store(stats.max_batch_total_tokens, relaxed);
  kv_blocks_total_.store(stats.kv_blocks, relaxed);
  kv_blocks_free_.store(stats.free_blocks, relaxed);
  prefix_cache_hit_tokens_.store(stats.prefix_cache_hits, relaxed);
  preemptions_.store(stats.preemptions, relaxed);
}

std::string Metrics::render() const {
  constexpr auto relaxed = std::memory_order_relaxed;
  std::string out;
  out.reserve(64 * 1024);

  counter(out, "tgi_request_count", "Generation requests received",
          static_cast<double>(request_count_.load(relaxed)));
  counter(out, "tgi_request_success", "Generation requests that succeeded",
          static_cast<double>(request_success_.load(relaxed)));
  {
    header(out, "tgi_request_failure", "counter", "Generation requests that failed, by error");
    const std::lock_guard lock(labeled_mu_);
    for (const auto& [err, n] : failures_) {
      sample(out, "tgi_request_failure", "err=\"" + escape_label_value(err) + "\"",
             static_cast<double>(n));
    }
  }
  histogram(out, "tgi_request_duration", "End-to-end request duration (seconds)",
            request_duration_);
  histogram(out, "tgi_request_validation_duration",
            "Parsing, validation and tokenization (seconds)", validation_duration_);
  histogram(out, "tgi_request_queue_duration", "Time queued before the first step (seconds)",
            queue_duration_);
  histogram(out, "tgi_request_inference_duration", "First step to last token (seconds)",
            inference_duration_);
  histogram(out, "tgi_request_mean_time_per_token_duration",
            "Inference duration per generated token (seconds)", time_per_token_);
  histogram(out, "tgi_request_input_length", "Prompt tokens per request", input_length_);
  histogram(out, "tgi_request_max_new_tokens", "max_new_tokens per request", max_new_tokens_);
  histogram(out, "tgi_request_generated_tokens", "Tokens generated per request", generated_tokens_);

  gauge(out, "tgi_queue_size", "Requests waiting to be scheduled",
        static_cast<double>(queue_size_.load(relaxed)));
  gauge(out, "tgi_batch_current_size", "Sequences in the running batch",
        static_cast<double>(batch_current_size_.load(relaxed)));
  gauge(out, "tgi_batch_current_max_tokens", "KV tokens held by the running batch",
        static_cast<double>(batch_current_max_tokens_.load(relaxed)));
  gauge(out, "tgi_batch_max_total_tokens", "KV tokens the running batch may hold",
        static_cast<double>(batch_max_total_tokens_.load(relaxed)));
  histogram(out, "tgi_batch_next_size", "Sequences admitted into the batch by a step",
            batch_next_size_);

  const std::pair<const char*, const BatchMethod*> methods[] = {{"prefill", prefill_.get()},
                                                                {"decode", decode_.get()}};
  header(out, "tgi_batch_inference_count", "counter", "Engine steps, by method");
  for (const auto& [method, m] : methods) {
    sample(out, "tgi_batch_inference_count", fmt::format("method=\"{}\"", method),
           static_cast<double>(m->count.load(relaxed)));
  }
  header(out, "tgi_batch_inference_success", "counter", "Engine steps that succeeded, by method");
  for (const auto& [method, m] : methods) {
    sample(out, "tgi_batch_inference_success", fmt::format("method=\"{}\"", method),
           static_cast<double>(m->success.load(relaxed)));
  }
  const std::pair<const char*, Histogram BatchMethod::*> step_histograms[] = {
      {"tgi_batch_inference_duration", &BatchMethod::inference},
      {"tgi_batch_forward_duration", &BatchMethod::forward},
      {"tgi_batch_decode_duration", &BatchMethod::decode}};
  const char* step_help[] = {"Whole engine step (seconds), by method",
                             "Model forward pass of a step (seconds), by method",
                             "Sampling, stop criteria and detokenization of a step (seconds)"};
  for (size_t i = 0; i < 3; ++i) {
    const auto& [name, member] = step_histograms[i];
    header(out, name, "histogram", step_help[i]);
    for (const auto& [method, m] : methods) {
      (m->*member).render(out, name, fmt::format("method=\"{}\"", method));
    }
  }

  {
    header(out, "mil_adapter_requests_total", "counter",
           "Generation requests by adapter (__base__ is the base model)");
    const std::lock_guard lock(labeled_mu_);
    for (const auto& [adapter, n] : adapter_requests_) {
      sample(out, "mil_adapter_requests_total", "adapter=\"" + escape_label_value(adapter) + "\"",
             static_cast<double>(n));
    }
  }
  gauge(out, "mil_adapters_registered", "LoRA adapters registered",
        static_cast<double>(adapters_registered_.load(relaxed)));
  gauge(out, "mil_adapters_resident", "LoRA adapters loaded in memory",
        static_cast<double>(adapters_resident_.load(relaxed)));
  gauge(out, "mil_kv_blocks_total", "KV cache blocks",
        static_cast<double>(kv_blocks_total_.load(relaxed)));
  gauge(out, "mil_kv_blocks_free", "KV cache blocks neither used nor cached",
        static_cast<double>(kv_blocks_free_.load(relaxed)));
  counter(out, "mil_prefix_cache_hit_tokens_total", "Prompt tokens served from the prefix cache",
          static_cast<double>(prefix_cache_hit_tokens_.load(relaxed)));
  counter(out, "mil_preemptions_total", "Sequences preempted (recomputed later)",
          static_cast<double>(preemptions_.load(relaxed)));
  return out;
}

}  // namespace mil::server
