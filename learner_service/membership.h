// Rollout membership from DNS: a name such as a Kubernetes headless Service
// ("lockstep-rollout-headless.ns.svc:50051") resolves to one address per
// ready pod. Membership re-resolves every name periodically, registers the
// addresses that appeared (RegisterRollouts: the compatibility check, then
// the learner's current weights pushed to a member that is behind, before
// the driver sends it any Generate) and unregisters those that vanished, so
// every replica trains on-policy and gets every push.
#ifndef LOCKSTEP_LEARNER_SERVICE_MEMBERSHIP_H_
#define LOCKSTEP_LEARNER_SERVICE_MEMBERSHIP_H_

#include <atomic>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "learner_service/learner.h"

namespace lockstep::learner {

// "HOST:PORT" -> every address it resolves to, as "IP:PORT" ("[IPv6]:PORT"),
// sorted and distinct. NOT_FOUND when the name has no address (yet),
// INVALID_ARGUMENT when it is not HOST:PORT.
using Resolver = std::function<absl::StatusOr<std::vector<std::string>>(const std::string&)>;

// The system resolver (getaddrinfo, TCP addresses).
absl::StatusOr<std::vector<std::string>> ResolveAll(const std::string& host_port);

struct MembershipOptions {
  std::vector<std::string> names;             // HOST:PORT, each re-resolved
  absl::Duration period = absl::Seconds(10);  // between two rounds
};

// What one round changed.
struct MembershipRound {
  std::vector<std::string> added;    // registered (and synced) this round
  std::vector<std::string> removed;  // unregistered: no longer resolved
  std::vector<std::string> errors;   // resolve or registration failures
                                     // (retried the next round)
};

class Membership {
 public:
  // `learner` must outlive the membership.
  Membership(Learner* learner, MembershipOptions options, Resolver resolver = ResolveAll);
  ~Membership();  // Stop()s
  Membership(const Membership&) = delete;
  Membership& operator=(const Membership&) = delete;

  // One round now (thread-compatible with the background loop: do not call
  // both). A name that fails to resolve keeps its previous members.
  MembershipRound RunOnce();

  // Runs RunOnce() every options.period on a thread until Stop().
  void Start();
  void Stop();

 private:
  Learner* const learner_;
  const MembershipOptions options_;
  const Resolver resolver_;
  std::map<std::string, std::set<std::string>> members_;  // name -> addresses
  std::thread thread_;
  absl::Notification stop_;
};

}  // namespace lockstep::learner

#endif  // LOCKSTEP_LEARNER_SERVICE_MEMBERSHIP_H_
