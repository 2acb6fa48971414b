// A subcommand of the `lockstep` CLI as main.cc dispatches to it: its name,
// help text, flags and the function that runs it; and the usage errors a
// command returns (exit status 2) as opposed to failed calls (exit status 1).
#ifndef LOCKSTEP_SDK_CLI_COMMAND_H_
#define LOCKSTEP_SDK_CLI_COMMAND_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "sdk/cli/flags.h"

namespace lockstep::cli {

struct Command {
  std::string name;     // "generate"
  std::string summary;  // one line for `lockstep --help`
  std::string usage;    // after "lockstep <name>"
  std::string details;  // paragraphs for `lockstep <name> --help`
  std::vector<FlagSpec> flags;
  // Runs the command on its parsed flags: the exit status, or an error (a
  // Usage() error, or the failed call's).
  absl::StatusOr<int> (*run)(const Args& args);
  // Takes words besides flags (Args::positional); others refuse them.
  bool takes_arguments = false;
};

// A usage error (exit status 2): INVALID_ARGUMENT whose message starts with
// "usage: "; main.cc prints `message` and points at --help.
absl::Status Usage(const std::string& message);

// True for the errors Usage() makes; every other error comes from a call
// (exit status 1).
bool IsUsage(const absl::Status& status);

}  // namespace lockstep::cli

#endif  // LOCKSTEP_SDK_CLI_COMMAND_H_
