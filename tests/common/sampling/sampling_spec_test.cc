// common::SamplingSpec, LogitAdjuster and the proto conversion: the
// adjustments of every position follow vLLM's definitions (bias, then the
// repetition penalty over prompt and output, then frequency * count +
// presence over the output, min_tokens bans), the proto defaults and
// clamping, every out-of-range value, and stop sequences.
#include "common/sampling/sampling_spec.h"

#include <cmath>
#include <limits>
#include <functional>
#include <map>
#include <utility>
#include <vector>

#include "common/sampling/sampling_proto.h"
#include "gtest/gtest.h"

namespace lockstep::common {
namespace {

std::map<int32_t, kernels::LogitAdjustment> Entries(const LogitAdjuster& a) {
  std::vector<kernels::LogitAdjustment> v;
  a.AppendAdjustments(&v);
  std::map<int32_t, kernels::LogitAdjustment> m;
  for (size_t i = 0; i < v.size(); ++i) {
    if (i > 0) EXPECT_LT(v[i - 1].token, v[i].token);  // ascending, distinct
    m[v[i].token] = v[i];
  }
  return m;
}

TEST(SamplingSpecTest, AdjustmentsFollowVllm) {
  SamplingSpec s;
  s.repetition_penalty = 1.5f;
  s.presence_penalty = 0.25f;
  s.frequency_penalty = 0.5f;
  s.logit_bias = {{2, 3.0f}, {9, -1.0f}};
  s.min_tokens = 2;
  s.stop_token_ids = {7};
  const std::vector<int64_t> eos = {1};
  const std::vector<int32_t> prompt = {4, 5, 4};
  LogitAdjuster a(s, eos, prompt);
  auto m = Entries(a);
  // Prompt ids: repetition only; bias ids; EOS and stop id banned.
  EXPECT_EQ(m.size(), 6u);  // 1, 2, 4, 5, 7, 9
  EXPECT_EQ(m[4].repetition, 1.5f);
  EXPECT_EQ(m[4].subtract, 0.0f);
  EXPECT_EQ(m[2].bias, 3.0f);
  EXPECT_EQ(m[2].repetition, 1.0f);
  EXPECT_TRUE(m[1].banned && m[7].banned);
  EXPECT_FALSE(m[4].banned);
  a.Append(5);
  a.Append(5);
  m = Entries(a);
  // Two outputs reached min_tokens: no bans. 5 occurred twice in the output.
  EXPECT_FALSE(m.count(1) && m[1].banned);
  EXPECT_FALSE(m.count(7));
  EXPECT_EQ(m[5].subtract, 0.5f * 2.0f + 0.25f);
  EXPECT_EQ(m[5].repetition, 1.5f);
  EXPECT_EQ(m[4].subtract, 0.0f);  // prompt tokens get no frequency/presence
  // ignore_eos keeps EOS sampleable during min_tokens.
  s.ignore_eos = true;
  LogitAdjuster b(s, eos, prompt);
  m = Entries(b);
  EXPECT_FALSE(m.count(1));
  EXPECT_TRUE(m[7].banned);
  // Nothing to adjust: no entries at all.
  SamplingSpec plain;
  EXPECT_FALSE(plain.adjusts());
  LogitAdjuster c(plain, eos, prompt);
  EXPECT_TRUE(Entries(c).empty());
}

TEST(SamplingSpecTest, CompletionAdjustmentsArePerPosition) {
  SamplingSpec s;
  s.frequency_penalty = 1.0f;
  const std::vector<int64_t> eos;
  const std::vector<int32_t> prompt = {1};
  const std::vector<int32_t> completion = {3, 3, 4};
  RowAdjustments r = CompletionAdjustments(s, eos, prompt, completion);
  ASSERT_EQ(r.offsets, (std::vector<int64_t>{0, 0, 1, 2}));
  EXPECT_EQ(r.entries[0].token, 3);
  EXPECT_EQ(r.entries[0].subtract, 1.0f);
  EXPECT_EQ(r.entries[1].token, 3);
  EXPECT_EQ(r.entries[1].subtract, 2.0f);
}

TEST(SamplingSpecTest, StopSequences) {
  SamplingSpec s;
  s.stop_sequences = {{1, 2, 3}, {9}};
  EXPECT_TRUE(EndsWithStopSequence(s, std::vector<int32_t>{0, 1, 2, 3}));
  EXPECT_TRUE(EndsWithStopSequence(s, std::vector<int32_t>{9}));
  EXPECT_FALSE(EndsWithStopSequence(s, std::vector<int32_t>{1, 2}));
  EXPECT_FALSE(EndsWithStopSequence(s, std::vector<int32_t>{1, 2, 3, 0}));
}

TEST(SamplingSpecTest, ProtoDefaultsClampingAndRoundTrip) {
  v1::SamplingParams p;
  auto s = SamplingSpecFromProto(p, 64);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->params.temperature, 1.0f);
  EXPECT_EQ(s->params.top_p, 1.0f);
  EXPECT_EQ(s->repetition_penalty, 1.0f);
  EXPECT_FALSE(s->adjusts());
  p.set_top_k(-1);  // vLLM's "off"
  (*p.mutable_logit_bias())[5] = 500.0f;
  (*p.mutable_logit_bias())[2] = -1.0f;
  p.set_min_p(0.1f);
  p.add_stop_sequences()->add_token_ids(3);
  s = SamplingSpecFromProto(p, 64);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->params.top_k, 0);
  ASSERT_EQ(s->logit_bias.size(), 2u);
  EXPECT_EQ(s->logit_bias[0], (std::pair<int32_t, float>{2, -1.0f}));
  EXPECT_EQ(s->logit_bias[1], (std::pair<int32_t, float>{5, 100.0f}));  // clamped
  v1::SamplingParams back;
  SamplingSpecToProto(*s, 77, &back);
  EXPECT_EQ(back.seed(), 77u);
  auto again = SamplingSpecFromProto(back, 64);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->logit_bias, s->logit_bias);
  EXPECT_EQ(again->params.min_p, 0.1f);
  EXPECT_EQ(again->stop_sequences, s->stop_sequences);
}

