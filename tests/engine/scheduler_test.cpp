// The batching policy step by step, with no model: a small simulation carries out each plan
// (blocks taken and freed, one token generated whenever a sequence's pending tokens are all
// computed) and every test is a table of the steps it expects, written as
//   "A1 B3 -C +D4"  =  A runs 1 token, B a 3-token chunk, C is preempted, D is admitted
//                      with a 4-token first chunk ("+D4c8": 8 more tokens from the prefix cache).
#include "engine/scheduler.h"

#include <gtest/gtest.h>

#include <map>
#include <set>
#include <string>
#include <vector>

namespace mil {
namespace {

struct SimRequest {
  std::string name;
  int64_t prompt = 0;
  int64_t max_new = 1;
  std::string adapter;
  bool all_logits = false;
  int64_t cached = 0;  // what the prefix cache holds for it (tokens), evictable blocks = 0
};

SimRequest req(std::string name, int64_t prompt, int64_t max_new, std::string adapter = "",
               bool all_logits = false, int64_t cached = 0) {
  return {std::move(name), prompt, max_new, std::move(adapter), all_logits, cached};
}

class Sim {
 public:
  Sim(SchedulerBudgets budgets, int64_t blocks, int32_t adapter_slots = 8)
      : budgets_(budgets), free_(blocks), total_blocks_(blocks), slots_(adapter_slots) {}

  void submit(const SimRequest& r) {
    Seq s;
    s.req = r;
    s.tokens = r.prompt;
    waiting_.push_back(s);
  }
  void cancel(const std::string& name) {
    for (auto* q : {&running_, &waiting_}) {
      for (auto it = q->begin(); it != q->end(); ++it) {
        if (it->req.name == name) {
          free_ += it->blocks;
          q->erase(it);
          return;
        }
      }
    }
  }

  std::string step() {
    std::vector<RunningSeq> running;
    for (const Seq& s : running_) {
      running.push_back({s.tokens, s.computed, s.blocks + s.shared, s.blocks,
                         s.req.all_logits && s.generated == 0});
    }
    std::vector<WaitingSeq> waiting;
    for (const Seq& s : waiting_) {
      waiting.push_back({s.tokens, !s.req.all_logits, s.req.all_logits && s.generated == 0});
    }
    SchedulerState st;
    st.running = &running;
    st.waiting = &waiting;
    st.available_blocks = free_;
    st.prefix = [&](size_t i, int64_t max_tokens) {
      PrefixHit h;
      h.tokens = std::min(waiting_[i].req.cached, max_tokens) / budgets_.block_size *
                 budgets_.block_size;
      return h;
    };
    st.adapter_fits = [&](size_t i) {
      const std::string& a = waiting_[i].req.adapter;
      if (a.empty() || pinned_.contains(a)) return true;
      std::set<std::string> in_use;
      for (const Seq& s : running_) {
        if (!s.req.adapter.empty()) in_use.insert(s.req.adapter);
      }
      for (size_t j = 0; j < i; ++j) {
        if (!waiting_[j].req.adapter.empty()) in_use.insert(waiting_[j].req.adapter);
      }
      return in_use.contains(a) || static_cast<int32_t>(in_use.size()) < slots_;
    };
    const StepPlan plan = plan_step(st, budgets_);

    std::string out;
    auto add = [&](const std::string& word) { out += (out.empty() ? "" : " ") + word; };
    for (const auto& c : plan.run) add(running_[c.index].req.name + std::to_string(c.tokens));
    for (size_t i : plan.preempt) add("-" + running_[i].req.name);
    for (const auto& c : plan.admit) {
      add("+" + waiting_[c.index].req.name + std::to_string(c.tokens) +
          (c.cached_tokens ? "c" + std::to_string(c.cached_tokens) : ""));
    }
    if (out.empty()) out = "idle";

    // Carry it out.
    for (const auto& c : plan.run) advance(running_[c.index], c.tokens, c.new_blocks);
    std::vector<Seq> keep, preempted;
    std::vector<bool> out_flags(running_.size(), false);
    for (size_t i : plan.preempt) out_flags[i] = true;
    for (size_t i = 0; i < running_.size(); ++i) {
      if (out_flags[i]) {
        Seq s = running_[i];
        free_ += s.blocks;
        s.blocks = 0;
        s.shared = 0;
        s.computed = 0;
        preempted.push_back(s);
      } else {
        keep.push_back(running_[i]);
      }
    }
    running_ = keep;
    for (auto it = preempted.rbegin(); it != preempted.rend(); ++it) waiting_.insert(waiting_.begin(), *it);
    for (const auto& c : plan.admit) {
      Seq s = waiting_[c.index];
      s.computed = c.cached_tokens;
      s.shared = c.cached_tokens / budgets_.block_size;  // cached blocks others hold too
      advance(s, c.tokens, c.new_blocks);
      running_.push_back(s);
    }
    waiting_.erase(waiting_.begin(), waiting_.begin() + static_cast<std::ptrdiff_t>(plan.admit.size()));
    // Finished sequences leave.
    for (auto it = running_.begin(); it != running_.end();) {
      if (it->generated >= it->req.max_new) {
        free_ += it->blocks;
        finished_.push_back(it->req.name + ":" + std::to_string(it->generated));
        it = running_.erase(it);
      } else {
        ++it;
      }
    }
    pinned_.clear();
    for (const Seq& s : running_) pinned_.insert(s.req.adapter);
    EXPECT_GE(free_, 0);
    EXPECT_LE(free_, total_blocks_);
    return out;
  }

