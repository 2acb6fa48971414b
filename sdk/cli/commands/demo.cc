#include "sdk/cli/commands/demo.h"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "sdk/cli/client_flags.h"
#include "sdk/cli/command.h"
#include "sdk/cli/flags.h"

#ifndef LOCKSTEP_CLI_SOURCE_DIR
#define LOCKSTEP_CLI_SOURCE_DIR ""
#endif
#ifndef LOCKSTEP_CLI_BUILD_DIR
#define LOCKSTEP_CLI_BUILD_DIR ""
#endif

namespace lockstep::cli {
namespace {

absl::StatusOr<int> RunDemo(const Args& args) {
  std::string source = args.Get(
      "source_dir", EnvOr("LOCKSTEP_SOURCE_DIR", LOCKSTEP_CLI_SOURCE_DIR));
  std::string build = args.Get(
      "build_dir", EnvOr("LOCKSTEP_BUILD_DIR", LOCKSTEP_CLI_BUILD_DIR));
  if (source.empty() || build.empty()) {
    return Usage(
        "--source_dir and --build_dir are needed (this binary was built "
        "without them)");
  }
  const std::string script = source + "/scripts/demo.sh";
  if (access(script.c_str(), X_OK) != 0) {
    return absl::NotFoundError(
        absl::StrCat(script, " not found or not executable"));
  }
  for (const auto& [flag, env] :
       std::vector<std::pair<std::string, std::string>>{
           {"steps", "DEMO_STEPS"},
           {"task", "DEMO_TASK"},
           {"lr", "DEMO_LR"},
           {"prompts", "DEMO_PROMPTS"},
           {"samples", "DEMO_SAMPLES"},
           {"linger", "DEMO_LINGER"}}) {
    if (args.Has(flag)) setenv(env.c_str(), args.Get(flag).c_str(), 1);
  }
  if (args.GetBool("keep")) setenv("DEMO_KEEP", "1", 1);
  std::fflush(stdout);
  execl(script.c_str(), script.c_str(), build.c_str(),
        static_cast<char*>(nullptr));
  return absl::InternalError(
      absl::StrCat("cannot run ", script, ": ", std::strerror(errno)));
}

}  // namespace

Command DemoCommand() {
  Command d{
      "demo",
      "the end-to-end demo, as `make demo`",
      "[flags]",
      "Runs scripts/demo.sh: the learner-driven RL loop on the tiny model on "
      "CPU,\n"
      "with invariant and then standard kernels, and compares their logprob\n"
      "mismatch. Exit status 0 when the invariant run was bit-exact.",
      {},
      RunDemo};
  d.flags = {
      {"build_dir", "DIR", "build tree with the service binaries",
       LOCKSTEP_CLI_BUILD_DIR},
      {"source_dir", "DIR", "source tree (for scripts/demo.sh)",
       LOCKSTEP_CLI_SOURCE_DIR},
      // Defaults are the script's own (see scripts/demo.sh).
      {"steps", "N", "training steps per mode (DEMO_STEPS)"},
      {"task", "NAME", "built-in task: reverse or add (DEMO_TASK)"},
      {"lr", "LR", "learning rate (DEMO_LR)"},
      {"prompts", "N", "prompts per step (DEMO_PROMPTS)"},
      {"samples", "N", "samples per prompt (DEMO_SAMPLES)"},
      {"linger", "SECONDS", "keep the services up for scraping (DEMO_LINGER)"},
      {"keep", "", "keep the work directory (DEMO_KEEP=1)"},
      {"help", "", "show this help"}};
  return d;
}

}  // namespace lockstep::cli
