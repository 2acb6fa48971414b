// Conversions between absl::Status and grpc::Status. The canonical codes have
// the same numeric values in both; messages are carried over unchanged.
#ifndef LOCKSTEP_COMMON_WIRE_GRPC_STATUS_H_
#define LOCKSTEP_COMMON_WIRE_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace lockstep::common {

// absl::Status -> grpc::Status (same code and message; OK -> grpc::Status::OK).
grpc::Status ToGrpcStatus(const absl::Status& status);

// grpc::Status -> absl::Status (same code and message). Codes outside the
// canonical range become UNKNOWN.
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace lockstep::common

#endif  // LOCKSTEP_COMMON_WIRE_GRPC_STATUS_H_
