// `lockstep stats`: the learner's statistics (GetStats): step, version,
// buffer, logprob mismatch, registered rollouts.
#ifndef LOCKSTEP_SDK_CLI_COMMANDS_STATS_H_
#define LOCKSTEP_SDK_CLI_COMMANDS_STATS_H_

#include "sdk/cli/command.h"

namespace lockstep::cli {

// The `stats` command: its help text, flags and runner.
Command StatsCommand();

}  // namespace lockstep::cli

#endif  // LOCKSTEP_SDK_CLI_COMMANDS_STATS_H_
