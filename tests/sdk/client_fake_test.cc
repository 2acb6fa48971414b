// The C++ SDK against in-process fake services: retries (UNAVAILABLE only,
// replay rules for streams), deadlines, bearer tokens, TLS and mTLS through
// common::ServerSecurity, health, message sizes, weight encoding.
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "common/wire/crc32c.h"
#include "common/formats/model_generator.h"
#include "common/formats/safetensors.h"
#include "common/net/channel_security.h"
#include "common/net/server_security.h"
#include "common/wire/weight_stream.h"
#include "gtest/gtest.h"
#include "sdk/cpp/lockstep_client.h"
#include "tests/sdk/fake_services.h"
#include "tests/testing/service_process.h"
#include "tests/testing/test_certs.h"

namespace lockstep::client {
namespace {

template <typename T>
void AddAll(google::protobuf::RepeatedField<T>* field,
            std::initializer_list<T> values) {
  field->Add(values.begin(), values.end());
}

using sdk_testing::FakeServer;

ClientOptions Options(const FakeServer& server) {
  ClientOptions o;
  o.target = server.address();
  o.default_timeout = absl::Seconds(20);
  o.retry.initial_backoff = absl::Milliseconds(10);
  o.retry.max_backoff = absl::Milliseconds(50);
  return o;
}

v1::GenerateRequest SmallRequest() {
  v1::GenerateRequest r;
  AddAll(r.add_prompts()->mutable_token_ids(), {1, 2, 3});
  r.set_n(2);
  r.mutable_sampling()->set_seed(5);
  return r;
}

std::unique_ptr<FakeServer> StartServer(
    const common::ServerSecurityOptions& s = {}) {
  absl::StatusOr<std::unique_ptr<FakeServer>> server = FakeServer::Start(s);
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

TEST(BackoffTest, GrowsCapsAndJitters) {
  RetryPolicy p;
  p.initial_backoff = absl::Milliseconds(100);
  p.max_backoff = absl::Milliseconds(350);
  p.backoff_multiplier = 2.0;
  p.jitter = 0.2;
  EXPECT_EQ(BackoffDelay(p, 1, 0.5), absl::Milliseconds(100));
  EXPECT_EQ(BackoffDelay(p, 2, 0.5), absl::Milliseconds(200));
  EXPECT_EQ(BackoffDelay(p, 3, 0.5), absl::Milliseconds(350));
  EXPECT_EQ(BackoffDelay(p, 30, 0.5), absl::Milliseconds(350));
  EXPECT_EQ(BackoffDelay(p, 1, 0.0), absl::Milliseconds(80));
  EXPECT_GT(BackoffDelay(p, 1, 0.999), absl::Milliseconds(119));
}

TEST(ConnectionTest, RejectsBadOptions) {
  ClientOptions o;
  EXPECT_TRUE(absl::IsInvalidArgument(Connection::Create(o).status()));
  o.target = "127.0.0.1:1";
  o.tls.cert_file = "/nonexistent.pem";
  EXPECT_TRUE(absl::IsInvalidArgument(Connection::Create(o).status()));
  o.tls.key_file = "/nonexistent.key";
  EXPECT_TRUE(absl::IsNotFound(Connection::Create(o).status()));
  o = ClientOptions();
  o.target = "127.0.0.1:1";
  o.auth_token_file = "/nonexistent-token";
  EXPECT_TRUE(absl::IsNotFound(Connection::Create(o).status()));
  o.auth_token_file.clear();
  o.retry.max_attempts = 0;
  EXPECT_TRUE(absl::IsInvalidArgument(Connection::Create(o).status()));
}

TEST(RetryTest, RetriesUnavailableThenSucceeds) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  server->rollout().script.fail_first = 2;
  auto client = RolloutClient::Create(Options(*server));
  ASSERT_TRUE(client.ok());
  absl::StatusOr<v1::GenerateResponse> r = (*client)->Generate(SmallRequest());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->completions_size(), 2);
  EXPECT_EQ(server->rollout().calls.load(), 3);
}

TEST(RetryTest, GivesUpAfterMaxAttempts) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  server->rollout().script.fail_first = 100;
  ClientOptions o = Options(*server);
  o.retry.max_attempts = 4;
  auto client = RolloutClient::Create(o);
  ASSERT_TRUE(client.ok());
  absl::StatusOr<v1::GenerateResponse> r = (*client)->Generate(SmallRequest());
  EXPECT_TRUE(absl::IsUnavailable(r.status())) << r.status();
  EXPECT_EQ(server->rollout().calls.load(), 4);
  // A per-call override.
  CallOptions once;
  once.max_attempts = 1;
  EXPECT_TRUE(
      absl::IsUnavailable((*client)->Generate(SmallRequest(), once).status()));
  EXPECT_EQ(server->rollout().calls.load(), 5);
  // A per-call retry policy: its tries and backoff instead of the client's
  // (100 ms, then 200 ms between the tries here).
  CallOptions own;
  own.retry = RetryPolicy();
  own.retry->max_attempts = 3;
  own.retry->initial_backoff = absl::Milliseconds(100);
  own.retry->max_backoff = absl::InfiniteDuration();
  own.retry->jitter = 0.0;
  const absl::Time start = absl::Now();
  absl::Status s = (*client)->Generate(SmallRequest(), own).status();
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  EXPECT_NE(s.message().find("(gave up after 3 tries)"), std::string::npos)
      << s;
  EXPECT_EQ(server->rollout().calls.load(), 8);
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(300));
  // CallOptions::max_attempts still wins.
  own.max_attempts = 1;
  EXPECT_TRUE(
      absl::IsUnavailable((*client)->Generate(SmallRequest(), own).status()));
  EXPECT_EQ(server->rollout().calls.load(), 9);
}

