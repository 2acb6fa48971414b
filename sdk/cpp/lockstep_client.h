// The lockstep C++ client SDK in one include:
//   RolloutClient (rollout_client.h), LearnerClient (learner_client.h),
//   ClientOptions / CallOptions / RetryPolicy / TlsOptions
//   (client_options.h), Connection and the health check (connection.h),
//   WeightSet and the UpdateWeights encoding (weights.h).
// Link the CMake target lockstep::client. See docs/sdk.md.
#ifndef LOCKSTEP_SDK_CPP_LOCKSTEP_CLIENT_H_
#define LOCKSTEP_SDK_CPP_LOCKSTEP_CLIENT_H_

#include "sdk/cpp/client_options.h"
#include "sdk/cpp/connection.h"
#include "sdk/cpp/learner_client.h"
#include "sdk/cpp/rollout_client.h"
#include "sdk/cpp/weights.h"

#endif  // LOCKSTEP_SDK_CPP_LOCKSTEP_CLIENT_H_