TEST(SamplingSpecTest, EveryOutOfRangeValueIsInvalidArgument) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<std::function<void(v1::SamplingParams*)>> bad = {
      [&](auto* p) { p->set_temperature(-1.0f); },
      [&](auto* p) { p->set_temperature(nan); },
      [&](auto* p) { p->set_temperature(inf); },
      [&](auto* p) { p->set_top_p(0.0f); },
      [&](auto* p) { p->set_top_p(1.01f); },
      [&](auto* p) { p->set_top_p(nan); },
      [&](auto* p) { p->set_top_k(-2); },
      [&](auto* p) { p->set_min_p(-0.01f); },
      [&](auto* p) { p->set_min_p(nan); },
      [&](auto* p) { p->set_repetition_penalty(-1.0f); },
      [&](auto* p) { p->set_repetition_penalty(inf); },
      [&](auto* p) { p->set_presence_penalty(-2.5f); },
      [&](auto* p) { p->set_frequency_penalty(inf); },
      [&](auto* p) { (*p->mutable_logit_bias())[64] = 0.0f; },
      [&](auto* p) { (*p->mutable_logit_bias())[1] = inf; },
      [&](auto* p) { p->set_max_tokens(2); p->set_min_tokens(3); },
      [&](auto* p) { p->set_top_logprobs(21); },
      [&](auto* p) { p->add_stop_token_ids(64); },
      [&](auto* p) { p->add_stop_sequences(); },
      [&](auto* p) {
        auto* seq = p->add_stop_sequences();
        for (int i = 0; i < 65; ++i) seq->add_token_ids(1);
      },
  };
  for (size_t i = 0; i < bad.size(); ++i) {
    v1::SamplingParams p;
    bad[i](&p);
    auto s = SamplingSpecFromProto(p, 64);
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << i;
  }
}

}  // namespace
}  // namespace lockstep::common