// CallOptions::attempt_timeout bounds each try; its DEADLINE_EXCEEDED is not
// retried.
TEST(DeadlineTest, AttemptTimeoutBoundsEachTry) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  server->rollout().script.sleep_ms = 1500;
  auto client = RolloutClient::Create(Options(*server));
  ASSERT_TRUE(client.ok());
  CallOptions call = CallOptions::Timeout(absl::Seconds(10));
  call.attempt_timeout = absl::Milliseconds(200);
  const absl::Time start = absl::Now();
  absl::Status s = (*client)->Generate(SmallRequest(), call).status();
  EXPECT_TRUE(absl::IsDeadlineExceeded(s)) << s;
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(1200));
  EXPECT_EQ(server->rollout().calls.load(), 1);
  // The streaming iterator too.
  std::unique_ptr<GenerateStreamReader> reader =
      (*client)->StartGenerateStream(SmallRequest(), call);
  v1::GenerateStreamResponse m;
  while (reader->Next(&m)) {
  }
  EXPECT_TRUE(absl::IsDeadlineExceeded(reader->Finish()));
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(2400));
}

TEST(RetryTest, NeverRetriesOtherCodes) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  auto client = RolloutClient::Create(Options(*server));
  ASSERT_TRUE(client.ok());
  for (int code : {3, 8, 9, 10, 13, 4 /*DEADLINE_EXCEEDED from the server*/}) {
    server->rollout().calls = 0;
    server->rollout().script.fail_code = code;
    server->rollout().script.fail_first = 1;
    absl::StatusOr<v1::GenerateResponse> r =
        (*client)->Generate(SmallRequest());
    EXPECT_EQ(static_cast<int>(r.status().code()), code);
    EXPECT_EQ(server->rollout().calls.load(), 1) << "code " << code;
    server->rollout().script.fail_first = 0;
  }
}

TEST(DeadlineTest, SlowCallFailsWithDeadlineExceeded) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  server->rollout().script.sleep_ms = 1500;
  auto client = RolloutClient::Create(Options(*server));
  ASSERT_TRUE(client.ok());
  const absl::Time start = absl::Now();
  absl::StatusOr<v1::GenerateResponse> r = (*client)->Generate(
      SmallRequest(), CallOptions::Timeout(absl::Milliseconds(200)));
  EXPECT_TRUE(absl::IsDeadlineExceeded(r.status())) << r.status();
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(1200));
  // The client default applies when the call sets none.
  ClientOptions o = Options(*server);
  o.default_timeout = absl::Milliseconds(200);
  auto short_client = RolloutClient::Create(o);
  ASSERT_TRUE(short_client.ok());
  EXPECT_TRUE(absl::IsDeadlineExceeded(
      (*short_client)->Generate(SmallRequest()).status()));
}

TEST(DeadlineTest, DeadlineBoundsRetries) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  server->rollout().script.fail_first = 1000;
  ClientOptions o = Options(*server);
  o.retry.max_attempts = 1000;
  o.retry.initial_backoff = absl::Milliseconds(100);
  o.retry.max_backoff = absl::Milliseconds(100);
  auto client = RolloutClient::Create(o);
  ASSERT_TRUE(client.ok());
  const absl::Time start = absl::Now();
  absl::StatusOr<v1::GenerateResponse> r = (*client)->Generate(
      SmallRequest(), CallOptions::Timeout(absl::Milliseconds(450)));
  EXPECT_TRUE(absl::IsDeadlineExceeded(r.status())) << r.status();
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(1500));
  EXPECT_GE(server->rollout().calls.load(), 2);
  EXPECT_LE(server->rollout().calls.load(), 8);
}

TEST(DeadlineTest, UnreachableServerFailsFastOrWaitsForReady) {
  ClientOptions o;
  o.target = "127.0.0.1:1";  // nothing listens there
  o.retry.max_attempts = 2;
  o.retry.initial_backoff = absl::Milliseconds(10);
  auto client = RolloutClient::Create(o);
  ASSERT_TRUE(client.ok());
  EXPECT_TRUE(absl::IsUnavailable((*client)->GetModelInfo().status()));
  CallOptions wait;
  wait.wait_for_ready = true;
  wait.timeout = absl::Milliseconds(300);
  EXPECT_TRUE(absl::IsDeadlineExceeded((*client)->GetModelInfo(wait).status()));
}

