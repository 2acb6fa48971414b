// Learner core tests against an in-process fake RolloutService (GetModelInfo
// + UpdateWeights through the real WeightStager): registration, weight push
// with retries, a rollout that is down, buffer semantics, checkpoints by
// name, and the exported metrics.
#include "learner_service/learner.h"
#include "learner_service/membership.h"
#include "absl/strings/match.h"
#include "learner_service/server/learner_metrics.h"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <filesystem>
#include <functional>
#include <mutex>
#include <optional>
#include <random>

#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/formats/model_generator.h"
#include "common/model/model.h"
#include "common/wire/grpc_status.h"
#include "common/wire/weight_assembly.h"
#include "common/wire/weight_stream.h"
#include "kernels/build_id.h"
#include "learner_service/weight_push.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "lockstep/v1/rollout.grpc.pb.h"

namespace lockstep::learner {
namespace {

namespace fs = std::filesystem;
namespace v1 = ::lockstep::v1;
using ::testing::HasSubstr;

// Serves GetModelInfo and UpdateWeights for `config`; fails the first
// `fail_next` UpdateWeights calls with UNAVAILABLE. GetModelInfo describes a
// rollout built and run as this test's learner (CPU, invariant kernels,
// this build's kernel id); `edit_info` may change the answer (a rollout on
// other hardware, or one restarted with another config).
class FakeRollout final : public v1::RolloutService::Service {
 public:
  explicit FakeRollout(common::ModelConfig config) : config_(std::move(config)) {}

  grpc::Status GetModelInfo(grpc::ServerContext*, const v1::GetModelInfoRequest*,
                            v1::ModelInfo* info) override {
    std::lock_guard<std::mutex> lock(mu_);
    *info->mutable_config() = common::ModelConfigToProto(config_);
    info->set_weight_version(version_);
    info->set_kernel_mode(v1::KERNEL_MODE_INVARIANT);
    info->set_device(v1::DEVICE_CPU);
    info->set_tp_size(1);
    info->set_kernel_build_id(kernels::KernelBuildId());
    info->set_gpu_architecture(kernels::GpuArchitecture(kernels::Device::kCpu));
    if (edit_info) edit_info(info);
    ++info_calls_;
    return grpc::Status::OK;
  }

  grpc::Status UpdateWeights(grpc::ServerContext*,
                             grpc::ServerReader<v1::WeightUpdate>* reader,
                             v1::UpdateWeightsResponse* resp) override {
    common::WeightStager stager(config_);
    v1::WeightUpdate m;
    absl::Status s;
    while (reader->Read(&m)) {
      if (s.ok()) s = stager.Add(m);
    }
    if (fail_next_ > 0) {
      --fail_next_;
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "fake: try again");
    }
    if (!s.ok()) return grpc::Status(grpc::StatusCode::ABORTED, std::string(s.message()));
    auto tensors = stager.Finish();
    if (!tensors.ok()) {
      return grpc::Status(grpc::StatusCode::ABORTED,
                          std::string(tensors.status().message()));
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (stager.target_version() <= version_) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "version regression");
    }
    resp->set_previous_version(version_);
    version_ = stager.target_version();
    resp->set_weight_version(version_);
    resp->set_bytes(stager.bytes_received());
    tensors_ = std::move(*tensors);
    ++updates_;
    return grpc::Status::OK;
  }

  std::atomic<int> fail_next_{0};
  std::mutex mu_;
  std::function<void(v1::ModelInfo*)> edit_info;  // guarded by mu_
  int info_calls_ = 0;                            // guarded by mu_
  common::ModelConfig config_;
  uint64_t version_ = 0;
  common::TensorMap tensors_;
  int updates_ = 0;
};

struct FakeServer {
  explicit FakeServer(common::ModelConfig config) : service(std::move(config)) {
    grpc::ServerBuilder b;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    b.RegisterService(&service);
    server = b.BuildAndStart();
  }
  ~FakeServer() { Stop(); }
  void Stop() {
    if (server) {
      server->Shutdown();
      server.reset();
    }
  }
  std::string endpoint() const { return absl::StrCat("127.0.0.1:", port); }

  FakeRollout service;
  int port = 0;
  std::unique_ptr<grpc::Server> server;
};

class LearnerCoreTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new fs::path(fs::temp_directory_path() /
                         ("lockstep_learner_core_" + std::to_string(::getpid())));
    fs::create_directories(*root_);
    ASSERT_TRUE(common::GenerateModel(common::TinyConfig(), 1,
                                      (*root_ / "tiny").string())
                    .ok());
  }
  static void TearDownTestSuite() {
    std::error_code ec;
    fs::remove_all(*root_, ec);
    delete root_;
  }

  void SetUp() override {
    registry_ = std::make_shared<prometheus::Registry>();
    options_.trainer.model_dir = (*root_ / "tiny").string();
    options_.checkpoint_dir = (*root_ / ("ckpt_" + std::to_string(counter_++))).string();
    options_.push.retry.initial_backoff = absl::Milliseconds(10);
    options_.push.retry.max_attempts = 4;
    options_.register_timeout = absl::Seconds(2);
  }

  std::unique_ptr<Learner> Make() {
    common::BuildInfo info;
    info.role = "learner";
    info.kernels = "invariant";
    info.device = "cpu";
    // One per learner made: each must outlive its learner.
    metrics_.push_back(std::make_unique<LearnerMetrics>(*registry_, info));
    auto l = Learner::Create(options_, metrics_.back().get());
    EXPECT_TRUE(l.ok()) << l.status();
    return l.ok() ? std::move(*l) : nullptr;
  }

  // A group of `n` random trajectories scored by the learner's own model.
  std::vector<Trajectory> Group(Learner& l, const std::string& id, int n,
                                uint64_t seed) {
    common::ModelOptions mo;
    auto model = common::Model::Create(l.config(), *l.Weights().second, mo);
    EXPECT_TRUE(model.ok());
    std::mt19937_64 rng(seed);
    std::vector<Trajectory> out;
    for (int i = 0; i < n; ++i) {
      Trajectory t;
      t.prompt_tokens = {1, static_cast<int32_t>(4 + rng() % 10), 16};
      for (int k = 0; k < 4; ++k) {
        t.completion_tokens.push_back(static_cast<int32_t>(rng() % 64));
      }
      auto lp = (*model)->Score(
          {[&] {
            auto s = t.prompt_tokens;
            s.insert(s.end(), t.completion_tokens.begin(), t.completion_tokens.end());
            return s;
          }()},
          {3});
      EXPECT_TRUE(lp.ok());
      t.rollout_logprobs = (*lp)[0];
      t.weight_version = l.version();
      t.reward = static_cast<float>(i);
      t.group_id = id;
      out.push_back(std::move(t));
    }
    return out;
  }

  std::string Scrape() {
    prometheus::TextSerializer s;
    return s.Serialize(registry_->Collect());
  }

  static inline fs::path* root_ = nullptr;
  static inline int counter_ = 0;
  LearnerOptions options_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::vector<std::unique_ptr<LearnerMetrics>> metrics_;
};

TEST_F(LearnerCoreTest, PushesEveryStepToRegisteredRollouts) {
  auto learner = Make();
  FakeServer a(learner->config()), b(learner->config());
  auto reg = learner->RegisterRollouts({a.endpoint(), b.endpoint()}, true);
  ASSERT_TRUE(reg.ok()) << reg.status();
  EXPECT_TRUE(reg->empty());  // both already at version 0
  ASSERT_TRUE(learner->Submit(Group(*learner, "g", 4, 1)).ok());
  auto r = learner->TrainStep({});
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->pushes.size(), 2u);
  for (const PushResult& p : r->pushes) {
    EXPECT_TRUE(p.status.ok()) << p.status;
    EXPECT_EQ(p.rollout_version, 1u);
    EXPECT_EQ(p.attempts, 1);
    EXPECT_GT(p.bytes, 0u);
  }
  for (FakeServer* s : {&a, &b}) {
    std::lock_guard<std::mutex> lock(s->service.mu_);
    EXPECT_EQ(s->service.version_, 1u);
    const common::TensorMap& want = *learner->Weights().second;
    ASSERT_EQ(s->service.tensors_.size(), want.size());
    for (const auto& [name, t] : want) {
      EXPECT_EQ(s->service.tensors_.at(name).data, t.data) << name;
    }
  }
  const std::string text = Scrape();
  EXPECT_THAT(text, HasSubstr("lockstep_weight_version{role=\"learner\"} 1"));
  EXPECT_THAT(text, HasSubstr("lockstep_tokens_compared_total 16"));
  EXPECT_THAT(text, HasSubstr("lockstep_tokens_mismatched_total 0"));
  EXPECT_THAT(text, HasSubstr("lockstep_logprob_abs_diff_bucket{le=\"0\"} 16"));
  EXPECT_THAT(text, HasSubstr("lockstep_weight_push_failures_total 0"));
  EXPECT_THAT(text, HasSubstr("lockstep_build_info{"));
}

