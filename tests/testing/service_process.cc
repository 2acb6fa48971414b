#include "tests/testing/service_process.h"

#include "common/formats/directory_tree.h"

#include <gtest/gtest.h>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace lockstep::testing {
namespace {

double NowSeconds() {
  return std::chrono::duration<double>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// "HOST:PORT" (HOST may be "[v6]") -> port, or 0.
int PortOf(const std::string& address) {
  const size_t colon = address.rfind(':');
  int port = 0;
  if (colon == std::string::npos ||
      !absl::SimpleAtoi(address.substr(colon + 1), &port)) {
    return 0;
  }
  return port;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ServiceProcess>> ServiceProcess::Start(
    const ServiceProcessOptions& options) {
  std::vector<std::string> args = {options.binary};
  if (options.default_flags) {
    args.push_back("--host=127.0.0.1");
    args.push_back("--port=0");
    args.push_back("--metrics_port=0");
  }
  args.insert(args.end(), options.args.begin(), options.args.end());

  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    return absl::InternalError(absl::StrCat("pipe: ", std::strerror(errno)));
  }
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    close(fds[0]);
    close(fds[1]);
    return absl::InternalError(absl::StrCat("fork: ", std::strerror(errno)));
  }
  if (pid == 0) {
    // Child: stdout -> pipe; die with the test process.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    dup2(fds[1], STDOUT_FILENO);
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    std::fprintf(stderr, "exec %s: %s\n", argv[0], std::strerror(errno));
    _exit(127);
  }
  close(fds[1]);

  std::unique_ptr<ServiceProcess> p(new ServiceProcess());
  p->pid_ = pid;
  p->stdout_fd_ = fds[0];
  std::fprintf(stderr, "service_process: started %s (pid %d)\n",
               absl::StrJoin(args, " ").c_str(), pid);

  // Read stdout up to the listening line.
  const double deadline = NowSeconds() + options.start_timeout_seconds;
  std::string buffer;
  std::string line;
  for (;;) {
    const size_t nl = buffer.find('\n');
    if (nl != std::string::npos) {
      line = buffer.substr(0, nl);
      buffer.erase(0, nl + 1);
      if (absl::StartsWith(line, "listening ")) break;
      std::fprintf(stderr, "[%d stdout] %s\n", pid, line.c_str());
      continue;
    }
    const double left = deadline - NowSeconds();
    if (left <= 0) {
      p->Kill();
      return absl::DeadlineExceededError(
          absl::StrCat(options.binary, " printed no listening line within ",
                       options.start_timeout_seconds, " s"));
    }
    pollfd pfd{p->stdout_fd_, POLLIN, 0};
    const int r =
        poll(&pfd, 1, static_cast<int>(std::min(left, 1.0) * 1000) + 1);
    if (r < 0 && errno != EINTR) {
      p->Kill();
      return absl::InternalError(absl::StrCat("poll: ", std::strerror(errno)));
    }
    if (r <= 0) continue;
    char chunk[4096];
    const ssize_t n = read(p->stdout_fd_, chunk, sizeof(chunk));
    if (n > 0) {
      buffer.append(chunk, n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    // EOF: the child closed stdout, most likely by exiting.
    int code = 0;
    p->Reap(/*block=*/true, &code);
    return absl::FailedPreconditionError(
        absl::StrCat(options.binary, " exited with status ", code,
                     " before printing its listening line"));
  }

  // listening grpc=HOST:PORT metrics=HOST:PORT
  for (const char* key : {"grpc=", "metrics="}) {
    const size_t at = line.find(key);
    if (at == std::string::npos) {
      p->Kill();
      return absl::InternalError(absl::StrCat("cannot parse '", line, "'"));
    }
    const size_t begin = at + std::strlen(key);
    const size_t end = line.find(' ', begin);
    const std::string value = line.substr(
        begin, end == std::string::npos ? std::string::npos : end - begin);
    if (key[0] == 'g') {
      p->grpc_address_ = value;
      p->grpc_port_ = PortOf(value);
    } else {
      p->metrics_address_ = value;
      p->metrics_port_ = PortOf(value);
    }
  }
  if (p->grpc_port_ <= 0 || p->metrics_port_ <= 0) {
    p->Kill();
    return absl::InternalError(absl::StrCat("bad ports in '", line, "'"));
  }
  const int fd = p->stdout_fd_;
  const pid_t child = pid;
  p->drain_ = std::thread([fd, child, rest = std::move(buffer)]() {
    if (!rest.empty())
      std::fprintf(stderr, "[%d stdout] %s", child, rest.c_str());
    char chunk[4096];
    ssize_t n;
    while ((n = read(fd, chunk, sizeof(chunk))) != 0) {
      if (n < 0) {
        if (errno == EINTR) continue;
        break;
      }
      std::fwrite(chunk, 1, n, stderr);
    }
  });
  return p;
}

bool ServiceProcess::Reap(bool block, int* code) {
  if (exited_) {
    *code = exit_code_;
    return true;
  }
  int status = 0;
  pid_t r;
  do {
    r = waitpid(pid_, &status, block ? 0 : WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r != pid_) return false;
  exited_ = true;
  exit_code_ = WIFEXITED(status)     ? WEXITSTATUS(status)
               : WIFSIGNALED(status) ? 128 + WTERMSIG(status)
                                     : -1;
  *code = exit_code_;
  return true;
}

bool ServiceProcess::Running() {
  int code;
  return !Reap(false, &code);
}

absl::StatusOr<int> ServiceProcess::Stop(double timeout_seconds, int signal) {
  int code = 0;
  if (!Reap(false, &code)) {
    kill(pid_, signal);
    const double deadline = NowSeconds() + timeout_seconds;
    while (!Reap(false, &code)) {
      if (NowSeconds() > deadline) {
        Kill();
        return absl::DeadlineExceededError(
            absl::StrCat("pid ", pid_, " did not exit within ", timeout_seconds,
                         " s of signal ", signal));
      }
      usleep(10000);
    }
  }
  if (drain_.joinable()) drain_.join();
  return code;
}

void ServiceProcess::Kill() {
  int code;
  if (!Reap(false, &code)) {
    kill(pid_, SIGKILL);
    Reap(true, &code);
  }
  if (drain_.joinable()) drain_.join();
}

ServiceProcess::~ServiceProcess() {
  Kill();
  if (stdout_fd_ >= 0) close(stdout_fd_);
}

std::string BuildDir() {
  const char* v = std::getenv("LOCKSTEP_BUILD_DIR");
  return v == nullptr ? "" : v;
}

std::string SourceDir() {
  const char* v = std::getenv("LOCKSTEP_SOURCE_DIR");
  return v == nullptr ? "" : v;
}

absl::StatusOr<std::string> MakeTempDir(const std::string& prefix) {
  const char* tmp = std::getenv("TMPDIR");
  std::string templ = absl::StrCat(tmp != nullptr && *tmp ? tmp : "/tmp", "/",
                                   prefix, "-XXXXXX");
  if (mkdtemp(templ.data()) == nullptr) {
    return absl::InternalError(
        absl::StrCat("mkdtemp ", templ, ": ", std::strerror(errno)));
  }
  return templ;
}

void RemoveTree(const std::string& path) {
  // Not std::filesystem::remove_all: common/directory_tree.h says why.
  (void)common::RemoveDirectoryTree(path);
}

ScopedTempDir::ScopedTempDir(const std::string& prefix) {
  auto d = MakeTempDir(prefix);
  EXPECT_TRUE(d.ok()) << d.status();
  owned_ = d.ok();
  path_ = d.ok() ? *d : "/tmp";
}

ScopedTempDir::~ScopedTempDir() {
  if (owned_) RemoveTree(path_);
}

}  // namespace lockstep::testing
