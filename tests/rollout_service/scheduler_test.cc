// Scheduler tests without a model: a simulated paged KV cache records which
// (token, position) each slot holds, every logit row reads its whole prefix
// back through its block table, and the "sampled" token is a hash of what it
// read. Any paging error (wrong slot, stale or shared-but-overwritten page)
// shows up as a read mismatch or as different final sequences.
#include "rollout_service/scheduler.h"

#include <map>
#include <random>
#include <set>

#include "gtest/gtest.h"

namespace lockstep::rollout {
namespace {

constexpr int32_t kVocab = 50;

class Simulator {
 public:
  explicit Simulator(const SchedulerOptions& options)
      : sched_(options),
        token_(options.num_pages * options.page_size, -1),
        pos_(options.num_pages * options.page_size, -1) {}

  Scheduler& sched() { return sched_; }

  // Adds a group whose samples stop at `max_len` tokens.
  std::vector<int64_t> Add(const std::vector<int32_t>& prompt, int n,
                           int64_t max_len) {
    auto ids = sched_.AddGroup(prompt, n);
    for (size_t j = 0; j < ids.size(); ++j) {
      max_len_[ids[j]] = max_len;
      salt_[ids[j]] = static_cast<int32_t>(j);
      key_[ids[j]] = {groups_, static_cast<int>(j)};
    }
    ++groups_;
    return ids;
  }

  // Runs one step; returns the plan. Fails the test on a read mismatch.
  StepPlan Step() {
    StepPlan plan = sched_.Schedule();
    const auto& b = plan.batch;
    const int64_t ps = sched_.options().page_size;
    EXPECT_EQ(b.tokens.size(), b.positions.size());
    EXPECT_EQ(b.tokens.size(), b.slots.size());
    EXPECT_EQ(static_cast<int64_t>(b.block_tables.size()),
              b.num_seqs * b.max_blocks_per_seq);
    EXPECT_LE(static_cast<int64_t>(b.tokens.size()),
              sched_.options().max_batch_tokens);
    for (size_t i = 0; i < b.tokens.size(); ++i) {
      const int64_t row = b.seq_ids[i];
      const int64_t page =
          b.block_tables[row * b.max_blocks_per_seq + b.positions[i] / ps];
      EXPECT_EQ(b.slots[i], page * ps + b.positions[i] % ps);
      token_[b.slots[i]] = b.tokens[i];
      pos_[b.slots[i]] = b.positions[i];
    }
    std::vector<int32_t> sampled;
    for (size_t r = 0; r < b.logit_rows.size(); ++r) {
      const int64_t i = b.logit_rows[r];
      const int64_t row = b.seq_ids[i];
      uint64_t h = 1469598103934665603ull;
      for (int64_t p = 0; p <= b.positions[i]; ++p) {
        const int64_t slot =
            b.block_tables[row * b.max_blocks_per_seq + p / ps] * ps + p % ps;
        EXPECT_EQ(pos_[slot], p) << "slot " << slot;
        h = (h ^ static_cast<uint64_t>(token_[slot] + 1)) * 1099511628211ull;
      }
      const int64_t seq = plan.sample_seqs[r];
      // The sample index salts the hash so that samples of one prompt differ.
      h = (h ^ static_cast<uint64_t>(salt_[seq] + 977)) * 1099511628211ull;
      sampled.push_back(static_cast<int32_t>((h >> 33) % kVocab));
    }
    sched_.Commit(plan);
    for (size_t r = 0; r < plan.sample_seqs.size(); ++r) {
      const int64_t seq = plan.sample_seqs[r];
      sched_.AppendToken(seq, sampled[r]);
      if (static_cast<int64_t>(sched_.tokens(seq).size()) >= max_len_[seq]) {
        finished_[seq] = sched_.tokens(seq);
        sched_.Remove(seq);
      }
    }
    EXPECT_EQ(sched_.CheckInvariants(), "");
    return plan;
  }

  void RunToCompletion(int max_steps = 100000) {
    for (int i = 0; i < max_steps && sched_.has_work(); ++i) Step();
    EXPECT_FALSE(sched_.has_work());
  }

  std::map<int64_t, std::vector<int32_t>>& finished() { return finished_; }

