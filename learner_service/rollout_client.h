// The learner's client of one RolloutService endpoint: model info, generation
// (for the driver) and weight pushes with retries; plus a parallel push to
// many rollouts.
#ifndef LOCKSTEP_LEARNER_SERVICE_ROLLOUT_CLIENT_H_
#define LOCKSTEP_LEARNER_SERVICE_ROLLOUT_CLIENT_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/channel_security.h"
#include "common/host_tensor.h"
#include "lockstep/v1/rollout.grpc.pb.h"

namespace lockstep::learner {

struct PushOptions {
  // Tries per push; only UNAVAILABLE is retried.
  int max_attempts = 5;
  // Sleep before the first retry; doubled after every retry.
  absl::Duration initial_backoff = absl::Milliseconds(100);
  // Deadline of one UpdateWeights call.
  absl::Duration attempt_timeout = absl::Seconds(120);
  // Payload bytes per chunk (0: common::kDefaultWeightChunkBytes).
  size_t chunk_bytes = 0;
};

// Outcome of pushing one version to one rollout.
struct PushResult {
  std::string endpoint;
  absl::Status status;  // of the last attempt
  int attempts = 0;
  double seconds = 0.0;  // all attempts, backoff included
  uint64_t bytes = 0;    // tensor bytes of the successful attempt
  uint64_t rollout_version = 0;  // served version after a successful push
};

// "HOST:PORT" with a non-empty host and a port in [1, 65535] (IPv6 hosts in
// brackets). INVALID_ARGUMENT otherwise.
absl::Status ValidateEndpoint(const std::string& endpoint);

class RolloutClient {
 public:
  // Connects lazily, over a channel secured by `security` (plaintext by
  // default; TLS / mTLS for rollouts started with --tls_cert / --tls_ca:
  // build it with common::MakeChannelSecurity). A non-empty `auth_token` is
  // sent as "authorization: Bearer <token>" with every call (rollout_service
  // --auth_token_file).
  explicit RolloutClient(std::string endpoint, std::string auth_token = "",
                         common::ChannelSecurity security = {});

  const std::string& endpoint() const { return endpoint_; }
  lockstep::v1::RolloutService::Stub* stub() { return stub_.get(); }

  // GetModelInfo with a deadline; when `wait_for_ready`, waits (up to the
  // deadline) for the endpoint to come up instead of failing fast.
  absl::StatusOr<lockstep::v1::ModelInfo> GetModelInfo(absl::Duration timeout,
                                                       bool wait_for_ready);

  absl::StatusOr<lockstep::v1::GenerateResponse> Generate(
      const lockstep::v1::GenerateRequest& request, absl::Duration timeout);

  // Streams `tensors` as version `version` (UpdateWeights), retrying on
  // UNAVAILABLE with exponential backoff.
  PushResult PushWeights(const common::TensorMap& tensors, uint64_t version,
                         const std::string& source, const PushOptions& options);

 private:
  void Prepare(grpc::ClientContext* ctx, absl::Duration timeout) const;

  std::string endpoint_;
  std::string auth_token_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<lockstep::v1::RolloutService::Stub> stub_;
};

// Pushes to every client in parallel (one thread each); results in the
// clients' order.
std::vector<PushResult> PushToAll(const std::vector<RolloutClient*>& clients,
                                  const common::TensorMap& tensors,
                                  uint64_t version, const std::string& source,
                                  const PushOptions& options);

}  // namespace lockstep::learner

#endif  // LOCKSTEP_LEARNER_SERVICE_ROLLOUT_CLIENT_H_
