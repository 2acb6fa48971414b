// The C++ SDK and the `lockstep` CLI against real rollout_service and
// learner_service processes on 127.0.0.1 (tiny model, CPU, invariant
// kernels): generate, stream, score, push weights and see the version change,
// submit + train step with the learner's weight push, stats, health;
// DEADLINE_EXCEEDED; retries across a server restarted mid-call; TLS, mTLS
// and bearer tokens on the real servers.
#include <google/protobuf/util/json_util.h>
#include <signal.h>

#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "sdk/cpp/lockstep_client.h"
#include "tests/sdk/fake_services.h"
#include "tests/sdk/sdk_test_util.h"
#include "tests/testing/test_certs.h"

namespace lockstep::client {
namespace {

template <typename T>
void AddAll(google::protobuf::RepeatedField<T>* field,
            std::initializer_list<T> values) {
  field->Add(values.begin(), values.end());
}

using sdk_testing::CommandResult;
using sdk_testing::RunCli;
using testing::ServiceProcess;

constexpr int kBos = 1;
constexpr int kEos = 2;

// One tiny model, one rollout and one learner (registered with it) for the
// suites that do not need servers of their own.
class Servers {
 public:
  static Servers& Get() {
    static Servers* s = new Servers();
    return *s;
  }
  bool ok() const { return rollout_ != nullptr && learner_ != nullptr; }
  const std::string& model_dir() const { return model_dir_; }
  const std::string& work() const { return work_; }
  std::string rollout() const { return rollout_->grpc_address(); }
  std::string learner() const { return learner_->grpc_address(); }

  ClientOptions Options(const std::string& target) const {
    ClientOptions o;
    o.target = target;
    o.default_timeout = absl::Seconds(60);
    return o;
  }

  void Stop() {
    if (learner_ != nullptr) learner_->Stop(20).IgnoreError();
    if (rollout_ != nullptr) rollout_->Stop(20).IgnoreError();
    learner_.reset();
    rollout_.reset();
    testing::RemoveTree(work_);
  }

 private:
  Servers() {
    absl::StatusOr<std::string> dir = testing::MakeTempDir("lockstep-sdk-it");
    if (!dir.ok()) return;
    work_ = *dir;
    model_dir_ = work_ + "/model";
    absl::Status s = sdk_testing::MakeTinyModel(model_dir_, 1);
    if (!s.ok()) {
      ADD_FAILURE() << s;
      return;
    }
    auto rollout = sdk_testing::StartRollout(model_dir_);
    if (!rollout.ok()) {
      ADD_FAILURE() << rollout.status();
      return;
    }
    rollout_ = *std::move(rollout);
    auto learner = sdk_testing::StartLearner(
        model_dir_, {"--rollout=" + rollout_->grpc_address(), "--lr=1e-3"});
    if (!learner.ok()) {
      ADD_FAILURE() << learner.status();
      return;
    }
    learner_ = *std::move(learner);
  }

  std::string work_;
  std::string model_dir_;
  std::unique_ptr<ServiceProcess> rollout_;
  std::unique_ptr<ServiceProcess> learner_;
};

class StopServers : public ::testing::Environment {
 public:
  void TearDown() override { Servers::Get().Stop(); }
};
const auto* const kStop =
    ::testing::AddGlobalTestEnvironment(new StopServers());

const std::vector<std::vector<int32_t>>& Prompts() {
  static const auto* prompts = new std::vector<std::vector<int32_t>>{
      {kBos, 4, 5, 6}, {kBos, 7, 8}, {kBos, 9, 10, 11, 12}};
  return *prompts;
}

v1::GenerateRequest Request(uint64_t seed, int n = 2, int max_tokens = 6) {
  v1::GenerateRequest r;
  for (const auto& p : Prompts()) {
    r.add_prompts()->mutable_token_ids()->Add(p.begin(), p.end());
  }
  r.set_n(n);
  r.mutable_sampling()->set_max_tokens(max_tokens);
  r.mutable_sampling()->set_seed(seed);
  r.mutable_sampling()->add_stop_token_ids(kEos);
  return r;
}

class SdkTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(Servers::Get().ok());
    auto r =
        RolloutClient::Create(Servers::Get().Options(Servers::Get().rollout()));
    ASSERT_TRUE(r.ok()) << r.status();
    rollout_ = *std::move(r);
    auto l =
        LearnerClient::Create(Servers::Get().Options(Servers::Get().learner()));
    ASSERT_TRUE(l.ok()) << l.status();
    learner_ = *std::move(l);
  }
  std::unique_ptr<RolloutClient> rollout_;
  std::unique_ptr<LearnerClient> learner_;
};

