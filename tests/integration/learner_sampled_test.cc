// Issue 16 §2 and §5: the logprob under the distribution a token was drawn
// from, bit for bit in the learner. One Generate request carries a prompt per
// sampling setting (T in {0.6, 1.0, 1.3} x {no filter, top_p 0.9, top_k 50,
// min_p 0.05, repetition penalty 1.1}, per-prompt parameters); the
// completions' sampled logprobs are compared with the rollout's and the
// learner's ComputeLogprobs under the same parameters and with the learner's
// training forward (TrainStepResponse.sampled_mismatch and /metrics).
// Invariant kernels: 0 mismatched in both kinds. Standard kernels (the twin
// on the same model and inputs): mismatches.
#include <cmath>
#include <cstring>

#include "gtest/gtest.h"
#include "tests/learner_service/integration_util.h"

namespace lockstep::learner::itest {
namespace {

constexpr int kSamples = 4;
constexpr int kMaxTokens = 12;

struct Setting {
  float temperature;
  const char* filter;  // "none", "top_p", "top_k", "min_p", "repetition"
};

std::vector<Setting> Settings() {
  std::vector<Setting> out;
  for (float t : {0.6f, 1.0f, 1.3f}) {
    for (const char* f : {"none", "top_p", "top_k", "min_p", "repetition"}) out.push_back({t, f});
  }
  return out;
}

v1::SamplingParams Params(const Setting& s) {
  v1::SamplingParams p;
  p.set_temperature(s.temperature);
  p.set_max_tokens(kMaxTokens);
  const std::string f = s.filter;
  if (f == "top_p") p.set_top_p(0.9f);
  if (f == "top_k") p.set_top_k(50);
  if (f == "min_p") p.set_min_p(0.05f);
  if (f == "repetition") p.set_repetition_penalty(1.1f);
  return p;
}

bool SameBits(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }

struct Totals {
  int64_t tokens = 0;
  int64_t sampled_differs_from_raw = 0;  // the two kinds are different numbers
  int64_t rollout_score_mismatched = 0;  // rollout ComputeLogprobs vs Generate
  int64_t learner_score_mismatched = 0;  // learner ComputeLogprobs vs Generate
  v1::TrainStepResponse step;
  std::string scrape;
};

Totals RunServices(const std::string& model_dir, const std::string& kernels) {
  Totals totals;
  auto rollout = StartRollout(model_dir, kernels);
  if (rollout == nullptr) return totals;
  auto learner = StartLearner(model_dir, kernels, rollout->grpc_address(), {"--lr=1e-3"});
  if (learner == nullptr) return totals;
  auto rstub = v1::RolloutService::NewStub(Channel(rollout->grpc_address()));
  auto lstub = v1::LearnerService::NewStub(Channel(learner->grpc_address()));

  const std::vector<Setting> settings = Settings();
  const auto examples = Prompts(static_cast<int>(settings.size()), 77);
  v1::GenerateRequest req;
  req.set_n(kSamples);
  req.mutable_sampling()->set_seed(4242);
  for (size_t i = 0; i < settings.size(); ++i) {
    v1::Prompt* p = req.add_prompts();
    p->mutable_token_ids()->Add(examples[i].prompt.begin(), examples[i].prompt.end());
    *p->mutable_sampling() = Params(settings[i]);
  }
  v1::GenerateResponse gen;
  {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    grpc::Status s = rstub->Generate(&ctx, req, &gen);
    EXPECT_TRUE(s.ok()) << s.error_message();
  }
  EXPECT_EQ(gen.completions_size(), static_cast<int>(settings.size()) * kSamples);

  v1::ComputeLogprobsRequest score;
  std::vector<v1::Trajectory> batch;
  for (const v1::Completion& c : gen.completions()) {
    EXPECT_TRUE(c.has_sampling());
    EXPECT_EQ(c.sampled_logprobs_size(), c.token_ids_size());
    EXPECT_FLOAT_EQ(c.sampling().temperature(), settings[c.prompt_index()].temperature);
    for (int k = 0; k < c.token_ids_size(); ++k) {
      EXPECT_TRUE(std::isfinite(c.sampled_logprobs(k)) && c.sampled_logprobs(k) <= 0.0f);
      if (!SameBits(c.sampled_logprobs(k), c.logprobs(k))) ++totals.sampled_differs_from_raw;
    }
    totals.tokens += c.token_ids_size();
    const TaskExample& e = examples[c.prompt_index()];
    v1::ScoredSequence* seq = score.add_sequences();
    seq->mutable_token_ids()->Add(e.prompt.begin(), e.prompt.end());
    seq->mutable_token_ids()->Add(c.token_ids().begin(), c.token_ids().end());
    seq->set_prompt_len(static_cast<uint32_t>(e.prompt.size()));
    *seq->mutable_sampling() = c.sampling();
    v1::Trajectory t;
    t.mutable_prompt_token_ids()->Add(e.prompt.begin(), e.prompt.end());
    *t.mutable_completion_token_ids() = c.token_ids();
    *t.mutable_rollout_logprobs() = c.logprobs();
    *t.mutable_token_weight_versions() = c.token_weight_versions();
    t.set_weight_version(c.weight_version());
    t.set_reward(static_cast<float>(c.sample_index()));  // a non-zero advantage
    t.set_group_id(absl::StrCat("g", c.prompt_index()));
    *t.mutable_sampling() = c.sampling();
    *t.mutable_rollout_sampled_logprobs() = c.sampled_logprobs();
    batch.push_back(std::move(t));
  }

  // Scoring again under the same parameters, on both services.
  const auto count_mismatches = [&](const v1::ComputeLogprobsResponse& r) {
    int64_t mismatched = 0;
    EXPECT_EQ(r.results_size(), gen.completions_size());
    for (int i = 0; i < r.results_size() && i < gen.completions_size(); ++i) {
      const v1::Completion& c = gen.completions(i);
      EXPECT_EQ(r.results(i).sampled_logprobs_size(), c.token_ids_size());
      for (int k = 0; k < c.token_ids_size() && k < r.results(i).sampled_logprobs_size(); ++k) {
        if (!SameBits(r.results(i).sampled_logprobs(k), c.sampled_logprobs(k))) ++mismatched;
      }
    }
    return mismatched;
  };
  {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    v1::ComputeLogprobsResponse r;
    grpc::Status s = rstub->ComputeLogprobs(&ctx, score, &r);
    EXPECT_TRUE(s.ok()) << s.error_message();
    totals.rollout_score_mismatched = count_mismatches(r);
  }
  {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    v1::ComputeLogprobsResponse r;
    grpc::Status s = lstub->ComputeLogprobs(&ctx, score, &r);
    EXPECT_TRUE(s.ok()) << s.error_message();
    totals.learner_score_mismatched = count_mismatches(r);
  }

  grpc::Status s = Submit(*lstub, {batch});
  EXPECT_TRUE(s.ok()) << s.error_message();
  v1::TrainStepRequest treq;
  treq.set_expected_version(0);
  s = TrainStep(*lstub, treq, &totals.step);
  EXPECT_TRUE(s.ok()) << s.error_message();
  totals.scrape = HttpGet(learner->metrics_port());
  return totals;
}

class LearnerSampledTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir("learner-sampled");
    MakeTinyModel(dir_->Sub("tiny"));
  }
  static void TearDownTestSuite() { delete dir_; }
  static inline TempDir* dir_ = nullptr;
};

