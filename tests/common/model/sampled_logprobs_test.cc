// The learner's sampled-distribution logprob (SampledTargetLogprobs): its
// value is kernels::Sample's (the rollout's bits), its gradient w.r.t. the
// logits is that of log softmax(a / T) over the kept set, checked against a
// float64 computation, with penalties, bias and bans in the chain.
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/model/sequence_logprobs.h"
#include "common/sampling/sampling_spec.h"

namespace lockstep::common {
namespace {

TEST(SampledLogprobsTest, ValueIsTheKernelsAndGradientIsTheKeptSoftmax) {
  const int64_t vocab = 96, n = 12;
  std::mt19937 rng(5);
  std::normal_distribution<float> g(0.0f, 2.0f);
  std::vector<float> x(n * vocab);
  for (float& v : x) v = g(rng);
  std::vector<int32_t> prompt = {1, 2, 3, 40};
  std::vector<int32_t> completion(n);
  for (auto& t : completion) t = static_cast<int32_t>(rng() % vocab);
  const std::vector<int64_t> eos = {0};
  struct Case {
    float t, top_p, min_p;
    int top_k;
    float rep, presence, frequency;
    bool bias;
    int64_t min_tokens;
  };
  for (const Case& k : {Case{1.0f, 1.0f, 0.0f, 0, 1.0f, 0.0f, 0.0f, false, 0},
                        Case{0.6f, 0.9f, 0.0f, 0, 1.0f, 0.0f, 0.0f, false, 0},
                        Case{1.3f, 1.0f, 0.05f, 50, 1.1f, 0.0f, 0.0f, false, 0},
                        Case{0.8f, 0.95f, 0.0f, 20, 1.2f, 0.4f, 0.3f, true, 3}}) {
    SamplingSpec s;
    s.params.temperature = k.t;
    s.params.top_p = k.top_p;
    s.params.min_p = k.min_p;
    s.params.top_k = k.top_k;
    s.repetition_penalty = k.rep;
    s.presence_penalty = k.presence;
    s.frequency_penalty = k.frequency;
    if (k.bias) s.logit_bias = {{completion[0], 4.0f}, {7, -2.0f}};
    s.min_tokens = k.min_tokens;
    // Scored tokens must be in the kept set for a finite value: score the
    // tokens sampled with these parameters (the rollout's situation).
    std::vector<int32_t> sampled = completion;
    {
      LogitAdjuster adj(s, eos, prompt);
      for (int64_t i = 0; i < n; ++i) {
        std::vector<kernels::LogitAdjustment> e;
        adj.AppendAdjustments(&e);
        const int64_t off[2] = {0, static_cast<int64_t>(e.size())};
        kernels::SamplingParams p = s.params;
        p.seed = 1234;
        const int64_t pos = 10 + i;
        kernels::SampleArgs a;
        a.logits = x.data() + i * vocab;
        a.ld = vocab;
        a.rows = 1;
        a.vocab = vocab;
        a.params = &p;
        a.positions = &pos;
        a.adjust_offsets = off;
        a.adjustments = e.data();
        a.tokens_out = &sampled[i];
        ASSERT_TRUE(kernels::Sample(a).ok());
        adj.Append(sampled[i]);
      }
    }
    auto logits = torch::from_blob(x.data(), {n, vocab}).clone().set_requires_grad(true);
    auto lp = SampledTargetLogprobs(logits, s, eos, prompt, sampled);
    ASSERT_TRUE(lp.ok()) << lp.status();
    auto host = SampledLogprobs(x.data(), vocab, s, eos, prompt, sampled);
    ASSERT_TRUE(host.ok());
    ASSERT_EQ(lp->numel(), n);
    EXPECT_EQ(std::memcmp(lp->detach().contiguous().data_ptr<float>(), host->data(), n * 4), 0);
    lp->sum().backward();
    auto grad = logits.grad().contiguous();
    // float64: d/dx_j of (z_t - logsumexp_K z), z = f(x) / T, with f the
    // per-entry adjustment (slope 1, 1/rep or rep).
    const RowAdjustments adj = CompletionAdjustments(s, eos, prompt, sampled);
    for (int64_t i = 0; i < n; ++i) {
      std::vector<double> a(vocab), slope(vocab, 1.0);
      for (int64_t j = 0; j < vocab; ++j) a[j] = x[i * vocab + j];
      std::vector<bool> banned(vocab, false);
      for (int64_t e = adj.offsets[i]; e < adj.offsets[i + 1]; ++e) {
        const kernels::LogitAdjustment& en = adj.entries[e];
        double v = a[en.token] + en.bias;
        if (en.repetition != 1.0f) {
          slope[en.token] = v > 0 ? 1.0 / en.repetition : en.repetition;
          v = v > 0 ? v / en.repetition : v * en.repetition;
        }
        a[en.token] = v - en.subtract;
        banned[en.token] = en.banned != 0;
      }
      // The kept set from the kernel's own scoring: every j whose scored
      // logprob is finite.
      std::vector<bool> kept(vocab);
      double zmax = -1e300;
      for (int64_t j = 0; j < vocab; ++j) {
        const int32_t t = static_cast<int32_t>(j);
        std::vector<int32_t> one = sampled;
        one[i] = t;
        auto lj = SampledLogprobs(x.data(), vocab, s, eos, prompt,
                                  absl::MakeConstSpan(one).subspan(0, i + 1));
        ASSERT_TRUE(lj.ok());
        kept[j] = std::isfinite((*lj)[i]) && !banned[j];
        if (kept[j]) zmax = std::max(zmax, a[j] / k.t);
      }
      double sum = 0;
      for (int64_t j = 0; j < vocab; ++j) {
        if (kept[j]) sum += std::exp(a[j] / k.t - zmax);
      }
      for (int64_t j = 0; j < vocab; ++j) {
        const double q = kept[j] ? std::exp(a[j] / k.t - zmax) / sum : 0.0;
        const double want = ((j == sampled[i] ? 1.0 : 0.0) - q) * slope[j] / k.t;
        EXPECT_NEAR(grad[i][j].item<float>(), want, 1e-5) << "row " << i << " id " << j;
      }
    }
  }
}

TEST(SampledLogprobsTest, GreedyIsZeroWithoutGradient) {
  const int64_t vocab = 8;
  std::vector<float> x = {0, 1, 5, 2, 2, 3, 4, 1};
  SamplingSpec s;
  s.params.temperature = 0.0f;
  auto logits = torch::from_blob(x.data(), {1, vocab}).clone().set_requires_grad(true);
  std::vector<int32_t> prompt = {1};
  std::vector<int32_t> best = {2}, other = {3};
  auto a = SampledTargetLogprobs(logits, s, {}, prompt, best);
  auto b = SampledTargetLogprobs(logits, s, {}, prompt, other);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->item<float>(), 0.0f);
  EXPECT_EQ(b->item<float>(), -std::numeric_limits<float>::infinity());
}

}  // namespace
}  // namespace lockstep::common
