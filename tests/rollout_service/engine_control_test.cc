// Issue 18 §2–§4 at the engine: Pause (keep / retract) and Resume, Sleep
// (KV cache; KV cache and weights) and WakeUp, and partial rollouts
// (PromptJob::resumed). Outputs must be bit-identical to an uninterrupted
// run; requests wait while paused or asleep and keep their deadlines.
#include <algorithm>
#include <memory>
#include <thread>
#include <vector>

#include "common/sampling/sampling_spec.h"
#include "gtest/gtest.h"
#include "rollout_service/engine.h"
#include "tests/rollout_service/engine_testing.h"
#include "tests/rollout_service/fake_model.h"

namespace lockstep::rollout {
namespace {

using testing::Collect;
using testing::FakeModel;
using testing::FakeModelOptions;
using testing::Output;
using testing::Same;
using testing::SameBits;

constexpr int64_t kPages = 256;
constexpr int64_t kPageSize = 4;

std::unique_ptr<Engine> MakeEngine(int64_t forward_sleep_us = 0) {
  EngineOptions o;
  o.num_pages = kPages;
  o.page_size = kPageSize;
  o.max_batch_tokens = 64;
  FakeModelOptions f;
  f.forward_sleep_us = forward_sleep_us;
  auto e = Engine::Create(std::make_shared<FakeModel>(f), o, nullptr);
  EXPECT_TRUE(e.ok()) << e.status();
  return std::move(e).value();
}

// Penalties, a stop sequence and filters: a resumed sample must carry all
// of their state over.
common::SamplingSpec Spec(int64_t max_tokens) {
  common::SamplingSpec s;
  s.max_tokens = max_tokens;
  s.params.temperature = 0.9f;
  s.params.top_p = 0.95f;
  s.repetition_penalty = 1.1f;
  s.frequency_penalty = 0.2f;
  s.min_tokens = 3;
  s.stop_sequences = {{7, 7, 7}};
  return s;
}

GenerateJob Job(const std::vector<int32_t>& prompt, uint64_t key, int64_t max_tokens) {
  GenerateJob job;
  PromptJob p;
  p.prompt = prompt;
  p.seeds = {key};
  job.prompts.push_back(std::move(p));
  job.sampling = Spec(max_tokens);
  return job;
}

const std::vector<int32_t> kPrompt = {5, 9, 2, 33, 41, 8, 1};

// Waits until the handle has delivered at least one token; appends what
// arrived to *seen.
void WaitForTokens(RequestHandle& h, std::vector<SampleUpdate>* seen) {
  for (int i = 0; i < 500; ++i) {
    h.Wait(absl::Milliseconds(10), seen);
    for (const SampleUpdate& u : *seen) {
      if (!u.tokens.empty()) return;
    }
  }
  FAIL() << "no token arrived";
}

// The request's single sample: the updates of `seen`, then the rest.
absl::StatusOr<Output> Finish(RequestHandle& h, const std::vector<SampleUpdate>& seen) {
  absl::StatusOr<std::vector<Output>> all = Collect(h, seen);
  if (!all.ok()) return all.status();
  return all->at(0);
}

// No update arrives for `d`.
bool Silent(RequestHandle& h, absl::Duration d) {
  std::vector<SampleUpdate> got;
  const absl::Time end = absl::Now() + d;
  while (absl::Now() < end) h.Wait(absl::Milliseconds(10), &got);
  return got.empty();
}

Output Reference(uint64_t key, int64_t max_tokens) {
  auto e = MakeEngine();
  auto h = e->Submit(Job(kPrompt, key, max_tokens));
  EXPECT_TRUE(h.ok());
  auto out = Collect(**h);
  EXPECT_TRUE(out.ok()) << out.status();
  return out->at(0);
}

TEST(EngineControlTest, PauseKeepHoldsGenerationAndContinuesBitIdentical) {
  const Output ref = Reference(11, 80);
  auto e = MakeEngine(/*forward_sleep_us=*/1000);
  auto h = e->Submit(Job(kPrompt, 11, 80));
  ASSERT_TRUE(h.ok());
  std::vector<SampleUpdate> seen;
  WaitForTokens(**h, &seen);
  absl::StatusOr<PauseResult> paused = e->Pause(PauseMode::kKeep);
  ASSERT_TRUE(paused.ok()) << paused.status();
  EXPECT_FALSE(paused->was_paused);
  EXPECT_EQ(paused->held_requests, 1);
  EXPECT_EQ(paused->running, 1);
  EXPECT_GT(paused->kv_usage, 0.0);
  EXPECT_TRUE(e->paused());
  (*h)->Wait(absl::Milliseconds(20), &seen);  // what the last step produced
  EXPECT_TRUE(Silent(**h, absl::Milliseconds(150)));
  EXPECT_EQ(e->load().running, 1);  // its KV is kept
  // Pausing again only reports.
  absl::StatusOr<PauseResult> again = e->Pause(PauseMode::kKeep);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->was_paused);
  absl::StatusOr<bool> resumed = e->Resume();
  ASSERT_TRUE(resumed.ok());
  EXPECT_TRUE(*resumed);
  absl::StatusOr<Output> out = Finish(**h, seen);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_TRUE(Same(*out, ref));
  EXPECT_EQ(out->preemptions, 0);
  absl::StatusOr<bool> twice = e->Resume();
  ASSERT_TRUE(twice.ok());
  EXPECT_FALSE(*twice);
}

TEST(EngineControlTest, PauseRetractFreesTheKvCacheAndRecomputesBitIdentical) {
  const Output ref = Reference(12, 80);
  auto e = MakeEngine(1000);
  auto h = e->Submit(Job(kPrompt, 12, 80));
  ASSERT_TRUE(h.ok());
  std::vector<SampleUpdate> seen;
  WaitForTokens(**h, &seen);
  absl::StatusOr<PauseResult> paused = e->Pause(PauseMode::kRetract);
  ASSERT_TRUE(paused.ok());
  EXPECT_EQ(paused->running, 0);
  EXPECT_EQ(paused->kv_usage, 0.0);
  EXPECT_EQ(e->load().kv_usage, 0.0);
  ASSERT_TRUE(e->Resume().ok());
  absl::StatusOr<Output> out = Finish(**h, seen);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_TRUE(Same(*out, ref));
  EXPECT_GE(out->preemptions, 1);
}

TEST(EngineControlTest, RequestsWaitWhilePausedAndKeepTheirDeadlines) {
  auto e = MakeEngine();
  ASSERT_TRUE(e->Pause(PauseMode::kKeep).ok());
  GenerateJob late = Job(kPrompt, 1, 10);
  late.deadline = absl::Now() + absl::Milliseconds(100);
  auto expiring = e->Submit(std::move(late));
  auto waiting = e->Submit(Job(kPrompt, 2, 10));
  ASSERT_TRUE(expiring.ok() && waiting.ok());
  auto expired = Collect(**expiring);
  EXPECT_TRUE(absl::IsDeadlineExceeded(expired.status())) << expired.status();
  EXPECT_TRUE(Silent(**waiting, absl::Milliseconds(100)));
  ASSERT_TRUE(e->Resume().ok());
  auto done = Collect(**waiting);
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_TRUE(Same(done->at(0), Reference(2, 10)));
}

TEST(EngineControlTest, AWeightSwapWhilePausedMovesTheRestToTheNewVersion) {
  auto e = MakeEngine(1000);
  auto h = e->Submit(Job(kPrompt, 13, 60));
  ASSERT_TRUE(h.ok());
  std::vector<SampleUpdate> seen;
  WaitForTokens(**h, &seen);
  ASSERT_TRUE(e->Pause(PauseMode::kKeep).ok());
  FakeModelOptions w2;
  w2.weights = 2;
  absl::StatusOr<SwapResult> swap = e->SwapWeights(std::make_shared<FakeModel>(w2), 1);
  ASSERT_TRUE(swap.ok()) << swap.status();
  ASSERT_TRUE(e->Resume().ok());
  // FakeModel fails a forward that reads K/V of other weights: finishing at
  // all shows the KV kept during the pause was recomputed.
  absl::StatusOr<Output> out = Finish(**h, seen);
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_FALSE(out->versions.empty());
  EXPECT_EQ(out->versions.front(), 0u);
  EXPECT_EQ(out->versions.back(), 1u);
  EXPECT_TRUE(std::is_sorted(out->versions.begin(), out->versions.end()));
}

TEST(EngineControlTest, SleepReleasesTheKvCacheAndWakeUpContinuesBitIdentical) {
  const Output ref = Reference(14, 80);
  auto e = MakeEngine(1000);
  auto h = e->Submit(Job(kPrompt, 14, 80));
  ASSERT_TRUE(h.ok());
  std::vector<SampleUpdate> seen;
  WaitForTokens(**h, &seen);
  absl::StatusOr<SleepResult> slept = e->Sleep(SleepLevel::kKvCache);
  ASSERT_TRUE(slept.ok()) << slept.status();
  EXPECT_EQ(slept->level, SleepLevel::kKvCache);
  EXPECT_EQ(slept->kv_cache_bytes, kPages * kPageSize * 16);  // FakeModel: 16 bytes a token
  EXPECT_EQ(slept->weight_bytes, 0);
  EXPECT_EQ(slept->device_bytes_freed, 0);  // device CPU
  EXPECT_EQ(e->sleep_level(), SleepLevel::kKvCache);
  EXPECT_EQ(e->load().running, 0);
  (*h)->Wait(absl::Milliseconds(20), &seen);
  EXPECT_TRUE(Silent(**h, absl::Milliseconds(150)));
  // Scoring still works with the weights kept.
  ScoreRequest score;
  score.sequences = {{1, 2, 3, 4}};
  score.prompt_lens = {1};
  EXPECT_TRUE(e->Score(score).ok());
  // Sleeping at the same level again releases nothing more.
  absl::StatusOr<SleepResult> again = e->Sleep(SleepLevel::kKvCache);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->kv_cache_bytes, 0);
  absl::StatusOr<WakeResult> woke = e->WakeUp();
  ASSERT_TRUE(woke.ok()) << woke.status();
  EXPECT_TRUE(woke->was_asleep);
  EXPECT_EQ(woke->kv_cache_bytes, kPages * kPageSize * 16);
  EXPECT_EQ(e->sleep_level(), SleepLevel::kAwake);
  absl::StatusOr<Output> out = Finish(**h, seen);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_TRUE(Same(*out, ref));
  absl::StatusOr<WakeResult> awake = e->WakeUp();
  ASSERT_TRUE(awake.ok());
  EXPECT_FALSE(awake->was_asleep);
  EXPECT_TRUE(absl::IsInvalidArgument(e->Sleep(SleepLevel::kAwake).status()));
}

