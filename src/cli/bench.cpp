// mil bench. On the CPU: prefill and decode tokens/s of one sequence through the Generator,
// median of repeated runs, one JSON line. With --device cuda: the GPU suite, straight on
// LlamaModel and one KV cache (so every figure is one forward step as the engine runs it):
//   * batch-1 greedy decode tok/s (argmax on the GPU, the token back on the host each step),
//     CUDA graphs on and off;
//   * decode step time at several batch sizes and context lengths: the KV cache is filled
//     with random bf16 keys/values (uploaded, no prefill), and each sequence decodes one token
//     at position `context` (its context is context + 1 tokens);
//   * time to first token: one prefill step of the prompt + argmax of its last row;
// each after warm-up, the median over repeats of synchronize + steady_clock, printed as a
// table and written as JSON (--json). --compare DIR checks the model against reference
// logits (scripts/gpu/llama8b_agreement.py): top-1 agreement where the reference margin
// exceeds --margin, logit errors, for a one-step prefill and for decode steps (graphs).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>

#include "cli/commands.h"
#include "core/error.h"
#include "engine/generator.h"

namespace mil::cli {
namespace {

using Clock = std::chrono::steady_clock;

struct BenchOptions {
  ModelOptions model;
  int prompt_tokens = 128;
  int new_tokens = 128;
  int repeat = 3;
  std::string adapter;  // one of --lora-adapters, applied per row (not merged)
  // GPU suite
  std::string json_path;
  std::vector<int> batches = {1, 8, 32, 64, 128};
  std::vector<int> contexts = {512, 2048};
  std::vector<int> ttft_prompts = {128, 2048};
  int decode_steps = 128;
  int step_repeat = 10;
  double bandwidth_tb_s = 3.08;  // measured H100 read bandwidth (docs/PERFORMANCE.md)
  std::string compare_dir;
  std::string reference = "logits.f32";
  double margin = 0.1;
  bool skip_suite = false;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void run_cpu_bench(const BenchOptions& o, LoadedModel& m) {
  const ModelConfig& c = m.model->config();
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(c.vocab_size - 1));
  std::vector<int32_t> prompt(o.prompt_tokens);
  for (int32_t& t : prompt) t = token(rng);

  Generator generator(*m.model, o.prompt_tokens + o.new_tokens);
  GenerationParams params;
  params.max_new_tokens = o.new_tokens;
  params.stop_at_eos = false;
  params.adapter = o.adapter;
  GenerationParams warmup = params;
  warmup.max_new_tokens = 4;
  generator.generate(prompt, warmup);
  std::vector<double> prefill, decode;
  for (int i = 0; i < o.repeat; ++i) {
    const GenerationResult r = generator.generate(prompt, params);
    prefill.push_back(o.prompt_tokens / r.prefill_seconds);
    // The first new token comes from the prefill logits; each later one costs a step.
    decode.push_back((o.new_tokens - 1) / r.decode_seconds);
  }
  std::printf(
      "{\"engine\": \"mil\", \"model\": \"%s\", \"device\": \"%s\", \"threads\": %d, "
      "\"matmul\": \"%s\", "
      "\"adapter\": \"%s\", \"prompt_tokens\": %d, \"new_tokens\": %d, \"repeat\": %d, "
      "\"prefill_tokens_per_s\": %.2f, \"decode_tokens_per_s\": %.2f}\n",
      o.model.model_id.c_str(), m.device.c_str(), o.model.threads,
      m.device == "cuda" ? "bf16" : o.model.exact ? "exact" : o.model.int8 ? "int8" : "f32",
      o.adapter.c_str(), o.prompt_tokens, o.new_tokens, o.repeat, median(prefill), median(decode));
}

// --- GPU suite -------------------------------------------------------------------------------

int64_t tensor_bytes(const Tensor& t) {
  return t.empty() ? 0 : static_cast<int64_t>(row_bytes(t.dtype, t.cols)) * t.rows;
}

// Weight bytes one decode step reads: every projection and the lm_head (one embedding row).
int64_t weight_bytes_per_step(const LlamaWeights& w) {
  int64_t bytes = tensor_bytes(w.lm_head);
  for (const LayerWeights& l : w.layers) {
    bytes += l.qkv.empty() ? tensor_bytes(l.q) + tensor_bytes(l.k) + tensor_bytes(l.v)
                           : tensor_bytes(l.qkv);
    bytes += tensor_bytes(l.o) + tensor_bytes(l.down);
    bytes += l.gate_up.empty() ? tensor_bytes(l.gate) + tensor_bytes(l.up) : tensor_bytes(l.gate_up);
  }
  return bytes;
}

// One KV cache for the whole suite: sequence i owns blocks [i * blocks_per_seq, ...).
class Suite {
 public:
  Suite(const BenchOptions& o, LoadedModel& m, int max_batch, int max_context)
      : o_(o), model_(*m.model), ops_(model_.ops()), rng_(1234) {
    const ModelConfig& c = model_.config();
    block_size_ = 16;
    blocks_per_seq_ = (max_context + 1 + o.decode_steps + block_size_) / block_size_;
    max_batch_ = max_batch;
    cache_ = std::make_unique<KVCache>(
        model_.make_kv_cache(int64_t{max_batch} * blocks_per_seq_, block_size_));
    ids_device_ = ops_.allocate(DType::I32, 1, std::max(max_batch, 1));
    ids_host_ = ops_.allocate_host(DType::I32, 1, std::max(max_batch, 1));
    token_ = std::uniform_int_distribution<int32_t>(0, static_cast<int32_t>(c.vocab_size - 1));
  }
  ~Suite() { model_.release_decode_graphs(*cache_); }