TEST_F(SdkTest, HealthAndModelInfo) {
  auto h = rollout_->Health();
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(*h, HealthStatus::kServing);
  h = learner_->Health();
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(*h, HealthStatus::kServing);
  auto info = rollout_->GetModelInfo(CallOptions::Timeout(absl::Seconds(10)));
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->config().vocab_size(), 64);
  EXPECT_EQ(info->kernel_mode(), v1::KERNEL_MODE_INVARIANT);
}

TEST_F(SdkTest, GenerateStreamAndScoreAgreeBitwise) {
  auto out = rollout_->Generate(Request(11));
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->completions_size(), 6);
  // Streaming the same seeded request gives the same tokens and logprobs.
  CompletionAccumulator acc;
  absl::Status s = rollout_->GenerateStream(Request(11), [&](const auto& m) {
    acc.Add(m);
    return true;
  });
  ASSERT_TRUE(s.ok()) << s;
  std::vector<v1::Completion> streamed = acc.Completions();
  ASSERT_EQ(streamed.size(), 6u);
  for (int i = 0; i < 6; ++i) {
    const v1::Completion& c = out->completions(i);
    EXPECT_EQ(std::vector<int>(c.token_ids().begin(), c.token_ids().end()),
              std::vector<int>(streamed[i].token_ids().begin(),
                               streamed[i].token_ids().end()));
    ASSERT_EQ(c.logprobs_size(), streamed[i].logprobs_size());
    for (int k = 0; k < c.logprobs_size(); ++k) {
      EXPECT_EQ(c.logprobs(k), streamed[i].logprobs(k));  // bitwise
    }
  }
  // Scoring prompt + completion on the rollout and on the learner gives the
  // generation logprobs back, bit for bit (invariant kernels).
  v1::ComputeLogprobsRequest score;
  for (const v1::Completion& c : out->completions()) {
    const auto& prompt = Prompts()[c.prompt_index()];
    v1::ScoredSequence* seq = score.add_sequences();
    seq->mutable_token_ids()->Add(prompt.begin(), prompt.end());
    seq->mutable_token_ids()->MergeFrom(c.token_ids());
    seq->set_prompt_len(prompt.size());
  }
  auto on_rollout = rollout_->ComputeLogprobs(score);
  ASSERT_TRUE(on_rollout.ok()) << on_rollout.status();
  auto on_learner = learner_->ComputeLogprobs(score);
  ASSERT_TRUE(on_learner.ok()) << on_learner.status();
  for (int i = 0; i < out->completions_size(); ++i) {
    const auto& want = out->completions(i).logprobs();
    ASSERT_EQ(on_rollout->results(i).logprobs_size(), want.size());
    for (int k = 0; k < want.size(); ++k) {
      EXPECT_EQ(on_rollout->results(i).logprobs(k), want[k]);
      EXPECT_EQ(on_learner->results(i).logprobs(k), want[k]);
    }
  }
  // The iterator form.
  std::unique_ptr<GenerateStreamReader> reader =
      rollout_->StartGenerateStream(Request(11));
  v1::GenerateStreamResponse m;
  int messages = 0;
  while (reader->Next(&m)) ++messages;
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_GE(messages, 6);
}

