// mil serve: the HTTP server over one model. Parses TGI-named flags (each also read from
// MIL_<NAME>), loads the model, tokenizer and start-up adapters, sizes the engine and the
// request limits (checking TGI's start-up invariants), starts the engine, the API and the HTTP
// transport, and on SIGTERM/SIGINT drains: new requests get 503, requests in flight finish (up
// to --graceful-termination-timeout), then everything stops and the process exits 0.
// See docs/SERVING.md.
#include <pthread.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <optional>

#include "cli/commands.h"
#include "core/error.h"
#include "engine/engine.h"
#include "server/adapter_resolver.h"
#include "server/api.h"
#include "server/http_server.h"
#include "server/metrics.h"
#include "tokenizer/model_tokenizer.h"

namespace mil::cli {
namespace {

namespace fs = std::filesystem;

struct ServeOptions {
  std::string model_id;  // "" = the default model
  std::string served_model_name;
  std::string hostname = "127.0.0.1";
  int port = 3000;
  int64_t max_input_tokens = 0;  // 0 = max_total_tokens - 1
  int64_t max_total_tokens = 0;  // 0 = min(model positions, KV capacity, 4096)
  int64_t max_batch_prefill_tokens = 2048;
  int64_t max_batch_total_tokens = 0;  // 0 = the KV cache
  int32_t max_concurrent_requests = 128;
  int32_t max_stop_sequences = 4;
  int32_t max_top_n_tokens = 5;
  int32_t max_client_batch_size = 4;
  int64_t payload_limit = 2000000;
  int64_t kv_cache_memory_mib = 0;  // 0: 1024 on the CPU, measured at warm-up on CUDA
  // TGI's: the share of the GPU's memory MIL may use (the KV cache takes what warm-up leaves
  // of it). 0.9, not TGI's 1.0: what is allocated after the KV cache is sized (LoRA adapters
  // made resident by requests, the driver's and cuBLAS's own growth) and other processes on
  // the GPU need the rest.
  double cuda_memory_fraction = 0.9;
  int32_t block_size = 16;
  bool disable_prefix_caching = false;
  std::string sample_on_device = "auto";  // auto, on, off (EngineOptions::sample_on_device)
  std::vector<std::string> lora_adapters;
  std::string adapter_dir;
  int max_resident_adapters = 32;
  std::string huggingface_hub_cache;  // "" = $MIL_CACHE/hub or ~/.cache/mil/hub
  std::string api_key;
  int io_threads = 2;
  int threads = 0;
  std::string device = "auto";
  double graceful_termination_timeout = 90;
};

std::string env_or(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::string(v) : fallback;
}

// $MIL_CACHE, else ~/.cache/mil (as the Makefile and scripts/fetch_model.sh use).
std::string mil_cache_dir() {
  const std::string cache = env_or("MIL_CACHE", "");
  if (!cache.empty()) return cache;
  const std::string home = env_or("HOME", "");
  MIL_CHECK(!home.empty(), "HOME is not set: pass --model-id and --huggingface-hub-cache");
  return home + "/.cache/mil";
}

// The model `make serve` and `make test` use: MIL_DEFAULT_MODEL, else the cached SmolLM2 GGUF.
std::string default_model() {
  const std::string model = env_or("MIL_DEFAULT_MODEL", "");
  if (!model.empty()) return model;
  return mil_cache_dir() + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

// The file or directory stem: "/m/SmolLM2-135M-Instruct.Q4_1.gguf" -> "SmolLM2-135M-Instruct.Q4_1".
std::string model_name_of(const std::string& model_id) {
  fs::path p(model_id);
  while (!p.empty() && p.filename().empty()) p = p.parent_path();  // trailing '/'
  if (fs::is_directory(p)) return p.filename().string();
  return p.extension() == ".gguf" ? p.stem().string() : p.filename().string();
}

// More connections than the default soft limit of 1024 descriptors.
void raise_open_file_limit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
  }
}

// Every flag also reads MIL_<NAME> ("--max-input-tokens" -> MIL_MAX_INPUT_TOKENS).
std::string env_name(const std::string& flag) {
  std::string name = "MIL_";
  for (char c : flag.substr(2)) name += c == '-' ? '_' : static_cast<char>(std::toupper(c));
  return name;
}
template <typename T>
CLI::Option* add(CLI::App& cmd, const std::string& flag, T& value, const std::string& help) {
  return cmd.add_option(flag, value, help)->envname(env_name(flag));
}

// Checks that a flag given alone is sane, before anything is loaded.
void check_flags(const ServeOptions& o) {
  MIL_CHECK(o.port >= 0 && o.port <= 65535, "--port {} is not a TCP port", o.port);
  MIL_CHECK(o.max_batch_prefill_tokens > 0, "--max-batch-prefill-tokens must be positive");
  MIL_CHECK(o.max_input_tokens >= 0 && o.max_total_tokens >= 0 && o.max_batch_total_tokens >= 0,
            "token limits must be positive");
  if (o.max_input_tokens > 0 && o.max_total_tokens > 0) {
    MIL_CHECK(o.max_input_tokens < o.max_total_tokens,
              "--max-input-tokens ({}) must be < --max-total-tokens ({})", o.max_input_tokens,
              o.max_total_tokens);
  }
  if (o.max_batch_total_tokens > 0) {
    MIL_CHECK(o.max_batch_prefill_tokens <= o.max_batch_total_tokens,
              "--max-batch-prefill-tokens ({}) must be <= --max-batch-total-tokens ({})",
              o.max_batch_prefill_tokens, o.max_batch_total_tokens);
    if (o.max_total_tokens > 0) {
      MIL_CHECK(o.max_total_tokens <= o.max_batch_total_tokens,
                "--max-total-tokens ({}) must be <= --max-batch-total-tokens ({})",
                o.max_total_tokens, o.max_batch_total_tokens);
    }
  }
  MIL_CHECK(o.kv_cache_memory_mib >= 0, "--kv-cache-memory must be positive (MiB; 0: automatic)");
  MIL_CHECK(o.cuda_memory_fraction > 0 && o.cuda_memory_fraction <= 1,
            "--cuda-memory-fraction must be in (0, 1], got {}", o.cuda_memory_fraction);
  MIL_CHECK(o.block_size > 0, "--block-size must be positive");
  MIL_CHECK(o.payload_limit > 0, "--payload-limit must be positive");
  MIL_CHECK(o.io_threads >= 1, "--io-threads must be at least 1");
  MIL_CHECK(o.graceful_termination_timeout >= 0, "--graceful-termination-timeout must be >= 0");
  MIL_CHECK(o.adapter_dir.empty() || fs::is_directory(o.adapter_dir),
            "--adapter-dir '{}' is not a directory", o.adapter_dir);
}

struct Limits {
  int64_t max_input_tokens;
  int64_t max_total_tokens;
};

// Fills in the defaults that depend on what was loaded and sized, and checks TGI's start-up
// invariants against the model and the KV cache.
Limits derive_limits(const ServeOptions& o, const ModelConfig& config, const EngineStats& kv) {
  const int64_t kv_tokens = kv.kv_blocks * kv.block_size;
  const int64_t positions = config.max_position_embeddings;
  MIL_CHECK(o.max_batch_total_tokens == 0 || o.max_batch_total_tokens <= kv_tokens,
            "--max-batch-total-tokens ({}) is more than the KV cache holds ({} blocks x {} = {} "
            "tokens); raise --kv-cache-memory",
            o.max_batch_total_tokens, kv.kv_blocks, kv.block_size, kv_tokens);
  Limits l{};
  l.max_total_tokens = o.max_total_tokens > 0
                           ? o.max_total_tokens
                           : std::min({positions, kv.max_batch_total_tokens, int64_t{4096}});
  if (o.max_total_tokens == 0 && o.max_input_tokens > 0 && o.max_input_tokens >= l.max_total_tokens) {
    fail("--max-input-tokens ({}) must be < max_total_tokens ({}, the default: min(model "
         "positions {}, KV batch capacity {}, 4096))",
         o.max_input_tokens, l.max_total_tokens, positions, kv.max_batch_total_tokens);
  }
  l.max_input_tokens = o.max_input_tokens > 0 ? o.max_input_tokens : l.max_total_tokens - 1;
  MIL_CHECK(l.max_total_tokens >= 2, "max_total_tokens ({}) leaves no room for a prompt and a token",
            l.max_total_tokens);
  MIL_CHECK(l.max_input_tokens < l.max_total_tokens,
            "max_input_tokens ({}) must be < max_total_tokens ({})", l.max_input_tokens,
            l.max_total_tokens);
  MIL_CHECK(l.max_total_tokens <= positions,
            "max_total_tokens ({}) is more than the model's {} positions", l.max_total_tokens,
            positions);
  MIL_CHECK(l.max_total_tokens <= kv.max_batch_total_tokens,
            "max_total_tokens ({}) must be <= max_batch_total_tokens ({}); raise "
            "--kv-cache-memory or --max-batch-total-tokens",
            l.max_total_tokens, kv.max_batch_total_tokens);
  MIL_CHECK(o.max_batch_prefill_tokens <= kv.max_batch_total_tokens,
            "--max-batch-prefill-tokens ({}) must be <= max_batch_total_tokens ({}); raise "
            "--kv-cache-memory or lower --max-batch-prefill-tokens",
            o.max_batch_prefill_tokens, kv.max_batch_total_tokens);
  return l;
}

double mib(int64_t bytes) { return static_cast<double>(bytes) / (1 << 20); }
double mib(size_t bytes) { return static_cast<double>(bytes) / (1 << 20); }

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& s : items) out += (out.empty() ? "" : ", ") + s;
  return out.empty() ? "none" : out;
}