  int capture(bool on) {
    model_.set_decode_graphs_enabled(on);
    if (!on) {
      model_.release_decode_graphs(*cache_);
      return 0;
    }
    return model_.capture_decode_graphs(*cache_, LlamaModel::default_graph_batch_sizes(),
                                        blocks_per_seq_);
  }

  // Random bf16 N(0, 1) keys and values in every slot the suite uses.
  void fill_kv() {
    const int64_t slots = cache_->num_blocks() * block_size_;
    const int64_t cols = cache_->keys(0).cols;
    const int64_t chunk = std::min<int64_t>(slots, std::max<int64_t>(1, (int64_t{16} << 20) / (cols * 2)));
    OwnedTensor host = ops_.allocate_host(DType::BF16, chunk, cols);
    auto* bits = host.ptr<uint16_t>();
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (int64_t i = 0; i < chunk * cols; ++i) {
      const float f = normal(rng_);
      uint32_t u = 0;
      std::memcpy(&u, &f, 4);
      bits[i] = static_cast<uint16_t>(u >> 16);
    }
    for (int64_t layer = 0; layer < model_.config().num_layers; ++layer) {
      for (const Tensor* t : {&cache_->keys(layer), &cache_->values(layer)}) {
        for (int64_t at = 0; at < slots; at += chunk) {
          const int64_t rows = std::min(chunk, slots - at);
          ops_.upload(host.ptr<uint16_t>(), t->slice_rows(at, rows));
        }
      }
    }
    ops_.synchronize();
  }

  // Sequences 0..batch-1 each decode one token at position `context`.
  StepBatch decode_step(int batch, int context) {
    StepBatch s;
    const int32_t width = (context + block_size_) / block_size_;
    s.max_blocks_per_seq = width;
    s.query_start.push_back(0);
    for (int i = 0; i < batch; ++i) {
      const int32_t first = i * blocks_per_seq_;
      s.token_ids.push_back(token_(rng_));
      s.positions.push_back(context);
      s.slots.push_back((first + context / block_size_) * block_size_ + context % block_size_);
      s.query_start.push_back(i + 1);
      s.context_len.push_back(context + 1);
      for (int32_t b = 0; b < width; ++b) s.block_table.push_back(first + b);
      s.logit_rows.push_back(i);
    }
    return s;
  }

  // Sequence 0: tokens at positions [start, start + ids.size()), logits of the last row (or all).
  StepBatch prefill_step(const std::vector<int32_t>& ids, int start, bool all_logits) {
    StepBatch s;
    const int n = static_cast<int>(ids.size());
    const int32_t width = (start + n + block_size_ - 1) / block_size_;
    s.max_blocks_per_seq = width;
    s.token_ids = ids;
    for (int i = 0; i < n; ++i) {
      s.positions.push_back(start + i);
      s.slots.push_back(start + i);  // sequence 0's blocks are 0, 1, 2, ...
    }
    s.query_start = {0, n};
    s.context_len = {start + n};
    for (int32_t b = 0; b < width; ++b) s.block_table.push_back(b);
    if (all_logits) {
      for (int i = 0; i < n; ++i) s.logit_rows.push_back(i);
    } else {
      s.logit_rows.push_back(n - 1);
    }
    return s;
  }