TEST_F(SdkTest, BadRequestsAreNotRetried) {
  v1::GenerateRequest r = Request(1);
  r.mutable_prompts(0)->add_token_ids(1000);  // outside the vocabulary
  const absl::Time start = absl::Now();
  auto out = rollout_->Generate(r);
  EXPECT_TRUE(absl::IsInvalidArgument(out.status())) << out.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  v1::TrainStepRequest step;
  step.add_group_ids("no-such-group");
  const absl::Status s = learner_->TrainStep(step).status();
  // NOT_FOUND, or FAILED_PRECONDITION when nothing at all is buffered.
  EXPECT_TRUE(absl::IsNotFound(s) || absl::IsFailedPrecondition(s)) << s;
}

TEST_F(SdkTest, DeadlineExceeded) {
  v1::GenerateRequest r = Request(3, /*n=*/16, /*max_tokens=*/200);
  r.mutable_sampling()->clear_stop_token_ids();
  r.mutable_sampling()->set_ignore_eos(true);
  const absl::Time start = absl::Now();
  auto out =
      rollout_->Generate(r, CallOptions::Timeout(absl::Milliseconds(50)));
  EXPECT_TRUE(absl::IsDeadlineExceeded(out.status())) << out.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
  // The server is fine afterwards.
  EXPECT_TRUE(rollout_->Generate(Request(4)).ok());
}

TEST_F(SdkTest, SubmitTrainStepPushesWeightsAndIsOnPolicy) {
  auto stats = learner_->GetStats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  const uint64_t version = stats->weight_version();
  auto out = rollout_->Generate(Request(21, 4, 6));
  ASSERT_TRUE(out.ok()) << out.status();
  std::vector<v1::Trajectory> batch;
  for (const v1::Completion& c : out->completions()) {
    if (c.token_ids_size() == 0) continue;
    const float reward = c.token_ids(0) % 2 == 0 ? 1.0f : 0.0f;  // any reward
    batch.push_back(MakeTrajectory(Prompts()[c.prompt_index()], c, reward,
                                   absl::StrCat("p", c.prompt_index())));
  }
  auto sub = learner_->SubmitTrajectories(batch);
  ASSERT_TRUE(sub.ok()) << sub.status();
  EXPECT_EQ(sub->accepted(), batch.size());
  v1::TrainStepRequest req;
  req.set_expected_version(version);
  auto step = learner_->TrainStep(req);
  ASSERT_TRUE(step.ok()) << step.status();
  EXPECT_EQ(step->weight_version(), version + 1);
  EXPECT_GT(step->mismatch().tokens_compared(), 0u);
  EXPECT_EQ(step->mismatch().tokens_mismatched(), 0u);
  ASSERT_EQ(step->pushes_size(), 1);
  EXPECT_EQ(step->pushes(0).code(), 0) << step->pushes(0).message();
  auto info = rollout_->GetModelInfo();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->weight_version(), version + 1);
  // The same expected version again is refused.
  EXPECT_TRUE(absl::IsFailedPrecondition(learner_->TrainStep(req).status()));
  stats = learner_->GetStats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->weight_version(), version + 1);
  EXPECT_GE(stats->mismatch_total().tokens_compared(),
            step->mismatch().tokens_compared());
  EXPECT_EQ(stats->mismatch_total().tokens_mismatched(), 0u);
}

