// Issue 18 §1–§2 through the learner: pushes to a rollout on this host go
// through shared memory by default (--weight_path=auto), through the stream
// when asked, and both report their path in the metrics; `--drive
// --colocate` puts the rollout to sleep (KV cache and weights) for every
// training step and wakes it after the push, with 0 mismatched tokens.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "tests/learner_service/integration_util.h"

namespace lockstep::learner::itest {
namespace {

constexpr char kRolloutShared[] =
    "lockstep_weight_updates_total{path=\"shared_memory\",role=\"rollout\"}";
constexpr char kRolloutStream[] = "lockstep_weight_updates_total{path=\"stream\",role=\"rollout\"}";
constexpr char kLearnerShared[] =
    "lockstep_weight_updates_total{path=\"shared_memory\",role=\"learner\"}";

// A counter's value; 0 while the series has not appeared yet.
double Count(const std::string& scrape, const std::string& series) {
  const double v = MetricValue(scrape, series);
  return std::isnan(v) ? 0.0 : v;
}

double RolloutCalls(const std::string& scrape, const std::string& method) {
  return MetricValue(scrape, "lockstep_rollout_requests_total{code=\"OK\",method=\"" + method +
                                 "\"}");
}

// Drives `steps` steps with `flags` against a fresh rollout; returns the
// rollout's and the learner's scrapes once every push has landed.
void Drive(const std::vector<std::string>& flags, int steps, std::string* rollout_scrape,
           std::string* learner_scrape) {
  TempDir dir("learner-colocate");
  MakeTinyModel(dir.Sub("tiny"));
  auto rollout = StartRollout(dir.Sub("tiny"), "invariant");
  ASSERT_NE(rollout, nullptr);
  std::vector<std::string> args = {"--drive", "--steps=" + std::to_string(steps),
                                   "--prompts_per_step=4", "--samples_per_prompt=2",
                                   "--temperature=0.8", "--top_p=0.95", "--keep_serving",
                                   "--fail_on_mismatch"};
  args.insert(args.end(), flags.begin(), flags.end());
  auto learner = StartLearner(dir.Sub("tiny"), "invariant", rollout->grpc_address(), args);
  ASSERT_NE(learner, nullptr);
  for (int i = 0; i < 1200; ++i) {
    *learner_scrape = HttpGet(learner->metrics_port());
    *rollout_scrape = HttpGet(rollout->metrics_port());
    if (!learner->Running() ||
        (MetricValue(*learner_scrape, "lockstep_weight_version{role=\"learner\"}") >= steps &&
         MetricValue(*rollout_scrape, "lockstep_weight_version{role=\"rollout\"}") >= steps &&
         (std::find(flags.begin(), flags.end(), "--colocate") == flags.end() ||
          RolloutCalls(*rollout_scrape, "WakeUp") >= steps))) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(learner->Running()) << "the learner exited";
  EXPECT_GT(MetricValue(*learner_scrape, "lockstep_tokens_compared_total"), 0);
  EXPECT_EQ(MetricValue(*learner_scrape, "lockstep_tokens_mismatched_total"), 0);
  EXPECT_EQ(learner->Stop().value_or(-1), 0);
  EXPECT_EQ(rollout->Stop().value_or(-1), 0);
}

TEST(LearnerColocateTest, PushesToThisHostGoThroughSharedMemory) {
  std::string rs, ls;
  Drive({}, 2, &rs, &ls);
  EXPECT_GE(Count(rs, kRolloutShared), 2);
  EXPECT_EQ(Count(rs, kRolloutStream), 0);
  EXPECT_GE(Count(ls, kLearnerShared), 2);
}

TEST(LearnerColocateTest, TheStreamWhenAskedFor) {
  std::string rs, ls;
  Drive({"--weight_path=stream"}, 2, &rs, &ls);
  EXPECT_EQ(Count(rs, kRolloutShared), 0);
  EXPECT_GE(Count(rs, kRolloutStream), 2);
}

TEST(LearnerColocateTest, ColocatedStepsSleepTrainPushAndWake) {
  std::string rs, ls;
  Drive({"--colocate"}, 3, &rs, &ls);
  EXPECT_EQ(RolloutCalls(rs, "Sleep"), 3);
  EXPECT_EQ(RolloutCalls(rs, "WakeUp"), 3);
  EXPECT_EQ(MetricValue(rs, "lockstep_rollout_sleep_level"), 0);
  EXPECT_GE(Count(rs, kRolloutShared), 3);
}

TEST(LearnerColocateTest, ABadWeightPathIsRefused) {
  TempDir dir("learner-colocate-flag");
  MakeTinyModel(dir.Sub("tiny"));
  lockstep::testing::ServiceProcessOptions o;
  o.binary = LearnerBinary();
  o.args = {"--model_dir=" + dir.Sub("tiny"), "--weight_path=carrier_pigeon"};
  auto p = ServiceProcess::Start(o);
  ASSERT_FALSE(p.ok());
  EXPECT_NE(std::string(p.status().message()).find("exit"), std::string::npos) << p.status();
}

}  // namespace
}  // namespace lockstep::learner::itest
