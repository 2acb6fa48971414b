// Engine tests over FakeModel (no gRPC, no real transformer): batch
// invariance of seeded outputs, preemption, prefix sharing, scoring, weight
// swaps, cancellation, deadlines, limits and validation.
#include "rollout_service/engine.h"

#include <atomic>
#include <cstring>
#include <map>
#include <random>
#include <thread>

#include "gtest/gtest.h"
#include "tests/rollout_service/engine_testing.h"
#include "tests/rollout_service/fake_model.h"

namespace lockstep::rollout {
namespace {

using testing::FakeModel;
using testing::FakeModelOptions;

using testing::Collect;
using testing::Output;
using testing::RandomPrompt;
using testing::Same;
using testing::SameBits;

GenerateJob Job(std::vector<int32_t> prompt, int n, uint64_t seed,
                int64_t max_tokens, float temperature = 1.0f) {
  GenerateJob job;
  PromptJob p;
  p.prompt = std::move(prompt);
  for (int j = 0; j < n; ++j) p.seeds.push_back(seed + j);
  job.prompts.push_back(std::move(p));
  job.sampling.max_tokens = max_tokens;
  job.sampling.params.temperature = temperature;
  return job;
}


std::unique_ptr<Engine> MakeEngine(EngineOptions o = {},
                                   FakeModelOptions f = {},
                                   EngineObserver* observer = nullptr) {
  if (o.num_pages == 0) o.num_pages = 512;
  if (o.page_size == 16) o.page_size = 4;
  auto e = Engine::Create(std::make_shared<FakeModel>(f), o, observer);
  EXPECT_TRUE(e.ok()) << e.status();
  return std::move(e).value();
}

absl::StatusOr<std::vector<Output>> RunJob(Engine& e, GenerateJob job) {
  auto h = e.Submit(std::move(job));
  if (!h.ok()) return h.status();
  return Collect(**h);
}

TEST(EngineTest, GeneratesToMaxTokens) {
  auto e = MakeEngine();
  auto out = RunJob(*e, Job({1, 2, 3}, 1, 9, 12));
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->size(), 1u);
  EXPECT_EQ((*out)[0].tokens.size(), 12u);
  EXPECT_EQ((*out)[0].logprobs.size(), 12u);
  EXPECT_EQ((*out)[0].finish, FinishReason::kLength);
  for (uint64_t v : (*out)[0].versions) EXPECT_EQ(v, 0u);
  for (float lp : (*out)[0].logprobs) EXPECT_LE(lp, 0.0f);
}

TEST(EngineTest, SeededRequestIsTheSameAloneAndInABusyBatch) {
  EngineOptions o;
  o.max_batch_tokens = 64;
  auto e = MakeEngine(o);
  std::mt19937 rng(1);
  const std::vector<int32_t> prompt = RandomPrompt(rng, 21);
  auto alone = RunJob(*e, Job(prompt, 2, 1234, 40));
  ASSERT_TRUE(alone.ok());
  for (int others : {1, 7, 31, 63}) {
    std::vector<std::shared_ptr<RequestHandle>> handles;
    for (int i = 0; i < others; ++i) {
      GenerateJob j = Job(RandomPrompt(rng, 1 + rng() % 40), 1 + rng() % 3,
                          rng(), 1 + rng() % 50);
      j.sampling.params.top_k = static_cast<int>(rng() % 5);
      auto h = e->Submit(std::move(j));
      ASSERT_TRUE(h.ok());
      handles.push_back(*h);
      if (i == others / 2) {
        auto target = e->Submit(Job(prompt, 2, 1234, 40));
        ASSERT_TRUE(target.ok());
        handles.insert(handles.begin(), *target);
      }
    }
    auto busy = Collect(*handles[0]);
    ASSERT_TRUE(busy.ok());
    for (int s = 0; s < 2; ++s) {
      EXPECT_TRUE(Same((*alone)[s], (*busy)[s])) << "others=" << others;
    }
    for (auto& h : handles) ASSERT_TRUE(Collect(*h).ok());
  }
}

TEST(EngineTest, SamplesOfOnePromptUseSeedPlusIndex) {
  auto e = MakeEngine();
  auto three = RunJob(*e, Job({5, 6, 7, 8, 9}, 3, 100, 16));
  ASSERT_TRUE(three.ok());
  for (int j = 0; j < 3; ++j) {
    auto one = RunJob(*e, Job({5, 6, 7, 8, 9}, 1, 100 + j, 16));
    ASSERT_TRUE(one.ok());
    EXPECT_TRUE(Same((*three)[j], (*one)[0])) << j;
  }
  EXPECT_NE((*three)[0].tokens, (*three)[1].tokens);
}

TEST(EngineTest, PreemptionUnderATinyKvBudgetIsBitIdentical) {
  std::mt19937 rng(5);
  std::vector<GenerateJob> jobs;
  for (int i = 0; i < 12; ++i) {
    jobs.push_back(
        Job(RandomPrompt(rng, 3 + rng() % 20), 1 + rng() % 3, rng(), 30));
  }
  auto run_all = [&](int64_t pages, bool sharing) {
    EngineOptions o;
    o.num_pages = pages;
    o.page_size = 4;
    o.max_batch_tokens = 32;
    o.prefix_sharing = sharing;
    auto e = MakeEngine(o);
    std::vector<std::shared_ptr<RequestHandle>> hs;
    for (const auto& j : jobs) hs.push_back(*e->Submit(j));
    std::vector<std::vector<Output>> outs;
    int preemptions = 0;
    for (auto& h : hs) {
      auto o2 = Collect(*h);
      EXPECT_TRUE(o2.ok()) << o2.status();
      for (auto& s : *o2) preemptions += s.preemptions;
      outs.push_back(*o2);
    }
    return std::make_pair(outs, preemptions);
  };
  auto [big, p_big] = run_all(1024, true);
  auto [small, p_small] = run_all(14, true);
  auto [unshared, p_unshared] = run_all(14, false);
  EXPECT_EQ(p_big, 0);
  EXPECT_GT(p_small, 0);
  for (size_t i = 0; i < jobs.size(); ++i) {
    for (size_t s = 0; s < big[i].size(); ++s) {
      EXPECT_TRUE(Same(big[i][s], small[i][s])) << i << "/" << s;
      EXPECT_TRUE(Same(big[i][s], unshared[i][s])) << i << "/" << s;
    }
  }
}

TEST(EngineTest, ScoreEqualsGenerationLogprobs) {
  auto e = MakeEngine();
  const std::vector<int32_t> prompt = {3, 1, 4, 1, 5, 9, 2, 6};
  GenerateJob job = Job(prompt, 2, 77, 20);
  job.sampling.top_logprobs = 3;
  auto out = RunJob(*e, job);
  ASSERT_TRUE(out.ok());
  ScoreRequest sr;
  for (const Output& o : *out) {
    std::vector<int32_t> seq = prompt;
    seq.insert(seq.end(), o.tokens.begin(), o.tokens.end());
    sr.sequences.push_back(seq);
    sr.prompt_lens.push_back(prompt.size());
    ASSERT_EQ(o.top.size(), o.tokens.size());
    for (const TopList& t : o.top) EXPECT_EQ(t.size(), 3u);
  }
  sr.top_n = 3;
  auto scored = e->Score(sr);
  ASSERT_TRUE(scored.ok()) << scored.status();
  EXPECT_EQ(scored->version, 0u);
  for (size_t i = 0; i < out->size(); ++i) {
    EXPECT_TRUE(SameBits(scored->logprobs[i], (*out)[i].logprobs));
    ASSERT_EQ(scored->top[i].size(), (*out)[i].top.size());
    for (size_t k = 0; k < scored->top[i].size(); ++k) {
      EXPECT_EQ(scored->top[i][k], (*out)[i].top[k]);
    }
  }
  sr.expected_version = 3;
  EXPECT_EQ(e->Score(sr).status().code(),
            absl::StatusCode::kFailedPrecondition);
  ScoreRequest bad = sr;
  bad.expected_version.reset();
  bad.prompt_lens[0] = 0;
  EXPECT_EQ(e->Score(bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad.prompt_lens[0] = bad.sequences[0].size();
  EXPECT_EQ(e->Score(bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad = sr;
  bad.expected_version.reset();
  bad.sequences[0][2] = 64;
  EXPECT_EQ(e->Score(bad).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(e->Score(ScoreRequest()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(EngineTest, StopTokensAndGreedy) {
  auto e = MakeEngine();
  auto greedy = RunJob(*e, Job({1, 2}, 1, 1, 30, 0.0f));
  ASSERT_TRUE(greedy.ok());
  auto greedy2 = RunJob(*e, Job({1, 2}, 1, 999, 30, 0.0f));
  ASSERT_TRUE(greedy2.ok());
  EXPECT_TRUE(Same((*greedy)[0], (*greedy2)[0]));  // seed irrelevant at T=0
  // Stop at the 5th token's value.
  GenerateJob j = Job({1, 2}, 1, 1, 30, 0.0f);
  const int32_t stop = (*greedy)[0].tokens[4];
  j.sampling.stop_token_ids = {stop};
  auto stopped = RunJob(*e, j);
  ASSERT_TRUE(stopped.ok());
  const auto& toks = (*stopped)[0].tokens;
  ASSERT_FALSE(toks.empty());
  EXPECT_EQ(toks.back(), stop);
  EXPECT_LE(toks.size(), 5u);
  EXPECT_EQ((*stopped)[0].finish, FinishReason::kStop);
}

TEST(EngineTest, ContextLengthEndsUnboundedSamples) {
  FakeModelOptions f;
  f.max_position = 40;
  auto e = MakeEngine({}, f);
  auto out = RunJob(*e, Job({1, 2, 3, 4, 5}, 1, 1, 0));
  ASSERT_TRUE(out.ok());
  EXPECT_EQ((*out)[0].tokens.size(), 35u);
  EXPECT_EQ((*out)[0].finish, FinishReason::kLength);
}

TEST(EngineTest, InvalidRequestsAreRejected) {
  auto e = MakeEngine();
  using C = absl::StatusCode;
  auto code = [&](GenerateJob j) {
    return e->Submit(std::move(j)).status().code();
  };
  EXPECT_EQ(code(Job({}, 1, 1, 5)), C::kInvalidArgument);
  EXPECT_EQ(code(Job({1, 64}, 1, 1, 5)), C::kInvalidArgument);
  EXPECT_EQ(code(Job({1, -1}, 1, 1, 5)), C::kInvalidArgument);
  EXPECT_EQ(code(Job({1}, 1, 1, 512)), C::kInvalidArgument);  // past context
  EXPECT_EQ(code(Job({1}, 1, 1, 5, -0.5f)), C::kInvalidArgument);
  EXPECT_EQ(code(Job({1}, 1, 1, 5, NAN)), C::kInvalidArgument);
  EXPECT_EQ(code(Job({1}, 0, 1, 5)), C::kInvalidArgument);
  GenerateJob j = Job({1}, 1, 1, 5);
  j.sampling.params.top_p = 0.0f;
  EXPECT_EQ(code(j), C::kInvalidArgument);
  j.sampling.params.top_p = 1.5f;
  EXPECT_EQ(code(j), C::kInvalidArgument);
  j = Job({1}, 1, 1, 5);
  j.sampling.params.top_k = -1;
  EXPECT_EQ(code(j), C::kInvalidArgument);
  j = Job({1}, 1, 1, 5);
  j.sampling.top_logprobs = 21;
  EXPECT_EQ(code(j), C::kInvalidArgument);
  j = Job({1}, 1, 1, 5);
  j.sampling.stop_token_ids = {100};
  EXPECT_EQ(code(j), C::kInvalidArgument);
  EXPECT_EQ(code(GenerateJob()), C::kInvalidArgument);
  // Still serving.
  EXPECT_TRUE(RunJob(*e, Job({1, 2}, 1, 1, 3)).ok());
}

TEST(EngineTest, RequestsLargerThanTheCacheOrQueueAreResourceExhausted) {
  EngineOptions o;
  o.num_pages = 8;
  o.page_size = 4;
  o.max_queue = 6;
  auto e = MakeEngine(o);
  EXPECT_EQ(e->Submit(Job({1, 2}, 1, 1, 40)).status().code(),
            absl::StatusCode::kResourceExhausted);  // 42 tokens > 32
  EXPECT_EQ(e->Submit(Job({1, 2}, 7, 1, 4)).status().code(),
            absl::StatusCode::kResourceExhausted);  // 7 samples > queue
  EXPECT_TRUE(RunJob(*e, Job({1, 2}, 1, 1, 30)).ok());
}

TEST(EngineTest, QueueFullIsResourceExhausted) {
  EngineOptions o;
  o.max_queue = 4;
  o.max_running = 1;
  FakeModelOptions f;
  f.forward_sleep_us = 2000;
  auto e = MakeEngine(o, f);
  std::vector<std::shared_ptr<RequestHandle>> hs;
  absl::Status last;
  for (int i = 0; i < 20 && last.ok(); ++i) {
    auto h = e->Submit(Job({1, 2, 3}, 1, i, 20));
    if (h.ok()) {
      hs.push_back(*h);
    } else {
      last = h.status();
    }
  }
  EXPECT_EQ(last.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(last.message().find("queue full"), std::string::npos);
  for (auto& h : hs) EXPECT_TRUE(Collect(*h).ok());
  EXPECT_TRUE(RunJob(*e, Job({1}, 1, 1, 2)).ok());
}

TEST(EngineTest, CancellationAndDeadline) {
  FakeModelOptions f;
  f.forward_sleep_us = 1000;
  auto e = MakeEngine({}, f);
  auto h = e->Submit(Job({1, 2, 3}, 2, 1, 400));
  ASSERT_TRUE(h.ok());
  absl::SleepFor(absl::Milliseconds(20));
  (*h)->Cancel(absl::CancelledError("client went away"));
  EXPECT_EQ(Collect(**h).status().code(), absl::StatusCode::kCancelled);
  GenerateJob j = Job({1, 2, 3}, 1, 1, 400);
  j.deadline = absl::Now() + absl::Milliseconds(30);
  EXPECT_EQ(RunJob(*e, j).status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(RunJob(*e, Job({1, 2}, 1, 1, 3)).ok());
  EXPECT_EQ(e->in_flight(), 0);
}

// A large scoring request runs in pieces beside generation: a 1-token
// Generate submitted meanwhile finishes long before the scoring does (it
// waits at most one piece), and the pieces give the same numbers as scoring
// every sequence alone.
TEST(EngineTest, ScoringDoesNotBlockGeneration) {
  FakeModelOptions f;
  f.score_sleep_us = 20000;  // 20 ms per piece
  EngineOptions o;
  o.max_batch_tokens = 64;
  auto e = MakeEngine(o, f);
  std::mt19937 rng(3);
  ScoreRequest sr;
  for (int i = 0; i < 60; ++i) {  // 60 x 32 tokens: 30 pieces, >= 600 ms
    sr.sequences.push_back(RandomPrompt(rng, 32));
    sr.prompt_lens.push_back(4);
  }
  absl::StatusOr<ScoreResult> scored;
  absl::Time score_done;
  std::thread scorer([&] {
    scored = e->Score(sr);
    score_done = absl::Now();
  });
  absl::SleepFor(absl::Milliseconds(50));
  const absl::Time t0 = absl::Now();
  auto gen = RunJob(*e, Job({1, 2, 3}, 1, 5, 1));
  const absl::Time gen_done = absl::Now();
  scorer.join();
  ASSERT_TRUE(gen.ok()) << gen.status();
  ASSERT_TRUE(scored.ok()) << scored.status();
  EXPECT_LT(gen_done - t0, absl::Milliseconds(300));
  EXPECT_LT(gen_done, score_done);
  FakeModel alone(FakeModelOptions{});
  for (size_t i = 0; i < sr.sequences.size(); ++i) {
    const auto want = alone.Score({sr.sequences[i]}, {sr.prompt_lens[i]}).value()[0];
    ASSERT_EQ(scored->logprobs[i].size(), want.size());
    EXPECT_EQ(std::memcmp(scored->logprobs[i].data(), want.data(), want.size() * 4), 0) << i;
  }
}

// ComputeLogprobs honours its deadline and its caller's cancellation; the
// engine drops the rest of the work and keeps serving.
TEST(EngineTest, ScoringHonoursDeadlineAndCancellation) {
  FakeModelOptions f;
  f.score_sleep_us = 20000;
  EngineOptions o;
  o.max_batch_tokens = 32;
  auto e = MakeEngine(o, f);
  std::mt19937 rng(4);
  ScoreRequest sr;
  for (int i = 0; i < 50; ++i) {  // 50 pieces: ~1 s
    sr.sequences.push_back(RandomPrompt(rng, 32));
    sr.prompt_lens.push_back(1);
  }
  sr.deadline = absl::Now() + absl::Milliseconds(100);
  const absl::Time t0 = absl::Now();
  EXPECT_EQ(e->Score(sr).status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_LT(absl::Now() - t0, absl::Milliseconds(400));

  std::atomic<bool> cancel{false};
  sr.deadline = absl::InfiniteFuture();
  sr.cancelled = [&] { return cancel.load(); };
  std::thread canceller([&] {
    absl::SleepFor(absl::Milliseconds(100));
    cancel = true;
  });
  const absl::Time t1 = absl::Now();
  EXPECT_EQ(e->Score(sr).status().code(), absl::StatusCode::kCancelled);
  EXPECT_LT(absl::Now() - t1, absl::Milliseconds(400));
  canceller.join();

  ScoreRequest small;
  small.sequences = {{1, 2, 3, 4}};
  small.prompt_lens = {2};
  EXPECT_TRUE(e->Score(small).ok());
  EXPECT_TRUE(RunJob(*e, Job({1, 2}, 1, 1, 3)).ok());
}

// Reference logprobs of `tokens` (after prompt_len) under FakeModel weights w.
std::vector<float> ScoreWith(uint64_t w, const std::vector<int32_t>& seq,
                             int64_t prompt_len) {
  FakeModelOptions f;
  f.weights = w;
  FakeModel m(f);
  return m.Score({seq}, {prompt_len}).value()[0];
}

TEST(EngineTest, WeightSwapMidGenerationNeverMixesVersions) {
  FakeModelOptions f;
  f.forward_sleep_us = 300;
  EngineOptions o;
  o.initial_version = 1;
  o.max_batch_tokens = 16;
  auto e = MakeEngine(o, f);
  std::mt19937 rng(3);
  struct Sub {
    std::vector<int32_t> prompt;
    std::shared_ptr<RequestHandle> h;
  };
  std::vector<Sub> subs;
  for (int i = 0; i < 16; ++i) {
    auto p = RandomPrompt(rng, 2 + rng() % 30);
    subs.push_back({p, *e->Submit(Job(p, 2, rng(), 60))});
  }
  absl::SleepFor(absl::Milliseconds(30));
  FakeModelOptions f2 = f;
  f2.weights = 2;
  auto swap = e->SwapWeights(std::make_shared<FakeModel>(f2), 2);
  ASSERT_TRUE(swap.ok()) << swap.status();
  EXPECT_EQ(swap->previous_version, 1u);
  EXPECT_EQ(swap->version, 2u);
  EXPECT_EQ(e->weight_version(), 2u);
  // Regressions and raced versions.
  EXPECT_EQ(e->SwapWeights(std::make_shared<FakeModel>(f2), 2).status().code(),
            absl::StatusCode::kAborted);
  FakeModelOptions other = f2;
  other.vocab = 32;
  EXPECT_EQ(
      e->SwapWeights(std::make_shared<FakeModel>(other), 9).status().code(),
      absl::StatusCode::kFailedPrecondition);
  int mixed = 0;
  for (Sub& s : subs) {
    auto out = Collect(*s.h);
    ASSERT_TRUE(out.ok()) << out.status();
    for (const Output& o2 : *out) {
      std::vector<int32_t> seq = s.prompt;
      seq.insert(seq.end(), o2.tokens.begin(), o2.tokens.end());
      ASSERT_TRUE(std::is_sorted(o2.versions.begin(), o2.versions.end()));
      if (o2.versions.front() != o2.versions.back()) ++mixed;
      std::map<uint64_t, std::vector<float>> ref;
      for (uint64_t v : {1, 2}) ref[v] = ScoreWith(v, seq, s.prompt.size());
      for (size_t k = 0; k < o2.tokens.size(); ++k) {
        const float want = ref[o2.versions[k]][k];
        EXPECT_EQ(std::memcmp(&want, &o2.logprobs[k], 4), 0)
            << "token " << k << " version " << o2.versions[k];
      }
    }
  }
  EXPECT_GT(mixed, 0);  // the swap landed mid-generation
  auto after = RunJob(*e, Job({1, 2, 3}, 1, 5, 5));
  ASSERT_TRUE(after.ok());
  for (uint64_t v : (*after)[0].versions) EXPECT_EQ(v, 2u);
}

class CountingObserver : public EngineObserver {
 public:
  void OnStep(const StepStats& s) override {
    steps++;
    sampled += s.sampled;
    if (s.sequences > max_sequences.load()) max_sequences = s.sequences;
  }
  void OnSelfCheck(int64_t tokens, int64_t mismatched) override {
    checks++;
    checked_tokens += tokens;
    mismatches += mismatched;
  }
  void OnWeightSwap(const SwapResult& r) override { swaps++; }
  void OnOccupancy(int64_t waiting, int64_t running, double kv_usage) override {
    last_running = running;
    last_waiting = waiting;
    last_kv_usage = kv_usage;
  }
  std::atomic<int64_t> last_running{-1}, last_waiting{-1};
  std::atomic<double> last_kv_usage{-1.0};
  std::atomic<int64_t> steps{0}, sampled{0}, max_sequences{0}, checks{0},
      checked_tokens{0}, mismatches{0}, swaps{0};
};

// When every request is cancelled, the occupancy the gauges show returns to
// zero at once (not at the next request's step).
TEST(EngineTest, OccupancyReturnsToZeroWhenRequestsEnd) {
  CountingObserver obs;
  FakeModelOptions f;
  f.forward_sleep_us = 1000;
  EngineOptions o;
  o.prefix_sharing = false;
  auto e = MakeEngine(o, f, &obs);
  std::vector<std::shared_ptr<RequestHandle>> hs;
  for (int i = 0; i < 4; ++i) hs.push_back(*e->Submit(Job({1, 2, 3, i}, 2, i, 400)));
  absl::SleepFor(absl::Milliseconds(30));
  for (auto& h : hs) h->Cancel(absl::CancelledError("gone"));
  for (auto& h : hs) EXPECT_EQ(Collect(*h).status().code(), absl::StatusCode::kCancelled);
  for (int i = 0; i < 100 && obs.last_running.load() != 0; ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(obs.last_running.load(), 0);
  EXPECT_EQ(obs.last_waiting.load(), 0);
  EXPECT_EQ(obs.last_kv_usage.load(), 0.0);
}

TEST(EngineTest, SelfCheckAndObserver) {
  CountingObserver obs;
  EngineOptions o;
  o.selfcheck_rate = 1.0;
  {
    auto e = MakeEngine(o, {}, &obs);
    std::vector<std::shared_ptr<RequestHandle>> hs;
    for (int i = 0; i < 8; ++i)
      hs.push_back(*e->Submit(Job({1, 2, 3, i}, 1, i, 10)));
    for (auto& h : hs) ASSERT_TRUE(Collect(*h).ok());
    // Self-checks run after the steps that finished the samples.
    for (int i = 0; i < 100 && obs.checks.load() < 8; ++i) {
      absl::SleepFor(absl::Milliseconds(10));
    }
  }
  EXPECT_EQ(obs.checks.load(), 8);
  EXPECT_EQ(obs.checked_tokens.load(), 80);
  EXPECT_EQ(obs.mismatches.load(), 0);
  EXPECT_EQ(obs.sampled.load(), 80);
  EXPECT_GT(obs.max_sequences.load(), 1);
}

TEST(EngineTest, DrainAndShutdown) {
  FakeModelOptions f;
  f.forward_sleep_us = 1000;
  auto e = MakeEngine({}, f);
  auto slow = e->Submit(Job({1, 2}, 1, 1, 300));
  ASSERT_TRUE(slow.ok());
  auto quick = e->Submit(Job({1, 2}, 1, 1, 3));
  ASSERT_TRUE(quick.ok());
  e->StopAdmitting(absl::UnavailableError("draining"));
  EXPECT_EQ(e->Submit(Job({1}, 1, 1, 2)).status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_TRUE(Collect(**quick).ok());
  EXPECT_FALSE(e->WaitIdle(absl::Milliseconds(10)));
  e->CancelAll(absl::UnavailableError("shutting down"));
  EXPECT_TRUE(e->WaitIdle(absl::Seconds(5)));
  EXPECT_EQ(Collect(**slow).status().code(), absl::StatusCode::kUnavailable);

  auto e2 = MakeEngine({}, f);
  auto pending = e2->Submit(Job({1, 2}, 1, 1, 300));
  ASSERT_TRUE(pending.ok());
  e2.reset();  // destruction fails what is in flight
  EXPECT_EQ(Collect(**pending).status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace lockstep::rollout
