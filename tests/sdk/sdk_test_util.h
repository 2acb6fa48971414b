// Helpers of the SDK integration tests: the binaries under test, tiny models,
// real service processes on 127.0.0.1, and running the `lockstep` CLI.
#ifndef LOCKSTEP_TESTS_SDK_SDK_TEST_UTIL_H_
#define LOCKSTEP_TESTS_SDK_SDK_TEST_UTIL_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "tests/testing/service_process.h"

namespace lockstep::sdk_testing {

// Paths of the binaries (compile definitions from tests/sdk/CMakeLists.txt).
std::string RolloutBinary();
std::string LearnerBinary();
std::string MakeModelBinary();
std::string CliBinary();

// `lockstep_make_model --preset tiny --seed SEED --out DIR`.
absl::Status MakeTinyModel(const std::string& dir, int seed = 1);

// A free TCP port on 127.0.0.1 (bound, then released).
int FreePort();

// rollout_service / learner_service on 127.0.0.1 with two kernel threads.
// `port` 0: any free port.
absl::StatusOr<std::unique_ptr<testing::ServiceProcess>> StartRollout(
    const std::string& model_dir, std::vector<std::string> extra = {},
    int port = 0);
absl::StatusOr<std::unique_ptr<testing::ServiceProcess>> StartLearner(
    const std::string& model_dir, std::vector<std::string> extra = {});

// True when `binary --help` mentions `flag` (e.g. "--auth_token_file").
bool BinaryHasFlag(const std::string& binary, const std::string& flag);

struct CommandResult {
  int exit_code = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};

// Runs `argv` (argv[0] a path) with extra environment `env` ("K=V"),
// capturing its output.
CommandResult RunCommand(const std::vector<std::string>& argv,
                         const std::vector<std::string>& env = {});

// RunCommand(CliBinary() + args).
CommandResult RunCli(const std::vector<std::string>& args,
                     const std::vector<std::string>& env = {});

}  // namespace lockstep::sdk_testing

#endif  // LOCKSTEP_TESTS_SDK_SDK_TEST_UTIL_H_
