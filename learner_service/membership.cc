#include "learner_service/membership.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstdio>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/net/server_host.h"

namespace lockstep::learner {

absl::StatusOr<std::vector<std::string>> ResolveAll(const std::string& host_port) {
  const size_t colon = host_port.rfind(':');
  int port = 0;
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(host_port.substr(colon + 1), &port) || port <= 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", host_port, "' is not HOST:PORT"));
  }
  std::string host = host_port.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const int rc = getaddrinfo(host.c_str(), nullptr, &hints, &res);
  if (rc != 0) {
    return absl::NotFoundError(
        absl::StrCat("resolving ", host, ": ", gai_strerror(rc)));
  }
  std::vector<std::string> out;
  for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
    char buf[INET6_ADDRSTRLEN] = {};
    const void* src = a->ai_family == AF_INET
                          ? static_cast<const void*>(&reinterpret_cast<sockaddr_in*>(a->ai_addr)->sin_addr)
                          : static_cast<const void*>(&reinterpret_cast<sockaddr_in6*>(a->ai_addr)->sin6_addr);
    if (a->ai_family != AF_INET && a->ai_family != AF_INET6) continue;
    if (inet_ntop(a->ai_family, src, buf, sizeof buf) == nullptr) continue;
    out.push_back(common::JoinHostPort(buf, port));
  }
  freeaddrinfo(res);
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  if (out.empty()) return absl::NotFoundError(absl::StrCat(host, " has no address"));
  return out;
}

Membership::Membership(Learner* learner, MembershipOptions options, Resolver resolver)
    : learner_(learner), options_(std::move(options)), resolver_(std::move(resolver)) {}

Membership::~Membership() { Stop(); }

MembershipRound Membership::RunOnce() {
  MembershipRound round;
  for (const std::string& name : options_.names) {
    absl::StatusOr<std::vector<std::string>> resolved = resolver_(name);
    if (!resolved.ok()) {
      round.errors.push_back(absl::StrCat(name, ": ", resolved.status().message()));
      continue;  // keep the members we know of
    }
    std::set<std::string>& known = members_[name];
    const std::set<std::string> now(resolved->begin(), resolved->end());
    std::vector<std::string> gone;
    for (const std::string& a : known) {
      if (now.count(a) == 0) gone.push_back(a);
    }
    if (!gone.empty()) {
      learner_->UnregisterRollouts(gone);
      for (const std::string& a : gone) known.erase(a);
      round.removed.insert(round.removed.end(), gone.begin(), gone.end());
    }
    for (const std::string& a : now) {
      if (known.count(a) != 0) continue;
      // Registration checks the rollout and pushes the current weights to it
      // when it is behind; a failure (not up yet, incompatible) is retried
      // the next round.
      absl::StatusOr<std::vector<PushResult>> reg = learner_->RegisterRollouts({a}, true);
      absl::Status status = reg.ok() ? absl::OkStatus() : reg.status();
      if (reg.ok()) {
        for (const PushResult& p : *reg) {
          if (!p.status.ok()) status = p.status;
        }
      }
      if (!status.ok()) {
        learner_->UnregisterRollouts({a});  // not a member until it is current
        round.errors.push_back(absl::StrCat(a, ": ", status.message()));
        continue;
      }
      known.insert(a);
      round.added.push_back(a);
    }
  }
  return round;
}

void Membership::Start() {
  if (thread_.joinable()) return;
  thread_ = std::thread([this] {
    do {
      const MembershipRound r = RunOnce();
      for (const std::string& a : r.added) {
        std::fprintf(stderr, "learner: rollout %s joined\n", a.c_str());
      }
      for (const std::string& a : r.removed) {
        std::fprintf(stderr, "learner: rollout %s left\n", a.c_str());
      }
      for (const std::string& e : r.errors) {
        std::fprintf(stderr, "learner: membership: %s\n", e.c_str());
      }
    } while (!stop_.WaitForNotificationWithTimeout(options_.period));
  });
}

void Membership::Stop() {
  if (!stop_.HasBeenNotified()) stop_.Notify();
  if (thread_.joinable()) thread_.join();
}

}  // namespace lockstep::learner