TEST(StreamTest, CallbackGetsEveryMessage) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  server->rollout().script.stream_messages = 4;
  auto client = RolloutClient::Create(Options(*server));
  ASSERT_TRUE(client.ok());
  CompletionAccumulator acc;
  int n = 0;
  absl::Status s =
      (*client)->GenerateStream(SmallRequest(), [&](const auto& m) {
        acc.Add(m);
        ++n;
        return true;
      });
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(n, 4);
  ASSERT_EQ(acc.Completions().size(), 1u);
  EXPECT_EQ(acc.Completions()[0].token_ids_size(), 4);
  EXPECT_TRUE(acc.AllFinished());
  EXPECT_EQ(acc.Completions()[0].finish_reason(), v1::FINISH_REASON_STOP);
}

TEST(StreamTest, CallbackCanStopTheStream) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  server->rollout().script.stream_messages = 50;
  auto client = RolloutClient::Create(Options(*server));
  ASSERT_TRUE(client.ok());
  int n = 0;
  absl::Status s = (*client)->GenerateStream(
      SmallRequest(), [&](const auto&) { return ++n < 2; });
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(n, 2);
}

TEST(StreamTest, RetriedOnlyBeforeTheFirstMessage) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  auto client = RolloutClient::Create(Options(*server));
  ASSERT_TRUE(client.ok());
  // Fails before any message: retried.
  server->rollout().script.fail_first = 2;
  int n = 0;
  absl::Status s = (*client)->GenerateStream(SmallRequest(), [&](const auto&) {
    ++n;
    return true;
  });
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(n, 3);
  EXPECT_EQ(server->rollout().calls.load(), 3);
  // Fails after a message was consumed: not retried.
  server->rollout().calls = 0;
  server->rollout().script.stream_fail_after = 1;
  n = 0;
  s = (*client)->GenerateStream(SmallRequest(), [&](const auto&) {
    ++n;
    return true;
  });
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  EXPECT_EQ(n, 1);
  EXPECT_EQ(server->rollout().calls.load(), 1);
}

TEST(StreamTest, ReaderIteratesAndRetriesBeforeTheFirstMessage) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  auto client = RolloutClient::Create(Options(*server));
  ASSERT_TRUE(client.ok());
  server->rollout().script.fail_first = 1;
  std::unique_ptr<GenerateStreamReader> reader =
      (*client)->StartGenerateStream(SmallRequest());
  v1::GenerateStreamResponse m;
  int n = 0;
  while (reader->Next(&m)) ++n;
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_EQ(n, 3);
  EXPECT_EQ(server->rollout().calls.load(), 2);

  server->rollout().script.stream_fail_after = 2;
  reader = (*client)->StartGenerateStream(SmallRequest());
  n = 0;
  while (reader->Next(&m)) ++n;
  EXPECT_EQ(n, 2);
  EXPECT_TRUE(absl::IsUnavailable(reader->Finish()));
}

WeightSet TestWeights() {
  std::vector<Tensor> tensors(2);
  tensors[0].name = "b.weight";
  tensors[0].dtype = v1::DTYPE_F32;
  tensors[0].shape = {3, 5};
  for (int i = 0; i < 15; ++i) {
    const float f = 0.1f * i - 0.7f;
    const auto* p = reinterpret_cast<const uint8_t*>(&f);
    tensors[0].data.insert(tensors[0].data.end(), p, p + 4);
  }
  tensors[1].name = "a.weight";
  tensors[1].dtype = v1::DTYPE_BF16;
  tensors[1].shape = {4};
  tensors[1].data = {1, 2, 3, 4, 5, 6, 7, 8};
  absl::StatusOr<WeightSet> set = WeightSet::FromTensors(std::move(tensors));
  EXPECT_TRUE(set.ok()) << set.status();
  return *set;
}

TEST(WeightsTest, StreamLayoutAndChecksums) {
  WeightSet set = TestWeights();
  ASSERT_EQ(set.tensors().size(), 2u);
  EXPECT_EQ(set.tensors()[0].name, "a.weight");  // sorted
  EXPECT_EQ(set.dtype(), v1::DTYPE_UNSPECIFIED);
  EXPECT_EQ(set.total_bytes(), 68u);
  WeightUploadOptions o;
  o.target_version = 9;
  o.chunk_bytes = 16;
  std::vector<v1::WeightUpdate> messages;
  ASSERT_TRUE(StreamWeightUpdate(set, o, [&](const v1::WeightUpdate& m) {
                messages.push_back(m);
                return absl::OkStatus();
              }).ok());
  // header + 1 chunk of a.weight + 4 chunks (16,16,16,12) of b.weight
  ASSERT_EQ(messages.size(), 6u);
  ASSERT_TRUE(messages[0].has_header());
  EXPECT_EQ(messages[0].header().target_version(), 9u);
  ASSERT_EQ(messages[0].header().tensors_size(), 2);
  const auto& e = messages[0].header().tensors(1);
  EXPECT_EQ(e.name(), "b.weight");
  EXPECT_EQ(e.total_bytes(), 60u);
  EXPECT_EQ(e.crc32c(), common::Crc32c(set.tensors()[1].data, 60));
  uint64_t expect_offset = 0;
  for (size_t i = 2; i < messages.size(); ++i) {
    const v1::TensorChunk& c = messages[i].chunk();
    EXPECT_EQ(c.name(), "b.weight");
    EXPECT_EQ(c.offset(), expect_offset);
    EXPECT_EQ(c.crc32c(), common::Crc32c(c.data().data(), c.data().size()));
    expect_offset += c.data().size();
  }
  EXPECT_EQ(expect_offset, 60u);
  o.chunk_bytes = 0;
  EXPECT_TRUE(absl::IsInvalidArgument(StreamWeightUpdate(
      set, o, [](const auto&) { return absl::OkStatus(); })));
}

