// C++ client of lockstep.v1.LearnerService: trajectory upload, training
// steps, scoring, rollout registration and weight pushes, weight download,
// checkpoints and statistics.
//
// A client-driven RL step (see proto/lockstep/v1/learner.proto):
//   auto learner = lockstep::client::LearnerClient::Create(options);
//   std::vector<lockstep::v1::Trajectory> batch;
//   for (const auto& c : generated.completions())
//     batch.push_back(lockstep::client::MakeTrajectory(
//         prompt_tokens, c, MyReward(c), /*group_id=*/"p0"));
//   auto submitted = (*learner)->SubmitTrajectories(batch);
//   auto step = (*learner)->TrainStep();   // pushes weights to the rollouts
//
// Deadlines, retries (UNAVAILABLE only) and errors: see client_options.h.
// TrainStep is retried on UNAVAILABLE like every call; set
// TrainStepRequest.expected_version so that a retry of a step that did
// apply (connection lost after the server applied it) fails with
// FAILED_PRECONDITION instead of taking a second step.
// Thread-safe: one client may serve many threads at once.
#ifndef LOCKSTEP_SDK_CPP_LEARNER_CLIENT_H_
#define LOCKSTEP_SDK_CPP_LEARNER_CLIENT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "lockstep/v1/learner.grpc.pb.h"
#include "lockstep/v1/rollout.pb.h"
#include "sdk/cpp/client_options.h"
#include "sdk/cpp/connection.h"

namespace lockstep::client {

// Health-check service name of the learner service.
inline constexpr char kLearnerServiceName[] = "lockstep.v1.LearnerService";

// A trajectory for SubmitTrajectories from one Generate completion: the
// prompt's tokens, the completion's tokens, logprobs, weight version(s), the
// caller's reward and the GRPO group (one per prompt).
v1::Trajectory MakeTrajectory(const std::vector<int32_t>& prompt_token_ids,
                              const v1::Completion& completion, float reward,
                              const std::string& group_id);

struct SubmitOptions {
  // Trajectories are packed into stream messages of at most about this many
  // bytes (one trajectory larger than this goes alone).
  size_t max_message_bytes = size_t{4} << 20;
};

class LearnerClient {
 public:
  // Connects (lazily) as `options` says; see Connection::Create for errors.
  static absl::StatusOr<std::unique_ptr<LearnerClient>> Create(
      const ClientOptions& options);
  // Shares an existing connection.
  explicit LearnerClient(std::shared_ptr<Connection> connection);

  const Connection& connection() const { return *connection_; }
  v1::LearnerService::Stub* stub() { return stub_.get(); }

  // Streams `trajectories` in one SubmitTrajectories call (all or nothing on
  // the server). The vector is replayed on UNAVAILABLE. INVALID_ARGUMENT
  // locally for an empty vector.
  absl::StatusOr<v1::SubmitTrajectoriesResponse> SubmitTrajectories(
      const std::vector<v1::Trajectory>& trajectories,
      const CallOptions& call = {}, const SubmitOptions& options = {});

  // One optimizer step (and the weight push to the registered rollouts).
  absl::StatusOr<v1::TrainStepResponse> TrainStep(
      const v1::TrainStepRequest& request = {}, const CallOptions& call = {});

  // The learner's logprobs of given sequences.
  absl::StatusOr<v1::ComputeLogprobsResponse> ComputeLogprobs(
      const v1::ComputeLogprobsRequest& request, const CallOptions& call = {});

  // Adds rollout endpoints ("HOST:PORT") that get the weights after every
  // step; `push_now` pushes the current weights to those behind.
  absl::StatusOr<v1::RegisterRolloutResponse> RegisterRollout(
      const std::vector<std::string>& endpoints, bool push_now = true,
      const CallOptions& call = {});
  absl::StatusOr<v1::UnregisterRolloutResponse> UnregisterRollout(
      const std::vector<std::string>& endpoints, const CallOptions& call = {});

  // Pushes the current weights to every registered rollout now.
  absl::StatusOr<v1::PushWeightsResponse> PushWeights(
      const CallOptions& call = {});

  // Streams the current weights in the UpdateWeights format to `sink`
  // (header first). Retried on UNAVAILABLE until the first message has been
  // delivered. `chunk_bytes` 0: the server's default (1 MiB). A sink error
  // cancels the call and is returned.
  absl::Status GetWeights(
      const std::function<absl::Status(const v1::WeightUpdate&)>& sink,
      uint32_t chunk_bytes = 0, const CallOptions& call = {});
  // Same, collected (fine for small models).
  absl::StatusOr<std::vector<v1::WeightUpdate>> GetWeights(
      uint32_t chunk_bytes = 0, const CallOptions& call = {});

  // Checkpoints under the learner's --checkpoint_dir.
  absl::StatusOr<v1::SaveCheckpointResponse> SaveCheckpoint(
      const std::string& name = "", const CallOptions& call = {});
  absl::StatusOr<v1::LoadCheckpointResponse> LoadCheckpoint(
      const std::string& name, const CallOptions& call = {});

  // Counters, buffer state, mismatch totals, registered rollouts.
  absl::StatusOr<v1::LearnerStats> GetStats(const CallOptions& call = {});

  // grpc.health.v1 status of lockstep.v1.LearnerService (no token needed).
  absl::StatusOr<HealthStatus> Health(const CallOptions& call = {});

 private:
  std::shared_ptr<Connection> connection_;
  std::unique_ptr<v1::LearnerService::Stub> stub_;
};

}  // namespace lockstep::client

#endif  // LOCKSTEP_SDK_CPP_LEARNER_CLIENT_H_