TEST_F(LearnerCoreTest, RetriesUnavailableThenSucceeds) {
  auto learner = Make();
  FakeServer a(learner->config());
  ASSERT_TRUE(learner->RegisterRollouts({a.endpoint()}, false).ok());
  a.service.fail_next_ = 2;
  ASSERT_TRUE(learner->Submit(Group(*learner, "g", 2, 2)).ok());
  auto r = learner->TrainStep({});
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->pushes.size(), 1u);
  EXPECT_TRUE(r->pushes[0].status.ok()) << r->pushes[0].status;
  EXPECT_EQ(r->pushes[0].attempts, 3);
}

// Receives a weight update sent as parallel parts and assembles it
// (common::WeightAssembly, as the rollout does); the first `fail_next`
// parts to finish their stream are answered UNAVAILABLE, which fails
// their whole set.
class PartsRollout final : public v1::RolloutService::Service {
 public:
  explicit PartsRollout(common::ModelConfig config)
      : config_(std::move(config)), assembly_(common::WeightAssembly::Options{}) {}

  grpc::Status UpdateWeights(grpc::ServerContext* ctx,
                             grpc::ServerReader<v1::WeightUpdate>* reader,
                             v1::UpdateWeightsResponse* resp) override {
    v1::WeightUpdate first;
    if (!reader->Read(&first) || !first.has_header() || first.header().stream_count() <= 1) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "expected a part");
    }
    absl::StatusOr<v1::UpdateWeightsResponse> r = assembly_.ReceivePart(
        config_, first,
        [this, reader](v1::WeightUpdate* m) -> absl::StatusOr<bool> {
          if (reader->Read(m)) return true;
          // The stream's end: the injected failure abandons the part.
          if (fail_next.fetch_sub(1) > 0) return absl::UnavailableError("fake: try again");
          return false;
        },
        [this](const v1::WeightUpdateHeader& h) {
          return absl::StatusOr<common::AssemblyCommit>(Commit(h.target_version()));
        },
        [ctx] { return ctx->IsCancelled(); }, absl::InfiniteFuture());
    if (!r.ok()) return common::ToGrpcStatus(r.status());
    *resp = *r;
    return grpc::Status::OK;
  }

  std::atomic<int> fail_next{0};
  std::mutex mu;
  common::TensorMap installed;  // guarded by mu: the last complete set
  int commits = 0;              // guarded by mu

 private:
  common::AssemblyCommit Commit(uint64_t version) {
    return [this, version](common::TensorMap tensors, const common::AssembledWeights& info) {
      std::lock_guard<std::mutex> lock(mu);
      installed = std::move(tensors);
      ++commits;
      v1::UpdateWeightsResponse r;
      r.set_weight_version(version);
      r.set_bytes(info.bytes);
      return absl::StatusOr<v1::UpdateWeightsResponse>(r);
    };
  }

  common::ModelConfig config_;
  common::WeightAssembly assembly_;
};

TEST_F(LearnerCoreTest, ParallelPartsRetryAsAWholeSetAfterUnavailable) {
  auto learner = Make();
  PartsRollout service(learner->config());
  int port = 0;
  grpc::ServerBuilder b;
  b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  b.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = b.BuildAndStart();
  auto client = ConnectRollout(absl::StrCat("127.0.0.1:", port));
  ASSERT_TRUE(client.ok()) << client.status();
  service.fail_next = 1;  // one part of the first set: the set fails
  PushOptions o;
  o.streams = 4;
  o.retry.initial_backoff = absl::Milliseconds(10);
  const common::TensorMap& weights = *learner->Weights().second;
  PushResult r = PushWeights(**client, weights, 7, "test", o);
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.attempts, 2);
  EXPECT_EQ(r.rollout_version, 7u);
  // A straggler part of the failed try is refused at once (set_id), so the
  // retry never waits for the assembly's 60 s timeout.
  EXPECT_LT(r.seconds, 30.0);
  {
    std::lock_guard<std::mutex> lock(service.mu);
    EXPECT_EQ(service.commits, 1);  // the failed set never committed
    ASSERT_EQ(service.installed.size(), weights.size());
    for (const auto& [name, t] : weights) {
      EXPECT_EQ(service.installed.at(name).data, t.data) << name;
    }
  }
  // Retries exhausted: the set's error is reported, nothing is committed.
  service.fail_next = 1 << 20;
  o.retry.max_attempts = 2;
  PushResult failed = PushWeights(**client, weights, 8, "test", o);
  EXPECT_EQ(failed.status.code(), absl::StatusCode::kUnavailable) << failed.status;
  EXPECT_EQ(failed.attempts, 2);
  std::lock_guard<std::mutex> lock(service.mu);
  EXPECT_EQ(service.commits, 1);
  server->Shutdown();
}