TEST_F(SdkTest, PushWeightsFromFileAndForwardLearnerWeights) {
  // A rollout of its own, not registered with the learner.
  auto own = sdk_testing::StartRollout(Servers::Get().model_dir());
  ASSERT_TRUE(own.ok()) << own.status();
  auto client =
      RolloutClient::Create(Servers::Get().Options((*own)->grpc_address()));
  ASSERT_TRUE(client.ok());
  const std::string other = Servers::Get().work() + "/model-seed2";
  ASSERT_TRUE(sdk_testing::MakeTinyModel(other, 2).ok());
  auto before = (*client)->Generate(Request(5));
  ASSERT_TRUE(before.ok());

  WeightUploadOptions upload;  // version 0: served + 1
  upload.source = "sdk test";
  auto pushed = (*client)->UpdateWeightsFromFile(other, upload);
  ASSERT_TRUE(pushed.ok()) << pushed.status();
  EXPECT_EQ(pushed->previous_version(), 0u);
  EXPECT_EQ(pushed->weight_version(), 1u);
  auto info = (*client)->GetModelInfo();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->weight_version(), 1u);
  auto after = (*client)->Generate(Request(5));
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->completions(0).weight_version(), 1u);
  EXPECT_NE(after->completions(0).logprobs(0),
            before->completions(0).logprobs(0));
  // A version that does not grow is refused, and not retried.
  upload.target_version = 1;
  EXPECT_TRUE(absl::IsFailedPrecondition(
      (*client)->UpdateWeightsFromFile(other, upload).status()));

  // The learner's weights, forwarded as they stream (header version bumped
  // past the rollout's), make this rollout score like the learner.
  auto lw = learner_->GetWeights();
  ASSERT_TRUE(lw.ok()) << lw.status();
  ASSERT_FALSE(lw->empty());
  (*lw)[0].mutable_header()->set_target_version(7);
  auto forwarded = (*client)->UpdateWeights(*lw);
  ASSERT_TRUE(forwarded.ok()) << forwarded.status();
  EXPECT_EQ(forwarded->weight_version(), 7u);
  v1::ComputeLogprobsRequest score;
  v1::ScoredSequence* seq = score.add_sequences();
  AddAll(seq->mutable_token_ids(), {kBos, 4, 5, 6, 7, 8});
  seq->set_prompt_len(2);
  auto a = (*client)->ComputeLogprobs(score);
  auto b = learner_->ComputeLogprobs(score);
  ASSERT_TRUE(a.ok() && b.ok());
  for (int k = 0; k < a->results(0).logprobs_size(); ++k) {
    EXPECT_EQ(a->results(0).logprobs(k), b->results(0).logprobs(k));
  }
  client->reset();  // close the connection before the server drains
  (*own)->Stop(20).IgnoreError();
}

TEST(RestartTest, RetriesReachAServerRestartedMidCall) {
  ASSERT_TRUE(Servers::Get().ok());
  const int port = sdk_testing::FreePort();
  ASSERT_GT(port, 0);
  auto first = sdk_testing::StartRollout(Servers::Get().model_dir(), {}, port);
  ASSERT_TRUE(first.ok()) << first.status();
  ClientOptions o = Servers::Get().Options(absl::StrCat("127.0.0.1:", port));
  o.retry.max_attempts = 100;
  o.retry.initial_backoff = absl::Milliseconds(50);
  o.retry.max_backoff = absl::Milliseconds(300);
  o.max_reconnect_backoff = absl::Milliseconds(300);
  auto client = RolloutClient::Create(o);
  ASSERT_TRUE(client.ok());
  ASSERT_TRUE((*client)->GetModelInfo().ok());  // connected

  // Freeze the server so that the next call is certainly in flight when it
  // dies, then kill it (the connection resets: UNAVAILABLE) and start a new
  // one on the same port.
  ASSERT_EQ(kill((*first)->pid(), SIGSTOP), 0);
  absl::StatusOr<v1::GenerateResponse> result;
  absl::Time finished;
  std::thread call([&] {
    result = (*client)->Generate(Request(9),
                                 CallOptions::Timeout(absl::Seconds(90)));
    finished = absl::Now();
  });
  absl::SleepFor(absl::Milliseconds(500));
  (*first)->Kill();
  const absl::Time killed = absl::Now();
  auto second = sdk_testing::StartRollout(Servers::Get().model_dir(), {}, port);
  ASSERT_TRUE(second.ok()) << second.status();
  call.join();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_GT(finished, killed);
  EXPECT_EQ(result->completions_size(), 6);
  client->reset();  // close the connection before the server drains
  (*second)->Stop(20).IgnoreError();
}

// ---------------------------------------------------------------------------
// The CLI.

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(Servers::Get().ok()); }
  std::string R() const { return "--rollout=" + Servers::Get().rollout(); }
  std::string L() const { return "--learner=" + Servers::Get().learner(); }
};