void run_serve(ServeOptions o) {
  // Signals are taken by sigwait below; block them before any thread starts so that every
  // thread (OpenMP, engine, I/O) inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  raise_open_file_limit();

  check_flags(o);
  if (o.model_id.empty()) o.model_id = default_model();
  MIL_CHECK(fs::exists(o.model_id), "model '{}' not found (pass --model-id, or run `make model`)",
            o.model_id);
  if (o.served_model_name.empty()) o.served_model_name = model_name_of(o.model_id);
  if (o.huggingface_hub_cache.empty()) o.huggingface_hub_cache = mil_cache_dir() + "/hub";

  ModelOptions mo;
  mo.model_id = o.model_id;
  mo.threads = o.threads;
  mo.device = o.device;
  mo.max_tokens_per_step = o.max_batch_prefill_tokens;
  mo.lora_adapters = o.lora_adapters;
  mo.max_resident_adapters = o.max_resident_adapters;
  mo.adapter_store = true;  // adapters can be loaded at run time

  const auto t0 = std::chrono::steady_clock::now();
  spdlog::info("reading weights from {}", o.model_id);
  if (!o.lora_adapters.empty()) {
    spdlog::info("registering {} adapter(s): {}", o.lora_adapters.size(), join(o.lora_adapters));
  }
  LoadedModel m = load_model(mo);
  const ModelConfig& config = m.model->config();
  spdlog::info("model: {} layers, hidden {}, vocab {}, {} positions", config.num_layers,
               config.hidden_size, config.vocab_size, config.max_position_embeddings);
  spdlog::info("reading the tokenizer");
  const ModelTokenizer tokenizer = ModelTokenizer::load(o.model_id);

  EngineOptions eo;
  eo.block_size = o.block_size;
  // --kv-cache-memory given: that budget. Automatic: the engine measures the memory left after
  // its warm-up where the backend can tell (CUDA; --cuda-memory-fraction), else 1 GiB.
  eo.kv_memory_bytes =
      o.kv_cache_memory_mib > 0 ? o.kv_cache_memory_mib << 20 : int64_t{1024} << 20;
  eo.memory_fraction = o.kv_cache_memory_mib > 0 ? 0.0 : o.cuda_memory_fraction;
  eo.max_batch_prefill_tokens = o.max_batch_prefill_tokens;
  eo.max_batch_total_tokens = o.max_batch_total_tokens;
  eo.prefix_caching = !o.disable_prefix_caching;
  // No more sequences than that can ever run at once (each admitted HTTP request submits at
  // most max_client_batch_size prompts); it bounds the largest decode batch warm-up sizes
  // the logits for, without limiting the scheduler.
  eo.max_batch_size = static_cast<int32_t>(std::min<int64_t>(
      int64_t{o.max_concurrent_requests} * o.max_client_batch_size, INT32_MAX));
  size_t free_bytes = 0, total_bytes = 0;
  if (o.kv_cache_memory_mib == 0 && m.ops->memory_info(&free_bytes, &total_bytes)) {
    spdlog::info("device: {}; warming up, then sizing the KV cache to use {:.0f}% of {:.1f} MiB",
                 m.device, o.cuda_memory_fraction * 100, mib(total_bytes));
  } else {
    spdlog::info("device: {}; warming up; KV cache budget {} MiB", m.device,
                 eo.kv_memory_bytes >> 20);
  }
  eo.sample_on_device = o.sample_on_device == "on"    ? SampleOnDevice::On
                        : o.sample_on_device == "off" ? SampleOnDevice::Off
                                                      : SampleOnDevice::Auto;
  std::unique_ptr<Engine> engine = make_engine(*m.model, tokenizer, eo);
  const EngineStats kv = engine->stats();
  if (kv.device_total_bytes > 0) {
    spdlog::info("warm-up: {:.1f} MiB free before, {:.1f} MiB after (step buffers and "
                 "workspaces {:.1f} MiB), decode graphs {:.1f} MiB, of {:.1f} MiB",
                 mib(kv.free_before_warmup), mib(kv.free_after_warmup),
                 mib(kv.free_before_warmup - kv.free_after_warmup), mib(kv.graph_reserve_bytes),
                 mib(kv.device_total_bytes));
  }
  const Limits limits = derive_limits(o, config, kv);

  spdlog::info("KV cache: {} blocks x {} tokens = {} tokens, {:.1f} MiB; prefix caching {}",
               kv.kv_blocks, kv.block_size, kv.kv_blocks * kv.block_size,
               static_cast<double>(kv.kv_bytes) / (1 << 20), eo.prefix_caching ? "on" : "off");
  spdlog::info("batch: {} prefill tokens per step, {} total tokens", kv.max_batch_prefill_tokens,
               kv.max_batch_total_tokens);
  spdlog::info("requests: max_input_tokens {}, max_total_tokens {}, max_concurrent_requests {}",
               limits.max_input_tokens, limits.max_total_tokens, o.max_concurrent_requests);
  spdlog::info("adapters registered: {} (at most {} resident){}", join(m.adapters->names()),
               o.max_resident_adapters,
               o.adapter_dir.empty() ? "" : "; local adapters from " + o.adapter_dir);

  server::AdapterResolverOptions ro;
  ro.adapter_dir = o.adapter_dir;
  ro.hub_cache = o.huggingface_hub_cache;
  ro.hub_endpoint = env_or("HF_ENDPOINT", "https://huggingface.co");
  ro.hf_token = env_or("HF_TOKEN", "");
  server::AdapterResolver resolver(*m.adapters, std::move(ro));
  server::Metrics metrics(limits.max_input_tokens, limits.max_total_tokens);

  server::ApiOptions ao;
  ao.model_id = o.model_id;
  ao.served_model_name = o.served_model_name;
  ao.max_input_tokens = limits.max_input_tokens;
  ao.max_total_tokens = limits.max_total_tokens;
  ao.max_concurrent_requests = o.max_concurrent_requests;
  ao.max_stop_sequences = o.max_stop_sequences;
  ao.max_top_n_tokens = o.max_top_n_tokens;
  ao.max_client_batch_size = o.max_client_batch_size;
  ao.api_key = o.api_key;
  server::Api api(*engine, tokenizer, resolver, metrics, std::move(ao));

  server::HttpServerOptions ho;
  ho.host = o.hostname;
  ho.port = static_cast<uint16_t>(o.port);
  ho.io_threads = o.io_threads;
  ho.payload_limit = static_cast<size_t>(o.payload_limit);
  ho.stop_timeout_s = 5;  // requests in flight were waited for already (see below)
  server::HttpServer http(ho, [&api](const server::HttpRequest& request,
                                     std::shared_ptr<server::Responder> responder) {
    api.handle(request, std::move(responder));
  });
  http.start();
  const double load_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const bool v6 = o.hostname.find(':') != std::string::npos;
  spdlog::info("serving {} as '{}'{} (ready in {:.2f} s)", o.model_id, o.served_model_name,
               o.api_key.empty() ? "" : " with an API key", load_s);
  spdlog::info("listening on http://{}{}{}:{}", v6 ? "[" : "", o.hostname, v6 ? "]" : "",
               http.port());

  int signal = 0;
  while (sigwait(&signals, &signal) != 0) {
  }
  spdlog::info("{}: draining ({} request(s) in flight, waiting up to {} s)",
               signal == SIGTERM ? "SIGTERM" : "SIGINT", api.in_flight(),
               o.graceful_termination_timeout);
  api.start_draining();
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::duration<double>(o.graceful_termination_timeout);
  while (api.in_flight() > 0 && std::chrono::steady_clock::now() < deadline) {
    const timespec poll{0, 50'000'000};
    if (sigtimedwait(&signals, nullptr, &poll) > 0) {
      spdlog::warn("second signal: stopping without waiting for requests in flight");
      break;
    }
  }
  if (api.in_flight() > 0) {
    spdlog::warn("stopping with {} request(s) still in flight", api.in_flight());
  }
  http.stop();
  engine->shutdown();
  spdlog::info("stopped");
}

}  // namespace

