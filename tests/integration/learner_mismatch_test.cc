// Issue 4 §7: five client-driven RL steps through both services (separate
// processes on 127.0.0.1). Invariant kernels: exactly zero mismatched tokens
// over >= 2,000 compared tokens, in every TrainStepResponse and in a scrape
// of the learner's /metrics. Standard kernels: the same loop shows a
// mismatch (proof that the check can fail).
#include <cmath>
#include <cstdlib>
#include <fstream>

#include "gtest/gtest.h"
#include "tests/learner_service/integration_util.h"

namespace lockstep::learner::itest {
namespace {

struct LoopTotals {
  uint64_t compared = 0;
  uint64_t mismatched = 0;
  uint64_t stale = 0;
  double max_abs_diff = 0;
  std::string scrape;
};

// Prompts x samples x tokens per step: 16 x 8 x 8 = 1,024 tokens (no stop
// token, so every sample has exactly max_tokens tokens): 5,120 compared.
constexpr int kSteps = 5;
constexpr int kPrompts = 16;
constexpr int kSamples = 8;
constexpr int kMaxTokens = 8;

LoopTotals RunLoop(const std::string& model_dir, const std::string& kernels) {
  LoopTotals totals;
  auto rollout = StartRollout(model_dir, kernels);
  if (rollout == nullptr) return totals;
  auto learner =
      StartLearner(model_dir, kernels, rollout->grpc_address(), {"--lr=1e-2"});
  if (learner == nullptr) return totals;
  auto rstub = v1::RolloutService::NewStub(Channel(rollout->grpc_address()));
  auto lstub = v1::LearnerService::NewStub(Channel(learner->grpc_address()));
  for (int step = 0; step < kSteps; ++step) {
    const auto examples = Prompts(kPrompts, 100 + step);
    const v1::GenerateResponse gen =
        Generate(*rstub, examples, kSamples, 1000 + step, kMaxTokens, false);
    EXPECT_EQ(gen.completions_size(), kPrompts * kSamples);
    for (const v1::Completion& c : gen.completions()) {
      EXPECT_EQ(c.weight_version(), static_cast<uint64_t>(step));
    }
    const auto batch = Trajectories(examples, gen, absl::StrCat("s", step));
    grpc::Status s = Submit(*lstub, batch);
    EXPECT_TRUE(s.ok()) << s.error_message();
    v1::TrainStepRequest req;
    req.set_expected_version(step);
    v1::TrainStepResponse resp;
    s = TrainStep(*lstub, req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(resp.weight_version(), static_cast<uint64_t>(step + 1));
    EXPECT_EQ(resp.num_tokens(), static_cast<uint64_t>(kPrompts * kSamples * kMaxTokens));
    // The new weights reached the rollout before TrainStep returned.
    EXPECT_EQ(resp.pushes_size(), 1);
    for (const v1::WeightPushResult& p : resp.pushes()) {
      EXPECT_EQ(p.code(), 0) << p.message();
      EXPECT_EQ(p.weight_version(), static_cast<uint64_t>(step + 1));
    }
    const v1::MismatchStats& m = resp.mismatch();
    EXPECT_EQ(m.tokens_compared(), resp.num_tokens());
    EXPECT_EQ(m.tokens_stale(), 0u);
    totals.compared += m.tokens_compared();
    totals.mismatched += m.tokens_mismatched();
    totals.stale += m.tokens_stale();
    totals.max_abs_diff = std::max(totals.max_abs_diff, m.max_abs_diff());
    if (kernels == "invariant") {
      EXPECT_EQ(m.tokens_mismatched(), 0u) << "step " << step;
      EXPECT_EQ(m.max_abs_diff(), 0.0);
      EXPECT_EQ(m.kl_k3(), 0.0);
      EXPECT_EQ(m.exact_fraction(), 1.0);
      EXPECT_EQ(resp.clip_fraction(), 0.0);  // ratio exactly 1 on-policy
    }
  }
  totals.scrape = HttpGet(learner->metrics_port());
  EXPECT_FALSE(totals.scrape.empty());
  return totals;
}

class LearnerMismatchTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir("learner-mismatch");
    MakeTinyModel(dir_->Sub("tiny"));
    MakeModel(dir_->Sub("moe"), common::TinyMoeConfig());
  }
  static void TearDownTestSuite() { delete dir_; }
  static inline TempDir* dir_ = nullptr;
};

TEST_F(LearnerMismatchTest, InvariantKernelsAreExactlyOnPolicy) {
  const LoopTotals t = RunLoop(dir_->Sub("tiny"), "invariant");
  EXPECT_GE(t.compared, 2000u);
  EXPECT_EQ(t.mismatched, 0u);
  EXPECT_EQ(t.max_abs_diff, 0.0);
  // The same from Prometheus' point of view.
  EXPECT_EQ(MetricValue(t.scrape, "lockstep_tokens_compared_total"),
            static_cast<double>(t.compared));
  EXPECT_EQ(MetricValue(t.scrape, "lockstep_tokens_mismatched_total"), 0.0);
  EXPECT_EQ(MetricValue(t.scrape, "lockstep_logprob_abs_diff_bucket{le=\"0\"}"),
            static_cast<double>(t.compared));
  EXPECT_EQ(MetricValue(t.scrape, "lockstep_logprob_abs_diff_count"),
            static_cast<double>(t.compared));
  EXPECT_EQ(MetricValue(t.scrape, "lockstep_logprob_abs_diff_max"), 0.0);
  EXPECT_EQ(MetricValue(t.scrape, "lockstep_mismatch_kl_k3"), 0.0);
  EXPECT_EQ(MetricValue(t.scrape, "lockstep_tokens_stale_total"), 0.0);
  EXPECT_EQ(MetricValue(t.scrape, "lockstep_weight_version{role=\"learner\"}"),
            static_cast<double>(kSteps));
  EXPECT_EQ(MetricValue(t.scrape, "lockstep_weight_push_failures_total"), 0.0);
  EXPECT_GT(MetricValue(t.scrape, "lockstep_weight_push_bytes_total"), 0.0);
  EXPECT_EQ(MetricValue(t.scrape, "lockstep_learner_step_duration_seconds_count"),
            static_cast<double>(kSteps));
  // DESIGN.md §5: promtool accepts a live scrape. scripts/install-deps.sh
  // installs it (Debian's `prometheus`), so its absence is a failure, not a
  // reason to drop the check.
  ASSERT_EQ(std::system("command -v promtool > /dev/null 2>&1"), 0)
      << "promtool not found: run scripts/install-deps.sh";
  const std::string path = dir_->Sub("scrape.txt");
  {
    std::ofstream f(path);
    f << t.scrape;
  }
  EXPECT_EQ(std::system(("promtool check metrics < " + path).c_str()), 0);
}

TEST_F(LearnerMismatchTest, StandardKernelsShowTheMismatch) {
  const LoopTotals t = RunLoop(dir_->Sub("tiny"), "standard");
  EXPECT_GE(t.compared, 2000u);
  EXPECT_GT(t.mismatched, 0u)
      << "standard kernels agreed bitwise on every token: the invariance "
         "check could not tell the modes apart";
  EXPECT_GT(t.max_abs_diff, 0.0);
  EXPECT_EQ(MetricValue(t.scrape, "lockstep_tokens_mismatched_total"),
            static_cast<double>(t.mismatched));
  EXPECT_LT(MetricValue(t.scrape, "lockstep_logprob_abs_diff_bucket{le=\"0\"}"),
            static_cast<double>(t.compared));
}

// The same loop on the mixture-of-experts preset (qwen3_moe: 8 experts,
// top 2, a dense middle layer): routing and the expert GEMMs are as exactly
// on-policy as the dense model; the standard twin mismatches.
TEST_F(LearnerMismatchTest, MoeInvariantKernelsAreExactlyOnPolicy) {
  const LoopTotals t = RunLoop(dir_->Sub("moe"), "invariant");
  EXPECT_GE(t.compared, 2000u);
  EXPECT_EQ(t.mismatched, 0u);
  EXPECT_EQ(t.max_abs_diff, 0.0);
  EXPECT_EQ(MetricValue(t.scrape, "lockstep_tokens_mismatched_total"), 0.0);
}

TEST_F(LearnerMismatchTest, MoeStandardKernelsShowTheMismatch) {
  const LoopTotals t = RunLoop(dir_->Sub("moe"), "standard");
  EXPECT_GE(t.compared, 2000u);
  EXPECT_GT(t.mismatched, 0u) << "standard kernels agreed bitwise on every MoE token";
}

}  // namespace
}  // namespace lockstep::learner::itest
