// Parallel weight streams through the real server (issue 18 §1): an update
// sent as 4 concurrent UpdateWeights parts swaps the version and serves
// bit-identical greedy logprobs to the same weights sent as one stream; a
// missing part, a mismatched manifest and invalid part headers fail with the
// documented codes while the old version keeps serving; a whole-set retry
// after a failed set succeeds.
#include <thread>

#include "common/wire/weight_stream.h"
#include "gtest/gtest.h"
#include "learner_service/weight_push.h"
#include "tests/rollout_service/integration_util.h"

namespace lockstep::rollout::itest {
namespace {

class RolloutWeightStreamsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir("rollout-weight-streams");
    for (int seed : {1, 2}) {
      MakeModel(common::TinyConfig(), seed, dir_->Sub(absl::StrCat("v", seed)));
    }
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static TempDir* dir_;
};
TempDir* RolloutWeightStreamsTest::dir_ = nullptr;

// The messages of part p of n of `tensors` as `version`.
std::vector<std::vector<v1::WeightUpdate>> Parts(const common::TensorMap& tensors,
                                                 uint64_t version, uint32_t n) {
  const std::vector<common::WireTensor> wire = common::ToWireTensors(tensors);
  common::WeightStreamOptions o;
  o.chunk_bytes = 64 << 10;
  o.source = "integration test";
  auto plan = common::PlanWeightStream(wire, version, o);
  EXPECT_TRUE(plan.ok()) << plan.status();
  std::vector<std::vector<v1::WeightUpdate>> out(n);
  for (uint32_t p = 0; p < n; ++p) {
    EXPECT_TRUE(common::StreamWeightPart(wire, *plan, p, n, [&](const v1::WeightUpdate& m) {
                  out[p].push_back(m);
                  return absl::OkStatus();
                }).ok());
  }
  return out;
}

grpc::Status Send(v1::RolloutService::Stub& stub, const std::vector<v1::WeightUpdate>& msgs,
                  v1::UpdateWeightsResponse* resp, int timeout_s = 30) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(timeout_s));
  auto writer = stub.UpdateWeights(&ctx, resp);
  for (const auto& m : msgs) {
    if (!writer->Write(m)) break;
  }
  writer->WritesDone();
  return writer->Finish();
}

// Sends every part concurrently on the stub's channel.
std::vector<grpc::Status> SendAll(v1::RolloutService::Stub& stub,
                                  const std::vector<std::vector<v1::WeightUpdate>>& parts,
                                  std::vector<v1::UpdateWeightsResponse>* resps) {
  std::vector<grpc::Status> out(parts.size());
  resps->assign(parts.size(), {});
  std::vector<std::thread> threads;
  for (size_t p = 0; p < parts.size(); ++p) {
    threads.emplace_back([&, p] { out[p] = Send(stub, parts[p], &(*resps)[p]); });
  }
  for (auto& t : threads) t.join();
  return out;
}

uint64_t ServedVersion(v1::RolloutService::Stub& stub) {
  v1::ModelInfo info;
  grpc::ClientContext ctx;
  EXPECT_TRUE(stub.GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info).ok());
  return info.weight_version();
}

v1::GenerateResponse Greedy(v1::RolloutService::Stub& stub) {
  v1::GenerateRequest req = MakeRequest({3, 1, 4, 1, 5, 9}, 1, 17, 24, 0.0f);
  v1::GenerateResponse resp;
  EXPECT_TRUE(Generate(stub, req, &resp).ok());
  return resp;
}

TEST_F(RolloutWeightStreamsTest, FourPartsMatchOneStream) {
  auto server = StartRollout(dir_->Sub("v1"),
                             {"--initial_version=1", "--drain_announce_seconds=0"});
  ASSERT_NE(server, nullptr);
  auto stub = Stub(server->grpc_address());
  const common::TensorMap v2 = LoadTensors(dir_->Sub("v2"));
  v1::UpdateWeightsResponse single;
  ASSERT_TRUE(PushWeights(*stub, v2, 2, &single).ok());
  const v1::GenerateResponse want = Greedy(*stub);
  ASSERT_EQ(want.completions(0).weight_version(), 2u);

  std::vector<v1::UpdateWeightsResponse> resps;
  const auto statuses = SendAll(*stub, Parts(v2, 3, 4), &resps);
  for (size_t p = 0; p < statuses.size(); ++p) {
    ASSERT_TRUE(statuses[p].ok()) << p << ": " << statuses[p].error_message();
    EXPECT_EQ(resps[p].SerializeAsString(), resps[0].SerializeAsString());
  }
  EXPECT_EQ(resps[0].weight_version(), 3u);
  EXPECT_EQ(resps[0].previous_version(), 2u);
  EXPECT_EQ(resps[0].bytes(), single.bytes());
  EXPECT_EQ(resps[0].tensors(), single.tensors());
  EXPECT_EQ(ServedVersion(*stub), 3u);
  const v1::GenerateResponse got = Greedy(*stub);
  ASSERT_EQ(got.completions(0).weight_version(), 3u);
  EXPECT_EQ(got.completions(0).token_ids().size(), want.completions(0).token_ids().size());
  EXPECT_TRUE(SameBits(got.completions(0).logprobs(), want.completions(0).logprobs()));
  EXPECT_EQ(server->Stop().value_or(-1), 0);
}