TEST(WeightsTest, ConvertsDTypes) {
  WeightSet set = TestWeights();
  absl::StatusOr<WeightSet> bf16 = set.ConvertedTo(v1::DTYPE_BF16);
  ASSERT_TRUE(bf16.ok());
  EXPECT_EQ(bf16->dtype(), v1::DTYPE_BF16);
  EXPECT_EQ(bf16->total_bytes(), 8u + 30u);
  // Shared, not copied, when already in the dtype.
  EXPECT_EQ(bf16->tensors()[0].data, set.tensors()[0].data);
  absl::StatusOr<WeightSet> f32 = bf16->ConvertedTo(v1::DTYPE_F32);
  ASSERT_TRUE(f32.ok());
  float x;
  std::memcpy(&x, f32->tensors()[1].data + 4 * 3, 4);
  EXPECT_NEAR(x, 0.1f * 3 - 0.7f, 1e-2);
  std::vector<Tensor> bad(1);
  bad[0].name = "x";
  bad[0].shape = {2};
  bad[0].data = {1, 2, 3};
  EXPECT_TRUE(absl::IsInvalidArgument(WeightSet::FromTensors(bad).status()));
  EXPECT_TRUE(
      absl::IsNotFound(WeightSet::FromSafetensors("/nonexistent").status()));
}

// fp16 checkpoints have no wire dtype: the SDK widens them (exactly) to
// fp32, as the servers load them, instead of mislabelling the bytes.
TEST(WeightsTest, Float16FilesAreWidenedToFloat32) {
  absl::StatusOr<std::string> dir = testing::MakeTempDir("lockstep-sdk-f16");
  ASSERT_TRUE(dir.ok());
  const std::vector<float> values = {0.5f, -1.25f, 3.0f, 0.0009765625f};
  std::vector<uint8_t> bytes(values.size() * 2);
  for (size_t i = 0; i < values.size(); ++i) {
    const uint16_t h = kernels::F32ToF16(values[i]);
    std::memcpy(bytes.data() + 2 * i, &h, 2);
  }
  common::TensorInfo t;
  t.name = "w";
  t.dtype = kernels::DType::kF16;
  t.shape = {4};
  t.data = bytes.data();
  t.nbytes = bytes.size();
  const std::string path = *dir + "/f16.safetensors";
  ASSERT_TRUE(common::WriteSafetensors(path, {t}, {}).ok());
  absl::StatusOr<WeightSet> set = WeightSet::FromSafetensors(path);
  ASSERT_TRUE(set.ok()) << set.status();
  ASSERT_EQ(set->tensors().size(), 1u);
  EXPECT_EQ(set->tensors()[0].dtype, v1::DTYPE_F32);
  ASSERT_EQ(set->tensors()[0].nbytes, 16u);
  for (size_t i = 0; i < values.size(); ++i) {
    float x;
    std::memcpy(&x, set->tensors()[0].data + 4 * i, 4);
    EXPECT_EQ(x, values[i]);
  }
  testing::RemoveTree(*dir);
}