TEST_F(LearnerCoreTest, RolloutDownDuringPushIsReportedAndStepIsWhole) {
  auto learner = Make();
  auto a = std::make_unique<FakeServer>(learner->config());
  const std::string endpoint = a->endpoint();
  ASSERT_TRUE(learner->RegisterRollouts({endpoint}, false).ok());
  a.reset();  // the rollout goes away
  ASSERT_TRUE(learner->Submit(Group(*learner, "g", 3, 3)).ok());
  auto r = learner->TrainStep({});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->step.weight_version, 1);  // applied exactly once
  ASSERT_EQ(r->pushes.size(), 1u);
  EXPECT_EQ(r->pushes[0].status.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(r->pushes[0].attempts, options_.push.retry.max_attempts);
  EXPECT_THAT(std::string(r->pushes[0].status.message()),
              HasSubstr(absl::StrCat("push of version 1 to ", endpoint,
                                     " (attempt 4): ")));
  const LearnerStatus st = learner->Status();
  EXPECT_EQ(st.buffered_trajectories, 0);
  ASSERT_EQ(st.rollouts.size(), 1u);
  EXPECT_EQ(st.rollouts[0].pushes_failed, 1);
  EXPECT_EQ(st.rollouts[0].weight_version, 0);
  EXPECT_THAT(Scrape(), HasSubstr("lockstep_weight_push_failures_total 1"));
  // The learner keeps working.
  ASSERT_TRUE(learner->Submit(Group(*learner, "h", 2, 4)).ok());
  auto r2 = learner->TrainStep(TrainStepOptions{{}, std::nullopt, true});
  ASSERT_TRUE(r2.ok());
  EXPECT_EQ(r2->step.weight_version, 2);
  EXPECT_TRUE(r2->pushes.empty());
}

// PushWeights sends the learner's version as it is, even 0: a rollout
// already serving it refuses the push (it is not bumped to "served + 1").
TEST_F(LearnerCoreTest, PushesTheLearnersOwnVersion) {
  auto learner = Make();
  FakeServer a(learner->config());
  ASSERT_TRUE(learner->RegisterRollouts({a.endpoint()}, false).ok());
  std::vector<PushResult> pushes = learner->PushWeights();
  ASSERT_EQ(pushes.size(), 1u);
  EXPECT_EQ(pushes[0].status.code(), absl::StatusCode::kFailedPrecondition)
      << pushes[0].status;
  EXPECT_EQ(pushes[0].attempts, 1);
  EXPECT_EQ(pushes[0].endpoint, a.endpoint());
  std::lock_guard<std::mutex> lock(a.service.mu_);
  EXPECT_EQ(a.service.updates_, 0);
}

// A rollout that serves the same shapes with other arithmetic (RoPE base,
// RoPE scaling, epsilon) is refused at registration, naming the field:
// otherwise every token would mismatch while both sides look healthy.
TEST_F(LearnerCoreTest, RegistrationRefusesAnotherRopeOrEpsilon) {
  auto learner = Make();
  std::vector<std::pair<std::string, common::ModelConfig>> others;
  common::ModelConfig c = learner->config();
  c.rope.rope_theta *= 2;
  others.emplace_back("rope_theta", c);
  c = learner->config();
  c.rope.rope_type = "linear";
  c.rope.factor = 2.0;
  others.emplace_back("rope.rope_type", c);
  c = learner->config();
  c.rms_norm_eps *= 10;
  others.emplace_back("rms_norm_eps", c);
  for (const auto& [field, config] : others) {
    FakeServer other(config);
    auto reg = learner->RegisterRollouts({other.endpoint()}, false);
    EXPECT_EQ(reg.status().code(), absl::StatusCode::kFailedPrecondition) << field;
    EXPECT_THAT(std::string(reg.status().message()), HasSubstr(field));
  }
  FakeServer same(learner->config());
  EXPECT_TRUE(learner->RegisterRollouts({same.endpoint()}, false).ok());
}