TEST_F(CliTest, HelpForEveryCommand) {
  CommandResult r = RunCli({"--help"});
  EXPECT_EQ(r.exit_code, 0);
  for (const char* c : {"generate", "score", "push-weights", "train-step",
                        "stats", "health", "control", "demo"}) {
    EXPECT_TRUE(absl::StrContains(r.out, c)) << c;
    CommandResult h = RunCli({c, "--help"});
    EXPECT_EQ(h.exit_code, 0) << c << ": " << h.err;
    EXPECT_TRUE(absl::StrContains(h.out, "Usage: lockstep ")) << h.out;
    EXPECT_TRUE(absl::StrContains(h.out, "--")) << h.out;
  }
  EXPECT_EQ(RunCli({}).exit_code, 2);
  EXPECT_EQ(RunCli({"frobnicate"}).exit_code, 2);
  r = RunCli({"generate", "--prompt=1,2", "--no_such_flag=1"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_TRUE(absl::StrContains(r.err, "unknown flag --no_such_flag")) << r.err;
  r = RunCli({"generate"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_TRUE(absl::StrContains(r.err, "--prompt")) << r.err;
}

// `lockstep control`: pause / resume / sleep / wake-up / abort / load
// against the real rollout, and usage errors (exit 2) for bad actions and
// values.
TEST_F(CliTest, ControlActions) {
  auto json = [&](std::vector<std::string> argv, google::protobuf::Message* m) {
    argv.push_back(R());
    argv.push_back("--json");
    CommandResult r = RunCli(argv);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(r.out, m).ok()) << r.out;
  };
  v1::PauseResponse paused;
  json({"control", "pause", "--mode=retract"}, &paused);
  EXPECT_FALSE(paused.was_paused());
  v1::RolloutLoad load;
  json({"control", "load"}, &load);
  EXPECT_TRUE(load.paused());
  v1::ResumeResponse resumed;
  json({"control", "resume"}, &resumed);
  EXPECT_TRUE(resumed.was_paused());
  v1::SleepResponse slept;
  json({"control", "sleep", "--level=1"}, &slept);
  EXPECT_EQ(slept.level(), v1::SLEEP_LEVEL_KV_CACHE);
  EXPECT_GT(slept.kv_cache_bytes(), 0u);
  v1::WakeUpResponse woke;
  json({"control", "wake-up"}, &woke);
  EXPECT_TRUE(woke.was_asleep());
  v1::AbortResponse aborted;
  json({"control", "abort", "--request_id=nobody,nothing"}, &aborted);
  EXPECT_EQ(aborted.aborted(), 0u);
  for (std::vector<std::string> bad :
       {std::vector<std::string>{"control"}, {"control", "explode"},
        {"control", "pause", "--mode=gently"}, {"control", "sleep", "--level=3"},
        {"control", "abort"}, {"control", "abort", "--all", "--request_id=x"}}) {
    bad.push_back(R());
    EXPECT_EQ(RunCli(bad).exit_code, 2) << bad[1];
  }
  // The rollout still generates.
  CommandResult r = RunCli({"generate", R(), "--prompt=1,4,5", "--max_tokens=3", "--seed=1"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

TEST_F(CliTest, HealthGenerateScoreStats) {
  CommandResult r = RunCli({"health", R(), L()});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(absl::StrContains(r.out, "lockstep.v1.RolloutService")) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "SERVING")) << r.out;

  r = RunCli({"generate", R(), "--prompt=1,4,5,6", "--prompt=1,7,8", "--n=2",
              "--max_tokens=5", "--seed=7", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  v1::GenerateResponse g;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(r.out, &g).ok())
      << r.out;
  EXPECT_EQ(g.completions_size(), 4);
  // Text output, and the stream.
  r = RunCli(
      {"generate", R(), "--prompt=1,4,5,6", "--max_tokens=5", "--seed=7"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(absl::StrContains(r.out, "logprobs:")) << r.out;
  r = RunCli({"generate", R(), "--prompt=1,4,5,6", "--max_tokens=5", "--seed=7",
              "--stream"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(absl::StrContains(r.out, "[prompt 0 sample 0]")) << r.out;

  r = RunCli({"score", R(), "--tokens=1,4,5,6,7", "--prompt_len=2", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  v1::ComputeLogprobsResponse s;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(r.out, &s).ok())
      << r.out;
  ASSERT_EQ(s.results_size(), 1);
  EXPECT_EQ(s.results(0).logprobs_size(), 3);
  r = RunCli(
      {"score", L(), "--on=learner", "--tokens=1,4,5,6,7", "--prompt_len=2"});
  EXPECT_EQ(r.exit_code, 0) << r.err;

  r = RunCli({"stats", L(), "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  v1::LearnerStats st;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(r.out, &st).ok())
      << r.out;
  EXPECT_EQ(st.kernel_mode(), v1::KERNEL_MODE_INVARIANT);
  r = RunCli({"stats", L()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(absl::StrContains(r.out, "mismatch")) << r.out;
}

TEST_F(CliTest, TrainStepFromATrajectoryFile) {
  auto rollout =
      RolloutClient::Create(Servers::Get().Options(Servers::Get().rollout()));
  ASSERT_TRUE(rollout.ok());
  auto out = (*rollout)->Generate(Request(31, 2, 5));
  ASSERT_TRUE(out.ok()) << out.status();
  const std::string path = Servers::Get().work() + "/batch.jsonl";
  {
    std::ofstream f(path);
    google::protobuf::util::JsonPrintOptions po;
    for (const v1::Completion& c : out->completions()) {
      if (c.token_ids_size() == 0) continue;
      std::string line;
      ASSERT_TRUE(google::protobuf::util::MessageToJsonString(
                      MakeTrajectory(Prompts()[c.prompt_index()], c, 0.5f,
                                     absl::StrCat("cli-", c.prompt_index())),
                      &line, po)
                      .ok());
      f << line << "\n";
    }
  }
  CommandResult r =
      RunCli({"train-step", L(), "--trajectories=" + path, "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  v1::TrainStepResponse step;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(r.out, &step).ok())
      << r.out;
  EXPECT_GT(step.num_trajectories(), 0u);
  EXPECT_EQ(step.mismatch().tokens_mismatched(), 0u);
  // Nothing buffered any more: FAILED_PRECONDITION, exit status 1.
  r = RunCli({"train-step", L()});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(r.err, "FAILED_PRECONDITION")) << r.err;
}

TEST_F(CliTest, PushWeightsChangesTheVersion) {
  auto own = sdk_testing::StartRollout(Servers::Get().model_dir());
  ASSERT_TRUE(own.ok()) << own.status();
  const std::string r = "--rollout=" + (*own)->grpc_address();
  CommandResult c =
      RunCli({"push-weights", Servers::Get().model_dir(), r, "--json"});
  ASSERT_EQ(c.exit_code, 0) << c.err;
  v1::UpdateWeightsResponse u;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(c.out, &u).ok())
      << c.out;
  EXPECT_EQ(u.weight_version(), 1u);
  c = RunCli({"push-weights", Servers::Get().model_dir(), r, "--version=5"});
  ASSERT_EQ(c.exit_code, 0) << c.err;
  EXPECT_TRUE(absl::StrContains(c.out, "now serves weight version 5")) << c.out;
  c = RunCli({"push-weights", Servers::Get().model_dir(), r, "--version=3"});
  EXPECT_EQ(c.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(c.err, "FAILED_PRECONDITION")) << c.err;
  c = RunCli({"push-weights", "/nonexistent-dir", r});
  EXPECT_EQ(c.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(c.err, "NOT_FOUND")) << c.err;
  (*own)->Stop(20).IgnoreError();
}

TEST_F(CliTest, ErrorsExitNonZeroWithTheCode) {
  const std::string dead =
      absl::StrCat("--rollout=127.0.0.1:", sdk_testing::FreePort());
  CommandResult r =
      RunCli({"generate", dead, "--prompt=1,2", "--retries=1", "--timeout=5"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(r.err, "lockstep generate: UNAVAILABLE"))
      << r.err;
  r = RunCli({"health", dead, "--timeout=5", "--retries=1"});
  EXPECT_EQ(r.exit_code, 1);
  r = RunCli({"generate", R(), "--prompt=1,999"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(r.err, "INVALID_ARGUMENT")) << r.err;
}

TEST_F(CliTest, DemoRunsTheMakeDemoScript) {
  CommandResult r = RunCli({"demo", "--steps=1", "--prompts=2", "--samples=2"},
                           {"LOCKSTEP_NUM_THREADS=2"});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_TRUE(absl::StrContains(r.out, "== invariant kernels")) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "== summary")) << r.out;
  r = RunCli({"demo", "--build_dir=/nonexistent", "--steps=1"});
  EXPECT_NE(r.exit_code, 0);
}

// ---------------------------------------------------------------------------
// TLS, mTLS and tokens on the real servers.

class SecureServersTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::string> dir = testing::MakeTestCerts();
    ASSERT_TRUE(dir.ok()) << dir.status();
    certs_ = new std::string(*dir);
    ASSERT_TRUE(
        sdk_testing::WriteTextFile(*certs_ + "/token", "it-token\n").ok());
  }
  static void TearDownTestSuite() {
    if (certs_ != nullptr) testing::RemoveTree(*certs_);
    delete certs_;
    certs_ = nullptr;
  }
  static std::string C(const std::string& f) { return *certs_ + "/" + f; }
  static std::vector<std::string> SecurityFlags(bool mtls) {
    std::vector<std::string> f = {"--tls_cert=" + C("server.pem"),
                                  "--tls_key=" + C("server.key"),
                                  "--auth_token_file=" + C("token")};
    if (mtls) f.push_back("--tls_ca=" + C("ca.pem"));
    return f;
  }
  static ClientOptions Secure(const std::string& target, bool cert,
                              bool token) {
    ClientOptions o;
    o.target = target;
    o.default_timeout = absl::Seconds(30);
    o.retry.max_attempts = 1;
    o.tls.ca_file = C("ca.pem");
    if (cert) {
      o.tls.cert_file = C("client.pem");
      o.tls.key_file = C("client.key");
    }
    if (token) o.auth_token_file = C("token");
    return o;
  }
  static std::string* certs_;
};
std::string* SecureServersTest::certs_ = nullptr;

void CheckSecureRollout(const std::string& address, bool mtls,
                        const std::function<ClientOptions(bool, bool)>& make) {
  auto good = RolloutClient::Create(make(true, true));
  ASSERT_TRUE(good.ok());
  auto info = (*good)->GetModelInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  auto out = (*good)->Generate(Request(2));
  ASSERT_TRUE(out.ok()) << out.status();
  auto no_token = RolloutClient::Create(make(true, false));
  ASSERT_TRUE(no_token.ok());
  EXPECT_TRUE(
      absl::IsUnauthenticated((*no_token)->Generate(Request(2)).status()));
  EXPECT_TRUE(absl::IsUnauthenticated((*no_token)->GetModelInfo().status()));
  EXPECT_EQ((*no_token)->Health().value_or(HealthStatus::kUnknown),
            HealthStatus::kServing);
  if (mtls) {
    auto no_cert = RolloutClient::Create(make(false, true));
    ASSERT_TRUE(no_cert.ok());
    EXPECT_TRUE(absl::IsUnavailable((*no_cert)->GetModelInfo().status()));
  }
  ClientOptions plain;
  plain.target = address;
  plain.retry.max_attempts = 1;
  plain.default_timeout = absl::Seconds(10);
  auto insecure = RolloutClient::Create(plain);
  ASSERT_TRUE(insecure.ok());
  EXPECT_TRUE(absl::IsUnavailable((*insecure)->GetModelInfo().status()));
}

TEST_F(SecureServersTest, RolloutWithTlsAndToken) {
  ASSERT_TRUE(Servers::Get().ok());
  auto rollout = sdk_testing::StartRollout(Servers::Get().model_dir(),
                                           SecurityFlags(false));
  ASSERT_TRUE(rollout.ok()) << rollout.status();
  const std::string address = (*rollout)->grpc_address();
  CheckSecureRollout(address, false, [&](bool cert, bool token) {
    return Secure(address, cert, token);
  });
  // The CLI with the same settings.
  CommandResult r =
      RunCli({"generate", "--rollout=" + address, "--prompt=1,4,5",
              "--max_tokens=3", "--seed=1", "--tls_ca=" + C("ca.pem"),
              "--auth_token_file=" + C("token")});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  r = RunCli({"generate", "--rollout=" + address, "--prompt=1,4,5",
              "--tls_ca=" + C("ca.pem"), "--retries=1"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(r.err, "UNAUTHENTICATED")) << r.err;
  r = RunCli({"health", "--rollout=" + address, "--tls_ca=" + C("ca.pem")});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  r = RunCli({"generate", "--rollout=" + address, "--prompt=1,4,5",
              "--max_tokens=3", "--tls_ca=" + C("ca.pem")},
             {"LOCKSTEP_AUTH_TOKEN=it-token"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  (*rollout)->Stop(20).IgnoreError();
}

TEST_F(SecureServersTest, RolloutWithMutualTlsAndToken) {
  ASSERT_TRUE(Servers::Get().ok());
  auto rollout = sdk_testing::StartRollout(Servers::Get().model_dir(),
                                           SecurityFlags(true));
  ASSERT_TRUE(rollout.ok()) << rollout.status();
  const std::string address = (*rollout)->grpc_address();
  CheckSecureRollout(address, true, [&](bool cert, bool token) {
    return Secure(address, cert, token);
  });
  CommandResult r = RunCli(
      {"score", "--rollout=" + address, "--tokens=1,4,5,6", "--prompt_len=1",
       "--tls_ca=" + C("ca.pem"), "--tls_cert=" + C("client.pem"),
       "--tls_key=" + C("client.key"), "--auth_token_file=" + C("token")});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  (*rollout)->Stop(20).IgnoreError();
}

TEST_F(SecureServersTest, LearnerWithMutualTlsAndToken) {
  ASSERT_TRUE(Servers::Get().ok());
  if (!sdk_testing::BinaryHasFlag(sdk_testing::LearnerBinary(), "tls_cert")) {
    GTEST_SKIP() << "learner_service has no "
                    "--tls_cert/--tls_key/--tls_ca/--auth_token_file "
                    "flags yet (wire common/server_security.h into "
                    "learner_service/main.cc)";
  }
  std::vector<std::string> flags = SecurityFlags(true);
  auto learner = sdk_testing::StartLearner(Servers::Get().model_dir(), flags);
  ASSERT_TRUE(learner.ok()) << learner.status();
  const std::string address = (*learner)->grpc_address();
  auto good = LearnerClient::Create(Secure(address, true, true));
  ASSERT_TRUE(good.ok());
  auto stats = (*good)->GetStats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  auto no_token = LearnerClient::Create(Secure(address, true, false));
  ASSERT_TRUE(no_token.ok());
  EXPECT_TRUE(absl::IsUnauthenticated((*no_token)->GetStats().status()));
  EXPECT_TRUE(absl::IsUnauthenticated((*no_token)->TrainStep().status()));
  EXPECT_EQ((*no_token)->Health().value_or(HealthStatus::kUnknown),
            HealthStatus::kServing);
  auto no_cert = LearnerClient::Create(Secure(address, false, true));
  ASSERT_TRUE(no_cert.ok());
  EXPECT_TRUE(absl::IsUnavailable((*no_cert)->GetStats().status()));
  CommandResult r =
      RunCli({"stats", "--learner=" + address, "--tls_ca=" + C("ca.pem"),
              "--tls_cert=" + C("client.pem"), "--tls_key=" + C("client.key"),
              "--auth_token_file=" + C("token")});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  (*learner)->Stop(20).IgnoreError();
}

}  // namespace
}  // namespace lockstep::client