TEST(WeightsTest, ReadsShardedCheckpointDirectories) {
  const std::filesystem::path dir =
      std::filesystem::path(::testing::TempDir()) /
      ("lockstep_sdk_weights_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  common::ModelConfig config = common::TinyConfig();
  config.dtype = kernels::DType::kBF16;
  common::GenerateModelOptions sharded;
  sharded.max_shard_bytes = 50000;
  ASSERT_TRUE(common::GenerateModel(config, 4, (dir / "one").string()).ok());
  ASSERT_TRUE(
      common::GenerateModel(config, 4, (dir / "sharded").string(), sharded)
          .ok());
  ASSERT_FALSE(std::filesystem::exists(dir / "sharded" / "model.safetensors"));

  absl::StatusOr<WeightSet> from_dir =
      WeightSet::FromSafetensors((dir / "one").string());
  absl::StatusOr<WeightSet> from_file =
      WeightSet::FromSafetensors((dir / "one" / "model.safetensors").string());
  absl::StatusOr<WeightSet> from_shards =
      WeightSet::FromSafetensors((dir / "sharded").string());
  ASSERT_TRUE(from_dir.ok()) << from_dir.status();
  ASSERT_TRUE(from_file.ok()) << from_file.status();
  ASSERT_TRUE(from_shards.ok()) << from_shards.status();
  EXPECT_EQ(from_shards->dtype(), v1::DTYPE_BF16);
  EXPECT_EQ(from_shards->total_bytes(), from_dir->total_bytes());
  // The same manifest (names, shapes, sizes, CRC-32Cs) whichever way read.
  const std::string manifest =
      MakeWeightUpdateHeader(*from_file, 1, "t").SerializeAsString();
  EXPECT_EQ(MakeWeightUpdateHeader(*from_dir, 1, "t").SerializeAsString(),
            manifest);
  EXPECT_EQ(MakeWeightUpdateHeader(*from_shards, 1, "t").SerializeAsString(),
            manifest);
  ASSERT_EQ(from_shards->tensors().size(), from_file->tensors().size());
  for (size_t i = 0; i < from_file->tensors().size(); ++i) {
    const TensorView& a = from_file->tensors()[i];
    const TensorView& b = from_shards->tensors()[i];
    ASSERT_EQ(a.nbytes, b.nbytes) << a.name;
    EXPECT_EQ(0, std::memcmp(a.data, b.data, a.nbytes)) << a.name;
  }
  // Copies keep every shard mapped after the original is gone.
  WeightSet copy = *from_shards;
  from_shards = absl::UnknownError("dropped");
  EXPECT_EQ(MakeWeightUpdateHeader(copy, 1, "t").SerializeAsString(), manifest);

  // Errors of the checkpoint reader.
  ASSERT_TRUE(std::filesystem::remove(dir / "sharded" /
                                      "model-00002-of-00005.safetensors"));
  absl::Status missing =
      WeightSet::FromSafetensors((dir / "sharded").string()).status();
  EXPECT_TRUE(absl::IsNotFound(missing)) << missing;
  {
    std::ofstream(dir / "sharded" / "model.safetensors.index.json")
        << R"({"weight_map": {"a": "../one/model.safetensors"}})";
  }
  absl::Status escape =
      WeightSet::FromSafetensors((dir / "sharded").string()).status();
  EXPECT_TRUE(absl::IsInvalidArgument(escape)) << escape;
  std::filesystem::remove_all(dir);
}

TEST(WeightsTest, UploadIsReplayedOnUnavailable) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  server->rollout().script.weights_fail_first = 1;
  auto client = RolloutClient::Create(Options(*server));
  ASSERT_TRUE(client.ok());
  WeightUploadOptions o;
  o.chunk_bytes = 16;  // target_version 0: served + 1
  absl::StatusOr<v1::UpdateWeightsResponse> r =
      (*client)->UpdateWeights(TestWeights(), o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->weight_version(), 1u);
  EXPECT_EQ(r->bytes(), 68u);
  // GetModelInfo + failed upload + upload.
  EXPECT_EQ(server->rollout().calls.load(), 3);
  EXPECT_EQ(server->rollout().last_weights().size(), 6u);
  // Forwarding encoded messages, and a stale version is not retried.
  std::vector<v1::WeightUpdate> messages = server->rollout().last_weights();
  r = (*client)->UpdateWeights(messages);
  EXPECT_TRUE(absl::IsFailedPrecondition(r.status())) << r.status();
  messages[0].mutable_header()->set_target_version(5);
  r = (*client)->UpdateWeights(messages);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->weight_version(), 5u);
}

// A caller's own replayable stream (here common::StreamWeights over a
// TensorMap): produced once per try, replayed on UNAVAILABLE; an error of
// the producer itself is returned as is, without a retry.
TEST(WeightsTest, ProducedStreamIsReplayedOncePerTry) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  server->rollout().script.weights_fail_first = 1;
  auto client = RolloutClient::Create(Options(*server));
  ASSERT_TRUE(client.ok());
  common::TensorMap tensors;
  tensors["w"].dtype = kernels::DType::kBF16;
  tensors["w"].shape = {3};
  tensors["w"].data = {1, 2, 3, 4, 5, 6};
  common::WeightStreamOptions stream;
  stream.chunk_bytes = 4;
  int produced = 0;
  absl::StatusOr<v1::UpdateWeightsResponse> r =
      (*client)->UpdateWeights([&](const WeightSink& sink) {
        ++produced;
        return common::StreamWeights(tensors, 3, sink, stream);
      });
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(produced, 2);
  EXPECT_EQ(r->weight_version(), 3u);
  ASSERT_EQ(server->rollout().last_weights().size(), 3u);  // header + 2
  EXPECT_EQ(server->rollout().last_weights()[0].header().tensors(0).dtype(),
            v1::DTYPE_BF16);
  const int calls = server->rollout().calls.load();
  produced = 0;
  tensors["w"].data.pop_back();  // no longer 3 bf16 values
  r = (*client)->UpdateWeights([&](const WeightSink& sink) {
    ++produced;
    return common::StreamWeights(tensors, 4, sink, stream);
  });
  EXPECT_TRUE(absl::IsInvalidArgument(r.status())) << r.status();
  EXPECT_NE(r.status().message().find("tensor 'w' holds 5 bytes"),
            std::string::npos)
      << r.status();
  EXPECT_EQ(produced, 1);
  EXPECT_LE(server->rollout().calls.load(), calls + 1);
  EXPECT_EQ(server->rollout().version.load(), 3u);
}