// Beyond the config, everything that changes the arithmetic is checked at
// registration: kernel mode, device, GPU architecture, kernel build id. The
// error names the first differing field and both values.
TEST_F(LearnerCoreTest, RegistrationRefusesAnotherKernelDeviceArchOrBuild) {
  auto learner = Make();
  EXPECT_EQ(learner->fingerprint().kernel_build_id(), kernels::KernelBuildId());
  EXPECT_EQ(learner->fingerprint().gpu_architecture(), "none");
  EXPECT_EQ(learner->fingerprint().device(), v1::DEVICE_CPU);
  struct Case {
    std::string field;
    std::function<void(v1::ModelInfo*)> edit;
    std::vector<std::string> needles;  // besides the field name
  };
  const double eps = learner->config().rms_norm_eps;
  const std::vector<Case> cases = {
      {"rope_theta",
       [](v1::ModelInfo* i) {
         i->mutable_config()->set_rope_theta(i->config().rope_theta() * 2);
         i->mutable_config()->mutable_rope()->set_rope_theta(
             i->config().rope_theta());
       },
       {}},
      // 1 ulp: both print as the same %g, the message still tells them apart.
      {"rms_norm_eps",
       [eps](v1::ModelInfo* i) {
         i->mutable_config()->set_rms_norm_eps(std::nextafter(eps, 1.0));
       },
       {absl::StrFormat("learner %.17g, rollout %.17g", eps,
                        std::nextafter(eps, 1.0))}},
      {"kernel_mode",
       [](v1::ModelInfo* i) { i->set_kernel_mode(v1::KERNEL_MODE_STANDARD); },
       {"learner KERNEL_MODE_INVARIANT, rollout KERNEL_MODE_STANDARD"}},
      {"device",
       [](v1::ModelInfo* i) {
         i->set_device(v1::DEVICE_CUDA);
         i->set_gpu_architecture("sm_90");
       },
       // The first difference is named, the others counted.
       {"learner DEVICE_CPU, rollout DEVICE_CUDA", "1 more: gpu_architecture"}},
      {"gpu_architecture",
       [](v1::ModelInfo* i) { i->set_gpu_architecture("sm_80"); },
       {"learner \"none\", rollout \"sm_80\""}},
      {"kernel_build_id",
       [](v1::ModelInfo* i) { i->set_kernel_build_id("lockstep 0.0.9; gcc 9"); },
       {kernels::KernelBuildId(), "lockstep 0.0.9; gcc 9"}},
      // A rollout older than the field reports none: refused as unknown.
      {"kernel_build_id", [](v1::ModelInfo* i) { i->clear_kernel_build_id(); },
       {"rollout \"\""}},
      {"dtype",
       [](v1::ModelInfo* i) {
         i->mutable_config()->set_dtype(i->config().dtype() == v1::DTYPE_F32
                                            ? v1::DTYPE_BF16
                                            : v1::DTYPE_F32);
       },
       {}},
      {"eos_token_ids",
       [](v1::ModelInfo* i) { i->mutable_config()->add_eos_token_ids(7); },
       {}},
  };
  for (const Case& c : cases) {
    FakeServer other(learner->config());
    other.service.edit_info = c.edit;
    auto reg = learner->RegisterRollouts({other.endpoint()}, false);
    ASSERT_FALSE(reg.ok()) << c.field;
    EXPECT_EQ(reg.status().code(), absl::StatusCode::kFailedPrecondition)
        << c.field << ": " << reg.status();
    const std::string message(reg.status().message());
    EXPECT_THAT(message, HasSubstr(c.field + " differs")) << message;
    EXPECT_THAT(message, HasSubstr(other.endpoint()));
    for (const std::string& n : c.needles) {
      EXPECT_THAT(message, HasSubstr(n)) << message;
    }
  }
  EXPECT_TRUE(learner->Status().rollouts.empty());
  // Another TP degree is only recorded: invariant kernels give the same bits.
  FakeServer tp2(learner->config());
  tp2.service.edit_info = [](v1::ModelInfo* i) { i->set_tp_size(2); };
  auto reg = learner->RegisterRollouts({tp2.endpoint()}, false);
  ASSERT_TRUE(reg.ok()) << reg.status();
  ASSERT_EQ(learner->Status().rollouts.size(), 1u);
  EXPECT_EQ(learner->Status().rollouts[0].tp_size, 2);
  // Identical: OK.
  FakeServer same(learner->config());
  EXPECT_TRUE(learner->RegisterRollouts({same.endpoint()}, false).ok());
}