TEST_F(RolloutWeightStreamsTest, MissingPartAbortsThenTheRetrySucceeds) {
  auto server =
      StartRollout(dir_->Sub("v1"), {"--initial_version=1", "--drain_announce_seconds=0",
                                     "--weight_assembly_timeout_s=0.5"});
  ASSERT_NE(server, nullptr);
  auto stub = Stub(server->grpc_address());
  const v1::GenerateResponse before = Greedy(*stub);
  auto parts = Parts(LoadTensors(dir_->Sub("v2")), 2, 4);
  auto three = parts;
  three.pop_back();
  std::vector<v1::UpdateWeightsResponse> resps;
  const absl::Time t0 = absl::Now();
  for (const grpc::Status& s : SendAll(*stub, three, &resps)) {
    EXPECT_EQ(s.error_code(), grpc::StatusCode::ABORTED) << s.error_message();
  }
  EXPECT_LT(absl::Now() - t0, absl::Seconds(10));
  EXPECT_EQ(ServedVersion(*stub), 1u);
  const v1::GenerateResponse still = Greedy(*stub);
  EXPECT_TRUE(SameBits(still.completions(0).logprobs(), before.completions(0).logprobs()));

  // The whole set again, same version.
  for (const grpc::Status& s : SendAll(*stub, parts, &resps)) {
    EXPECT_TRUE(s.ok()) << s.error_message();
  }
  EXPECT_EQ(ServedVersion(*stub), 2u);
  EXPECT_EQ(server->Stop().value_or(-1), 0);
}

TEST_F(RolloutWeightStreamsTest, MismatchedManifestAndBadHeaders) {
  auto server =
      StartRollout(dir_->Sub("v1"), {"--initial_version=1", "--drain_announce_seconds=0",
                                     "--weight_assembly_timeout_s=20"});
  ASSERT_NE(server, nullptr);
  auto stub = Stub(server->grpc_address());
  auto parts = Parts(LoadTensors(dir_->Sub("v2")), 2, 2);
  // Part 0 waits for its set; part 1 announces another manifest.
  grpc::Status first;
  v1::UpdateWeightsResponse r0, r1;
  std::thread t([&] { first = Send(*stub, parts[0], &r0); });
  absl::SleepFor(absl::Milliseconds(300));
  auto other = parts[1];
  auto* e = other[0].mutable_header()->mutable_tensors(0);
  e->set_crc32c(e->crc32c() ^ 1);
  const grpc::Status second = Send(*stub, other, &r1);
  t.join();
  EXPECT_EQ(second.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << second.error_message();
  EXPECT_EQ(first.error_code(), grpc::StatusCode::ABORTED) << first.error_message();
  EXPECT_EQ(ServedVersion(*stub), 1u);

  auto header_only = [&](uint32_t index, uint32_t count, bool shared) {
    std::vector<v1::WeightUpdate> msgs = {parts[0][0]};
    msgs[0].mutable_header()->set_stream_index(index);
    msgs[0].mutable_header()->set_stream_count(count);
    if (shared) {
      v1::SharedWeights* s = msgs[0].mutable_header()->mutable_shared();
      s->set_path("/dev/shm/lockstep-weights-none");
      s->set_size(1);
    }
    v1::UpdateWeightsResponse r;
    return Send(*stub, msgs, &r).error_code();
  };
  EXPECT_EQ(header_only(0, 17, false), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(header_only(2, 2, false), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(header_only(1, 0, false), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(header_only(0, 2, true), grpc::StatusCode::INVALID_ARGUMENT);
  // A duplicate part index within a live set.
  grpc::Status waiting;
  std::thread w([&] { waiting = Send(*stub, parts[0], &r0); });
  absl::SleepFor(absl::Milliseconds(300));
  const grpc::Status dup = Send(*stub, parts[0], &r1);
  EXPECT_EQ(dup.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << dup.error_message();
  v1::UpdateWeightsResponse r2;
  EXPECT_TRUE(Send(*stub, parts[1], &r2).ok());
  w.join();
  EXPECT_TRUE(waiting.ok()) << waiting.error_message();
  EXPECT_EQ(ServedVersion(*stub), 2u);
  EXPECT_EQ(server->Stop().value_or(-1), 0);
}

// The learner's push (PushOptions::streams) through the same server.
TEST_F(RolloutWeightStreamsTest, LearnerPushInFourStreams) {
  auto server = StartRollout(dir_->Sub("v1"),
                             {"--initial_version=1", "--drain_announce_seconds=0"});
  ASSERT_NE(server, nullptr);
  auto client = learner::ConnectRollout(server->grpc_address());
  ASSERT_TRUE(client.ok()) << client.status();
  const common::TensorMap v2 = LoadTensors(dir_->Sub("v2"));
  learner::PushOptions options;
  options.path = learner::WeightPathChoice::kStream;
  options.chunk_bytes = 64 << 10;
  options.streams = 17;
  EXPECT_EQ(learner::PushWeights(**client, v2, 2, "test", options).status.code(),
            absl::StatusCode::kInvalidArgument);
  options.streams = 4;
  const learner::PushResult r = learner::PushWeights(**client, v2, 2, "test", options);
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.attempts, 1);
  EXPECT_EQ(r.rollout_version, 2u);
  uint64_t bytes = 0;
  for (const auto& [name, t] : v2) bytes += t.data.size();
  EXPECT_EQ(r.bytes, bytes);
  auto stub = Stub(server->grpc_address());
  EXPECT_EQ(ServedVersion(*stub), 2u);
  EXPECT_EQ(server->Stop().value_or(-1), 0);
}

}  // namespace
}  // namespace lockstep::rollout::itest
