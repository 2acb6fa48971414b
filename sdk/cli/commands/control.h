// `lockstep control ACTION`: the rollout's generation control — pause,
// resume, sleep, wake-up, abort — and its load (RolloutService Pause /
// Resume / Sleep / WakeUp / Abort / GetLoad).
#ifndef LOCKSTEP_SDK_CLI_COMMANDS_CONTROL_H_
#define LOCKSTEP_SDK_CLI_COMMANDS_CONTROL_H_

#include "sdk/cli/command.h"

namespace lockstep::cli {

// The `control` command: its help text, flags and runner.
Command ControlCommand();

}  // namespace lockstep::cli

#endif  // LOCKSTEP_SDK_CLI_COMMANDS_CONTROL_H_