TEST(LearnerTest, SubmitTrainStatsAndWeights) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  auto learner = LearnerClient::Create(Options(*server));
  ASSERT_TRUE(learner.ok());
  v1::Completion c;
  AddAll(c.mutable_token_ids(), {4, 5});
  AddAll(c.mutable_logprobs(), {-0.1f, -0.2f});
  c.set_weight_version(0);
  std::vector<v1::Trajectory> batch;
  for (int i = 0; i < 100; ++i)
    batch.push_back(MakeTrajectory({1, 2}, c, 0.5f, "g"));
  EXPECT_EQ(batch[0].prompt_token_ids_size(), 2);
  EXPECT_EQ(batch[0].rollout_logprobs_size(), 2);
  EXPECT_TRUE(
      absl::IsInvalidArgument((*learner)->SubmitTrajectories({}).status()));
  // Several messages, replayed after a drop.
  server->learner().fail_first = 1;
  SubmitOptions small;
  small.max_message_bytes = 200;
  auto sub = (*learner)->SubmitTrajectories(batch, {}, small);
  ASSERT_TRUE(sub.ok()) << sub.status();
  EXPECT_EQ(sub->accepted(), 100u);
  v1::TrainStepRequest req;
  req.set_expected_version(0);
  auto step = (*learner)->TrainStep(req);
  ASSERT_TRUE(step.ok()) << step.status();
  EXPECT_EQ(step->weight_version(), 1u);
  EXPECT_TRUE(absl::IsFailedPrecondition((*learner)->TrainStep(req).status()));
  auto stats = (*learner)->GetStats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->weight_version(), 1u);
  server->learner().fail_first = 1;
  auto weights = (*learner)->GetWeights();
  ASSERT_TRUE(weights.ok()) << weights.status();
  EXPECT_EQ(weights->size(), 2u);
  // A sink error cancels and is returned.
  absl::Status s = (*learner)->GetWeights(
      [](const v1::WeightUpdate&) { return absl::DataLossError("disk full"); });
  EXPECT_TRUE(absl::IsDataLoss(s)) << s;
}

TEST(MessageSizeTest, LargeResponsesPass) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  server->rollout().script.response_padding = 12
                                              << 20;  // > gRPC's 4 MiB default
  auto client = RolloutClient::Create(Options(*server));
  ASSERT_TRUE(client.ok());
  absl::StatusOr<v1::GenerateResponse> r = (*client)->Generate(SmallRequest());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_GE(r->request_id().size(), size_t{12} << 20);
  ClientOptions o = Options(*server);
  o.max_receive_message_bytes = 4 << 20;
  auto small = RolloutClient::Create(o);
  ASSERT_TRUE(small.ok());
  EXPECT_TRUE(
      absl::IsResourceExhausted((*small)->Generate(SmallRequest()).status()));
}

// ---------------------------------------------------------------------------
// Server security (common/server_security.h) as the SDK sees it.

TEST(ServerSecurityTest, OptionErrors) {
  common::ServerSecurityOptions o;
  o.tls_cert_file = "/x.pem";
  EXPECT_TRUE(absl::IsInvalidArgument(common::MakeServerSecurity(o).status()));
  o = {};
  o.tls_ca_file = "/ca.pem";
  EXPECT_TRUE(absl::IsInvalidArgument(common::MakeServerSecurity(o).status()));
  o = {};
  o.tls_cert_file = "/nonexistent.pem";
  o.tls_key_file = "/nonexistent.key";
  EXPECT_TRUE(absl::IsNotFound(common::MakeServerSecurity(o).status()));
  absl::StatusOr<std::string> dir = testing::MakeTempDir("lockstep-sdk-sec");
  ASSERT_TRUE(dir.ok());
  ASSERT_TRUE(sdk_testing::WriteTextFile(*dir + "/empty", " \n").ok());
  ASSERT_TRUE(sdk_testing::WriteTextFile(*dir + "/notpem", "hello").ok());
  o = {};
  o.auth_token_file = *dir + "/empty";
  EXPECT_TRUE(absl::IsInvalidArgument(common::MakeServerSecurity(o).status()));
  o = {};
  o.tls_cert_file = *dir + "/notpem";
  o.tls_key_file = *dir + "/notpem";
  EXPECT_TRUE(absl::IsInvalidArgument(common::MakeServerSecurity(o).status()));
  o = {};
  auto plain = common::MakeServerSecurity(o);
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->Describe(), "tls=off mtls=off token=off");
  EXPECT_TRUE(common::IsAuthExemptMethod("/grpc.health.v1.Health/Check"));
  EXPECT_TRUE(common::IsAuthExemptMethod(
      "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"));
  EXPECT_FALSE(
      common::IsAuthExemptMethod("/lockstep.v1.RolloutService/Generate"));
  EXPECT_FALSE(common::IsAuthExemptMethod("/grpc.health.v1.HealthX/Check"));
  testing::RemoveTree(*dir);
}

