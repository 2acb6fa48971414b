// In-process fakes of RolloutService and LearnerService with scripted
// failures, for the SDK's retry / deadline / streaming / security tests, and
// a tiny gRPC server hosting them behind common::ServerSecurity.
#ifndef LOCKSTEP_TESTS_SDK_FAKE_SERVICES_H_
#define LOCKSTEP_TESTS_SDK_FAKE_SERVICES_H_

#include <grpcpp/server.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/net/server_security.h"
#include "lockstep/v1/learner.grpc.pb.h"
#include "lockstep/v1/rollout.grpc.pb.h"

namespace lockstep::sdk_testing {

// Behaviour of FakeRollout, set before (or between) calls.
struct RolloutScript {
  // The first `fail_first` calls of any method answer `fail_code`.
  std::atomic<int> fail_first{0};
  std::atomic<int> fail_code{14};  // UNAVAILABLE
  // Generate / GenerateStream: sleep this long before answering.
  std::atomic<int> sleep_ms{0};
  // GenerateStream: messages per call; fail with UNAVAILABLE after this many
  // messages (-1: never).
  std::atomic<int> stream_messages{3};
  std::atomic<int> stream_fail_after{-1};
  // Generate: bytes of padding in the response (request_id), to test the
  // message size limits.
  std::atomic<int> response_padding{0};
  // UpdateWeights: the first `weights_fail_first` calls read the header and
  // one chunk, then answer UNAVAILABLE.
  std::atomic<int> weights_fail_first{0};
};

class FakeRollout final : public v1::RolloutService::Service {
 public:
  RolloutScript script;
  std::atomic<int> calls{0};  // handler invocations (all methods)
  std::atomic<uint64_t> version{0};
  // Metadata "authorization" of the last call ("" when absent).
  std::string last_authorization() const;
  // Messages of the last complete UpdateWeights stream.
  std::vector<v1::WeightUpdate> last_weights() const;

  grpc::Status Generate(grpc::ServerContext* ctx,
                        const v1::GenerateRequest* req,
                        v1::GenerateResponse* resp) override;
  grpc::Status GenerateStream(
      grpc::ServerContext* ctx, const v1::GenerateRequest* req,
      grpc::ServerWriter<v1::GenerateStreamResponse>* writer) override;
  grpc::Status ComputeLogprobs(grpc::ServerContext* ctx,
                               const v1::ComputeLogprobsRequest* req,
                               v1::ComputeLogprobsResponse* resp) override;
  grpc::Status UpdateWeights(grpc::ServerContext* ctx,
                             grpc::ServerReader<v1::WeightUpdate>* reader,
                             v1::UpdateWeightsResponse* resp) override;
  grpc::Status GetModelInfo(grpc::ServerContext* ctx,
                            const v1::GetModelInfoRequest*,
                            v1::ModelInfo* resp) override;

 private:
  // Counts the call, records its metadata, applies fail_first.
  grpc::Status Enter(grpc::ServerContext* ctx);

  mutable std::mutex mu_;
  std::string authorization_;
  std::vector<v1::WeightUpdate> weights_;
};

class FakeLearner final : public v1::LearnerService::Service {
 public:
  std::atomic<int> calls{0};
  std::atomic<int> fail_first{0};  // UNAVAILABLE for the first calls
  std::atomic<uint64_t> buffered{0};
  std::atomic<uint64_t> version{0};

  grpc::Status SubmitTrajectories(
      grpc::ServerContext* ctx,
      grpc::ServerReader<v1::SubmitTrajectoriesRequest>* reader,
      v1::SubmitTrajectoriesResponse* resp) override;
  grpc::Status TrainStep(grpc::ServerContext* ctx,
                         const v1::TrainStepRequest* req,
                         v1::TrainStepResponse* resp) override;
  grpc::Status GetStats(grpc::ServerContext* ctx, const v1::GetStatsRequest*,
                        v1::LearnerStats* resp) override;
  grpc::Status GetWeights(
      grpc::ServerContext* ctx, const v1::GetWeightsRequest* req,
      grpc::ServerWriter<v1::WeightUpdate>* writer) override;
};

// A gRPC server on 127.0.0.1:<free port> with both fakes, the health
// service and the given security.
class FakeServer {
 public:
  static absl::StatusOr<std::unique_ptr<FakeServer>> Start(
      const common::ServerSecurityOptions& security = {});
  ~FakeServer();

  std::string address() const;  // "127.0.0.1:PORT"
  int port() const { return port_; }
  FakeRollout& rollout() { return rollout_; }
  FakeLearner& learner() { return learner_; }

 private:
  FakeServer() = default;
  FakeRollout rollout_;
  FakeLearner learner_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

// Writes `text` to `path`.
absl::Status WriteTextFile(const std::string& path, const std::string& text);

}  // namespace lockstep::sdk_testing

#endif  // LOCKSTEP_TESTS_SDK_FAKE_SERVICES_H_
