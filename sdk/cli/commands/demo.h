// `lockstep demo`: runs scripts/demo.sh (the end-to-end demo, as `make
// demo`) over the build tree this binary was built in.
#ifndef LOCKSTEP_SDK_CLI_COMMANDS_DEMO_H_
#define LOCKSTEP_SDK_CLI_COMMANDS_DEMO_H_

#include "sdk/cli/command.h"

namespace lockstep::cli {

// The `demo` command: its help text, flags and runner.
Command DemoCommand();

}  // namespace lockstep::cli

#endif  // LOCKSTEP_SDK_CLI_COMMANDS_DEMO_H_
