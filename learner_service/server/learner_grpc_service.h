// gRPC adapter of lockstep.v1.LearnerService: converts and validates
// messages, calls the Learner core, maps absl::Status to gRPC codes. Metrics
// are recorded by the core (so the driver's steps count too).
#ifndef LOCKSTEP_LEARNER_SERVICE_SERVER_LEARNER_GRPC_SERVICE_H_
#define LOCKSTEP_LEARNER_SERVICE_SERVER_LEARNER_GRPC_SERVICE_H_

#include <atomic>

#include "absl/status/statusor.h"
#include "learner_service/learner.h"
#include "lockstep/v1/learner.grpc.pb.h"

namespace lockstep::learner {

// Proto <-> core conversions (exposed for tests).
absl::StatusOr<Trajectory> TrajectoryFromProto(const lockstep::v1::Trajectory& t);
void StepReportToProto(const StepReport& report,
                       lockstep::v1::TrainStepResponse* out);
void PushResultToProto(const PushResult& push,
                       lockstep::v1::WeightPushResult* out);
void MismatchToProto(const MismatchStats& stats,
                     lockstep::v1::MismatchStats* out);

// The gRPC service name (also the health-check service name).
inline constexpr char kLearnerServiceName[] = "lockstep.v1.LearnerService";

class LearnerServiceImpl final : public lockstep::v1::LearnerService::Service {
 public:
  // `learner` must outlive the service.
  explicit LearnerServiceImpl(Learner* learner) : learner_(learner) {}

  // After this, every call fails with UNAVAILABLE (drain before shutdown).
  void StartDraining() { draining_ = true; }

  grpc::Status SubmitTrajectories(
      grpc::ServerContext* context,
      grpc::ServerReader<lockstep::v1::SubmitTrajectoriesRequest>* reader,
      lockstep::v1::SubmitTrajectoriesResponse* response) override;
  grpc::Status TrainStep(grpc::ServerContext* context,
                         const lockstep::v1::TrainStepRequest* request,
                         lockstep::v1::TrainStepResponse* response) override;
  grpc::Status ComputeLogprobs(
      grpc::ServerContext* context,
      const lockstep::v1::ComputeLogprobsRequest* request,
      lockstep::v1::ComputeLogprobsResponse* response) override;
  grpc::Status RegisterRollout(
      grpc::ServerContext* context,
      const lockstep::v1::RegisterRolloutRequest* request,
      lockstep::v1::RegisterRolloutResponse* response) override;
  grpc::Status UnregisterRollout(
      grpc::ServerContext* context,
      const lockstep::v1::UnregisterRolloutRequest* request,
      lockstep::v1::UnregisterRolloutResponse* response) override;
  grpc::Status PushWeights(grpc::ServerContext* context,
                           const lockstep::v1::PushWeightsRequest* request,
                           lockstep::v1::PushWeightsResponse* response) override;
  grpc::Status GetWeights(
      grpc::ServerContext* context,
      const lockstep::v1::GetWeightsRequest* request,
      grpc::ServerWriter<lockstep::v1::WeightUpdate>* writer) override;
  grpc::Status SaveCheckpoint(
      grpc::ServerContext* context,
      const lockstep::v1::SaveCheckpointRequest* request,
      lockstep::v1::SaveCheckpointResponse* response) override;
  grpc::Status LoadCheckpoint(
      grpc::ServerContext* context,
      const lockstep::v1::LoadCheckpointRequest* request,
      lockstep::v1::LoadCheckpointResponse* response) override;
  grpc::Status GetStats(grpc::ServerContext* context,
                        const lockstep::v1::GetStatsRequest* request,
                        lockstep::v1::LearnerStats* response) override;

 private:
  Learner* learner_;
  std::atomic<bool> draining_{false};
};

}  // namespace lockstep::learner

#endif  // LOCKSTEP_LEARNER_SERVICE_SERVER_LEARNER_GRPC_SERVICE_H_
