// `lockstep score`: logprobs of given token sequences (ComputeLogprobs) on
// the rollout or, with --on=learner, the learner.
#ifndef LOCKSTEP_SDK_CLI_COMMANDS_SCORE_H_
#define LOCKSTEP_SDK_CLI_COMMANDS_SCORE_H_

#include "sdk/cli/command.h"

namespace lockstep::cli {

// The `score` command: its help text, flags and runner.
Command ScoreCommand();

}  // namespace lockstep::cli

#endif  // LOCKSTEP_SDK_CLI_COMMANDS_SCORE_H_