  // Finished sequences keyed by (group added, sample index): comparable
  // across runs whose sequence ids differ.
  std::map<std::pair<int, int>, std::vector<int32_t>> keyed() const {
    std::map<std::pair<int, int>, std::vector<int32_t>> out;
    for (const auto& [id, toks] : finished_) out[key_.at(id)] = toks;
    return out;
  }

 private:
  Scheduler sched_;
  std::vector<int32_t> token_;
  std::vector<int64_t> pos_;
  std::map<int64_t, int64_t> max_len_;
  std::map<int64_t, int32_t> salt_;
  std::map<int64_t, std::vector<int32_t>> finished_;
  std::map<int64_t, std::pair<int, int>> key_;
  int groups_ = 0;
};

std::vector<int32_t> Prompt(int len, int seed) {
  std::vector<int32_t> p(len);
  for (int i = 0; i < len; ++i) p[i] = (seed * 7 + i * 13) % kVocab;
  return p;
}

SchedulerOptions Opts(int64_t pages, int64_t ps, int64_t budget,
                      bool sharing = true) {
  SchedulerOptions o;
  o.num_pages = pages;
  o.page_size = ps;
  o.max_batch_tokens = budget;
  o.prefix_sharing = sharing;
  return o;
}

TEST(SchedulerTest, ChunkedPrefillThenDecode) {
  Simulator sim(Opts(16, 4, 5));
  auto ids = sim.Add(Prompt(12, 1), 1, 15);
  StepPlan p1 = sim.Step();
  ASSERT_EQ(p1.pieces.size(), 1u);
  EXPECT_EQ(p1.pieces[0].start, 0);
  EXPECT_EQ(p1.pieces[0].count, 5);
  EXPECT_TRUE(p1.sample_seqs.empty());
  EXPECT_EQ(p1.batch.max_blocks_per_seq, 3);  // pages for the whole prompt
  StepPlan p2 = sim.Step();
  EXPECT_EQ(p2.pieces[0].start, 5);
  EXPECT_EQ(p2.pieces[0].count, 5);
  StepPlan p3 = sim.Step();
  EXPECT_EQ(p3.pieces[0].start, 10);
  EXPECT_EQ(p3.pieces[0].count, 2);
  ASSERT_EQ(p3.sample_seqs.size(), 1u);
  EXPECT_EQ(p3.batch.logit_rows[0], 1);
  StepPlan p4 = sim.Step();  // decode of the first sampled token
  ASSERT_EQ(p4.batch.tokens.size(), 1u);
  EXPECT_EQ(p4.batch.positions[0], 12);
  EXPECT_EQ(p4.batch.max_blocks_per_seq, 4);  // crossed into a 4th page
  EXPECT_EQ(p4.decode_tokens, 1);
  sim.RunToCompletion();
  EXPECT_EQ(sim.finished().at(ids[0]).size(), 15u);
  EXPECT_EQ(sim.sched().blocks().num_free(), 16);
}

TEST(SchedulerTest, DecodesComeFirstAndPrefillFillsTheBudget) {
  Simulator sim(Opts(32, 4, 8));
  sim.Add(Prompt(3, 1), 1, 30);
  sim.Step();  // prefill of A, samples its first token
  sim.Add(Prompt(20, 2), 1, 30);
  StepPlan p = sim.Step();
  ASSERT_EQ(p.pieces.size(), 2u);
  EXPECT_EQ(p.pieces[0].count, 1);  // A's decode
  EXPECT_EQ(p.pieces[1].count, 7);  // B's first prefill chunk
  EXPECT_EQ(p.decode_tokens, 1);
  EXPECT_EQ(p.prefill_tokens, 7);
  EXPECT_EQ(p.sample_seqs.size(), 1u);
  sim.RunToCompletion();
}

TEST(SchedulerTest, SamplesShareCompletePromptPages) {
  Simulator sim(Opts(32, 4, 64));
  auto ids = sim.Add(Prompt(10, 3), 3, 14);
  // Step 1: the shared prefix (positions 0..7, two pages) alone, no logits.
  StepPlan p1 = sim.Step();
  ASSERT_EQ(p1.pieces.size(), 1u);
  EXPECT_EQ(p1.pieces[0].count, 8);
  EXPECT_TRUE(p1.sample_seqs.empty());
  EXPECT_EQ(sim.sched().blocks().num_used(), 2);
  // Step 2: each sample computes positions 8..9 in a page of its own.
  StepPlan p2 = sim.Step();
  ASSERT_EQ(p2.pieces.size(), 3u);
  for (const StepPiece& piece : p2.pieces) {
    EXPECT_EQ(piece.start, 8);
    EXPECT_EQ(piece.count, 2);
  }
  EXPECT_EQ(p2.sample_seqs.size(), 3u);
  // Row r's first two block-table entries are the shared pages.
  const auto& bt = p2.batch.block_tables;
  const int64_t mb = p2.batch.max_blocks_per_seq;
  for (int r = 1; r < 3; ++r) {
    EXPECT_EQ(bt[r * mb], bt[0]);
    EXPECT_EQ(bt[r * mb + 1], bt[1]);
    EXPECT_NE(bt[r * mb + 2], bt[2]);
  }
  EXPECT_EQ(sim.sched().blocks().ref_count(bt[0]), 3);
  EXPECT_EQ(sim.sched().blocks().num_used(), 2 + 3);
  sim.RunToCompletion();
  // Different samples, same prompt.
  EXPECT_NE(sim.finished().at(ids[0]), sim.finished().at(ids[1]));
  EXPECT_EQ(sim.sched().blocks().num_free(), 32);
}

TEST(SchedulerTest, SharingDoesNotChangeResults) {
  std::map<std::pair<int, int>, std::vector<int32_t>> with, without;
  for (bool sharing : {true, false}) {
    Simulator sim(Opts(64, 4, 16, sharing));
    sim.Add(Prompt(17, 4), 4, 30);
    sim.Add(Prompt(4, 5), 3, 20);  // 4 tokens: (4-1)/4 = 0 shared pages
    sim.Add(Prompt(9, 6), 1, 25);
    sim.RunToCompletion();
    (sharing ? with : without) = sim.keyed();
  }
  EXPECT_EQ(with, without);
}

TEST(SchedulerTest, AdmissionWaitsForFreePages) {
  Simulator sim(Opts(4, 4, 64));
  sim.Add(Prompt(8, 1), 1, 8 + 1);
  sim.Add(Prompt(8, 2), 1, 8 + 1);
  sim.Add(Prompt(8, 3), 1, 8 + 1);
  StepPlan p = sim.Step();
  EXPECT_EQ(p.pieces.size(), 2u);  // 2 x 2 pages fill the cache
  EXPECT_EQ(sim.sched().num_waiting_samples(), 1);
  sim.RunToCompletion();
  EXPECT_EQ(sim.finished().size(), 3u);
}

TEST(SchedulerTest, PreemptionByRecomputeKeepsResults) {
  std::map<std::pair<int, int>, std::vector<int32_t>> big, small;
  for (int64_t pages : {64, 6}) {
    Simulator sim(Opts(pages, 4, 32));
    sim.Add(Prompt(5, 1), 1, 22);
    sim.Add(Prompt(6, 2), 1, 22);
    sim.Add(Prompt(7, 3), 2, 20);
    int64_t preempted = 0;
    for (int i = 0; i < 10000 && sim.sched().has_work(); ++i) {
      preempted += sim.Step().preempted.size();
    }
    EXPECT_FALSE(sim.sched().has_work());
    if (pages == 6) {
      EXPECT_GT(preempted, 0);
      small = sim.keyed();
    } else {
      EXPECT_EQ(preempted, 0);
      big = sim.keyed();
    }
  }
  EXPECT_EQ(big, small);
}

TEST(SchedulerTest, OlderSequencesAreNotPreemptedForYoungerOnes) {
  Simulator sim(Opts(4, 4, 64));
  auto a = sim.Add(Prompt(4, 1), 1, 16);  // grows to 4 pages
  sim.Step();
  auto b = sim.Add(Prompt(4, 2), 1, 16);
  for (int i = 0; i < 100 && sim.sched().has_work(); ++i) {
    StepPlan p = sim.Step();
    for (int64_t id : p.preempted) EXPECT_EQ(id, b[0]);
  }
  EXPECT_EQ(sim.finished().size(), 2u);
}

TEST(SchedulerTest, PreemptAllFreesEveryPageAndResumes) {
  std::map<std::pair<int, int>, std::vector<int32_t>> reference;
  {
    Simulator sim(Opts(64, 4, 16));
    sim.Add(Prompt(13, 1), 3, 25);
    sim.Add(Prompt(6, 2), 1, 25);
    sim.RunToCompletion();
    reference = sim.keyed();
  }
  Simulator sim(Opts(64, 4, 16));
  sim.Add(Prompt(13, 1), 3, 25);
  sim.Add(Prompt(6, 2), 1, 25);
  for (int round = 0; round < 4; ++round) {
    for (int i = 0; i < 3; ++i) sim.Step();
    std::vector<int64_t> preempted = sim.sched().PreemptAll();
    EXPECT_EQ(sim.sched().blocks().num_used(), 0);
    EXPECT_EQ(sim.sched().num_running(), 0);
    EXPECT_EQ(sim.sched().CheckInvariants(), "");
  }
  sim.RunToCompletion();
  EXPECT_EQ(sim.keyed(), reference);
}

TEST(SchedulerTest, RemoveInEveryState) {
  Simulator sim(Opts(16, 4, 8));
  auto g = sim.Add(Prompt(13, 1), 3, 40);  // prefix of 12 tokens pending
  auto s = sim.Add(Prompt(3, 2), 1, 40);
  sim.sched().Remove(g[1]);  // waiting, blocked on its prefix
  EXPECT_EQ(sim.sched().CheckInvariants(), "");
  sim.Step();  // prefix prefill (8 of 12)
  sim.Step();
  sim.Step();
  sim.sched().Remove(g[0]);  // running or waiting
  sim.sched().Remove(s[0]);
  EXPECT_EQ(sim.sched().CheckInvariants(), "");
  sim.sched().Remove(g[2]);
  EXPECT_EQ(sim.sched().CheckInvariants(), "");
  EXPECT_FALSE(sim.sched().has_work());
  EXPECT_EQ(sim.sched().blocks().num_free(), 16);
  sim.sched().Remove(12345);  // unknown: ignored
}

TEST(SchedulerTest, RandomizedStressKeepsInvariantsAndResults) {
  for (int trial = 0; trial < 6; ++trial) {
    std::mt19937 rng(trial);
    struct Spec {
      std::vector<int32_t> prompt;
      int n;
      int64_t max_len;
    };
    std::vector<Spec> specs;
    for (int i = 0; i < 12; ++i) {
      const int len = 1 + rng() % 20;
      specs.push_back({Prompt(len, 100 * trial + i),
                       1 + static_cast<int>(rng() % 4),
                       len + 1 + static_cast<int64_t>(rng() % 20)});
    }
    auto run = [&](int64_t pages, int64_t budget, bool chaos) {
      Simulator sim(Opts(pages, 4, budget));
      size_t next = 0;
      std::mt19937 r2(trial * 31 + (chaos ? 1 : 0));
      for (int step = 0; step < 20000; ++step) {
        if (next < specs.size() && (r2() % 3 == 0 || !sim.sched().has_work())) {
          sim.Add(specs[next].prompt, specs[next].n, specs[next].max_len);
          ++next;
        }
        if (!sim.sched().has_work() && next == specs.size()) break;
        if (chaos && r2() % 17 == 0) {
          sim.sched().PreemptAll();
          EXPECT_EQ(sim.sched().CheckInvariants(), "");
        }
        sim.Step();
      }
      EXPECT_FALSE(sim.sched().has_work());
      return sim.keyed();
    };
    auto reference = run(256, 512, false);
    size_t expected = 0;
    for (const Spec& s : specs) expected += s.n;
    EXPECT_EQ(reference.size(), expected);
    EXPECT_EQ(run(12, 7, false), reference) << "trial " << trial;
    EXPECT_EQ(run(12, 7, true), reference) << "trial " << trial;
    EXPECT_EQ(run(40, 3, true), reference) << "trial " << trial;
  }
}

}  // namespace
}  // namespace lockstep::rollout