  // forward + argmax on the device + the ids back on the host; returns the ids.
  const int32_t* step_and_argmax(const StepBatch& s) {
    const Tensor logits = model_.forward(s, *cache_, LogitsOn::Device);
    if (logits.device == Device::CPU) {
      ops_.argmax(logits, ids_host_.ptr<int32_t>());
      return ids_host_.ptr<int32_t>();
    }
    ops_.argmax(logits, ids_device_.view().ptr<int32_t>());
    ops_.download(ids_device_.view().slice_cols(0, logits.rows), ids_host_.ptr<int32_t>());
    ops_.synchronize();
    return ids_host_.ptr<int32_t>();
  }

  double seconds(const std::function<void()>& fn) {
    ops_.synchronize();
    const Clock::time_point t0 = Clock::now();
    fn();
    ops_.synchronize();
    return std::chrono::duration<double>(Clock::now() - t0).count();
  }

  // Batch-1 greedy decode: a 128-token prompt, then decode_steps steps; tokens/s.
  double decode_tokens_per_s() {
    std::vector<int32_t> prompt(128);
    for (int32_t& t : prompt) t = token_(rng_);
    std::vector<double> rates;
    for (int r = 0; r < o_.repeat + 1; ++r) {
      int32_t next = step_and_argmax(prefill_step(prompt, 0, false))[0];
      const double t = seconds([&] {
        for (int i = 0; i < o_.decode_steps; ++i) {
          StepBatch s = prefill_step({next}, 128 + i, false);
          next = step_and_argmax(s)[0];
        }
      });
      if (r > 0) rates.push_back(o_.decode_steps / t);  // the first run is the warm-up
    }
    return median(rates);
  }

  double step_ms(int batch, int context) {
    const StepBatch s = decode_step(batch, context);
    for (int i = 0; i < 3; ++i) step_and_argmax(s);
    std::vector<double> t;
    for (int i = 0; i < o_.step_repeat; ++i) t.push_back(seconds([&] { step_and_argmax(s); }));
    return median(t) * 1e3;
  }

  double ttft_ms(int prompt_len) {
    std::vector<int32_t> prompt(static_cast<size_t>(prompt_len));
    for (int32_t& t : prompt) t = token_(rng_);
    const StepBatch s = prefill_step(prompt, 0, false);
    for (int i = 0; i < 2; ++i) step_and_argmax(s);
    std::vector<double> t;
    for (int i = 0; i < std::max(o_.repeat, 5); ++i) {
      t.push_back(seconds([&] { step_and_argmax(s); }));
    }
    return median(t) * 1e3;
  }

  int max_batch() const { return max_batch_; }

