// `lockstep train-step`: one learner optimizer step (TrainStep), after
// submitting the trajectories of a JSON Lines or JSON array file if given.
#ifndef LOCKSTEP_SDK_CLI_COMMANDS_TRAIN_STEP_H_
#define LOCKSTEP_SDK_CLI_COMMANDS_TRAIN_STEP_H_

#include "sdk/cli/command.h"

namespace lockstep::cli {

// The `train-step` command: its help text, flags and runner.
Command TrainStepCommand();

}  // namespace lockstep::cli

#endif  // LOCKSTEP_SDK_CLI_COMMANDS_TRAIN_STEP_H_
