// Issue 4 §7: bad input to the learner service — trajectories with wrong
// lengths, logprob count != completion length, unknown group ids, NaN
// rewards, empty batches, a rollout that is down during the push — gets the
// documented gRPC code, never crashes the server, and never half-applies a
// step (version, buffer and weights unchanged; the next good request works).
#include <cmath>
#include <functional>

#include <grpcpp/grpcpp.h>

#include "gtest/gtest.h"
#include "tests/learner_service/integration_util.h"

namespace lockstep::learner::itest {
namespace {

class LearnerBadInputTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir("learner-bad-input");
    MakeTinyModel(dir_->Sub("tiny"));
    rollout_ = StartRollout(dir_->Sub("tiny"), "invariant").release();
    ASSERT_NE(rollout_, nullptr);
    learner_ = StartLearner(dir_->Sub("tiny"), "invariant", rollout_->grpc_address(),
                            {"--push_attempts=3", "--max_buffered_trajectories=200",
                             "--checkpoint_dir=" + dir_->Sub("ckpt")})
                   .release();
    ASSERT_NE(learner_, nullptr);
  }
  static void TearDownTestSuite() {
    delete learner_;
    delete rollout_;
    delete dir_;
  }

  void SetUp() override {
    ASSERT_NE(learner_, nullptr);
    rstub_ = v1::RolloutService::NewStub(Channel(rollout_->grpc_address()));
    lstub_ = v1::LearnerService::NewStub(Channel(learner_->grpc_address()));
  }

  // A valid group of 4 trajectories at the learner's current version.
  std::vector<v1::Trajectory> Good(const std::string& group, uint64_t seed) {
    const auto ex = Prompts(1, seed);
    return Trajectories(ex, Generate(*rstub_, ex, 4, seed, 5, false), group);
  }

  // Expects `code` from SubmitTrajectories of `batch`, with nothing buffered
  // and the version unchanged.
  void ExpectSubmitFails(const std::vector<v1::Trajectory>& batch,
                         grpc::StatusCode code, const std::string& what) {
    const v1::LearnerStats before = Stats(*lstub_);
    grpc::Status s = Submit(*lstub_, batch);
    EXPECT_EQ(s.error_code(), code) << what << ": " << s.error_message();
    const v1::LearnerStats after = Stats(*lstub_);
    EXPECT_EQ(after.buffered_trajectories(), before.buffered_trajectories()) << what;
    EXPECT_EQ(after.weight_version(), before.weight_version()) << what;
  }

  // A message gRPC cannot parse: field 1 whose length runs past the end.
  static inline const std::string kUnparsable{"\x0a\xff\xff\xff\xff\x0f", 6};

  // SubmitTrajectories with these raw messages (serialized or not), in order.
  grpc::Status SubmitRaw(const std::vector<std::string>& messages) {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    grpc::ByteBuffer resp;
    auto channel = Channel(learner_->grpc_address());
    grpc::internal::RpcMethod method("/lockstep.v1.LearnerService/SubmitTrajectories",
                                     grpc::internal::RpcMethod::CLIENT_STREAMING);
    std::unique_ptr<grpc::ClientWriter<grpc::ByteBuffer>> w(
        grpc::internal::ClientWriterFactory<grpc::ByteBuffer>::Create(channel.get(), method,
                                                                      &ctx, &resp));
    for (const std::string& m : messages) {
      grpc::Slice slice(m);
      w->Write(grpc::ByteBuffer(&slice, 1));
    }
    w->WritesDone();
    return w->Finish();
  }

  static inline TempDir* dir_ = nullptr;
  static inline lockstep::testing::ServiceProcess* rollout_ = nullptr;
  static inline lockstep::testing::ServiceProcess* learner_ = nullptr;
  std::unique_ptr<v1::RolloutService::Stub> rstub_;
  std::unique_ptr<v1::LearnerService::Stub> lstub_;
};

