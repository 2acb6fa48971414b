// Issue 16 §3 and §5 at the engine: every sampling parameter is batch
// invariant (a request alone or among many requests with other parameters
// gives the same tokens and the same raw and sampled logprob bits), the
// sampled logprobs are those the host scorer computes from the logits,
// stop sequences and min_tokens behave as vLLM's, and bad values are
// INVALID_ARGUMENT.
#include <algorithm>
#include <cstring>
#include <limits>
#include <random>

#include "common/sampling/sampling_spec.h"
#include "gtest/gtest.h"
#include "rollout_service/engine.h"
#include "tests/rollout_service/engine_testing.h"
#include "tests/rollout_service/fake_model.h"

namespace lockstep::rollout {
namespace {

using testing::FakeModel;
using testing::FakeModelOptions;

using testing::Collect;
using testing::Output;
using testing::RandomPrompt;
using testing::SameBits;

std::unique_ptr<Engine> MakeEngine(int64_t max_batch_tokens = 64) {
  EngineOptions o;
  o.num_pages = 1024;
  o.page_size = 4;
  o.max_batch_tokens = max_batch_tokens;
  auto e = Engine::Create(std::make_shared<FakeModel>(FakeModelOptions{}), o, nullptr);
  EXPECT_TRUE(e.ok()) << e.status();
  return std::move(e).value();
}


// Every parameter at a non-default value.
common::SamplingSpec Everything() {
  common::SamplingSpec s;
  s.params.temperature = 0.8f;
  s.params.top_k = 40;
  s.params.top_p = 0.9f;
  s.params.min_p = 0.01f;
  s.repetition_penalty = 1.2f;
  s.presence_penalty = 0.5f;
  s.frequency_penalty = 0.3f;
  s.logit_bias = {{3, 2.5f}, {17, -100.0f}};
  s.min_tokens = 4;
  s.max_tokens = 30;
  s.stop_token_ids = {5};
  s.stop_sequences = {{9, 9}};
  return s;
}

// A random spec for the background traffic.
common::SamplingSpec RandomSpec(std::mt19937& rng) {
  common::SamplingSpec s;
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  s.params.temperature = rng() % 5 == 0 ? 0.0f : 0.5f + u(rng);
  s.params.top_k = static_cast<int32_t>(rng() % 3 == 0 ? rng() % 60 : 0);
  s.params.top_p = rng() % 2 == 0 ? 1.0f : 0.5f + 0.5f * u(rng);
  s.params.min_p = rng() % 3 == 0 ? 0.1f * u(rng) : 0.0f;
  s.repetition_penalty = rng() % 2 == 0 ? 1.0f : 0.8f + 0.5f * u(rng);
  s.presence_penalty = rng() % 3 == 0 ? u(rng) : 0.0f;
  s.frequency_penalty = rng() % 3 == 0 ? -u(rng) : 0.0f;
  if (rng() % 3 == 0) s.logit_bias = {{static_cast<int32_t>(rng() % 64), 5.0f * u(rng)}};
  s.max_tokens = 1 + static_cast<int64_t>(rng() % 40);
  s.min_tokens = std::min<int64_t>(s.max_tokens, static_cast<int64_t>(rng() % 4));
  return s;
}

GenerateJob Job(const std::vector<int32_t>& prompt, int n, uint64_t seed,
                const common::SamplingSpec& spec) {
  GenerateJob job;
  PromptJob p;
  p.prompt = prompt;
  for (int j = 0; j < n; ++j) p.seeds.push_back(kernels::SampleStreamKey(seed, 0, j));
  job.prompts.push_back(std::move(p));
  job.sampling = spec;
  return job;
}

TEST(EngineSamplingTest, EveryParameterIsBatchInvariant) {
  auto e = MakeEngine();
  std::mt19937 rng(7);
  const std::vector<int32_t> prompt = RandomPrompt(rng, 23);
  auto h = e->Submit(Job(prompt, 3, 99, Everything()));
  ASSERT_TRUE(h.ok()) << h.status();
  auto alone = Collect(**h);
  ASSERT_TRUE(alone.ok()) << alone.status();
  int64_t differ = 0;
  for (const Output& o : *alone) {
    ASSERT_FALSE(o.tokens.empty());
    ASSERT_EQ(o.sampled.size(), o.tokens.size());
    for (size_t k = 0; k < o.tokens.size(); ++k) {
      differ += std::memcmp(&o.logprobs[k], &o.sampled[k], 4) != 0;
      EXPECT_LE(o.sampled[k], 0.0f);
    }
  }
  EXPECT_GT(differ, 0);
  for (int others : {5, 63, 255}) {
    std::vector<std::shared_ptr<RequestHandle>> handles;
    std::shared_ptr<RequestHandle> target;
    for (int i = 0; i < others; ++i) {
      auto b = e->Submit(Job(RandomPrompt(rng, 1 + rng() % 30), 1 + rng() % 2, rng(),
                             RandomSpec(rng)));
      ASSERT_TRUE(b.ok()) << b.status();
      handles.push_back(*b);
      if (i == others / 3) {
        auto t = e->Submit(Job(prompt, 3, 99, Everything()));
        ASSERT_TRUE(t.ok());
        target = *t;
      }
    }
    auto busy = Collect(*target);
    ASSERT_TRUE(busy.ok()) << busy.status();
    for (int s = 0; s < 3; ++s) {
      EXPECT_EQ((*alone)[s].tokens, (*busy)[s].tokens) << "others=" << others;
      EXPECT_TRUE(SameBits((*alone)[s].logprobs, (*busy)[s].logprobs)) << "others=" << others;
      EXPECT_TRUE(SameBits((*alone)[s].sampled, (*busy)[s].sampled)) << "others=" << others;
      EXPECT_EQ((*alone)[s].finish, (*busy)[s].finish);
    }
    for (auto& b : handles) ASSERT_TRUE(Collect(*b).ok());
  }
}

TEST(EngineSamplingTest, SampledLogprobsAreTheHostScorersAndScoreAgrees) {
  auto e = MakeEngine();
  std::mt19937 rng(3);
  const std::vector<int32_t> prompt = RandomPrompt(rng, 11);
  const common::SamplingSpec spec = Everything();
  auto h = e->Submit(Job(prompt, 2, 5, spec));
  ASSERT_TRUE(h.ok());
  auto out = Collect(**h);
  ASSERT_TRUE(out.ok());
  ScoreRequest sr;
  for (const Output& o : *out) {
    std::vector<int32_t> seq = prompt;
    seq.insert(seq.end(), o.tokens.begin(), o.tokens.end());
    sr.sequences.push_back(seq);
    sr.prompt_lens.push_back(static_cast<int64_t>(prompt.size()));
    sr.sampling.push_back(spec);
  }
  auto scored = e->Score(sr);
  ASSERT_TRUE(scored.ok()) << scored.status();
  ASSERT_EQ(scored->sampled.size(), out->size());
  for (size_t i = 0; i < out->size(); ++i) {
    EXPECT_TRUE(SameBits(scored->sampled[i], (*out)[i].sampled)) << "sample " << i;
    EXPECT_TRUE(SameBits(scored->logprobs[i], (*out)[i].logprobs)) << "sample " << i;
  }
}

TEST(EngineSamplingTest, StopSequencesAndMinTokens) {
  auto e = MakeEngine();
  std::mt19937 rng(11);
  // Greedy with a huge bias on token 7: the output is 7, 7, 7, ...
  common::SamplingSpec s;
  s.params.temperature = 0.0f;
  s.logit_bias = {{7, 100.0f}};
  s.max_tokens = 20;
  s.stop_sequences = {{7, 7, 7}};
  auto out = Collect(**e->Submit(Job(RandomPrompt(rng, 5), 1, 1, s)));
  ASSERT_TRUE(out.ok());
  EXPECT_EQ((*out)[0].tokens, (std::vector<int32_t>{7, 7, 7}));
  EXPECT_EQ((*out)[0].finish, FinishReason::kStop);
  // Greedy sampled logprob: 0 (the distribution is a point mass).
  for (float lp : (*out)[0].sampled) EXPECT_EQ(lp, 0.0f);
  // min_tokens: the stop token (and stop sequences) cannot end it earlier.
  s.stop_sequences.clear();
  s.stop_token_ids = {7};
  s.min_tokens = 6;
  out = Collect(**e->Submit(Job(RandomPrompt(rng, 5), 1, 1, s)));
  ASSERT_TRUE(out.ok());
  ASSERT_EQ((*out)[0].tokens.size(), 7u);
  EXPECT_EQ((*out)[0].tokens.back(), 7);
  for (int k = 0; k < 6; ++k) EXPECT_NE((*out)[0].tokens[k], 7);
  EXPECT_EQ((*out)[0].finish, FinishReason::kStop);
}

TEST(EngineSamplingTest, RejectsOutOfRangeValues) {
  auto e = MakeEngine();
  const auto bad = [&](auto mutate) {
    common::SamplingSpec s;
    s.max_tokens = 4;
    mutate(s);
    auto h = e->Submit(Job({1, 2}, 1, 1, s));
    return h.ok() ? absl::OkStatus() : h.status();
  };
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<absl::Status> errors = {
      bad([&](auto& s) { s.params.temperature = -0.1f; }),
      bad([&](auto& s) { s.params.temperature = nan; }),
      bad([&](auto& s) { s.params.top_p = 0.0f; }),
      bad([&](auto& s) { s.params.top_p = nan; }),
      bad([&](auto& s) { s.params.min_p = 1.5f; }),
      bad([&](auto& s) { s.params.min_p = nan; }),
      bad([&](auto& s) { s.params.top_k = -2; }),
      bad([&](auto& s) { s.repetition_penalty = 0.0f; }),
      bad([&](auto& s) { s.repetition_penalty = nan; }),
      bad([&](auto& s) { s.presence_penalty = 2.5f; }),
      bad([&](auto& s) { s.frequency_penalty = nan; }),
      bad([&](auto& s) { s.logit_bias = {{64, 1.0f}}; }),
      bad([&](auto& s) { s.logit_bias = {{-1, 1.0f}}; }),
      bad([&](auto& s) { s.logit_bias = {{3, nan}}; }),
      bad([&](auto& s) { s.min_tokens = 5; }),  // > max_tokens
      bad([&](auto& s) { s.stop_sequences = {{}}; }),
      bad([&](auto& s) { s.stop_sequences = {{1, 64}}; }),
      bad([&](auto& s) { s.stop_token_ids = {64}; }),
  };
  for (size_t i = 0; i < errors.size(); ++i) {
    EXPECT_EQ(errors[i].code(), absl::StatusCode::kInvalidArgument) << i << ": " << errors[i];
  }
  // And nothing was lost: a good request still runs to completion.
  common::SamplingSpec good;
  good.max_tokens = 4;
  auto h = e->Submit(Job({1, 2}, 1, 1, good));
  ASSERT_TRUE(h.ok()) << h.status();
  auto out = Collect(**h);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ((*out)[0].tokens.size(), 4u);
}

}  // namespace
}  // namespace lockstep::rollout
