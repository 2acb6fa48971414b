#include "sdk/cli/commands/health.h"

#include <iostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "sdk/cli/client_flags.h"
#include "sdk/cli/command.h"
#include "sdk/cli/flags.h"
#include "sdk/cpp/connection.h"
#include "sdk/cpp/learner_client.h"
#include "sdk/cpp/rollout_client.h"

namespace lockstep::cli {
namespace {

using client::ClientOptions;

absl::StatusOr<int> RunHealth(const Args& args) {
  bool check_rollout = args.Has("rollout");
  bool check_learner = args.Has("learner");
  if (!check_rollout && !check_learner) {
    check_rollout = !EnvOr("LOCKSTEP_ROLLOUT", "").empty() ||
                    EnvOr("LOCKSTEP_LEARNER", "").empty();
    check_learner = !EnvOr("LOCKSTEP_LEARNER", "").empty() ||
                    EnvOr("LOCKSTEP_ROLLOUT", "").empty();
  }
  struct Row {
    std::string service, target, status;
  };
  std::vector<Row> rows;
  bool all_ok = true;
  auto check = [&](const std::string& which, const std::string& fallback,
                   const std::string& service) -> absl::Status {
    absl::StatusOr<ClientOptions> o = MakeClientOptions(args, which, fallback);
    if (!o.ok()) return o.status();
    auto conn = client::Connection::Create(*o);
    if (!conn.ok()) return conn.status();
    absl::StatusOr<client::HealthStatus> h = (*conn)->CheckHealth(service);
    Row row{service, o->target, ""};
    if (h.ok()) {
      row.status = client::HealthStatusName(*h);
      all_ok = all_ok && *h == client::HealthStatus::kServing;
    } else {
      row.status = absl::StrCat(absl::StatusCodeToString(h.status().code()),
                                ": ", h.status().message());
      all_ok = false;
    }
    rows.push_back(row);
    return absl::OkStatus();
  };
  if (check_rollout) {
    absl::Status s =
        check("rollout", kDefaultRollout, client::kRolloutServiceName);
    if (!s.ok()) return s;
  }
  if (check_learner) {
    absl::Status s =
        check("learner", kDefaultLearner, client::kLearnerServiceName);
    if (!s.ok()) return s;
  }
  if (args.GetBool("json")) {
    std::cout << "{";
    for (size_t i = 0; i < rows.size(); ++i) {
      std::cout << (i ? ", " : "") << "\"" << rows[i].service
                << "\": {\"target\": \"" << rows[i].target
                << "\", \"status\": \""
                << absl::StrReplaceAll(rows[i].status,
                                       {{"\\", "\\\\"}, {"\"", "\\\""}})
                << "\"}";
    }
    std::cout << "}\n";
  } else {
    for (const Row& r : rows)
      std::cout << r.service << " " << r.target << ": " << r.status << "\n";
  }
  return all_ok ? 0 : 1;
}

}  // namespace

Command HealthCommand() {
  return Command{
      "health",
      "gRPC health of the rollout and/or learner",
      "[flags]",
      "Checks grpc.health.v1 for lockstep.v1.RolloutService at --rollout and\n"
      "lockstep.v1.LearnerService at --learner (both when neither flag is\n"
      "given). Exit status 0 only when every one is SERVING. No token needed.\n"
      "Example: lockstep health --rollout=127.0.0.1:50051",
      ConnectionFlags(true, true),
      RunHealth};
}

}  // namespace lockstep::cli