void add_serve_command(CLI::App& app) {
  auto o = std::make_shared<ServeOptions>();
  CLI::App* cmd = app.add_subcommand(
      "serve", "serve the model over HTTP (TGI, OpenAI and LoRAX APIs); see docs/SERVING.md");
  add(*cmd, "--model-id", o->model_id,
      "HF model directory or .gguf file (default: MIL_DEFAULT_MODEL, else the cached SmolLM2)");
  add(*cmd, "--served-model-name", o->served_model_name,
      "the base model's name in /info and /v1/models (default: the model's file/dir stem)");
  add(*cmd, "--hostname", o->hostname, "address to bind")->capture_default_str();
  add(*cmd, "--port", o->port, "TCP port (0: any free port)")->capture_default_str();
  add(*cmd, "--max-input-tokens", o->max_input_tokens,
      "longest prompt after truncation (default: max_total_tokens - 1)");
  add(*cmd, "--max-total-tokens", o->max_total_tokens,
      "prompt + new tokens of one request (default: min(model positions, KV capacity, 4096))");
  add(*cmd, "--max-batch-prefill-tokens", o->max_batch_prefill_tokens,
      "prompt tokens (plus decode rows) in one step")
      ->capture_default_str();
  add(*cmd, "--max-batch-total-tokens", o->max_batch_total_tokens,
      "KV tokens held by running requests (default: the whole KV cache)");
  add(*cmd, "--max-concurrent-requests", o->max_concurrent_requests,
      "requests at once; more are answered 429")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  add(*cmd, "--max-stop-sequences", o->max_stop_sequences, "stop sequences per request")
      ->capture_default_str()
      ->check(CLI::Range(0, 1024));
  add(*cmd, "--max-top-n-tokens", o->max_top_n_tokens, "top_n_tokens per request")
      ->capture_default_str()
      ->check(CLI::Range(0, 1024));
  add(*cmd, "--max-client-batch-size", o->max_client_batch_size,
      "prompts in one /v1/completions call")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 16));
  add(*cmd, "--payload-limit", o->payload_limit, "bytes of a request body; more: 413")
      ->capture_default_str();
  add(*cmd, "--kv-cache-memory", o->kv_cache_memory_mib,
      "memory of the KV cache, MiB (0: 1024 on the CPU; on CUDA what --cuda-memory-fraction "
      "leaves after warm-up)")
      ->capture_default_str();
  add(*cmd, "--cuda-memory-fraction", o->cuda_memory_fraction,
      "share of the GPU's memory MIL may use; the KV cache takes what warm-up leaves of it "
      "(ignored with --kv-cache-memory)")
      ->capture_default_str();
  add(*cmd, "--block-size", o->block_size, "tokens per KV block")
      ->capture_default_str()
      ->check(CLI::Range(1, 1024));
  cmd->add_flag("--disable-prefix-caching", o->disable_prefix_caching,
                "do not reuse the KV blocks of shared prompt prefixes")
      ->envname(env_name("--disable-prefix-caching"));
  add(*cmd, "--sample-on-device", o->sample_on_device,
      "choose tokens where the logits are (auto: on a GPU; on: also on the CPU; off: always "
      "copy the logits to the host); requests needing the host path take it either way")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "on", "off"}));
  add(*cmd, "--lora-adapters", o->lora_adapters,
      "PEFT LoRA adapters registered at start-up, NAME=PATH (comma separated or repeated)")
      ->delimiter(',');
  add(*cmd, "--adapter-dir", o->adapter_dir,
      "where adapter_source \"local\" (and unregistered adapter ids) resolve; nothing outside");
  add(*cmd, "--max-resident-adapters", o->max_resident_adapters,
      "adapters in memory at once (least recently used beyond)")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  add(*cmd, "--huggingface-hub-cache", o->huggingface_hub_cache,
      "downloaded adapters (default: ~/.cache/mil/hub, or $MIL_CACHE/hub)");
  // No capture_default_str: the key never shows in --help or errors.
  add(*cmd, "--api-key", o->api_key,
      "Bearer token required on generation and management routes");
  add(*cmd, "--io-threads", o->io_threads, "HTTP I/O threads")
      ->capture_default_str()
      ->check(CLI::Range(1, 256));
  add(*cmd, "--device", o->device,
      "cpu, cuda, or auto (cuda when MIL is built with CUDA and a GPU is present)")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  add(*cmd, "--threads", o->threads, "compute threads (0: all cores)")
      ->capture_default_str()
      ->check(CLI::Range(0, 4096));
  add(*cmd, "--graceful-termination-timeout", o->graceful_termination_timeout,
      "seconds SIGTERM/SIGINT waits for requests in flight")
      ->capture_default_str();
  cmd->callback([o] { run_serve(*o); });
}

}  // namespace mil::cli
