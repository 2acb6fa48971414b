#include "tests/sdk/sdk_test_util.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

extern char** environ;

namespace lockstep::sdk_testing {
namespace {

std::string FromBuild(const char* compiled, const char* relative) {
  if (compiled != nullptr && compiled[0] != '\0') return compiled;
  return absl::StrCat(testing::BuildDir(), "/", relative);
}

}  // namespace

std::string RolloutBinary() {
#ifdef LOCKSTEP_ROLLOUT_SERVICE_BINARY
  return FromBuild(LOCKSTEP_ROLLOUT_SERVICE_BINARY, "");
#else
  return FromBuild(nullptr, "rollout_service/rollout_service");
#endif
}

std::string LearnerBinary() {
#ifdef LOCKSTEP_LEARNER_SERVICE_BINARY
  return FromBuild(LOCKSTEP_LEARNER_SERVICE_BINARY, "");
#else
  return FromBuild(nullptr, "learner_service/learner_service");
#endif
}

std::string MakeModelBinary() {
#ifdef LOCKSTEP_MAKE_MODEL_BINARY
  return FromBuild(LOCKSTEP_MAKE_MODEL_BINARY, "");
#else
  return FromBuild(nullptr, "common/lockstep_make_model");
#endif
}

std::string CliBinary() {
#ifdef LOCKSTEP_CLI_BINARY
  return FromBuild(LOCKSTEP_CLI_BINARY, "");
#else
  return FromBuild(nullptr, "sdk/cli/lockstep");
#endif
}

absl::Status MakeTinyModel(const std::string& dir, int seed) {
  CommandResult r = RunCommand({MakeModelBinary(), "--preset", "tiny", "--seed",
                                std::to_string(seed), "--out", dir});
  if (r.exit_code != 0) {
    return absl::InternalError(
        absl::StrCat("lockstep_make_model failed: ", r.err));
  }
  return absl::OkStatus();
}

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    socklen_t len = sizeof(addr);
    getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

absl::StatusOr<std::unique_ptr<testing::ServiceProcess>> StartRollout(
    const std::string& model_dir, std::vector<std::string> extra, int port) {
  testing::ServiceProcessOptions o;
  o.binary = RolloutBinary();
  o.default_flags = false;
  o.args = {"--host=127.0.0.1", absl::StrCat("--port=", port),
            "--metrics_port=0", "--model_dir=" + model_dir,
            "--kernels=invariant", "--device=cpu", "--num_threads=2",
            "--drain_grace_seconds=2",
            // A small KV cache halves the start-up time; plenty for the tests.
            "--kv_cache_bytes=33554432"};
  o.args.insert(o.args.end(), extra.begin(), extra.end());
  return testing::ServiceProcess::Start(o);
}

absl::StatusOr<std::unique_ptr<testing::ServiceProcess>> StartLearner(
    const std::string& model_dir, std::vector<std::string> extra) {
  testing::ServiceProcessOptions o;
  o.binary = LearnerBinary();
  o.args = {"--model_dir=" + model_dir, "--kernels=invariant", "--device=cpu",
            "--num_threads=2"};
  o.args.insert(o.args.end(), extra.begin(), extra.end());
  return testing::ServiceProcess::Start(o);
}

bool BinaryHasFlag(const std::string& binary, const std::string& flag) {
  CommandResult r = RunCommand({binary, "--helpfull"});
  return absl::StrContains(r.out, flag) || absl::StrContains(r.err, flag);
}

CommandResult RunCommand(const std::vector<std::string>& argv,
                         const std::vector<std::string>& env) {
  CommandResult result;
  int out_pipe[2], err_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0 || pipe2(err_pipe, O_CLOEXEC) != 0)
    return result;
  std::vector<std::string> envs;
  for (char** e = environ; *e != nullptr; ++e) envs.emplace_back(*e);
  envs.insert(envs.end(), env.begin(), env.end());
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(out_pipe[1], 1);
    dup2(err_pipe[1], 2);
    std::vector<char*> args, envp;
    for (const std::string& a : argv)
      args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    for (const std::string& e : envs)
      envp.push_back(const_cast<char*>(e.c_str()));
    envp.push_back(nullptr);
    execve(args[0], args.data(), envp.data());
    _exit(127);
  }
  close(out_pipe[1]);
  close(err_pipe[1]);
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  std::string* sinks[2] = {&result.out, &result.err};
  int open_fds = 2;
  char buf[4096];
  while (open_fds > 0) {
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) == 0)
        continue;
      const ssize_t n = read(fds[i].fd, buf, sizeof(buf));
      if (n > 0) {
        sinks[i]->append(buf, n);
      } else {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      }
    }
  }
  int status = 0;
  waitpid(pid, &status, 0);
  result.exit_code =
      WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return result;
}

CommandResult RunCli(const std::vector<std::string>& args,
                     const std::vector<std::string>& env) {
  std::vector<std::string> argv = {CliBinary()};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunCommand(argv, env);
}

}  // namespace lockstep::sdk_testing
