// lockstep.v1.RolloutService over an Engine: converts requests to engine
// jobs and results back to responses, records the request metrics, and maps
// absl::Status codes to gRPC ones. No rule lives here: validation, the
// version rule and weight installation are the engine's (engine.h); the
// weight stream is decoded and verified by common::WeightStager.
#ifndef LOCKSTEP_ROLLOUT_SERVICE_SERVER_ROLLOUT_GRPC_SERVICE_H_
#define LOCKSTEP_ROLLOUT_SERVICE_SERVER_ROLLOUT_GRPC_SERVICE_H_

#include <memory>

#include "absl/time/time.h"

#include "lockstep/v1/rollout.grpc.pb.h"
#include "rollout_service/engine.h"
#include "rollout_service/server/rollout_metrics.h"

namespace lockstep::rollout {

// The gRPC service name (also the health-check service name).
inline constexpr char kRolloutServiceName[] = "lockstep.v1.RolloutService";

class RolloutGrpcService : public v1::RolloutService::Service {
 public:
  // From now on every RPC fails with UNAVAILABLE ("draining").
  virtual void SetDraining() = 0;
};

// The service over `engine` and `metrics` (both outlive it). A parallel
// weight update (WeightUpdateHeader.stream_count > 1) whose parts do not all
// arrive within `weight_assembly_timeout` after the first fails with ABORTED
// (common/wire/weight_assembly.h).
std::unique_ptr<RolloutGrpcService> MakeRolloutGrpcService(
    Engine* engine, RolloutMetrics* metrics,
    absl::Duration weight_assembly_timeout = absl::Seconds(60));

}  // namespace lockstep::rollout

#endif  // LOCKSTEP_ROLLOUT_SERVICE_SERVER_ROLLOUT_GRPC_SERVICE_H_
