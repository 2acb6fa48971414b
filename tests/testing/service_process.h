// Starts a lockstep service binary (rollout_service, learner_service) as a
// child process for integration tests: passes --host=127.0.0.1 --port=0
// --metrics_port=0, waits for the line
//   listening grpc=HOST:PORT metrics=HOST:PORT
// on its stdout, and stops it (SIGTERM + wait, SIGKILL as a last resort).
// The child's stderr goes to the test's stderr; its further stdout lines are
// copied there too. The child is killed if the test process dies.
#ifndef LOCKSTEP_TESTS_TESTING_SERVICE_PROCESS_H_
#define LOCKSTEP_TESTS_TESTING_SERVICE_PROCESS_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace lockstep::testing {

struct ServiceProcessOptions {
  std::string binary;             // path of the executable
  std::vector<std::string> args;  // further flags, e.g. "--model_dir=/tmp/m"
  // Prepend --host=127.0.0.1 --port=0 --metrics_port=0.
  bool default_flags = true;
  double start_timeout_seconds = 120;  // until the listening line
};

class ServiceProcess {
 public:
  // Launches the binary and waits for its listening line. FAILED_PRECONDITION
  // when it exits first (the message carries the exit status),
  // DEADLINE_EXCEEDED on timeout (the child is killed), INTERNAL when the
  // line cannot be parsed.
  static absl::StatusOr<std::unique_ptr<ServiceProcess>> Start(
      const ServiceProcessOptions& options);

  // Kills the child (SIGKILL) if it still runs.
  ~ServiceProcess();

  ServiceProcess(const ServiceProcess&) = delete;
  ServiceProcess& operator=(const ServiceProcess&) = delete;

  pid_t pid() const { return pid_; }
  // "HOST:PORT" as printed by the child.
  const std::string& grpc_address() const { return grpc_address_; }
  const std::string& metrics_address() const { return metrics_address_; }
  int grpc_port() const { return grpc_port_; }
  int metrics_port() const { return metrics_port_; }

  // Sends `signal` (default SIGTERM) and waits up to `timeout_seconds` for
  // the child to exit. Returns its exit code (128 + signal number when a
  // signal killed it). DEADLINE_EXCEEDED when it did not exit in time (it is
  // then killed with SIGKILL).
  absl::StatusOr<int> Stop(double timeout_seconds = 60, int signal = 15);

  // SIGKILL and reap.
  void Kill();

  // True while the child has not exited.
  bool Running();

 private:
  ServiceProcess() = default;
  bool Reap(bool block, int* code);

  pid_t pid_ = -1;
  int stdout_fd_ = -1;
  bool exited_ = false;
  int exit_code_ = 0;
  std::string grpc_address_;
  std::string metrics_address_;
  int grpc_port_ = 0;
  int metrics_port_ = 0;
  std::thread drain_;  // copies the child's later stdout to stderr
};

// $LOCKSTEP_BUILD_DIR / $LOCKSTEP_SOURCE_DIR (set by CTest for every test),
// or "" when unset.
std::string BuildDir();
std::string SourceDir();

// A fresh empty directory under $TMPDIR (or /tmp) named after `prefix`.
absl::StatusOr<std::string> MakeTempDir(const std::string& prefix);

// Removes `path` recursively (best effort).
void RemoveTree(const std::string& path);

// A fresh temporary directory (MakeTempDir) removed (RemoveTree) at
// destruction; falls back to /tmp, failing the current test, if none can be
// made.
class ScopedTempDir {
 public:
  explicit ScopedTempDir(const std::string& prefix);
  ~ScopedTempDir();
  ScopedTempDir(const ScopedTempDir&) = delete;
  ScopedTempDir& operator=(const ScopedTempDir&) = delete;
  const std::string& path() const { return path_; }
  // path()/name.
  std::string Sub(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
  bool owned_ = false;
};

}  // namespace lockstep::testing

#endif  // LOCKSTEP_TESTS_TESTING_SERVICE_PROCESS_H_
