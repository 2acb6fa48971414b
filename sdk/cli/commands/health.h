// `lockstep health`: grpc.health.v1 of the rollout and/or the learner; exit
// status 0 only when every service checked is SERVING.
#ifndef LOCKSTEP_SDK_CLI_COMMANDS_HEALTH_H_
#define LOCKSTEP_SDK_CLI_COMMANDS_HEALTH_H_

#include "sdk/cli/command.h"

namespace lockstep::cli {

// The `health` command: its help text, flags and runner.
Command HealthCommand();

}  // namespace lockstep::cli

#endif  // LOCKSTEP_SDK_CLI_COMMANDS_HEALTH_H_
