#include "sdk/cli/commands/control.h"

#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "google/protobuf/message.h"
#include "sdk/cli/client_flags.h"
#include "sdk/cli/command.h"
#include "sdk/cli/flags.h"
#include "sdk/cli/output.h"
#include "sdk/cpp/rollout_client.h"

namespace lockstep::cli {
namespace {

// Prints the response as JSON (one line with --json, else indented).
int Print(const Args& args, const google::protobuf::Message& m) {
  std::cout << ToJson(m, /*multiline=*/!args.GetBool("json")) << "\n";
  return 0;
}

absl::StatusOr<int> RunControl(const Args& args) {
  if (args.positional().size() != 1) {
    return Usage("give one action: pause, resume, sleep, wake-up, abort or load");
  }
  const std::string action = args.positional()[0];
  absl::StatusOr<client::ClientOptions> o = MakeClientOptions(args, "rollout", kDefaultRollout);
  if (!o.ok()) return o.status();
  auto c = client::RolloutClient::Create(*o);
  if (!c.ok()) return c.status();
  client::RolloutClient& rollout = **c;
  if (action == "pause") {
    const std::string mode = args.Get("mode", "keep");
    v1::PauseMode m = mode == "keep"      ? v1::PAUSE_MODE_KEEP
                      : mode == "abort"   ? v1::PAUSE_MODE_ABORT
                      : mode == "retract" ? v1::PAUSE_MODE_RETRACT
                                          : v1::PAUSE_MODE_UNSPECIFIED;
    if (m == v1::PAUSE_MODE_UNSPECIFIED) return Usage("--mode must be keep, abort or retract");
    auto r = rollout.Pause(m);
    if (!r.ok()) return r.status();
    return Print(args, *r);
  }
  if (action == "resume") {
    auto r = rollout.Resume();
    if (!r.ok()) return r.status();
    return Print(args, *r);
  }
  if (action == "sleep") {
    absl::StatusOr<int64_t> level = args.GetInt("level", 1);
    if (!level.ok()) return level.status();
    if (*level != 1 && *level != 2) return Usage("--level must be 1 (KV cache) or 2 (and weights)");
    auto r = rollout.Sleep(*level == 1 ? v1::SLEEP_LEVEL_KV_CACHE
                                       : v1::SLEEP_LEVEL_KV_CACHE_AND_WEIGHTS);
    if (!r.ok()) return r.status();
    return Print(args, *r);
  }
  if (action == "wake-up") {
    auto r = rollout.WakeUp();
    if (!r.ok()) return r.status();
    return Print(args, *r);
  }
  if (action == "abort") {
    v1::AbortRequest req;
    for (const std::string& ids : args.GetAll("request_id")) {
      for (absl::string_view id : absl::StrSplit(ids, ',', absl::SkipEmpty())) {
        req.add_request_ids(std::string(id));
      }
    }
    req.set_all(args.GetBool("all"));
    if (req.all() == (req.request_ids_size() > 0)) {
      return Usage("abort needs --request_id=ID[,ID...] or --all (one of them)");
    }
    auto r = rollout.Abort(req);
    if (!r.ok()) return r.status();
    return Print(args, *r);
  }
  if (action == "load") {
    auto r = rollout.GetLoad();
    if (!r.ok()) return r.status();
    return Print(args, *r);
  }
  return Usage(absl::StrCat("unknown action '", action,
                            "' (pause, resume, sleep, wake-up, abort, load)"));
}

std::vector<FlagSpec> ControlFlags() {
  std::vector<FlagSpec> flags = ConnectionFlags(true, false);
  flags.push_back({"mode", "MODE", "pause: keep (the KV cache), abort (calls in flight) or retract",
                   "keep"});
  flags.push_back({"level", "N", "sleep: 1 releases the KV cache, 2 also the weights", "1"});
  flags.push_back({"request_id", "ID", "abort: a GenerateRequest.request_id (repeatable, or a "
                   "comma list)", "", true});
  flags.push_back({"all", "", "abort: every call in flight", ""});
  return flags;
}

}  // namespace

Command ControlCommand() {
  return Command{
      "control",
      "pause, resume, sleep, wake-up or abort the rollout; its load",
      "ACTION [flags]   (ACTION: pause, resume, sleep, wake-up, abort, load)",
      "Generation control of the rollout at --rollout (docs/rollout.md):\n"
      "  pause [--mode=keep|abort|retract]  stop generating at the next step\n"
      "  resume                             continue\n"
      "  sleep [--level=1|2]                release the KV cache (and weights)\n"
      "  wake-up                            allocate the KV cache again\n"
      "  abort (--request_id=ID... | --all) stop calls; they return what they\n"
      "                                     generated (FINISH_REASON_ABORT)\n"
      "  load                               queue, running sequences, KV usage\n"
      "The response is printed as JSON.\n"
      "Example: lockstep control sleep --level=2 --rollout=127.0.0.1:50051",
      ControlFlags(),
      RunControl,
      /*takes_arguments=*/true};
}

}  // namespace lockstep::cli