TEST_F(LearnerBadInputTest, BadTrajectoriesAreRejectedWhole) {
  using Mutate = std::function<void(v1::Trajectory*)>;
  const std::vector<std::pair<std::string, Mutate>> cases = {
      {"logprobs count != completion length",
       [](v1::Trajectory* t) { t->mutable_rollout_logprobs()->RemoveLast(); }},
      {"extra logprob", [](v1::Trajectory* t) { t->add_rollout_logprobs(-1.0f); }},
      {"NaN reward", [](v1::Trajectory* t) { t->set_reward(std::nanf("")); }},
      {"infinite reward", [](v1::Trajectory* t) { t->set_reward(INFINITY); }},
      {"NaN logprob",
       [](v1::Trajectory* t) { t->set_rollout_logprobs(0, std::nanf("")); }},
      {"positive logprob", [](v1::Trajectory* t) { t->set_rollout_logprobs(0, 2.0f); }},
      {"empty completion",
       [](v1::Trajectory* t) {
         t->clear_completion_token_ids();
         t->clear_rollout_logprobs();
         t->clear_token_weight_versions();
       }},
      {"empty prompt", [](v1::Trajectory* t) { t->clear_prompt_token_ids(); }},
      {"out-of-vocabulary token",
       [](v1::Trajectory* t) { t->set_completion_token_ids(0, 64); }},
      {"negative token", [](v1::Trajectory* t) { t->set_prompt_token_ids(0, -1); }},
      {"token versions of the wrong length",
       [](v1::Trajectory* t) { t->add_token_weight_versions(0); }},
      {"version from the future", [](v1::Trajectory* t) { t->set_weight_version(99); }},
      {"empty group id", [](v1::Trajectory* t) { t->clear_group_id(); }},
      {"sampled logprobs without sampling parameters",
       [](v1::Trajectory* t) { *t->mutable_rollout_sampled_logprobs() = t->rollout_logprobs(); }},
      {"sampling parameters without sampled logprobs",
       [](v1::Trajectory* t) { t->mutable_sampling()->set_temperature(0.8f); }},
      {"sampled logprobs of the wrong length",
       [](v1::Trajectory* t) {
         t->mutable_sampling()->set_temperature(0.8f);
         *t->mutable_rollout_sampled_logprobs() = t->rollout_logprobs();
         t->add_rollout_sampled_logprobs(-1.0f);
       }},
      {"NaN sampled logprob",
       [](v1::Trajectory* t) {
         t->mutable_sampling()->set_temperature(0.8f);
         *t->mutable_rollout_sampled_logprobs() = t->rollout_logprobs();
         t->set_rollout_sampled_logprobs(0, std::nanf(""));
       }},
      {"bad sampling parameters",
       [](v1::Trajectory* t) {
         t->mutable_sampling()->set_top_p(1.5f);
         *t->mutable_rollout_sampled_logprobs() = t->rollout_logprobs();
       }},
      {"logit bias on an id outside the vocabulary",
       [](v1::Trajectory* t) {
         (*t->mutable_sampling()->mutable_logit_bias())[64] = 1.0f;
         *t->mutable_rollout_sampled_logprobs() = t->rollout_logprobs();
       }},
      {"longer than the context",
       [](v1::Trajectory* t) {
         for (int i = 0; i < 600; ++i) t->add_prompt_token_ids(5);
       }},
      {"loss_mask of another length",
       [](v1::Trajectory* t) {
         for (int i = 0; i <= t->completion_token_ids_size(); ++i) t->add_loss_mask(1);
       }},
      {"loss_mask value 7",
       [](v1::Trajectory* t) {
         for (int i = 0; i < t->completion_token_ids_size(); ++i) t->add_loss_mask(7);
       }},
      {"loss_mask with no token",
       [](v1::Trajectory* t) {
         for (int i = 0; i < t->completion_token_ids_size(); ++i) t->add_loss_mask(0);
       }},
      {"advantages of another length", [](v1::Trajectory* t) { t->add_advantages(1.0f); }},
      {"a NaN advantage",
       [](v1::Trajectory* t) {
         for (int i = 0; i < t->completion_token_ids_size(); ++i) t->add_advantages(std::nanf(""));
       }},
  };
  const auto good = Good("g", 1);
  for (const auto& [what, mutate] : cases) {
    auto batch = good;
    mutate(&batch[2]);  // one bad trajectory among good ones
    ExpectSubmitFails(batch, grpc::StatusCode::INVALID_ARGUMENT, what);
  }
  // Bad trajectory in a later message of the same stream: still nothing.
  {
    auto bad = good;
    bad[0].set_reward(std::nanf(""));
    const v1::LearnerStats before = Stats(*lstub_);
    grpc::Status s = Submit(*lstub_, std::vector<std::vector<v1::Trajectory>>{good, bad});
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(Stats(*lstub_).buffered_trajectories(), before.buffered_trajectories());
  }
  // A message the server cannot parse in the middle of the stream: gRPC ends
  // the server's read there as if the client had finished; the announced
  // count refuses the rest (issue 19 §6: no silent partial commit).
  {
    const v1::LearnerStats before = Stats(*lstub_);
    v1::SubmitTrajectoriesRequest first, second;
    first.add_trajectories()->CopyFrom(good[0]);
    first.add_trajectories()->CopyFrom(good[1]);
    first.set_stream_trajectories(4);
    second.add_trajectories()->CopyFrom(good[2]);
    second.add_trajectories()->CopyFrom(good[3]);
    grpc::Status s = SubmitRaw({first.SerializeAsString(), kUnparsable,
                                second.SerializeAsString()});
    EXPECT_NE(s.error_code(), grpc::StatusCode::OK) << "a partial stream was committed";
    EXPECT_EQ(Stats(*lstub_).buffered_trajectories(), before.buffered_trajectories());
  }
  // Empty submissions.
  ExpectSubmitFails({}, grpc::StatusCode::INVALID_ARGUMENT, "empty stream");
  // Too many for the buffer.
  {
    std::vector<v1::Trajectory> many;
    while (many.size() <= 200) many.insert(many.end(), good.begin(), good.end());
    ExpectSubmitFails(many, grpc::StatusCode::RESOURCE_EXHAUSTED, "buffer full");
  }
  // The server still takes good input.
  v1::SubmitTrajectoriesResponse ok;
  ASSERT_TRUE(Submit(*lstub_, good, &ok).ok());
  EXPECT_EQ(ok.accepted(), 4u);
  v1::TrainStepResponse r;
  grpc::Status s = TrainStep(*lstub_, v1::TrainStepRequest(), &r);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(r.num_trajectories(), 4u);
  // The twin of the unparsable-message case: without the announced count the
  // same stream "succeeds" with the first message only -- what the count is
  // there to catch (so the check above can fail).
  {
    const auto fresh = Good("twin", 9);
    const v1::LearnerStats before = Stats(*lstub_);
    v1::SubmitTrajectoriesRequest first;
    first.add_trajectories()->CopyFrom(fresh[0]);
    first.add_trajectories()->CopyFrom(fresh[1]);
    const grpc::Status st = SubmitRaw({first.SerializeAsString(), kUnparsable});
    EXPECT_TRUE(st.ok()) << st.error_message();
    EXPECT_EQ(Stats(*lstub_).buffered_trajectories(), before.buffered_trajectories() + 2);
    // Leave the buffer empty for the next test (the server is shared).
    v1::TrainStepResponse drained;
    ASSERT_TRUE(TrainStep(*lstub_, v1::TrainStepRequest(), &drained).ok());
  }
}