// Every push re-checks the rollout first: one restarted with another config
// after it registered is refused, and nothing is sent to it.
TEST_F(LearnerCoreTest, PushRefusesARolloutRestartedWithAnotherConfig) {
  auto learner = Make();
  FakeServer a(learner->config());
  ASSERT_TRUE(learner->RegisterRollouts({a.endpoint()}, false).ok());
  {
    std::lock_guard<std::mutex> lock(a.service.mu_);
    a.service.edit_info = [](v1::ModelInfo* i) {
      i->mutable_config()->set_rms_norm_eps(i->config().rms_norm_eps() * 10);
    };
  }
  ASSERT_TRUE(learner->Submit(Group(*learner, "g", 2, 11)).ok());
  auto r = learner->TrainStep({});
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->pushes.size(), 1u);
  EXPECT_EQ(r->pushes[0].status.code(), absl::StatusCode::kFailedPrecondition)
      << r->pushes[0].status;
  EXPECT_THAT(std::string(r->pushes[0].status.message()),
              HasSubstr("rms_norm_eps differs"));
  EXPECT_EQ(r->pushes[0].attempts, 1);  // not retried
  {
    std::lock_guard<std::mutex> lock(a.service.mu_);
    EXPECT_EQ(a.service.updates_, 0);
    EXPECT_EQ(a.service.version_, 0u);
  }
  EXPECT_EQ(learner->Status().rollouts[0].pushes_failed, 1);
  // Another kernel build is refused the same way (PushWeights).
  {
    std::lock_guard<std::mutex> lock(a.service.mu_);
    a.service.edit_info = [](v1::ModelInfo* i) { i->set_kernel_build_id("x"); };
  }
  std::vector<PushResult> pushes = learner->PushWeights();
  ASSERT_EQ(pushes.size(), 1u);
  EXPECT_EQ(pushes[0].status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(pushes[0].status.message()),
              HasSubstr("kernel_build_id differs"));
  // Back to the learner's config: the push goes through.
  {
    std::lock_guard<std::mutex> lock(a.service.mu_);
    a.service.edit_info = nullptr;
  }
  pushes = learner->PushWeights();
  ASSERT_EQ(pushes.size(), 1u);
  EXPECT_TRUE(pushes[0].status.ok()) << pushes[0].status;
  std::lock_guard<std::mutex> lock(a.service.mu_);
  EXPECT_EQ(a.service.version_, 1u);
  EXPECT_EQ(a.service.updates_, 1);
}

TEST(CompareFingerprintsTest, EveryFieldInOrderAndDoublesByBits) {
  v1::ModelInfo a;
  common::ModelConfig c = common::TinyConfig();
  *a.mutable_config() = common::ModelConfigToProto(c);
  a.set_kernel_mode(v1::KERNEL_MODE_INVARIANT);
  a.set_device(v1::DEVICE_CPU);
  a.set_kernel_build_id("id");
  a.set_gpu_architecture("none");
  v1::ModelInfo b = a;
  // Not part of the arithmetic: ignored.
  b.set_tp_size(4);
  b.set_page_size(7);
  b.set_weight_version(9);
  b.mutable_config()->set_config_json("{}");
  b.mutable_config()->add_ignored_config_keys("x");
  EXPECT_TRUE(CompareFingerprints(a, b).empty());
  EXPECT_TRUE(CheckCompatible(a, b, "h:1").ok());
  b.mutable_config()->mutable_rope()->set_beta_fast(-0.0);  // vs +0.0
  b.mutable_config()->set_bos_token_id(3);
  if (a.config().has_bos_token_id()) b.mutable_config()->clear_bos_token_id();
  b.mutable_config()->set_max_position_embeddings(
      a.config().max_position_embeddings() + 1);
  b.mutable_config()->set_head_dim(a.config().head_dim() * 2);
  b.set_kernel_build_id("other");
  const std::vector<FingerprintDifference> d = CompareFingerprints(a, b);
  std::vector<std::string> fields;
  for (const auto& x : d) fields.push_back(x.field);
  EXPECT_THAT(fields, ::testing::ElementsAre("head_dim", "rope.beta_fast",
                                             "max_position_embeddings",
                                             "bos_token_id", "kernel_build_id"));
  const absl::Status s = CheckCompatible(a, b, "h:1");
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()),
              HasSubstr(absl::StrCat("head_dim differs (learner ",
                                     a.config().head_dim(), ", rollout ",
                                     b.config().head_dim(), ")")));
  EXPECT_THAT(std::string(s.message()), HasSubstr("4 more"));
}

