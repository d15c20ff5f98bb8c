// Warm-up and KV sizing (engine/warmup.h, LlamaModel::reserve/warm_up) on the tiny GGUF
// fixture: after warm-up, steps of every shape up to the maxima (the largest prefill chunk,
// decode batches of several sizes, with and without LoRA adapters, prompt logprobs) allocate
// nothing in the backend's memory (Ops::allocation_count), and the engine gives the same
// tokens as a request alone. The automatic size (memory_fraction) is checked on a CPU backend
// that meters its allocations and reports them as its memory (the CPU cannot tell its own).
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <unordered_map>

#include "backends/cpu/cpu_ops.h"
#include "engine/tiny_engine_test_base.h"
#include "engine/engine.h"
#include "engine/generator.h"
#include "lora/adapter_store.h"
#include "model/llama.h"
#include "tokenizer/model_tokenizer.h"

namespace mil {
namespace {

using namespace std::chrono_literals;

// The live allocations of every MeteredOps (release functions are plain function pointers).
std::mutex g_mu;
std::unordered_map<void*, size_t> g_live;
size_t g_live_bytes = 0;

void metered_release(void* p) {
  {
    std::lock_guard lock(g_mu);
    auto it = g_live.find(p);
    if (it != g_live.end()) {
      g_live_bytes -= it->second;
      g_live.erase(it);
    }
  }
  std::free(p);
}

// The CPU backend with a memory of `total` bytes: memory_info reports total less what is
// allocated through it, as a device backend reports its device's memory.
class MeteredOps final : public Ops {
 public:
  MeteredOps(std::unique_ptr<Ops> inner, size_t total) : in_(std::move(inner)), total_(total) {}

  Device device() const override { return in_->device(); }
  DType activation_dtype() const override { return in_->activation_dtype(); }
  DType kv_dtype() const override { return in_->kv_dtype(); }
  OwnedTensor allocate(DType dtype, int64_t rows, int64_t cols) override {
    const size_t bytes =
        (std::max<size_t>(row_bytes(dtype, cols) * static_cast<size_t>(rows), 1) + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, bytes);
    MIL_CHECK(p != nullptr, "metered allocate: out of memory");
    {
      std::lock_guard lock(g_mu);
      g_live[p] = bytes;
      g_live_bytes += bytes;
    }
    count_allocation();
    return OwnedTensor(Tensor::contiguous(dtype, rows, cols, p), metered_release);
  }
  OwnedTensor allocate_host(DType dtype, int64_t rows, int64_t cols) override {
    return allocate(dtype, rows, cols);
  }
  void upload(const void* src, const Tensor& dst) override { in_->upload(src, dst); }
  void download(const Tensor& src, void* dst) override { in_->download(src, dst); }
  void synchronize() override { in_->synchronize(); }
  bool memory_info(size_t* free_bytes, size_t* total_bytes) const override {
    std::lock_guard lock(g_mu);
    *total_bytes = total_;
    *free_bytes = total_ - g_live_bytes;
    return true;
  }
  void matmul(const Tensor& x, const Tensor& w, const Tensor& y) override { in_->matmul(x, w, y); }
  void add_bias(const Tensor& y, const Tensor& bias) override { in_->add_bias(y, bias); }
  void embedding(const Tensor& table, const int32_t* ids, const Tensor& out) override {
    in_->embedding(table, ids, out);
  }
  void rmsnorm(const Tensor& x, const Tensor& w, float eps, const Tensor& out) override {
    in_->rmsnorm(x, w, eps, out);
  }
  void rope(const Tensor& x, int32_t head_dim, const int32_t* positions, const Tensor& inv_freq,
            bool interleaved) override {
    in_->rope(x, head_dim, positions, inv_freq, interleaved);
  }
  void kv_store(const Tensor& k, const Tensor& v, const int32_t* slots, const Tensor& kc,
                const Tensor& vc) override {
    in_->kv_store(k, v, slots, kc, vc);
  }
  void rope_kv_store(const Tensor& q, const Tensor& k, const Tensor& v, int32_t head_dim,
                     const int32_t* positions, const Tensor& inv_freq, bool interleaved,
                     const int32_t* slots, const Tensor& kc, const Tensor& vc) override {
    in_->rope_kv_store(q, k, v, head_dim, positions, inv_freq, interleaved, slots, kc, vc);
  }
  void attention(const Tensor& q, const Tensor& kc, const Tensor& vc, const AttentionBatch& batch,
                 const AttentionShape& shape, const Tensor& out) override {
    in_->attention(q, kc, vc, batch, shape, out);
  }
  void silu_mul(const Tensor& g, const Tensor& u, const Tensor& out) override {
    in_->silu_mul(g, u, out);
  }
  void add(const Tensor& a, const Tensor& b, const Tensor& out) override { in_->add(a, b, out); }
  void add_rmsnorm(const Tensor& r, const Tensor& x, const Tensor& w, float eps,
                   const Tensor& out) override {
    in_->add_rmsnorm(r, x, w, eps, out);
  }
  void lora_shrink(const Tensor& x, const LoraProjection& p, const LoraSegment* s, int32_t n,
                   const Tensor& v) override {
    in_->lora_shrink(x, p, s, n, v);
  }
  void lora_expand(const Tensor& v, const LoraProjection& p, const LoraSegment* s, int32_t n,
                   const Tensor& y) override {
    in_->lora_expand(v, p, s, n, y);
  }
  void argmax(const Tensor& logits, int32_t* out) override { in_->argmax(logits, out); }
  void sample(const Tensor& logits, const SamplingParams* p, const float* u,
              int32_t* out) override {
    in_->sample(logits, p, u, out);
  }
  void repetition_penalty(const Tensor& logits, const int32_t* ids, const int32_t* offsets,
                          const float* penalties) override {
    in_->repetition_penalty(logits, ids, offsets, penalties);
  }
  void token_logprobs(const Tensor& logits, const float* temperatures, const int32_t* tokens,
                      float* out) override {
    in_->token_logprobs(logits, temperatures, tokens, out);
  }