TEST(ServerSecurityTest, TokenRequiredOnEveryCallButHealth) {
  absl::StatusOr<std::string> dir = testing::MakeTempDir("lockstep-sdk-token");
  ASSERT_TRUE(dir.ok());
  ASSERT_TRUE(
      sdk_testing::WriteTextFile(*dir + "/token", "s3cret-token\n").ok());
  common::ServerSecurityOptions so;
  so.auth_token_file = *dir + "/token";
  auto server = StartServer(so);
  ASSERT_NE(server, nullptr);

  ClientOptions o = Options(*server);
  auto anonymous = RolloutClient::Create(o);
  ASSERT_TRUE(anonymous.ok());
  absl::StatusOr<v1::GenerateResponse> r =
      (*anonymous)->Generate(SmallRequest());
  EXPECT_TRUE(absl::IsUnauthenticated(r.status())) << r.status();
  auto learner = LearnerClient::Create(o);
  ASSERT_TRUE(learner.ok());
  EXPECT_TRUE(absl::IsUnauthenticated((*learner)->GetStats().status()));
  // Nothing reached a handler, and UNAUTHENTICATED was not retried.
  EXPECT_EQ(server->rollout().calls.load(), 0);
  EXPECT_EQ(server->learner().calls.load(), 0);
  // Health needs no token.
  absl::StatusOr<HealthStatus> h = (*anonymous)->Health();
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(*h, HealthStatus::kServing);
  EXPECT_TRUE(absl::IsNotFound(
      (*anonymous)->connection().CheckHealth("no.such.Service").status()));

  o.auth_token = "wrong";
  auto wrong = RolloutClient::Create(o);
  ASSERT_TRUE(wrong.ok());
  EXPECT_TRUE(absl::IsUnauthenticated((*wrong)->GetModelInfo().status()));
  EXPECT_EQ(server->rollout().calls.load(), 0);

  o.auth_token.clear();
  o.auth_token_file = *dir + "/token";
  auto good = RolloutClient::Create(o);
  ASSERT_TRUE(good.ok());
  EXPECT_TRUE((*good)->connection().has_token());
  r = (*good)->Generate(SmallRequest());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(server->rollout().last_authorization(), "Bearer s3cret-token");
  // Streams too.
  EXPECT_TRUE(absl::IsUnauthenticated(
      (*anonymous)->GenerateStream(SmallRequest(), [](const auto&) {
        return true;
      })));
  EXPECT_TRUE(
      (*good)
          ->GenerateStream(SmallRequest(), [](const auto&) { return true; })
          .ok());
  testing::RemoveTree(*dir);
}

class TlsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::string> dir = testing::MakeTestCerts();
    ASSERT_TRUE(dir.ok()) << dir.status();
    certs_ = new std::string(*dir);
  }
  static void TearDownTestSuite() {
    if (certs_ != nullptr) testing::RemoveTree(*certs_);
    delete certs_;
    certs_ = nullptr;
  }
  static std::string Cert(const std::string& name) {
    return *certs_ + "/" + name;
  }

  static ClientOptions TlsClient(const FakeServer& server) {
    ClientOptions o = Options(server);
    o.tls.ca_file = Cert("ca.pem");
    o.retry.max_attempts = 1;
    o.default_timeout = absl::Seconds(10);
    return o;
  }

  static std::string* certs_;
};
std::string* TlsTest::certs_ = nullptr;

TEST_F(TlsTest, ServerTls) {
  common::ServerSecurityOptions so;
  so.tls_cert_file = Cert("server.pem");
  so.tls_key_file = Cert("server.key");
  auto server = StartServer(so);
  ASSERT_NE(server, nullptr);
  auto client = RolloutClient::Create(TlsClient(*server));
  ASSERT_TRUE(client.ok());
  auto info = (*client)->GetModelInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  // Through the DNS name in the certificate.
  ClientOptions named = TlsClient(*server);
  named.target = absl::StrCat("localhost:", server->port());
  named.tls.server_name = "localhost";
  auto by_name = RolloutClient::Create(named);
  ASSERT_TRUE(by_name.ok());
  EXPECT_TRUE((*by_name)->GetModelInfo().ok());
  // A plaintext client, or one that does not trust the CA, cannot talk to it.
  ClientOptions plain = Options(*server);
  plain.retry.max_attempts = 1;
  auto insecure = RolloutClient::Create(plain);
  ASSERT_TRUE(insecure.ok());
  EXPECT_TRUE(absl::IsUnavailable((*insecure)->GetModelInfo().status()));
  ClientOptions rogue = TlsClient(*server);
  rogue.tls.ca_file = Cert("rogue_ca.pem");
  auto untrusting = RolloutClient::Create(rogue);
  ASSERT_TRUE(untrusting.ok());
  EXPECT_TRUE(absl::IsUnavailable((*untrusting)->GetModelInfo().status()));
  EXPECT_EQ(server->rollout().calls.load(), 2);
}

