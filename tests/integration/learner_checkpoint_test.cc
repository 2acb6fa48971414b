// Issue 4 §7: save at step k, continue to k+3; load at k, continue to k+3 on
// the same trajectories: bit-identical weights — in the same learner process
// and in a fresh learner process started on the same checkpoint directory.
#include "gtest/gtest.h"
#include "tests/learner_service/integration_util.h"

namespace lockstep::learner::itest {
namespace {

constexpr int kK = 2;

TEST(LearnerCheckpointTest, ResumeIsBitIdentical) {
  TempDir dir("learner-ckpt");
  MakeTinyModel(dir.Sub("tiny"));
  const std::string ckpt = dir.Sub("checkpoints");
  auto rollout = StartRollout(dir.Sub("tiny"), "invariant");
  ASSERT_NE(rollout, nullptr);
  const std::vector<std::string> flags = {"--lr=1e-2", "--checkpoint_dir=" + ckpt,
                                          "--micro_batch_size=7"};
  auto learner =
      StartLearner(dir.Sub("tiny"), "invariant", rollout->grpc_address(), flags);
  ASSERT_NE(learner, nullptr);
  auto rstub = v1::RolloutService::NewStub(Channel(rollout->grpc_address()));
  auto lstub = v1::LearnerService::NewStub(Channel(learner->grpc_address()));

  // k on-policy steps.
  auto one_step = [&](int step, std::vector<v1::Trajectory>* record) {
    const auto ex = Prompts(4, 500 + step);
    auto batch = Trajectories(ex, Generate(*rstub, ex, 4, 900 + step, 6, true),
                              absl::StrCat("s", step));
    if (record != nullptr) *record = batch;
    ASSERT_TRUE(Submit(*lstub, batch).ok());
    v1::TrainStepResponse r;
    grpc::Status s = TrainStep(*lstub, v1::TrainStepRequest(), &r);
    ASSERT_TRUE(s.ok()) << s.error_message();
    ASSERT_EQ(r.weight_version(), static_cast<uint64_t>(step + 1));
  };
  for (int step = 0; step < kK; ++step) one_step(step, nullptr);

  v1::SaveCheckpointRequest save;
  save.set_name("k");
  v1::SaveCheckpointResponse saved;
  {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    grpc::Status s = lstub->SaveCheckpoint(&ctx, save, &saved);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  EXPECT_EQ(saved.step(), static_cast<uint64_t>(kK));
  EXPECT_EQ(saved.weight_version(), static_cast<uint64_t>(kK));

  // k -> k+3, recording the trajectories.
  std::vector<std::vector<v1::Trajectory>> recorded(3);
  for (int i = 0; i < 3; ++i) one_step(kK + i, &recorded[i]);
  uint64_t v1_version = 0;
  const std::string w1 = WeightBytes(*lstub, &v1_version);
  EXPECT_EQ(v1_version, static_cast<uint64_t>(kK + 3));

  // Replays the recorded steps on `stub` (no push: the rollout is ahead).
  auto replay = [&](v1::LearnerService::Stub& stub) {
    for (int i = 0; i < 3; ++i) {
      ASSERT_TRUE(Submit(stub, recorded[i]).ok());
      v1::TrainStepRequest req;
      req.set_skip_push(true);
      req.set_expected_version(kK + i);
      v1::TrainStepResponse r;
      grpc::Status s = TrainStep(stub, req, &r);
      ASSERT_TRUE(s.ok()) << s.error_message();
      EXPECT_EQ(r.pushes_size(), 0);
    }
  };

  // Same process: load at k, continue to k+3.
  {
    v1::LoadCheckpointRequest load;
    load.set_name("k");
    v1::LoadCheckpointResponse loaded;
    grpc::ClientContext ctx;
    Deadline(&ctx);
    grpc::Status s = lstub->LoadCheckpoint(&ctx, load, &loaded);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(loaded.weight_version(), static_cast<uint64_t>(kK));
  }
  replay(*lstub);
  uint64_t v2_version = 0;
  const std::string w2 = WeightBytes(*lstub, &v2_version);
  EXPECT_EQ(v2_version, static_cast<uint64_t>(kK + 3));
  EXPECT_TRUE(w1 == w2) << "weights after resuming differ from the original run";

  // A fresh learner process on the same checkpoint directory.
  auto fresh = StartLearner(dir.Sub("tiny"), "invariant", "", flags);
  ASSERT_NE(fresh, nullptr);
  auto fstub = v1::LearnerService::NewStub(Channel(fresh->grpc_address()));
  {
    v1::LoadCheckpointRequest load;
    load.set_name("k");
    v1::LoadCheckpointResponse loaded;
    grpc::ClientContext ctx;
    Deadline(&ctx);
    ASSERT_TRUE(fstub->LoadCheckpoint(&ctx, load, &loaded).ok());
  }
  replay(*fstub);
  const std::string w3 = WeightBytes(*fstub);
  EXPECT_TRUE(w1 == w3) << "a fresh process resumed to different weights";
  // And the run did move the weights after the checkpoint.
  {
    v1::LoadCheckpointRequest load;
    load.set_name("k");
    v1::LoadCheckpointResponse loaded;
    grpc::ClientContext ctx;
    Deadline(&ctx);
    ASSERT_TRUE(fstub->LoadCheckpoint(&ctx, load, &loaded).ok());
  }
  EXPECT_FALSE(w1 == WeightBytes(*fstub));
}

}  // namespace
}  // namespace lockstep::learner::itest
