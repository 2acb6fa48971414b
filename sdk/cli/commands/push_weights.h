// `lockstep push-weights`: uploads a safetensors checkpoint (a directory or
// one file) to a rollout (UpdateWeights), converted to the served dtype.
#ifndef LOCKSTEP_SDK_CLI_COMMANDS_PUSH_WEIGHTS_H_
#define LOCKSTEP_SDK_CLI_COMMANDS_PUSH_WEIGHTS_H_

#include "sdk/cli/command.h"

namespace lockstep::cli {

// The `push-weights` command: its help text, flags and runner.
Command PushWeightsCommand();

}  // namespace lockstep::cli

#endif  // LOCKSTEP_SDK_CLI_COMMANDS_PUSH_WEIGHTS_H_
