// Issue 19 §4: training rides through faults.
//  - A rollout is SIGKILLed during `--drive` and restarted on the same port
//    3 s later: the driver retries Generate and the push over its window,
//    re-syncs the restarted rollout's weights, every step completes with 0
//    mismatched tokens, and the retries are counted in /metrics.
//  - The learner is SIGKILLed during `--drive --checkpoint_every=1` and
//    restarted with `--resume`: it continues from its last checkpoint to the
//    same total step count (no lost step, none beyond the checkpoint's
//    successor taken twice), the rollout that kept newer weights gets the
//    checkpoint's under a newer version, and there are 0 mismatched tokens.
#include <chrono>
#include <thread>

#include "gtest/gtest.h"
#include "tests/learner_service/integration_util.h"

namespace lockstep::learner::itest {
namespace {

constexpr int kSteps = 8;

std::vector<std::string> DriveFlags(const std::string& dir) {
  return {"--drive",
          absl::StrCat("--steps=", kSteps),
          "--prompts_per_step=4",
          "--samples_per_prompt=4",
          "--keep_serving",
          "--fail_on_mismatch",
          "--generate_retry_seconds=60",
          "--push_retry_seconds=60",
          "--checkpoint_dir=" + dir,
          "--checkpoint_every=1",
          "--resume"};
}

// Waits until the learner's /metrics shows `series` >= value (or the
// process exits, or 240 s pass); returns the last scrape.
std::string WaitFor(ServiceProcess& learner, const std::string& series, double value) {
  std::string text;
  for (int i = 0; i < 2400; ++i) {
    text = HttpGet(learner.metrics_port());
    if (MetricValue(text, series) >= value || !learner.Running()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return text;
}

class LearnerFaultsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::make_unique<TempDir>("learner-faults");
    MakeTinyModel(dir_->Sub("tiny"));
    port_ = FreePort();
    ASSERT_GT(port_, 0);
  }
  std::unique_ptr<TempDir> dir_;
  int port_ = 0;
};

TEST_F(LearnerFaultsTest, RolloutRestartDuringDrive) {
  auto rollout = StartRolloutOnPort(dir_->Sub("tiny"), port_);
  ASSERT_NE(rollout, nullptr);
  auto learner = StartLearner(dir_->Sub("tiny"), "invariant", rollout->grpc_address(),
                              DriveFlags(dir_->Sub("ckpt")));
  ASSERT_NE(learner, nullptr);
  WaitFor(*learner, "lockstep_weight_version{role=\"learner\"}", 2);
  rollout->Kill();
  rollout.reset();
  std::this_thread::sleep_for(std::chrono::seconds(3));
  rollout = StartRolloutOnPort(dir_->Sub("tiny"), port_);
  ASSERT_NE(rollout, nullptr);
  const std::string text =
      WaitFor(*learner, "lockstep_weight_version{role=\"learner\"}", kSteps);
  ASSERT_TRUE(learner->Running()) << "the driver gave up";
  EXPECT_EQ(MetricValue(text, "lockstep_weight_version{role=\"learner\"}"), kSteps);
  EXPECT_EQ(MetricValue(text, "lockstep_learner_step_duration_seconds_count"), kSteps);
  EXPECT_GT(MetricValue(text, "lockstep_tokens_compared_total"), 0);
  EXPECT_EQ(MetricValue(text, "lockstep_tokens_mismatched_total"), 0);
  EXPECT_GT(MetricValue(text, "lockstep_learner_generate_retries_total") +
                MetricValue(text, "lockstep_weight_push_retries_total"),
            0)
      << text;
  // The restarted rollout serves the learner's last version. The learner's
  // version gauge moves when a step has trained, before its push reaches the
  // rollout, so the last push may still be in flight here: wait for it.
  v1::ModelInfo info;
  auto stub = v1::RolloutService::NewStub(Channel(rollout->grpc_address()));
  for (int i = 0; i < 300; ++i) {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    ASSERT_TRUE(stub->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info).ok());
    if (info.weight_version() >= static_cast<uint64_t>(kSteps)) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(info.weight_version(), static_cast<uint64_t>(kSteps));
  EXPECT_EQ(learner->Stop().value_or(-1), 0);  // the drive succeeded
}

TEST_F(LearnerFaultsTest, LearnerRestartResumesFromItsCheckpoint) {
  auto rollout = StartRolloutOnPort(dir_->Sub("tiny"), port_);
  ASSERT_NE(rollout, nullptr);
  auto learner = StartLearner(dir_->Sub("tiny"), "invariant", rollout->grpc_address(),
                              DriveFlags(dir_->Sub("ckpt")));
  ASSERT_NE(learner, nullptr);
  WaitFor(*learner, "lockstep_weight_version{role=\"learner\"}", 3);
  learner->Kill();
  learner.reset();
  // The rollout kept the newest weights; the learner comes back from its
  // checkpoint (at most one step older).
  learner = StartLearner(dir_->Sub("tiny"), "invariant", rollout->grpc_address(),
                         DriveFlags(dir_->Sub("ckpt")));
  ASSERT_NE(learner, nullptr);
  std::string text = HttpGet(learner->metrics_port());
  const double resumed_version = MetricValue(text, "lockstep_weight_version{role=\"learner\"}");
  EXPECT_GE(resumed_version, 3);  // past the rollout's, which was >= 3
  // It takes the remaining steps only: the step counter reaches kSteps.
  for (int i = 0; i < 2400; ++i) {
    text = HttpGet(learner->metrics_port());
    v1::LearnerStats stats;
    {
      auto lstub = v1::LearnerService::NewStub(Channel(learner->grpc_address()));
      stats = Stats(*lstub);
    }
    if (stats.step() >= static_cast<uint64_t>(kSteps) || !learner->Running()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(learner->Running()) << "the resumed drive failed";
  auto lstub = v1::LearnerService::NewStub(Channel(learner->grpc_address()));
  // The step counter moves when a step has trained, before its push reaches
  // the rollout: wait for the rollout to report the learner's version.
  v1::LearnerStats stats = Stats(*lstub);
  for (int i = 0; i < 300 && stats.rollouts_size() == 1 &&
                  stats.rollouts(0).weight_version() != stats.weight_version();
       ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    stats = Stats(*lstub);
  }
  EXPECT_EQ(stats.step(), static_cast<uint64_t>(kSteps));
  const double taken = MetricValue(text, "lockstep_learner_step_duration_seconds_count");
  // 3 or 4 steps were taken before the kill (the checkpoint of the last one
  // may not have been written): the second process took the rest.
  EXPECT_GE(taken, kSteps - 5);
  EXPECT_LE(taken, kSteps - 2);
  EXPECT_GT(MetricValue(text, "lockstep_tokens_compared_total"), 0);
  EXPECT_EQ(MetricValue(text, "lockstep_tokens_mismatched_total"), 0);
  // Every rollout serves the learner's version.
  ASSERT_EQ(stats.rollouts_size(), 1);
  EXPECT_EQ(stats.rollouts(0).weight_version(), stats.weight_version());
  EXPECT_EQ(learner->Stop().value_or(-1), 0);
}

}  // namespace
}  // namespace lockstep::learner::itest
