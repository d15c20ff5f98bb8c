#include "engine/generator.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>

#include "core/error.h"

namespace mil {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

}  // namespace

struct Generator::Sequence {
  size_t index = 0;
  const GenerationParams* params = nullptr;
  std::vector<int32_t> tokens;  // prompt, then generated tokens
  size_t prompt_len = 0;
  int32_t computed = 0;         // tokens whose keys/values are in the cache
  std::vector<int32_t> blocks;
  int32_t slot = -1;            // adapter slot, -1 = base model
  Sampler sampler{{}, 0};
  GenerationResult result;
  bool done = false;
  Clock::time_point first_token;
};

// The sequences of one call, one per request, holding the request's adapter pinned. Whatever
// happens, every KV block and adapter pin goes back when the set dies.
class Generator::SequenceSet {
 public:
  SequenceSet(Generator& g, const std::vector<GenerationRequest>& requests) : g_(g) {
    try {
      add_all(requests);
    } catch (...) {
      for (auto& s : seqs_) finish(*s);  // the destructor does not run for a throwing constructor
      throw;
    }
  }
  ~SequenceSet() {
    for (auto& s : seqs_) finish(*s);
  }
  SequenceSet(const SequenceSet&) = delete;
  SequenceSet& operator=(const SequenceSet&) = delete;

  // Returns the sequence's blocks and adapter pin (once).
  void finish(Sequence& s) {
    g_.allocator_.release(s.blocks);
    if (s.slot >= 0) g_.model_.adapters()->release(s.slot);
    s.slot = -1;
  }
  std::vector<std::unique_ptr<Sequence>>& all() { return seqs_; }

 private:
  void add_all(const std::vector<GenerationRequest>& requests) {
    AdapterStore* store = g_.model_.adapters();
    for (size_t i = 0; i < requests.size(); ++i) {
      auto s = std::make_unique<Sequence>();
      s->index = i;
      s->params = &requests[i].params;
      s->tokens = requests[i].prompt;
      s->prompt_len = requests[i].prompt.size();
      s->sampler = Sampler(requests[i].params.sampling, requests[i].params.seed);
      s->done = requests[i].params.max_new_tokens == 0;
      const std::string& adapter = requests[i].params.adapter;
      // Pushed before acquiring, so a failed acquire leaves nothing pinned behind.
      Sequence& added = *seqs_.emplace_back(std::move(s));
      if (!adapter.empty()) {
        MIL_CHECK(store != nullptr, "request {}: unknown adapter '{}' (no adapters are registered)", i,
                  adapter);
        added.slot = store->acquire(adapter);
      }
    }
  }

  Generator& g_;
  std::vector<std::unique_ptr<Sequence>> seqs_;
};

Generator::Generator(LlamaModel& model, int64_t kv_tokens, int32_t block_size)
    : model_(model),
      cache_(model.make_kv_cache((kv_tokens + block_size - 1) / block_size, block_size)),
      allocator_(cache_.num_blocks()),
      kv_tokens_(kv_tokens) {
  // A sequence holds at most the whole cache and the model's positions.
  const int64_t most_blocks =
      std::min<int64_t>(cache_.num_blocks(),
                        (model.config().max_position_embeddings + block_size - 1) / block_size);
  model_.capture_decode_graphs(cache_, LlamaModel::default_graph_batch_sizes(),
                               static_cast<int32_t>(most_blocks));
}

Generator::~Generator() { model_.release_decode_graphs(cache_); }

void Generator::validate(const std::vector<GenerationRequest>& requests, bool prompt_only) const {
  const int64_t vocab = model_.config().vocab_size;
  const int32_t bs = cache_.block_size();
  int64_t blocks = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    const GenerationRequest& r = requests[i];
    MIL_CHECK(!r.prompt.empty(), "request {}: empty prompt", i);
    MIL_CHECK(r.params.max_new_tokens >= 0, "request {}: max_new_tokens must not be negative", i);
    for (int32_t id : r.prompt) {
      MIL_CHECK(id >= 0 && id < vocab, "request {}: token id {} is outside the vocabulary ({})", i,
                id, vocab);
    }
    const int64_t tokens =
        static_cast<int64_t>(r.prompt.size()) + (prompt_only ? 0 : r.params.max_new_tokens);
    MIL_CHECK(tokens <= model_.config().max_position_embeddings,
              "request {}: prompt ({} tokens) + max_new_tokens ({}) exceed the model's {} positions",
              i, r.prompt.size(), r.params.max_new_tokens, model_.config().max_position_embeddings);
    blocks += (tokens + bs - 1) / bs;
  }
  MIL_CHECK(blocks <= cache_.num_blocks(),
            "the requests need {} KV blocks of {} tokens but the cache holds {} ({} tokens)", blocks,
            bs, cache_.num_blocks(), kv_tokens_);
}

