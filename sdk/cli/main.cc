// lockstep: command-line client of the lockstep rollout and learner
// services, on the C++ SDK (lockstep::client). `lockstep --help` lists the
// commands, `lockstep <command> --help` their flags. Exit status: 0 on
// success, 1 when a call fails (the message names the gRPC code), 2 for
// usage errors. Each command lives in commands/<command>.{h,cc}; this file
// dispatches to them.
#include <iostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "sdk/cli/client_flags.h"
#include "sdk/cli/command.h"
#include "sdk/cli/commands/demo.h"
#include "sdk/cli/commands/generate.h"
#include "sdk/cli/commands/health.h"
#include "sdk/cli/commands/control.h"
#include "sdk/cli/commands/push_weights.h"
#include "sdk/cli/commands/score.h"
#include "sdk/cli/commands/stats.h"
#include "sdk/cli/commands/train_step.h"
#include "sdk/cli/flags.h"

namespace lockstep::cli {
namespace {

// The commands in the order `lockstep --help` lists them.
std::vector<Command> Commands() {
  return {GenerateCommand(),  ScoreCommand(), PushWeightsCommand(),
          TrainStepCommand(), StatsCommand(), HealthCommand(),
          ControlCommand(),   DemoCommand()};
}

std::string MainHelp(const std::vector<Command>& commands) {
  std::string out =
      "lockstep: command-line client of the lockstep rollout and learner "
      "services.\n\n"
      "Usage: lockstep <command> [flags]     (lockstep <command> --help for "
      "its flags)\n\n"
      "Commands:\n";
  for (const Command& c : commands) {
    std::string name = c.name;
    name.resize(14, ' ');
    absl::StrAppend(&out, "  ", name, c.summary, "\n");
  }
  absl::StrAppend(
      &out,
      "\nAddresses default to $LOCKSTEP_ROLLOUT / $LOCKSTEP_LEARNER, else ",
      kDefaultRollout, " / ", kDefaultLearner,
      ".\nExit status: 0 success, 1 a call failed, 2 usage error.\n");
  return out;
}

int Main(int argc, char** argv) {
  const std::vector<Command> commands = Commands();
  if (argc < 2) {
    std::cerr << MainHelp(commands);
    return 2;
  }
  const std::string name = argv[1];
  if (name == "--help" || name == "-h" || name == "help") {
    std::cout << MainHelp(commands);
    return 0;
  }
  const Command* command = nullptr;
  for (const Command& c : commands) {
    if (c.name == name) command = &c;
  }
  if (command == nullptr) {
    std::cerr << "lockstep: unknown command '" << name << "'\n\n"
              << MainHelp(commands);
    return 2;
  }
  std::vector<std::string> words(argv + 2, argv + argc);
  absl::StatusOr<Args> args = ParseFlags(command->flags, words);
  if (!args.ok()) {
    std::cerr << "lockstep " << name << ": " << args.status().message()
              << " (see lockstep " << name << " --help)\n";
    return 2;
  }
  if (args->GetBool("help")) {
    std::cout << "lockstep " << name << ": " << command->summary
              << "\n\nUsage: lockstep " << name << " " << command->usage
              << "\n\n"
              << command->details << "\n\nFlags:\n"
              << FlagHelp(command->flags);
    return 0;
  }
  if (!command->takes_arguments && !args->positional().empty()) {
    std::cerr << "lockstep " << name << ": unexpected argument '"
              << args->positional()[0] << "' (see lockstep " << name
              << " --help)\n";
    return 2;
  }
  absl::StatusOr<int> code = command->run(*args);
  if (!code.ok()) {
    if (IsUsage(code.status())) {
      std::cerr << "lockstep " << name << ": "
                << absl::StripPrefix(code.status().message(), "usage: ")
                << " (see lockstep " << name << " --help)\n";
      return 2;
    }
    std::cerr << "lockstep " << name << ": "
              << absl::StatusCodeToString(code.status().code()) << ": "
              << code.status().message() << "\n";
    return 1;
  }
  return *code;
}

}  // namespace
}  // namespace lockstep::cli

int main(int argc, char** argv) { return lockstep::cli::Main(argc, argv); }