TEST_F(TlsTest, MutualTlsRequiresATrustedClientCertificate) {
  common::ServerSecurityOptions so;
  so.tls_cert_file = Cert("server.pem");
  so.tls_key_file = Cert("server.key");
  so.tls_ca_file = Cert("ca.pem");
  auto server = StartServer(so);
  ASSERT_NE(server, nullptr);
  ClientOptions o = TlsClient(*server);
  auto no_cert = RolloutClient::Create(o);
  ASSERT_TRUE(no_cert.ok());
  EXPECT_TRUE(absl::IsUnavailable((*no_cert)->GetModelInfo().status()));
  o.tls.cert_file = Cert("rogue_client.pem");
  o.tls.key_file = Cert("rogue_client.key");
  auto rogue = RolloutClient::Create(o);
  ASSERT_TRUE(rogue.ok());
  EXPECT_TRUE(absl::IsUnavailable((*rogue)->GetModelInfo().status()));
  EXPECT_EQ(server->rollout().calls.load(), 0);
  o.tls.cert_file = Cert("client.pem");
  o.tls.key_file = Cert("client.key");
  auto good = RolloutClient::Create(o);
  ASSERT_TRUE(good.ok());
  auto info = (*good)->GetModelInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(server->rollout().calls.load(), 1);
}

// Connection::Create over channel security the caller built (as
// learner_service does from its --rollout_tls_* flags).
TEST_F(TlsTest, GivenChannelSecurity) {
  common::ServerSecurityOptions so;
  so.tls_cert_file = Cert("server.pem");
  so.tls_key_file = Cert("server.key");
  auto server = StartServer(so);
  ASSERT_NE(server, nullptr);
  common::ChannelSecurityOptions tls;
  tls.ca_file = Cert("ca.pem");
  absl::StatusOr<common::ChannelSecurity> security =
      common::MakeChannelSecurity(tls);
  ASSERT_TRUE(security.ok()) << security.status();
  ClientOptions o = Options(*server);
  o.retry.max_attempts = 1;
  auto connection = Connection::Create(o, *security);
  ASSERT_TRUE(connection.ok()) << connection.status();
  RolloutClient client(*connection);
  EXPECT_TRUE(client.GetModelInfo().ok());
  auto plain = Connection::Create(o, common::ChannelSecurity());
  ASSERT_TRUE(plain.ok());
  EXPECT_TRUE(
      absl::IsUnavailable(RolloutClient(*plain).GetModelInfo().status()));
  // TlsOptions and a given security do not mix.
  o.tls.ca_file = Cert("ca.pem");
  EXPECT_TRUE(
      absl::IsInvalidArgument(Connection::Create(o, *security).status()));
  EXPECT_EQ(server->rollout().calls.load(), 1);
}

TEST_F(TlsTest, MutualTlsWithToken) {
  absl::StatusOr<std::string> dir = testing::MakeTempDir("lockstep-sdk-token");
  ASSERT_TRUE(dir.ok());
  ASSERT_TRUE(sdk_testing::WriteTextFile(*dir + "/token", "tok").ok());
  common::ServerSecurityOptions so;
  so.tls_cert_file = Cert("server.pem");
  so.tls_key_file = Cert("server.key");
  so.tls_ca_file = Cert("ca.pem");
  so.auth_token_file = *dir + "/token";
  absl::StatusOr<common::ServerSecurity> sec = common::MakeServerSecurity(so);
  ASSERT_TRUE(sec.ok());
  EXPECT_EQ(sec->Describe(), "tls=on mtls=on token=on");
  auto server = StartServer(so);
  ASSERT_NE(server, nullptr);
  ClientOptions o = TlsClient(*server);
  o.tls.cert_file = Cert("client.pem");
  o.tls.key_file = Cert("client.key");
  auto no_token = RolloutClient::Create(o);
  ASSERT_TRUE(no_token.ok());
  EXPECT_TRUE(absl::IsUnauthenticated((*no_token)->GetModelInfo().status()));
  EXPECT_EQ((*no_token)->Health().value_or(HealthStatus::kUnknown),
            HealthStatus::kServing);
  o.auth_token = "tok";
  auto good = RolloutClient::Create(o);
  ASSERT_TRUE(good.ok());
  EXPECT_TRUE((*good)->GetModelInfo().ok());
  EXPECT_EQ(server->rollout().calls.load(), 1);
  testing::RemoveTree(*dir);
}

}  // namespace
}  // namespace lockstep::client