StepBatch Generator::build_step(std::vector<Sequence*>& active, bool all_logits,
                                std::vector<int32_t>& logit_row_of) {
  const int32_t bs = cache_.block_size();
  const int64_t budget = model_.max_tokens_per_step();
  StepBatch step;
  step.query_start.push_back(0);
  logit_row_of.assign(active.size(), -1);
  size_t included = 0;
  for (size_t i = 0; i < active.size(); ++i) {
    Sequence& s = *active[i];
    const int64_t used = static_cast<int64_t>(step.token_ids.size());
    const int64_t pending = static_cast<int64_t>(s.tokens.size()) - s.computed;
    const int64_t take = std::min(pending, budget - used);
    if (take <= 0) break;
    const int64_t context = s.computed + take;
    const int64_t needed = (context + bs - 1) / bs - static_cast<int64_t>(s.blocks.size());
    // validate() reserved room for every request's whole length, so this cannot fail.
    MIL_CHECK(needed <= 0 || allocator_.allocate(needed, s.blocks), "KV cache exhausted");
    for (int64_t t = 0; t < take; ++t) {
      const int32_t pos = static_cast<int32_t>(s.computed + t);
      step.token_ids.push_back(s.tokens[pos]);
      step.positions.push_back(pos);
      step.slots.push_back(s.blocks[pos / bs] * bs + pos % bs);
      if (all_logits) step.logit_rows.push_back(static_cast<int32_t>(used + t));
    }
    if (take == pending && !all_logits) {
      logit_row_of[i] = static_cast<int32_t>(step.logit_rows.size());
      step.logit_rows.push_back(static_cast<int32_t>(used + take - 1));
    }
    const auto rows_end = static_cast<int32_t>(step.token_ids.size());
    step.query_start.push_back(rows_end);
    step.context_len.push_back(static_cast<int32_t>(context));
    // Consecutive rows of one adapter form one segment (the rows come sorted by slot).
    if (!step.lora_segments.empty() && step.lora_segments.back().slot == s.slot) {
      step.lora_segments.back().row_end = rows_end;
    } else {
      step.lora_segments.push_back({static_cast<int32_t>(used), rows_end, s.slot});
    }
    s.computed = static_cast<int32_t>(context);
    ++included;
  }
  active.resize(included);
  logit_row_of.resize(included);
  size_t max_blocks = 0;
  for (const Sequence* s : active) max_blocks = std::max(max_blocks, s->blocks.size());
  step.max_blocks_per_seq = static_cast<int32_t>(max_blocks);
  for (const Sequence* s : active) {
    step.block_table.insert(step.block_table.end(), s->blocks.begin(), s->blocks.end());
    step.block_table.resize(step.block_table.size() + (max_blocks - s->blocks.size()), s->blocks[0]);
  }
  bool any_adapter = false;
  for (const LoraSegment& seg : step.lora_segments) any_adapter |= seg.slot >= 0;
  if (!any_adapter) step.lora_segments.clear();
  return step;
}

int32_t Generator::choose(const Tensor& logits, int64_t row, Sampler& sampler) {
  const Tensor r = logits.slice_rows(row, 1);
  int32_t token = 0;
  if (sampler.greedy()) {
    host_ops_->argmax(r, &token);
  } else {
    const float u = sampler.next_uniform();
    host_ops_->sample(r, &sampler.params(), &u, &token);
  }
  return token;
}

void Generator::choose_on_device(const Tensor& logits, const std::vector<Sequence*>& active,
                                 const std::vector<int32_t>& logit_row_of,
                                 std::vector<int32_t>& tokens) {
  if (!device_sampler_) device_sampler_ = std::make_unique<DeviceSampler>(model_.ops());
  device_rows_.assign(static_cast<size_t>(logits.rows), DeviceSampleRow{});
  for (size_t i = 0; i < active.size(); ++i) {
    if (logit_row_of[i] < 0) continue;
    Sampler& sampler = active[i]->sampler;
    DeviceSampleRow& r = device_rows_[static_cast<size_t>(logit_row_of[i])];
    r.sampling = sampler.params();  // temperature <= 0: argmax, as choose() does
    if (!sampler.greedy()) {
      r.uniform = sampler.next_uniform();  // one draw per sampled token, as choose() draws
      r.temperature = sampler.params().temperature;
    }
  }
  device_sampler_->choose(logits, device_rows_, device_choices_);
  tokens.resize(device_choices_.size());
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = device_choices_[i].token;
}