TEST(EngineControlTest, SleepingWithoutWeightsNeedsAPushBeforeWakeUp) {
  const Output ref = Reference(15, 60);
  auto e = MakeEngine(1000);
  auto h = e->Submit(Job(kPrompt, 15, 60));
  ASSERT_TRUE(h.ok());
  std::vector<SampleUpdate> seen;
  WaitForTokens(**h, &seen);
  absl::StatusOr<SleepResult> slept = e->Sleep(SleepLevel::kKvCacheAndWeights);
  ASSERT_TRUE(slept.ok()) << slept.status();
  EXPECT_EQ(slept->level, SleepLevel::kKvCacheAndWeights);
  ScoreRequest score;
  score.sequences = {{1, 2, 3, 4}};
  score.prompt_lens = {1};
  EXPECT_TRUE(absl::IsFailedPrecondition(e->Score(score).status()));
  EXPECT_TRUE(absl::IsFailedPrecondition(e->WakeUp().status()));
  EXPECT_EQ(e->sleep_level(), SleepLevel::kKvCacheAndWeights);
  // The learner's push while asleep brings weights back (same values here).
  absl::StatusOr<SwapResult> swap =
      e->SwapWeights(std::make_shared<FakeModel>(FakeModelOptions{}), 1);
  ASSERT_TRUE(swap.ok()) << swap.status();
  EXPECT_EQ(e->sleep_level(), SleepLevel::kKvCache);
  ASSERT_TRUE(e->WakeUp().ok());
  absl::StatusOr<Output> out = Finish(**h, seen);
  ASSERT_TRUE(out.ok()) << out.status();
  // Same values (the weights are equal); the tokens after the swap carry 1.
  EXPECT_EQ(out->tokens, ref.tokens);
  EXPECT_TRUE(SameBits(out->logprobs, ref.logprobs));
  EXPECT_TRUE(SameBits(out->sampled, ref.sampled));
  EXPECT_EQ(out->versions.back(), 1u);
}

