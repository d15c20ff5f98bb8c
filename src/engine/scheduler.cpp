#include "engine/scheduler.h"

#include <algorithm>
#include <limits>

namespace mil {
namespace {

constexpr int64_t kUnlimited = std::numeric_limits<int64_t>::max();

int64_t blocks_for(int64_t tokens, int32_t block_size) {
  return (tokens + block_size - 1) / block_size;
}

// What the running sequences take from the step's budgets, so that a preemption can give it
// back.
struct Ledger {
  int64_t tokens_left = 0;     // step rows
  int64_t logit_rows_left = 0;
  int64_t blocks_left = 0;
  int64_t kv_tokens = 0;       // KV tokens of the running sequences after this step
};

}  // namespace

int64_t StepPlan::step_tokens() const {
  int64_t n = 0;
  for (const Chunk& c : run) n += c.tokens;
  for (const Chunk& c : admit) n += c.tokens;
  return n;
}

StepPlan plan_step(const SchedulerState& state, const SchedulerBudgets& budgets) {
  static const std::vector<RunningSeq> kNoRunning;
  static const std::vector<WaitingSeq> kNoWaiting;
  const std::vector<RunningSeq>& running = state.running ? *state.running : kNoRunning;
  const std::vector<WaitingSeq>& waiting = state.waiting ? *state.waiting : kNoWaiting;
  const int32_t bs = budgets.block_size;
  const int64_t kv_limit = budgets.total_tokens > 0 ? budgets.total_tokens : kUnlimited;

  Ledger l;
  l.tokens_left = budgets.step_tokens;
  l.logit_rows_left = budgets.step_logit_rows > 0 ? budgets.step_logit_rows : kUnlimited;
  l.blocks_left = state.available_blocks;
  for (const RunningSeq& r : running) l.kv_tokens += r.computed;

  StepPlan plan;
  const size_t n = running.size();
  std::vector<int64_t> take(n, 0), new_blocks(n, 0);
  std::vector<bool> preempted(n, false);

  // Preempts the most recently admitted running sequence, giving back what it took.
  auto preempt_newest = [&]() -> size_t {
    size_t v = n;
    while (v > 0 && preempted[v - 1]) --v;
    const size_t victim = v - 1;  // callers ensure one is left
    const RunningSeq& r = running[victim];
    preempted[victim] = true;
    plan.preempt.push_back(victim);
    l.tokens_left += take[victim];
    if (r.all_logits) l.logit_rows_left += take[victim];
    l.blocks_left += new_blocks[victim] + r.exclusive_blocks;
    l.kv_tokens -= r.computed + take[victim];
    take[victim] = 0;
    new_blocks[victim] = 0;
    return victim;
  };

  // Decode rows first, then the prompt chunks of sequences still prefilling; oldest first.
  std::vector<size_t> order;
  for (size_t i = 0; i < n; ++i) {
    if (running[i].tokens - running[i].computed == 1) order.push_back(i);
  }
  for (size_t i = 0; i < n; ++i) {
    if (running[i].tokens - running[i].computed > 1) order.push_back(i);
  }
  for (size_t i : order) {
    if (preempted[i]) continue;
    const RunningSeq& r = running[i];
    int64_t want = std::min(r.tokens - r.computed, l.tokens_left);
    if (r.all_logits) want = std::min(want, l.logit_rows_left);
    if (want <= 0) continue;  // no budget left this step: it waits, keeping its blocks
    for (;;) {
      // The most of `want` that the free blocks and the KV token limit allow.
      const int64_t by_blocks = (r.blocks + l.blocks_left) * bs - r.computed;
      const int64_t by_kv = kv_limit - l.kv_tokens;
      const int64_t t = std::min({want, by_blocks, by_kv});
      if (t >= 1) {
        take[i] = t;
        new_blocks[i] = std::max<int64_t>(0, blocks_for(r.computed + t, bs) - r.blocks);
        l.tokens_left -= t;
        if (r.all_logits) l.logit_rows_left -= t;
        l.blocks_left -= new_blocks[i];
        l.kv_tokens += t;
        break;
      }
      if (preempt_newest() == i) break;  // it was the newest itself
    }
  }
  for (size_t i = 0; i < n; ++i) {
    if (take[i] > 0) plan.run.push_back({i, take[i], 0, new_blocks[i]});
  }
  if (!plan.preempt.empty()) return plan;  // KV is short: admit nothing this step

  int64_t batch = static_cast<int64_t>(n);
  for (size_t w = 0; w < waiting.size(); ++w) {
    const WaitingSeq& s = waiting[w];
    if (budgets.max_batch_size > 0 && batch >= budgets.max_batch_size) break;
    PrefixHit hit;
    if (s.use_prefix && state.prefix) {
      // At least the last token is computed: its logits give the next token.
      hit = state.prefix(w, (s.tokens - 1) / bs * bs);
    }
    int64_t t = std::min(s.tokens - hit.tokens, l.tokens_left);
    if (s.all_logits) t = std::min(t, l.logit_rows_left);
    if (t <= 0) break;
    const int64_t need = blocks_for(hit.tokens + t, bs) - hit.tokens / bs;
    if (need + hit.evictable_blocks > l.blocks_left) break;
    if (l.kv_tokens + hit.tokens + t > kv_limit) break;
    if (state.adapter_fits && !state.adapter_fits(w)) break;
    plan.admit.push_back({w, t, hit.tokens, need});
    l.tokens_left -= t;
    if (s.all_logits) l.logit_rows_left -= t;
    l.blocks_left -= need + hit.evictable_blocks;
    l.kv_tokens += hit.tokens + t;
    ++batch;
  }
  return plan;
}

}  // namespace mil