TEST_F(LearnerSampledTest, InvariantKernelsMatchInBothKinds) {
  const Totals t = RunServices(dir_->Sub("tiny"), "invariant");
  ASSERT_GT(t.tokens, 0);
  // 15 settings x 4 samples x 12 tokens, unless a sample stopped early.
  EXPECT_GE(t.tokens, 15 * kSamples * 4);
  EXPECT_GT(t.sampled_differs_from_raw, t.tokens / 2)
      << "the sampled-distribution logprobs are mostly the raw ones: the test "
         "would not tell the kinds apart";
  EXPECT_EQ(t.rollout_score_mismatched, 0);
  EXPECT_EQ(t.learner_score_mismatched, 0);
  const v1::MismatchStats& raw = t.step.mismatch();
  const v1::MismatchStats& sampled = t.step.sampled_mismatch();
  EXPECT_EQ(raw.tokens_compared(), static_cast<uint64_t>(t.tokens));
  EXPECT_EQ(raw.tokens_mismatched(), 0u);
  EXPECT_EQ(sampled.tokens_compared(), static_cast<uint64_t>(t.tokens));
  EXPECT_EQ(sampled.tokens_mismatched(), 0u);
  EXPECT_EQ(sampled.max_abs_diff(), 0.0);
  // The ratio uses the sampled kind on both sides: exactly 1, nothing clipped.
  EXPECT_EQ(t.step.clip_fraction(), 0.0);
  EXPECT_EQ(MetricValue(t.scrape, "lockstep_sampled_tokens_compared_total"),
            static_cast<double>(t.tokens));
  EXPECT_EQ(MetricValue(t.scrape, "lockstep_sampled_tokens_mismatched_total"), 0.0);
  EXPECT_EQ(MetricValue(t.scrape, "lockstep_tokens_mismatched_total"), 0.0);
}

TEST_F(LearnerSampledTest, StandardKernelsShowTheMismatch) {
  const Totals t = RunServices(dir_->Sub("tiny"), "standard");
  ASSERT_GT(t.tokens, 0);
  EXPECT_GT(t.learner_score_mismatched, 0);
  const v1::MismatchStats& sampled = t.step.sampled_mismatch();
  EXPECT_EQ(sampled.tokens_compared(), static_cast<uint64_t>(t.tokens));
  EXPECT_GT(sampled.tokens_mismatched(), 0u)
      << "standard kernels agreed bitwise on every sampled logprob: the check "
         "could not tell the modes apart";
  EXPECT_EQ(MetricValue(t.scrape, "lockstep_sampled_tokens_mismatched_total"),
            static_cast<double>(sampled.tokens_mismatched()));
}

}  // namespace
}  // namespace lockstep::learner::itest