TEST(EngineControlTest, AResumedSampleContinuesExactlyAsTheUninterruptedOne) {
  for (uint64_t key : {21u, 22u, 23u}) {
    const Output ref = Reference(key, 48);
    ASSERT_GE(ref.tokens.size(), 4u);
    auto e = MakeEngine();
    for (size_t k : {size_t{1}, size_t{3}, ref.tokens.size() / 2, ref.tokens.size() - 1}) {
      GenerateJob job = Job(kPrompt, key, 48);
      job.prompts[0].resumed.assign(ref.tokens.begin(), ref.tokens.begin() + k);
      auto h = e->Submit(std::move(job));
      ASSERT_TRUE(h.ok()) << h.status();
      auto out = Collect(**h);
      ASSERT_TRUE(out.ok()) << out.status();
      const Output& o = out->at(0);
      EXPECT_EQ(o.tokens, std::vector<int32_t>(ref.tokens.begin() + k, ref.tokens.end()))
          << "key " << key << " k " << k;
      EXPECT_TRUE(SameBits(o.logprobs, std::vector<float>(ref.logprobs.begin() + k,
                                                          ref.logprobs.end())));
      EXPECT_TRUE(SameBits(o.sampled, std::vector<float>(ref.sampled.begin() + k,
                                                         ref.sampled.end())));
      EXPECT_EQ(o.finish, ref.finish);
    }
  }
}

