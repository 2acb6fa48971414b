// `lockstep generate`: samples completions from a rollout (Generate, or
// GenerateStream with --stream) and prints them, as JSON with --json; with
// --trajectories_out also writes them as Trajectory JSON Lines for
// `lockstep train-step`.
#ifndef LOCKSTEP_SDK_CLI_COMMANDS_GENERATE_H_
#define LOCKSTEP_SDK_CLI_COMMANDS_GENERATE_H_

#include "sdk/cli/command.h"

namespace lockstep::cli {

// The `generate` command: its help text, flags and runner.
Command GenerateCommand();

}  // namespace lockstep::cli

#endif  // LOCKSTEP_SDK_CLI_COMMANDS_GENERATE_H_