TEST_F(LearnerBadInputTest, TrainStepErrorsChangeNothing) {
  // Nothing buffered.
  {
    v1::TrainStepResponse r;
    grpc::Status s = TrainStep(*lstub_, v1::TrainStepRequest(), &r);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << s.error_message();
  }
  const uint64_t version = Stats(*lstub_).weight_version();
  // Trajectories() names groups "<prefix>/<prompt index>".
  ASSERT_TRUE(Submit(*lstub_, Good("known", 2)).ok());
  // Unknown group id (with a known one): NOT_FOUND, nothing consumed.
  {
    v1::TrainStepRequest req;
    req.add_group_ids("known/0");
    req.add_group_ids("no-such-group");
    v1::TrainStepResponse r;
    grpc::Status s = TrainStep(*lstub_, req, &r);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND) << s.error_message();
  }
  // Wrong expected version.
  {
    v1::TrainStepRequest req;
    req.set_expected_version(version + 10);
    v1::TrainStepResponse r;
    EXPECT_EQ(TrainStep(*lstub_, req, &r).error_code(),
              grpc::StatusCode::FAILED_PRECONDITION);
  }
  v1::LearnerStats stats = Stats(*lstub_);
  EXPECT_EQ(stats.weight_version(), version);
  EXPECT_EQ(stats.buffered_trajectories(), 4u);
  // ComputeLogprobs and checkpoint names are validated too.
  {
    v1::ComputeLogprobsRequest req;
    auto* seq = req.add_sequences();
    seq->add_token_ids(1);
    seq->add_token_ids(99);
    seq->set_prompt_len(1);
    v1::ComputeLogprobsResponse resp;
    grpc::ClientContext ctx;
    Deadline(&ctx);
    EXPECT_EQ(lstub_->ComputeLogprobs(&ctx, req, &resp).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
  }
  {
    v1::ComputeLogprobsRequest req;
    v1::ComputeLogprobsResponse resp;
    grpc::ClientContext ctx;
    Deadline(&ctx);
    EXPECT_EQ(lstub_->ComputeLogprobs(&ctx, req, &resp).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
  }
  {
    v1::SaveCheckpointRequest req;
    req.set_name("../outside");
    v1::SaveCheckpointResponse resp;
    grpc::ClientContext ctx;
    Deadline(&ctx);
    EXPECT_EQ(lstub_->SaveCheckpoint(&ctx, req, &resp).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
  }
  {
    v1::LoadCheckpointRequest req;
    req.set_name("never-saved");
    v1::LoadCheckpointResponse resp;
    grpc::ClientContext ctx;
    Deadline(&ctx);
    EXPECT_EQ(lstub_->LoadCheckpoint(&ctx, req, &resp).error_code(),
              grpc::StatusCode::NOT_FOUND);
  }
  {
    v1::RegisterRolloutRequest req;
    req.add_endpoints("not an endpoint");
    v1::RegisterRolloutResponse resp;
    grpc::ClientContext ctx;
    Deadline(&ctx);
    EXPECT_EQ(lstub_->RegisterRollout(&ctx, req, &resp).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
  }
  // The buffered group still trains.
  v1::TrainStepRequest req;
  req.add_group_ids("known/0");
  v1::TrainStepResponse r;
  grpc::Status s = TrainStep(*lstub_, req, &r);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(r.weight_version(), version + 1);
  EXPECT_EQ(Stats(*lstub_).buffered_trajectories(), 0u);
}

// Runs last (gtest runs tests in declaration order): it takes the rollout
// down.
TEST_F(LearnerBadInputTest, RolloutDownDuringPush) {
  ASSERT_TRUE(Submit(*lstub_, Good("before-down", 3)).ok());
  const v1::LearnerStats before = Stats(*lstub_);
  ASSERT_TRUE(rollout_->Stop(60).ok());
  v1::TrainStepResponse r;
  grpc::Status s = TrainStep(*lstub_, v1::TrainStepRequest(), &r);
  // The step is applied exactly once; the failed push is reported, not
  // skipped silently.
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(r.weight_version(), before.weight_version() + 1);
  ASSERT_EQ(r.pushes_size(), 1);
  EXPECT_EQ(r.pushes(0).code(), static_cast<int>(grpc::StatusCode::UNAVAILABLE))
      << r.pushes(0).message();
  EXPECT_EQ(r.pushes(0).attempts(), 3u);
  const v1::LearnerStats after = Stats(*lstub_);
  EXPECT_EQ(after.weight_version(), before.weight_version() + 1);
  EXPECT_EQ(after.buffered_trajectories(), 0u);
  ASSERT_EQ(after.rollouts_size(), 1);
  EXPECT_EQ(after.rollouts(0).pushes_failed(), 1u);
  EXPECT_EQ(after.rollouts(0).weight_version(), before.weight_version());
  const std::string scrape = HttpGet(learner_->metrics_port());
  EXPECT_EQ(MetricValue(scrape, "lockstep_weight_push_failures_total"), 1.0);
  // An explicit push now fails the same way; the learner keeps serving.
  {
    v1::PushWeightsResponse resp;
    grpc::ClientContext ctx;
    Deadline(&ctx);
    ASSERT_TRUE(lstub_->PushWeights(&ctx, v1::PushWeightsRequest(), &resp).ok());
    ASSERT_EQ(resp.pushes_size(), 1);
    EXPECT_EQ(resp.pushes(0).code(), static_cast<int>(grpc::StatusCode::UNAVAILABLE));
  }
  // Registering an unreachable rollout: UNAVAILABLE.
  {
    v1::RegisterRolloutRequest req;
    req.add_endpoints(rollout_->grpc_address());
    v1::RegisterRolloutResponse resp;
    grpc::ClientContext ctx;
    Deadline(&ctx);
    EXPECT_EQ(lstub_->RegisterRollout(&ctx, req, &resp).error_code(),
              grpc::StatusCode::UNAVAILABLE);
  }
  EXPECT_TRUE(learner_->Running());
  EXPECT_EQ(Stats(*lstub_).weight_version(), after.weight_version());
}

}  // namespace
}  // namespace lockstep::learner::itest