std::vector<GenerationResult> Generator::generate_batch(const std::vector<GenerationRequest>& requests,
                                                        const BatchTokenCallback& on_token) {
  validate(requests, false);
  SequenceSet set(*this, requests);
  auto& seqs = set.all();

  const Clock::time_point start = Clock::now();
  std::vector<int32_t> logit_row_of, device_tokens;
  const bool on_device = samples_on_device(sample_on_device_, model_.ops());
  for (;;) {
    std::vector<Sequence*> active;
    for (auto& s : seqs) {
      if (!s->done) active.push_back(s.get());
    }
    if (active.empty()) break;
    std::stable_sort(active.begin(), active.end(),
                     [](const Sequence* a, const Sequence* b) { return a->slot < b->slot; });
    const StepBatch step = build_step(active, false, logit_row_of);
    const Tensor logits =
        model_.forward(step, cache_, on_device ? LogitsOn::Device : LogitsOn::Host);
    if (on_device) choose_on_device(logits, active, logit_row_of, device_tokens);
    const Clock::time_point now = Clock::now();
    for (size_t i = 0; i < active.size(); ++i) {
      if (logit_row_of[i] < 0) continue;  // prompt not fully read yet
      Sequence& s = *active[i];
      const GenerationParams& p = *s.params;
      const int32_t token = on_device ? device_tokens[static_cast<size_t>(logit_row_of[i])]
                                      : choose(logits, logit_row_of[i], s.sampler);
      if (s.result.tokens.empty()) s.first_token = now;
      s.result.tokens.push_back(token);
      s.tokens.push_back(token);
      const auto& eos = model_.config().eos_token_ids;
      bool finished = true;
      if (p.stop_at_eos && std::find(eos.begin(), eos.end(), token) != eos.end()) {
        s.result.finish = FinishReason::EndOfSequence;
      } else if (std::find(p.stop_token_ids.begin(), p.stop_token_ids.end(), token) !=
                 p.stop_token_ids.end()) {
        s.result.finish = FinishReason::EndOfSequence;
      } else if (static_cast<int32_t>(s.result.tokens.size()) >= p.max_new_tokens) {
        s.result.finish = FinishReason::Length;
      } else {
        finished = false;
      }
      if (on_token && !on_token(s.index, token) && !finished) {
        s.result.finish = FinishReason::Cancelled;
        finished = true;
      }
      if (finished) {
        s.done = true;
        s.result.prefill_seconds = seconds_between(start, s.first_token);
        s.result.decode_seconds = seconds_between(s.first_token, now);
        set.finish(s);
      }
    }
  }
  std::vector<GenerationResult> results;
  for (auto& s : seqs) results.push_back(std::move(s->result));
  return results;
}

GenerationResult Generator::generate(const std::vector<int32_t>& prompt,
                                     const GenerationParams& params, const TokenCallback& on_token) {
  BatchTokenCallback callback;
  if (on_token) callback = [&](size_t, int32_t token) { return on_token(token); };
  return generate_batch({{prompt, params}}, callback)[0];
}

std::vector<OwnedTensor> Generator::prompt_logits_batch(const std::vector<GenerationRequest>& requests) {
  validate(requests, true);
  SequenceSet set(*this, requests);
  auto& seqs = set.all();
  int64_t total = 0;
  for (const auto& s : seqs) total += static_cast<int64_t>(s->tokens.size());
  MIL_CHECK(total <= model_.max_tokens_per_step(),
            "{} prompt tokens do not fit in one step of {}", total, model_.max_tokens_per_step());
  // Rows in request order (not sorted by adapter), so segments interleave base and adapter
  // rows exactly as the caller arranged them.
  std::vector<Sequence*> active;
  for (auto& s : seqs) active.push_back(s.get());
  std::vector<int32_t> unused;
  const StepBatch step = build_step(active, true, unused);
  const Tensor logits = model_.forward(step, cache_);
  std::vector<OwnedTensor> out;
  int64_t row = 0;
  for (const auto& s : seqs) {
    const auto n = static_cast<int64_t>(s->tokens.size());
    OwnedTensor t(DType::F32, n, logits.cols);
    for (int64_t r = 0; r < n; ++r) {
      std::memcpy(t.view().row<float>(r), logits.row<float>(row + r), logits.cols * sizeof(float));
    }
    row += n;
    out.push_back(std::move(t));
  }
  return out;
}

Tensor Generator::prompt_logits(const std::vector<int32_t>& prompt) {
  // Longer prompts than one step: run in chunks, keeping every position's logits.
  const int64_t chunk = model_.max_tokens_per_step();
  if (static_cast<int64_t>(prompt.size()) <= chunk) {
    last_logits_ = std::move(prompt_logits_batch({{prompt, {}}})[0]);
    return last_logits_.view();
  }
  validate({{prompt, {}}}, true);
  Sequence s;
  s.tokens = prompt;
  OwnedTensor all(DType::F32, static_cast<int64_t>(prompt.size()), model_.config().vocab_size);
  try {
    while (s.computed < static_cast<int32_t>(prompt.size())) {
      const int32_t begin = s.computed;
      std::vector<Sequence*> active{&s};
      std::vector<int32_t> unused;
      const StepBatch step = build_step(active, true, unused);
      const Tensor l = model_.forward(step, cache_);
      for (int64_t r = 0; r < l.rows; ++r) {
        std::memcpy(all.view().row<float>(begin + r), l.row<float>(r), l.cols * sizeof(float));
      }
    }
  } catch (...) {
    allocator_.release(s.blocks);
    throw;
  }
  allocator_.release(s.blocks);
  last_logits_ = std::move(all);
  return last_logits_.view();
}

}  // namespace mil