  int64_t free_blocks() const { return free_; }
  const std::vector<std::string>& finished() const { return finished_; }
  bool done() const { return running_.empty() && waiting_.empty(); }

 private:
  struct Seq {
    SimRequest req;
    int64_t tokens = 0, computed = 0, generated = 0;
    int64_t blocks = 0;  // its own
    int64_t shared = 0;  // prefix-cache blocks it shares (never freed by the sim)
  };
  void advance(Seq& s, int64_t tokens, int64_t new_blocks) {
    s.computed += tokens;
    s.blocks += new_blocks;
    free_ -= new_blocks;
    EXPECT_GE((s.blocks + s.shared) * budgets_.block_size, s.computed) << s.req.name;
    if (s.computed == s.tokens) {  // logits of the last token: one more token
      ++s.generated;
      ++s.tokens;
    }
  }

  SchedulerBudgets budgets_;
  int64_t free_, total_blocks_;
  int32_t slots_;
  std::vector<Seq> running_, waiting_;
  std::set<std::string> pinned_;
  std::vector<std::string> finished_;
};

SchedulerBudgets budgets(int64_t step_tokens, int32_t block_size = 4) {
  SchedulerBudgets b;
  b.block_size = block_size;
  b.step_tokens = step_tokens;
  return b;
}

void expect_steps(Sim& sim, const std::vector<std::string>& steps) {
  for (size_t i = 0; i < steps.size(); ++i) {
    EXPECT_EQ(sim.step(), steps[i]) << "step " << i;
  }
}

TEST(Scheduler, LongPromptIsChunkedWithinTheStepBudget) {
  Sim sim(budgets(8), 100);
  sim.submit(req("A", 20, 3));
  expect_steps(sim, {"+A8", "A8", "A4", "A1", "A1", "idle"});
  EXPECT_EQ(sim.finished(), (std::vector<std::string>{"A:3"}));
  EXPECT_EQ(sim.free_blocks(), 100);
}

TEST(Scheduler, DecodeRowsCountAgainstTheBudgetAndComeFirst) {
  Sim sim(budgets(6), 100);
  sim.submit(req("A", 2, 4));
  sim.submit(req("B", 2, 4));
  EXPECT_EQ(sim.step(), "+A2 +B2");
  sim.submit(req("C", 9, 2));
  // Two decode rows leave 4 tokens for C's first chunk; then older first.
  expect_steps(sim, {"A1 B1 +C4", "A1 B1 C4", "A1 B1 C1", "C1", "idle"});
}

TEST(Scheduler, OlderPrefillsGetTheirChunksFirst) {
  Sim sim(budgets(8), 100);
  sim.submit(req("A", 12, 1));
  sim.submit(req("B", 12, 1));
  expect_steps(sim, {"+A8", "A4 +B4", "B8", "idle"});
}

TEST(Scheduler, AdmissionIsFifoAndWaitsForItsChunksBlocks) {
  Sim sim(budgets(64), 6);  // 6 blocks of 4 tokens
  sim.submit(req("A", 12, 2));  // 3 blocks, then a 4th for its token 13
  sim.submit(req("B", 13, 1));  // 4 blocks: does not fit beside A
  sim.submit(req("C", 2, 1));   // would fit, but FIFO: it waits behind B
  expect_steps(sim, {"+A12", "A1", "+B13 +C2", "idle"});
  EXPECT_EQ(sim.finished(), (std::vector<std::string>{"A:2", "B:1", "C:1"}));
}

TEST(Scheduler, BatchSizeLimitsRunningSequences) {
  SchedulerBudgets b = budgets(64);
  b.max_batch_size = 2;
  Sim sim(b, 100);
  sim.submit(req("A", 3, 2));
  sim.submit(req("B", 3, 3));
  sim.submit(req("C", 3, 1));
  expect_steps(sim, {"+A3 +B3", "A1 B1", "B1 +C3", "idle"});
}

TEST(Scheduler, TotalTokenBudgetBoundsRunningKvTokens) {
  SchedulerBudgets b = budgets(64);
  b.total_tokens = 10;
  Sim sim(b, 100);
  sim.submit(req("A", 6, 1));
  sim.submit(req("B", 6, 1));  // 6 + 6 > 10: waits
  expect_steps(sim, {"+A6", "+B6", "idle"});
}

TEST(Scheduler, AdapterThatDoesNotFitWaitsAndBlocksTheQueue) {
  Sim sim(budgets(64), 100, /*adapter_slots=*/1);
  sim.submit(req("A", 3, 3, "x"));
  sim.submit(req("B", 3, 1, "y"));  // the only slot holds x
  sim.submit(req("C", 3, 1, ""));   // FIFO: behind B
  sim.submit(req("D", 3, 1, "x"));
  expect_steps(sim, {"+A3", "A1", "A1", "+B3 +C3", "+D3", "idle"});
}

TEST(Scheduler, SameAdapterSharesItsSlot) {
  Sim sim(budgets(64), 100, 1);
  sim.submit(req("A", 3, 2, "x"));
  sim.submit(req("B", 3, 2, "x"));
  expect_steps(sim, {"+A3 +B3", "A1 B1", "idle"});
}

TEST(Scheduler, DecodeGrowthPreemptsTheNewestAndItComesBackFirst) {
  // 4 blocks of 2 tokens. A and B each fill 2 blocks; the next token needs a 5th block.
  Sim sim(budgets(64, 2), 4);
  sim.submit(req("A", 3, 4));
  sim.submit(req("B", 3, 4));
  sim.submit(req("C", 1, 1));
  expect_steps(sim, {
      "+A3 +B3",  // each holds 2 blocks; token 4 is generated; C does not fit
      "A1 B1",    // position 3 fits in their second blocks; token 5 is generated
      "A1 -B",    // A's position 4 needs a 3rd block: B (newest) goes back, first in line
      "A1",       // B's recompute (5 tokens, 3 blocks) waits for room; A finishes
      "+B5 +C1",  // B recomputes prompt + its 2 generated tokens (and goes on); C behind it
      "B1",
      "idle",
  });
  EXPECT_EQ(sim.finished(), (std::vector<std::string>{"A:4", "C:1", "B:4"}));
}

TEST(Scheduler, SoleSequenceGrowingIntoAFullCacheIsNeverStarved) {
  Sim sim(budgets(64, 2), 3);
  sim.submit(req("A", 5, 2));  // 6 tokens at most: exactly the cache
  expect_steps(sim, {"+A5", "A1", "idle"});
}

TEST(Scheduler, PrefillChunkShrinksToTheFreeBlocksAndIsPreemptedForDecodes) {
  Sim sim(budgets(4, 2), 5);  // 5 blocks of 2 tokens, 4 rows a step
  sim.submit(req("B", 2, 5));
  sim.submit(req("A", 8, 1));
  expect_steps(sim, {
      "+B2 +A2",
      "B1 A3",  // A: 5 tokens in 3 blocks, none left
      "B1 A1",  // A's chunk shrinks to the one slot left in its last block
      "B1 -A",  // B's decode needs a block: A (newest) is preempted
      "B1 +A3", // B finishes; A starts over (FIFO front)
      "A4",
      "A1",
      "idle",
  });
  EXPECT_EQ(sim.free_blocks(), 5);
}

TEST(Scheduler, CancellationFreesRoomForTheQueue) {
  Sim sim(budgets(64), 4);
  sim.submit(req("A", 12, 10));
  sim.submit(req("B", 8, 1));
  expect_steps(sim, {"+A12", "A1"});
  sim.cancel("A");
  expect_steps(sim, {"+B8", "idle"});
  sim.submit(req("C", 4, 1));
  sim.cancel("C");  // before it was ever admitted
  expect_steps(sim, {"idle"});
  EXPECT_EQ(sim.free_blocks(), 4);
}

TEST(Scheduler, PrefixHitShortensTheFirstChunkButKeepsTheLastToken) {
  Sim sim(budgets(64), 100);
  sim.submit(req("A", 12, 1, "", false, 12));  // all cached: still computes its last block's token
  sim.submit(req("B", 10, 1, "", false, 8));
  expect_steps(sim, {"+A4c8 +B2c8", "idle"});
}

TEST(Scheduler, PromptLogprobsSkipThePrefixCacheAndBoundLogitRows) {
  SchedulerBudgets b = budgets(64);
  b.step_logit_rows = 5;
  Sim sim(b, 100);
  sim.submit(req("A", 12, 1, "", true, 12));
  sim.submit(req("B", 3, 1));
  expect_steps(sim, {"+A5 +B3", "A5", "A2", "idle"});
}

TEST(Scheduler, PreemptionLetsNoOneInThatStep) {
  Sim sim(budgets(64, 2), 4);
  sim.submit(req("A", 4, 3));
  sim.submit(req("B", 4, 3));
  EXPECT_EQ(sim.step(), "+A4 +B4");
  sim.submit(req("C", 1, 1));
  EXPECT_EQ(sim.step(), "A1 -B");
}

}  // namespace
}  // namespace mil