 private:
  std::unique_ptr<Ops> in_;
  size_t total_;
};

class Warmup : public test::TinyEngineTest {
 protected:
  static constexpr int64_t kMaxTokens = 16;

  void SetUp() override { load(kMaxTokens); }

  // A step of `lens` sequences (each its own blocks of a `bs`-token cache), logits for the
  // last row of each, rows of sequence i on adapter `slots[i]` (-1: base).
  static StepBatch step(const std::vector<int32_t>& lens, const std::vector<int32_t>& slots,
                        int32_t bs, int32_t blocks_per_seq) {
    StepBatch b;
    b.max_blocks_per_seq = blocks_per_seq;
    b.query_start.push_back(0);
    for (size_t s = 0; s < lens.size(); ++s) {
      const int32_t row0 = static_cast<int32_t>(b.token_ids.size());
      for (int32_t t = 0; t < lens[s]; ++t) {
        b.token_ids.push_back(5 + t);
        b.positions.push_back(t);
        b.slots.push_back(static_cast<int32_t>(s) * blocks_per_seq * bs + t);
      }
      b.query_start.push_back(static_cast<int32_t>(b.token_ids.size()));
      b.context_len.push_back(lens[s]);
      for (int32_t k = 0; k < blocks_per_seq; ++k) {
        b.block_table.push_back(static_cast<int32_t>(s) * blocks_per_seq + k);
      }
      b.logit_rows.push_back(static_cast<int32_t>(b.token_ids.size()) - 1);
      b.lora_segments.push_back({row0, static_cast<int32_t>(b.token_ids.size()), slots[s]});
    }
    return b;
  }
};

TEST_F(Warmup, ModelStepsWithinTheReservedMaximaAllocateNothing) {
  const int32_t bs = 4, width = 4;  // 16 tokens a sequence
  const KVCache cache = model_->make_kv_cache(int64_t{kMaxTokens} * width, bs);
  const int32_t g = store_->acquire("g");  // resident (loading it is not a step)

  // The control: without a reserve the first steps grow the model's buffers.
  const uint64_t before = ops_->allocation_count();
  (void)model_->forward(step({3, 1}, {-1, -1}, bs, width), cache);
  EXPECT_GT(ops_->allocation_count(), before) << "the counter must see the lazy growth";

  StepMaxima mx;
  mx.seqs = kMaxTokens;
  mx.logit_rows = kMaxTokens;
  mx.blocks_per_seq = width;
  mx.lora_rank = 8;
  model_->reserve(mx);
  model_->warm_up(mx, bs);
  const uint64_t warm = ops_->allocation_count();

  std::vector<StepBatch> steps;
  steps.push_back(step({16}, {-1}, bs, width));       // the largest prefill chunk
  steps.push_back(step({16}, {g}, bs, width));        // ... on an adapter
  steps.push_back(step({7, 9}, {-1, g}, bs, width));  // mixed prefill
  for (int32_t n : {1, 2, 5, 16}) {                   // decode batches
    steps.push_back(step(std::vector<int32_t>(n, 1), std::vector<int32_t>(n, -1), bs, width));
    std::vector<int32_t> slots(n);
    for (int32_t i = 0; i < n; ++i) slots[i] = i % 2 == 0 ? g : -1;
    steps.push_back(step(std::vector<int32_t>(n, 1), slots, bs, width));
  }
  StepBatch all = step({16}, {g}, bs, width);  // logits of every row (prompt logprobs)
  all.logit_rows.clear();
  for (int32_t r = 0; r < 16; ++r) all.logit_rows.push_back(r);
  steps.push_back(all);
  for (const StepBatch& s : steps) {
    StepBatch b = s;
    if (std::none_of(b.lora_segments.begin(), b.lora_segments.end(),
                     [](const LoraSegment& x) { return x.slot >= 0; })) {
      b.lora_segments.clear();
    }
    (void)model_->forward(b, cache);
    (void)model_->forward(b, cache, LogitsOn::Device);
  }
  EXPECT_EQ(ops_->allocation_count(), warm);
  store_->release(g);
}

TEST_F(Warmup, EngineStepsAfterStartUpAllocateNothingAndMatchTheReference) {
  // Resident before the engine starts: making an adapter resident loads it, which is not a
  // step. Pinned here for the whole test so that the engine's acquire only pins.
  const int32_t g = store_->acquire("g");
  const int32_t g2 = store_->acquire("g2");
  EngineOptions o;
  o.kv_blocks = 96;
  o.block_size = 4;
  o.always_warm_up = true;  // the CPU reports no memory; run the warm-up steps anyway
  auto engine = make_engine(*model_, *text_, o);
  const uint64_t warm = ops_->allocation_count();
  std::set<int32_t> decode_sizes;
  int32_t most_rows = 0;
  engine->set_step_observer([&](const StepReport& r, const EngineStats&) {
    decode_sizes.insert(r.decode_sequences);  // the engine thread; read after drain()
    most_rows = std::max(most_rows, r.prefill_tokens + r.decode_sequences);
  });

  struct Case {
    std::vector<int32_t> prompt;
    int max_new;
    std::string adapter;
    bool logprobs;
  };
  std::mt19937 rng(7);
  std::vector<Case> cases;
  // Prompts longer than a step run in 16-row chunks; with the short ones decoding beside
  // them, steps hold decode batches of every size up to 16 rows.
  const std::vector<std::string> adapters = {"", "g", "g2"};
  for (int i = 0; i < 18; ++i) {
    const int len = i % 5 == 0 ? 37 + i : 1 + static_cast<int>(rng() % 9);
    cases.push_back({random_prompt(rng, len), 3 + static_cast<int>(rng() % 10),
                     adapters[static_cast<size_t>(i) % adapters.size()], i % 7 == 3});
  }
  std::mutex mu;
  std::vector<std::vector<int32_t>> got(cases.size());
  std::vector<size_t> prefill(cases.size(), 0);
  for (size_t i = 0; i < cases.size(); ++i) {
    EngineRequest r;
    r.prompt = cases[i].prompt;
    r.params.max_new_tokens = cases[i].max_new;
    r.params.ignore_eos = true;
    r.params.adapter = cases[i].adapter;
    r.params.prompt_logprobs = cases[i].logprobs;
    engine->submit(std::move(r), [&, i](RequestEvent&& e) {
      std::lock_guard lock(mu);
      if (e.token) got[i].push_back(e.token->id);
      if (e.finished) prefill[i] = e.prefill.size();
    });
    if (i % 6 == 5) std::this_thread::sleep_for(2ms);  // arrive while others run
  }
  engine->drain();
  EXPECT_EQ(ops_->allocation_count(), warm) << "a step allocated after warm-up";
  EXPECT_EQ(most_rows, kMaxTokens) << "no step of the largest size ran";
  EXPECT_GE(decode_sizes.size(), 4u) << "decode batches of too few sizes ran";
  for (size_t i = 0; i < cases.size(); ++i) {
    EXPECT_EQ(got[i], alone(cases[i].prompt, cases[i].max_new, cases[i].adapter)) << i;
    if (cases[i].logprobs) {
      EXPECT_EQ(prefill[i], cases[i].prompt.size()) << i;
    }
  }
  engine->shutdown();
  store_->release(g);
  store_->release(g2);
}

TEST_F(Warmup, MeasuredSizingFillsTheMemoryFractionAfterWarmup) {
  // The model over a backend with 64 MiB of "device" memory that reports what it allocated.
  const size_t total = size_t{64} << 20;
  auto metered = std::make_unique<MeteredOps>(make_cpu_ops(1), total);
  MeteredOps& ops = *metered;
  LlamaModel model(*weights_, ops, kMaxTokens, store_.get());
  size_t free_bytes = 0, total_bytes = 0;
  ASSERT_TRUE(ops.memory_info(&free_bytes, &total_bytes));
  const size_t free_at_start = free_bytes;

  EngineOptions o;
  o.block_size = 4;
  o.memory_fraction = 0.5;
  auto engine = make_engine(model, *text_, o);
  const EngineStats st = engine->stats();
  EXPECT_EQ(st.device_total_bytes, static_cast<int64_t>(total));
  EXPECT_EQ(st.free_before_warmup, static_cast<int64_t>(free_at_start));
  EXPECT_LT(st.free_after_warmup, st.free_before_warmup) << "warm-up allocates the step buffers";
  EXPECT_EQ(st.graph_reserve_bytes, 0);  // the CPU captures no graphs
  // The cache takes what the fraction leaves after warm-up, to the block.
  const int64_t per_block = model.kv_bytes_per_block(o.block_size);
  const int64_t budget = st.free_after_warmup - static_cast<int64_t>(total) / 2;
  EXPECT_EQ(st.kv_blocks, budget / per_block);
  ASSERT_TRUE(ops.memory_info(&free_bytes, &total_bytes));
  const int64_t used = static_cast<int64_t>(total - free_bytes);
  EXPECT_LE(used, static_cast<int64_t>(total) / 2);
  EXPECT_GT(used + per_block, static_cast<int64_t>(total) / 2 - 64 * 2 * model.config().num_layers)
      << "less than a block (and the allocations' 64-byte rounding) left unused";

  // It runs, and allocates nothing more.
  const uint64_t warm = ops.allocation_count();
  std::mt19937 rng(3);
  const std::vector<int32_t> prompt = random_prompt(rng, 21);
  EngineRequest r;
  r.prompt = prompt;
  r.params.max_new_tokens = 6;
  r.params.ignore_eos = true;
  std::vector<int32_t> tokens;
  std::mutex mu;
  engine->submit(r, [&](RequestEvent&& e) {
    std::lock_guard lock(mu);
    if (e.token) tokens.push_back(e.token->id);
  });
  engine->drain();
  EXPECT_EQ(ops.allocation_count(), warm);
  EXPECT_EQ(tokens, alone(prompt, 6, ""));
  engine->shutdown();
  engine.reset();
}

TEST_F(Warmup, ExplicitKvBudgetWinsAndTooSmallAFractionFailsClearly) {
  auto metered = std::make_unique<MeteredOps>(make_cpu_ops(1), size_t{64} << 20);
  LlamaModel model(*weights_, *metered, kMaxTokens, store_.get());
  const int64_t per_block = model.kv_bytes_per_block(4);
  EngineOptions o;
  o.block_size = 4;
  o.kv_memory_bytes = 10 * per_block;  // memory_fraction 0: the budget
  EXPECT_EQ(make_engine(model, *text_, o)->stats().kv_blocks, 10);
  o.kv_blocks = 7;  // blocks given: they win over a fraction too
  o.memory_fraction = 0.5;
  EXPECT_EQ(make_engine(model, *text_, o)->stats().kv_blocks, 7);
  o.kv_blocks = 0;
  o.memory_fraction = 0.001;  // 64 KiB of 64 MiB: less than the model already uses
  try {
    (void)make_engine(model, *text_, o);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no memory left for the KV cache"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace mil