TEST(EngineControlTest, ResumedSamplesAreValidated) {
  auto e = MakeEngine();
  GenerateJob two = Job(kPrompt, 1, 10);
  two.prompts[0].seeds = {1, 2};
  two.prompts[0].resumed = {3};
  EXPECT_TRUE(absl::IsInvalidArgument(e->Submit(std::move(two)).status()));
  GenerateJob full = Job(kPrompt, 1, 4);
  full.prompts[0].resumed = {3, 4, 5, 6};
  EXPECT_TRUE(absl::IsInvalidArgument(e->Submit(std::move(full)).status()));
  GenerateJob bad_id = Job(kPrompt, 1, 10);
  bad_id.prompts[0].resumed = {3, 64};
  EXPECT_TRUE(absl::IsInvalidArgument(e->Submit(std::move(bad_id)).status()));
  GenerateJob no_room = Job(kPrompt, 1, 0);
  no_room.prompts[0].resumed.assign(512 - kPrompt.size(), 1);
  EXPECT_TRUE(absl::IsInvalidArgument(e->Submit(std::move(no_room)).status()));
}

TEST(EngineControlTest, StoppingWhilePausedEndsWaitingRequests) {
  auto e = MakeEngine();
  ASSERT_TRUE(e->Pause(PauseMode::kKeep).ok());
  auto h = e->Submit(Job(kPrompt, 1, 10));
  ASSERT_TRUE(h.ok());
  std::shared_ptr<RequestHandle> handle = *h;
  e.reset();
  auto out = Collect(*handle);
  EXPECT_TRUE(absl::IsUnavailable(out.status())) << out.status();
}

}  // namespace
}  // namespace lockstep::rollout