TEST_F(LearnerCoreTest, RegistrationErrors) {
  auto learner = Make();
  auto bad = learner->RegisterRollouts({"no-port"}, false);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(learner->RegisterRollouts({}, false).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Nobody listens on a port we just released.
  int port = 0;
  {
    FakeServer tmp(learner->config());
    port = tmp.port;
  }
  auto down = learner->RegisterRollouts({absl::StrCat("127.0.0.1:", port)}, false);
  EXPECT_EQ(down.status().code(), absl::StatusCode::kUnavailable) << down.status();
  common::ModelConfig other = learner->config();
  other.num_hidden_layers = 3;
  FakeServer wrong(other);
  auto mismatch = learner->RegisterRollouts({wrong.endpoint()}, false);
  EXPECT_EQ(mismatch.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(mismatch.status().message()),
              HasSubstr("num_hidden_layers"));
  EXPECT_TRUE(learner->Status().rollouts.empty());
  // push_now brings a rollout that is behind up to date.
  FakeServer behind(learner->config());
  ASSERT_TRUE(learner->Submit(Group(*learner, "g", 2, 5)).ok());
  ASSERT_TRUE(learner->TrainStep({}).ok());
  auto reg = learner->RegisterRollouts({behind.endpoint()}, true);
  ASSERT_TRUE(reg.ok());
  ASSERT_EQ(reg->size(), 1u);
  EXPECT_TRUE((*reg)[0].status.ok());
  EXPECT_EQ(behind.service.version_, 1u);
  EXPECT_EQ(learner->UnregisterRollouts({behind.endpoint()}), 1);
}

TEST_F(LearnerCoreTest, BufferSemantics) {
  options_.max_buffered_trajectories = 6;
  auto learner = Make();
  // All or nothing.
  auto batch = Group(*learner, "a", 3, 6);
  batch[2].rollout_logprobs.pop_back();
  auto s = learner->Submit(batch);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("trajectory 2"));
  EXPECT_EQ(learner->Status().buffered_trajectories, 0);
  EXPECT_EQ(learner->Submit({}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(learner->TrainStep({}).status().code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(learner->Submit(Group(*learner, "a", 3, 7)).ok());
  ASSERT_TRUE(learner->Submit(Group(*learner, "b", 3, 8)).ok());
  EXPECT_EQ(learner->Submit(Group(*learner, "c", 1, 9)).status().code(),
            absl::StatusCode::kResourceExhausted);
  TrainStepOptions unknown;
  unknown.group_ids = {"a", "zzz"};
  EXPECT_EQ(learner->TrainStep(unknown).status().code(), absl::StatusCode::kNotFound);
  TrainStepOptions stale_version;
  stale_version.expected_version = 5;
  EXPECT_EQ(learner->TrainStep(stale_version).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(learner->version(), 0);
  EXPECT_EQ(learner->Status().buffered_trajectories, 6);
  // Train only group b; a stays.
  TrainStepOptions only_b;
  only_b.group_ids = {"b"};
  only_b.expected_version = 0;
  auto r = learner->TrainStep(only_b);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->step.num_trajectories, 3);
  const LearnerStatus st = learner->Status();
  EXPECT_EQ(st.buffered_trajectories, 3);
  EXPECT_EQ(st.buffered_groups, 1);
  // Group a (version 0) is now stale.
  auto r2 = learner->TrainStep({});
  ASSERT_TRUE(r2.ok());
  EXPECT_EQ(r2->step.mismatch.tokens_stale, 12);
  EXPECT_EQ(r2->step.mismatch.tokens_compared, 0);
  EXPECT_THAT(Scrape(), HasSubstr("lockstep_tokens_stale_total 12"));
}

// A learner starting on a --checkpoint_dir that a crashed run left
// leftovers in removes them (and restores a checkpoint that was moved aside
// when the crash came between the two renames of a save).
TEST_F(LearnerCoreTest, StartUpCleansCrashedSaves) {
  {
    auto learner = Make();
    ASSERT_TRUE(learner->Submit(Group(*learner, "a", 2, 1)).ok());
    ASSERT_TRUE(learner->TrainStep({}).ok());
    ASSERT_TRUE(learner->SaveCheckpoint("a").ok());
    ASSERT_TRUE(learner->SaveCheckpoint("b").ok());
  }
  const pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  ::waitpid(child, nullptr, 0);
  const std::string dead = std::to_string(child);
  const fs::path root(options_.checkpoint_dir);
  fs::create_directories(root / ("a.tmp-" + dead));
  fs::rename(root / "b", root / ("b.old-" + dead));
  fs::create_directories(root / ("b.tmp-" + dead));
  auto learner = Make();
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(root)) {
    names.push_back(e.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  EXPECT_THAT(names, ::testing::ElementsAre("a", "b"));
  for (const char* n : {"a", "b"}) {
    auto loaded = learner->LoadCheckpoint(n);
    ASSERT_TRUE(loaded.ok()) << n << ": " << loaded.status();
    EXPECT_EQ(loaded->step, 1);
  }
}

TEST_F(LearnerCoreTest, CheckpointsByName) {
  {
    LearnerOptions saved = options_;
    options_.checkpoint_dir.clear();
    auto off = Make();
    EXPECT_EQ(off->SaveCheckpoint("x").status().code(),
              absl::StatusCode::kFailedPrecondition);
    options_ = saved;
  }
  auto learner = Make();
  EXPECT_EQ(learner->SaveCheckpoint("../evil").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(learner->LoadCheckpoint("missing").status().code(),
            absl::StatusCode::kNotFound);
  std::string hook_state = "before";
  learner->SetCheckpointHooks(CheckpointHooks{
      [&] { return std::map<std::string, std::string>{{"h", hook_state}}; },
      [&](const std::map<std::string, std::string>& m) {
        hook_state = m.at("h");
        return absl::OkStatus();
      }});
  ASSERT_TRUE(learner->Submit(Group(*learner, "a", 2, 1)).ok());
  ASSERT_TRUE(learner->TrainStep({}).ok());
  auto saved = learner->SaveCheckpoint("");
  ASSERT_TRUE(saved.ok()) << saved.status();
  EXPECT_THAT(saved->path, HasSubstr("step-1"));
  hook_state = "after";
  ASSERT_TRUE(learner->Submit(Group(*learner, "b", 2, 2)).ok());
  ASSERT_TRUE(learner->TrainStep({}).ok());
  ASSERT_TRUE(learner->Submit(Group(*learner, "c", 2, 3)).ok());
  auto loaded = learner->LoadCheckpoint("step-1");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->weight_version, 1);
  EXPECT_EQ(loaded->dropped_trajectories, 2);
  EXPECT_EQ(hook_state, "before");
  EXPECT_EQ(learner->version(), 1);
  EXPECT_EQ(learner->Status().buffered_trajectories, 0);
}

}  // namespace
}  // namespace lockstep::learner

namespace lockstep::learner {
namespace {

// Issue 19 §1: members follow what the name resolves to. A member that joins
// behind gets the learner's current version at once; one that vanishes is
// dropped (no more pushes to it); a resolve failure keeps the members.
TEST_F(LearnerCoreTest, MembershipFollowsDnsAndSyncsNewMembers) {
  auto learner = Make();
  FakeServer a(learner->config()), b(learner->config());
  std::vector<std::string> answer = {a.endpoint()};
  bool fail = false;
  MembershipOptions mo;
  mo.names = {"rollouts.test:1"};
  Membership m(learner.get(), mo, [&](const std::string& name) -> absl::StatusOr<std::vector<std::string>> {
    EXPECT_EQ(name, "rollouts.test:1");
    if (fail) return absl::NotFoundError("no such host");
    return answer;
  });
  MembershipRound r = m.RunOnce();
  EXPECT_EQ(r.added, std::vector<std::string>{a.endpoint()});
  ASSERT_EQ(learner->Status().rollouts.size(), 1u);
  // A step: version 1 on the member.
  ASSERT_TRUE(learner->Submit(Group(*learner, "g", 2, 3)).ok());
  ASSERT_TRUE(learner->TrainStep({}).ok());
  // b appears (at version 0): registered and pushed version 1 in the round.
  answer = {a.endpoint(), b.endpoint()};
  r = m.RunOnce();
  EXPECT_EQ(r.added, std::vector<std::string>{b.endpoint()});
  {
    std::lock_guard<std::mutex> lock(b.service.mu_);
    EXPECT_EQ(b.service.version_, 1u);
  }
  EXPECT_EQ(learner->Status().rollouts.size(), 2u);
  // A failing resolution changes nothing.
  fail = true;
  r = m.RunOnce();
  EXPECT_EQ(r.errors.size(), 1u);
  EXPECT_EQ(learner->Status().rollouts.size(), 2u);
  fail = false;
  // a vanishes: dropped; the next step pushes to b only.
  answer = {b.endpoint()};
  r = m.RunOnce();
  EXPECT_EQ(r.removed, std::vector<std::string>{a.endpoint()});
  ASSERT_EQ(learner->Status().rollouts.size(), 1u);
  EXPECT_EQ(learner->Status().rollouts[0].endpoint, b.endpoint());
  ASSERT_TRUE(learner->Submit(Group(*learner, "h", 2, 4)).ok());
  auto step = learner->TrainStep({});
  ASSERT_TRUE(step.ok());
  ASSERT_EQ(step->pushes.size(), 1u);
  EXPECT_EQ(step->pushes[0].endpoint, b.endpoint());
  {
    std::lock_guard<std::mutex> lock(a.service.mu_);
    EXPECT_EQ(a.service.version_, 1u);
  }
}

TEST(ResolveAllTest, LocalhostAndBadNames) {
  auto r = ResolveAll("localhost:50051");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->empty());
  for (const std::string& a : *r) EXPECT_TRUE(absl::EndsWith(a, ":50051")) << a;
  auto ip = ResolveAll("127.0.0.1:7");
  ASSERT_TRUE(ip.ok());
  EXPECT_EQ(*ip, std::vector<std::string>{"127.0.0.1:7"});
  EXPECT_EQ(ResolveAll("no-port").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ResolveAll("host:0").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ResolveAll("name.invalid:80").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace lockstep::learner
