// Issue 4 §7: trajectories generated with an older weight version are
// counted as stale (lockstep_tokens_stale_total, TrainStepResponse), never as
// numerical mismatch; tokens of the current version in the same step are
// still compared bitwise.
#include "gtest/gtest.h"
#include "tests/learner_service/integration_util.h"

namespace lockstep::learner::itest {
namespace {

uint64_t Tokens(const std::vector<v1::Trajectory>& batch) {
  uint64_t n = 0;
  for (const auto& t : batch) n += t.completion_token_ids_size();
  return n;
}

TEST(LearnerStaleTest, OlderVersionsAreStaleNotMismatched) {
  TempDir dir("learner-stale");
  MakeTinyModel(dir.Sub("tiny"));
  auto rollout = StartRollout(dir.Sub("tiny"), "invariant");
  ASSERT_NE(rollout, nullptr);
  auto learner = StartLearner(dir.Sub("tiny"), "invariant",
                              rollout->grpc_address(), {"--lr=1e-2"});
  ASSERT_NE(learner, nullptr);
  auto rstub = v1::RolloutService::NewStub(Channel(rollout->grpc_address()));
  auto lstub = v1::LearnerService::NewStub(Channel(learner->grpc_address()));

  // Two batches generated with version 0; train on the first (-> version 1,
  // pushed to the rollout).
  const auto ex_a = Prompts(4, 1);
  const auto ex_b = Prompts(4, 2);
  const auto a = Trajectories(ex_a, Generate(*rstub, ex_a, 4, 11, 8, false), "a");
  const auto old = Trajectories(ex_b, Generate(*rstub, ex_b, 4, 12, 8, false), "old");
  for (const auto& t : old) ASSERT_EQ(t.weight_version(), 0u);
  ASSERT_TRUE(Submit(*lstub, a).ok());
  v1::TrainStepResponse r1;
  ASSERT_TRUE(TrainStep(*lstub, v1::TrainStepRequest(), &r1).ok());
  ASSERT_EQ(r1.weight_version(), 1u);
  ASSERT_EQ(r1.pushes(0).code(), 0) << r1.pushes(0).message();

  // Fresh trajectories of version 1 plus the stale version-0 ones.
  const auto ex_c = Prompts(4, 3);
  const auto fresh =
      Trajectories(ex_c, Generate(*rstub, ex_c, 4, 13, 8, false), "fresh");
  for (const auto& t : fresh) ASSERT_EQ(t.weight_version(), 1u);
  ASSERT_TRUE(Submit(*lstub, {old, fresh}).ok());
  v1::TrainStepResponse r2;
  ASSERT_TRUE(TrainStep(*lstub, v1::TrainStepRequest(), &r2).ok());
  const v1::MismatchStats& m = r2.mismatch();
  EXPECT_EQ(m.tokens_stale(), Tokens(old));
  EXPECT_EQ(m.tokens_compared(), Tokens(fresh));
  EXPECT_EQ(m.tokens_mismatched(), 0u);
  EXPECT_EQ(m.max_abs_diff(), 0.0);
  EXPECT_EQ(r2.num_tokens(), Tokens(old) + Tokens(fresh));

  // Only stale tokens: nothing compared, nothing mismatched.
  ASSERT_TRUE(Submit(*lstub, old).ok());
  v1::TrainStepResponse r3;
  ASSERT_TRUE(TrainStep(*lstub, v1::TrainStepRequest(), &r3).ok());
  EXPECT_EQ(r3.mismatch().tokens_stale(), Tokens(old));
  EXPECT_EQ(r3.mismatch().tokens_compared(), 0u);
  EXPECT_EQ(r3.mismatch().exact_fraction(), 1.0);

  const std::string scrape = HttpGet(learner->metrics_port());
  EXPECT_EQ(MetricValue(scrape, "lockstep_tokens_stale_total"),
            static_cast<double>(2 * Tokens(old)));
  EXPECT_EQ(MetricValue(scrape, "lockstep_tokens_mismatched_total"), 0.0);
  EXPECT_EQ(MetricValue(scrape, "lockstep_tokens_compared_total"),
            static_cast<double>(Tokens(a) + Tokens(fresh)));
  const v1::LearnerStats stats = Stats(*lstub);
  EXPECT_EQ(stats.mismatch_total().tokens_stale(), 2 * Tokens(old));
  EXPECT_EQ(stats.weight_version(), 3u);
}

}  // namespace
}  // namespace lockstep::learner::itest