 private:
  const BenchOptions& o_;
  LlamaModel& model_;
  Ops& ops_;
  std::mt19937 rng_;
  std::uniform_int_distribution<int32_t> token_;
  int32_t block_size_ = 16;
  int32_t blocks_per_seq_ = 0;
  int max_batch_ = 0;
  std::unique_ptr<KVCache> cache_;
  OwnedTensor ids_device_, ids_host_;
};

std::string json_list(const std::vector<std::string>& items) {
  std::string s = "[";
  for (size_t i = 0; i < items.size(); ++i) s += (i ? ", " : "") + items[i];
  return s + "]";
}

// Reference logits from llama8b_agreement.py: ids.i32 (n), logits.f32 (n x vocab).
std::string run_compare(const BenchOptions& o, LoadedModel& m) {
  namespace fs = std::filesystem;
  const fs::path dir(o.compare_dir);
  const auto read_all = [](const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    MIL_CHECK(in.good(), "--compare: cannot read {}", p.string());
    return std::vector<char>(std::istreambuf_iterator<char>(in), {});
  };
  const std::vector<char> id_bytes = read_all(dir / "ids.i32");
  const std::vector<char> logit_bytes = read_all(dir / o.reference);
  const int64_t n = static_cast<int64_t>(id_bytes.size() / 4);
  const int64_t vocab = m.model->config().vocab_size;
  MIL_CHECK(n > 1 && static_cast<int64_t>(logit_bytes.size()) == n * vocab * 4,
            "--compare: {} ids but {} bytes of logits (vocab {})", n, logit_bytes.size(), vocab);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  std::memcpy(ids.data(), id_bytes.data(), id_bytes.size());
  const auto* ref = reinterpret_cast<const float*>(logit_bytes.data());
  LlamaModel& model = *m.model;
  MIL_CHECK(n <= model.max_tokens_per_step(), "--compare: {} positions need --max-batch-tokens >= {}",
            n, n);

  const int32_t bs = 16;
  KVCache cache = model.make_kv_cache((n + bs - 1) / bs + 1, bs);
  const int32_t width = static_cast<int32_t>((n + bs - 1) / bs);
  const auto step_for = [&](int64_t start, int64_t count) {
    StepBatch s;
    s.max_blocks_per_seq = width;
    for (int64_t i = start; i < start + count; ++i) {
      s.token_ids.push_back(ids[static_cast<size_t>(i)]);
      s.positions.push_back(static_cast<int32_t>(i));
      s.slots.push_back(static_cast<int32_t>(i));
      s.logit_rows.push_back(static_cast<int32_t>(i - start));
    }
    s.query_start = {0, static_cast<int32_t>(count)};
    s.context_len = {static_cast<int32_t>(start + count)};
    for (int32_t b = 0; b < width; ++b) s.block_table.push_back(b);
    return s;
  };
  const auto top2 = [](const float* row, int64_t v, int32_t* best) {
    float a = -INFINITY, b = -INFINITY;
    int32_t ia = 0;
    for (int64_t i = 0; i < v; ++i) {
      if (row[i] > a) {
        b = a;
        a = row[i];
        ia = static_cast<int32_t>(i);
      } else if (row[i] > b) {
        b = row[i];
      }
    }
    *best = ia;
    return static_cast<double>(a) - b;
  };
  static constexpr double kSweep[4] = {0.1, 0.25, 0.5, 1.0};
  struct Tally {
    int64_t positions = 0, confident = 0, agree_confident = 0, agree_all = 0;
    int64_t bucket_confident[3] = {0, 0, 0}, bucket_agree[3] = {0, 0, 0};
    // Agreement where the reference margin exceeds each of kSweep (how the rate grows once
    // the margin clears bf16's logit noise).
    int64_t sweep_confident[4] = {0, 0, 0, 0}, sweep_agree[4] = {0, 0, 0, 0};
    double max_abs = 0, num = 0, den = 0, ref_max_abs = 0;
  };
  const auto tally = [&](Tally& t, const float* got, int64_t pos) {
    const float* want = ref + pos * vocab;
    int32_t ref_top = 0, got_top = 0;
    const double margin = top2(want, vocab, &ref_top);
    top2(got, vocab, &got_top);
    ++t.positions;
    t.agree_all += ref_top == got_top;
    for (int i = 0; i < 4; ++i) {
      if (margin > kSweep[i]) {
        ++t.sweep_confident[i];
        t.sweep_agree[i] += ref_top == got_top;
      }
    }
    if (margin > o.margin) {
      const int bucket = pos < 64 ? 0 : pos < 256 ? 1 : 2;
      ++t.confident;
      t.agree_confident += ref_top == got_top;
      ++t.bucket_confident[bucket];
      t.bucket_agree[bucket] += ref_top == got_top;
    }
    for (int64_t i = 0; i < vocab; ++i) {
      const double d = static_cast<double>(got[i]) - want[i];
      t.max_abs = std::max(t.max_abs, std::isnan(d) ? INFINITY : std::abs(d));
      t.ref_max_abs = std::max(t.ref_max_abs, static_cast<double>(std::abs(want[i])));
      t.num += d * d;
      t.den += static_cast<double>(want[i]) * want[i];
    }
  };
  // 1. One prefill step over all positions.
  Tally prefill;
  {
    const Tensor logits = model.forward(step_for(0, n), cache);
    for (int64_t p = 0; p < n; ++p) tally(prefill, logits.ptr<float>() + p * vocab, p);
  }
  // 2. Prefill the first half, then one decode step per position (the graph path).
  Tally decode;
  if (m.device != "cpu") {
    const int64_t half = n / 2;
    model.capture_decode_graphs(cache, {1}, width);
    model.forward(step_for(0, half), cache);
    for (int64_t p = half; p < n; ++p) {
      const Tensor logits = model.forward(step_for(p, 1), cache);
      tally(decode, logits.ptr<float>(), p);
    }
    model.release_decode_graphs(cache);
  }
  std::string json = "{";
  std::printf("\nagreement with %s/%s on %s (%lld positions, margin > %.2f)\n",
              o.compare_dir.c_str(), o.reference.c_str(), m.device.c_str(),
              static_cast<long long>(n), o.margin);
  std::printf("  %-8s %10s %12s %12s %10s %12s\n", "path", "confident", "top1@conf", "top1@all",
              "max_abs", "rel_l2");
  for (const auto& [name, t] : {std::pair<const char*, const Tally&>{"prefill", prefill},
                                std::pair<const char*, const Tally&>{"decode", decode}}) {
    const double rate = t.confident ? static_cast<double>(t.agree_confident) / t.confident : 0.0;
    const double all = static_cast<double>(t.agree_all) / std::max<int64_t>(t.positions, 1);
    const double rel = std::sqrt(t.num / std::max(t.den, 1e-30));
    if (t.positions == 0) continue;
    std::printf("  %-8s %5lld/%-4lld %11.2f%% %11.2f%% %10.4f %12.3e   by position [0,64) "
                "%lld/%lld [64,256) %lld/%lld [256,) %lld/%lld\n",
                name, static_cast<long long>(t.confident), static_cast<long long>(t.positions),
                100 * rate, 100 * all, t.max_abs, rel, static_cast<long long>(t.bucket_agree[0]),
                static_cast<long long>(t.bucket_confident[0]),
                static_cast<long long>(t.bucket_agree[1]),
                static_cast<long long>(t.bucket_confident[1]),
                static_cast<long long>(t.bucket_agree[2]),
                static_cast<long long>(t.bucket_confident[2]));
    std::printf("  %-8s top1 where the reference margin >", "");
    for (int i = 0; i < 4; ++i) {
      std::printf(" %.2f: %lld/%lld", kSweep[i], static_cast<long long>(t.sweep_agree[i]),
                  static_cast<long long>(t.sweep_confident[i]));
    }
    std::printf("\n");
    char buf[512];
    std::snprintf(buf, sizeof(buf),
                  "%s\"%s\": {\"positions\": %lld, \"confident\": %lld, \"top1_agree_confident\": "
                  "%.5f, \"top1_agree_all\": %.5f, \"max_abs\": %.5f, \"ref_max_abs\": %.4f, "
                  "\"rel_l2\": %.4e}",
                  json.size() > 1 ? ", " : "", name, static_cast<long long>(t.positions),
                  static_cast<long long>(t.confident), rate, all, t.max_abs, t.ref_max_abs, rel);
    json += buf;
  }
  char buf[256];
  std::snprintf(buf, sizeof(buf), ", \"margin\": %.3f, \"reference\": \"%s\", \"device\": \"%s\"}",
                o.margin, o.reference.c_str(), m.device.c_str());
  return json + buf;
}

void run_gpu_suite(const BenchOptions& o, LoadedModel& m) {
  LlamaModel& model = *m.model;
  const ModelConfig& c = model.config();
  std::vector<std::string> json;
  const auto add = [&](const std::string& key, const std::string& value) {
    json.push_back("\"" + key + "\": " + value);
  };
  add("model", "\"" + o.model.model_id + "\"");
  add("device", "\"" + m.device + "\"");
  const int64_t wbytes = weight_bytes_per_step(*m.weights);
  add("weight_bytes_per_step", std::to_string(wbytes));
  std::printf("model %s: %lld layers, hidden %lld, vocab %lld; %.2f GB of weights read per step\n",
              o.model.model_id.c_str(), static_cast<long long>(c.num_layers),
              static_cast<long long>(c.hidden_size), static_cast<long long>(c.vocab_size),
              wbytes / 1e9);

  if (!o.skip_suite) {
    int max_batch = *std::max_element(o.batches.begin(), o.batches.end());
    const int max_context = *std::max_element(o.contexts.begin(), o.contexts.end());
    // Fit the KV cache in the free memory (a tenth kept for workspaces): fewer batch sizes else.
    const int64_t per_seq = model.kv_bytes_per_block(16) * ((max_context + 1 + o.decode_steps + 16) / 16);
    size_t free_b = 0, total_b = 0;
    if (model.ops().memory_info(&free_b, &total_b)) {
      while (max_batch > 1 && per_seq * max_batch > static_cast<int64_t>(free_b * 0.85)) max_batch /= 2;
    }
    Suite suite(o, m, max_batch, max_context);
    suite.fill_kv();
    const int graphs = suite.capture(true);
    add("graphs", std::to_string(graphs));

    // Batch-1 decode.
    const double tok_graph = suite.decode_tokens_per_s();
    suite.capture(false);
    const double tok_eager = suite.decode_tokens_per_s();
    const double kv_bytes_mid = static_cast<double>(model.kv_bytes_per_block(16)) / 16 * (128 + o.decode_steps / 2);
    const double frac = tok_graph * (wbytes + kv_bytes_mid) / (o.bandwidth_tb_s * 1e12);
    std::printf("\nbatch-1 greedy decode (128-token prompt, %d steps, argmax on GPU)\n", o.decode_steps);
    std::printf("  graphs on : %8.1f tok/s  (%.2f ms/token, %.0f%% of %.2f TB/s)\n", tok_graph,
                1e3 / tok_graph, 100 * frac, o.bandwidth_tb_s);
    std::printf("  graphs off: %8.1f tok/s  (%.2f ms/token)\n", tok_eager, 1e3 / tok_eager);
    char buf[256];
    std::snprintf(buf, sizeof(buf),
                  "{\"graphs_on_tok_s\": %.2f, \"graphs_off_tok_s\": %.2f, \"steps\": %d, "
                  "\"bandwidth_fraction\": %.4f, \"bandwidth_tb_s\": %.2f}",
                  tok_graph, tok_eager, o.decode_steps, frac, o.bandwidth_tb_s);
    add("decode_batch1", buf);

    // Decode step times.
    std::printf("\ndecode step (forward + argmax + ids to host), median ms; graphs on / off\n");
    std::printf("  %6s", "batch");
    for (int ctx : o.contexts) std::printf("   ctx %-5d on    off", ctx);
    std::printf("\n");
    std::vector<std::string> rows;
    std::vector<std::vector<double>> on_ms(o.batches.size()), off_ms(o.batches.size());
    suite.capture(true);
    for (size_t bi = 0; bi < o.batches.size(); ++bi) {
      for (int ctx : o.contexts) {
        on_ms[bi].push_back(o.batches[bi] <= suite.max_batch() ? suite.step_ms(o.batches[bi], ctx) : NAN);
      }
    }
    suite.capture(false);
    for (size_t bi = 0; bi < o.batches.size(); ++bi) {
      for (int ctx : o.contexts) {
        off_ms[bi].push_back(o.batches[bi] <= suite.max_batch() ? suite.step_ms(o.batches[bi], ctx) : NAN);
      }
    }
    for (size_t bi = 0; bi < o.batches.size(); ++bi) {
      std::printf("  %6d", o.batches[bi]);
      for (size_t ci = 0; ci < o.contexts.size(); ++ci) {
        std::printf("   %12.3f %7.3f", on_ms[bi][ci], off_ms[bi][ci]);
        std::snprintf(buf, sizeof(buf),
                      "{\"batch\": %d, \"context\": %d, \"graphs_on_ms\": %.4f, "
                      "\"graphs_off_ms\": %.4f, \"tok_s\": %.1f}",
                      o.batches[bi], o.contexts[ci], on_ms[bi][ci], off_ms[bi][ci],
                      o.batches[bi] / on_ms[bi][ci] * 1e3);
        rows.push_back(std::isnan(on_ms[bi][ci]) ? std::string("null") : std::string(buf));
      }
      std::printf("\n");
    }
    add("decode_steps", json_list(rows));

    // TTFT.
    std::printf("\ntime to first token (one prefill step + argmax), median ms\n");
    std::vector<std::string> ttft;
    for (int p : o.ttft_prompts) {
      if (p > model.max_tokens_per_step()) continue;
      const double ms = suite.ttft_ms(p);
      std::printf("  prompt %5d: %8.2f ms  (%.0f tok/s prefill)\n", p, ms, p / ms * 1e3);
      std::snprintf(buf, sizeof(buf), "{\"prompt\": %d, \"ms\": %.3f}", p, ms);
      ttft.push_back(buf);
    }
    add("ttft", json_list(ttft));
    model.set_decode_graphs_enabled(true);
  }

  if (!o.compare_dir.empty()) add("agreement", run_compare(o, m));

  if (!o.json_path.empty()) {
    std::ofstream out(o.json_path);
    MIL_CHECK(out.good(), "--json: cannot write {}", o.json_path);
    out << "{";
    for (size_t i = 0; i < json.size(); ++i) out << (i ? ",\n " : "") << json[i];
    out << "}\n";
    std::printf("\nwrote %s\n", o.json_path.c_str());
  }
}

void run_bench(BenchOptions o) {
  if (resolve_device(o.model.device) == "cuda") {
    // Whole prompts in one step: TTFT prompts, the compared positions, the batch sizes.
    int64_t need = 512;
    for (int p : o.ttft_prompts) need = std::max<int64_t>(need, p);
    for (int b : o.batches) need = std::max<int64_t>(need, b);
    o.model.max_tokens_per_step = std::max(o.model.max_tokens_per_step, need);
    LoadedModel m = load_model(o.model);
    run_gpu_suite(o, m);
    return;
  }
  if (!o.compare_dir.empty()) {  // the CPU as a reference: prefill only
    o.model.max_tokens_per_step = std::max<int64_t>(o.model.max_tokens_per_step, 512);
    LoadedModel m = load_model(o.model);
    std::printf("%s\n", run_compare(o, m).c_str());
    return;
  }
  LoadedModel m = load_model(o.model);
  run_cpu_bench(o, m);
}

}  // namespace

void add_bench_command(CLI::App& app) {
  auto options = std::make_shared<BenchOptions>();
  CLI::App* cmd = app.add_subcommand(
      "bench", "measure prefill and decode tokens/s (--device cuda: decode, step time and TTFT "
               "suite)");
  options->model.add_to(*cmd);
  cmd->add_option("--prompt-tokens", options->prompt_tokens)->capture_default_str()
      ->check(CLI::Range(1, 1 << 16));
  cmd->add_option("--new-tokens", options->new_tokens)->capture_default_str()
      ->check(CLI::Range(2, 1 << 16));
  cmd->add_option("--repeat", options->repeat)->capture_default_str()->check(CLI::Range(1, 1000));
  cmd->add_option("--adapter", options->adapter, "run with this registered LoRA adapter");
  cmd->add_option("--json", options->json_path, "GPU suite: write the figures as JSON here");
  cmd->add_option("--batches", options->batches, "GPU suite: decode batch sizes")
      ->delimiter(',')->capture_default_str();
  cmd->add_option("--contexts", options->contexts, "GPU suite: decode context lengths")
      ->delimiter(',')->capture_default_str();
  cmd->add_option("--ttft-prompts", options->ttft_prompts, "GPU suite: TTFT prompt lengths")
      ->delimiter(',')->capture_default_str();
  cmd->add_option("--decode-steps", options->decode_steps, "GPU suite: batch-1 decode steps")
      ->capture_default_str()->check(CLI::Range(1, 1 << 16));
  cmd->add_option("--step-repeat", options->step_repeat, "GPU suite: repeats per step time")
      ->capture_default_str()->check(CLI::Range(1, 1000));
  cmd->add_option("--bandwidth", options->bandwidth_tb_s,
                  "GPU suite: measured memory bandwidth (TB/s) for the roofline fraction")
      ->capture_default_str();
  cmd->add_option("--compare", options->compare_dir,
                  "GPU suite: check top-1/logits against a reference dir (ids.i32, logits.f32)");
  cmd->add_option("--reference", options->reference,
                  "--compare: the reference logits file in that dir")
      ->capture_default_str();
  cmd->add_option("--margin", options->margin, "--compare: reference top-1 margin threshold")
      ->capture_default_str();
  cmd->add_flag("--no-suite", options->skip_suite, "GPU suite: only --compare");
  cmd->callback([options] { run_bench(*options); });
}

}  // namespace mil::cli
