#include "sdk/cli/commands/train_step.h"

#include <google/protobuf/util/json_util.h>

#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "sdk/cli/client_flags.h"
#include "sdk/cli/command.h"
#include "sdk/cli/flags.h"
#include "sdk/cli/output.h"
#include "sdk/cpp/learner_client.h"

namespace lockstep::cli {
namespace {

using client::ClientOptions;

absl::StatusOr<std::vector<v1::Trajectory>> ReadTrajectories(
    const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  std::vector<v1::Trajectory> out;
  google::protobuf::util::JsonParseOptions po;
  const absl::string_view stripped = absl::StripAsciiWhitespace(text);
  if (!stripped.empty() && stripped.front() == '[') {
    // A JSON array: wrap it as a SubmitTrajectoriesRequest.
    v1::SubmitTrajectoriesRequest r;
    auto s = google::protobuf::util::JsonStringToMessage(
        absl::StrCat("{\"trajectories\":", stripped, "}"), &r, po);
    if (!s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": ", s.ToString()));
    }
    out.assign(r.trajectories().begin(), r.trajectories().end());
    return out;
  }
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line.front() == '#') continue;
    v1::Trajectory t;
    auto s =
        google::protobuf::util::JsonStringToMessage(std::string(line), &t, po);
    if (!s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ":", line_no, ": ", s.ToString()));
    }
    out.push_back(std::move(t));
  }
  return out;
}

absl::StatusOr<int> RunTrainStep(const Args& args) {
  absl::StatusOr<ClientOptions> o =
      MakeClientOptions(args, "learner", kDefaultLearner);
  if (!o.ok()) return o.status();
  auto c = client::LearnerClient::Create(*o);
  if (!c.ok()) return c.status();
  const bool json = args.GetBool("json");
  if (args.Has("trajectories")) {
    absl::StatusOr<std::vector<v1::Trajectory>> t =
        ReadTrajectories(args.Get("trajectories"));
    if (!t.ok()) return t.status();
    if (t->empty()) return Usage("--trajectories file holds no trajectories");
    auto sub = (*c)->SubmitTrajectories(*t);
    if (!sub.ok()) return sub.status();
    if (!json) {
      std::cout << absl::StrFormat(
          "submitted %d trajectories (%d buffered in %d groups)\n",
          sub->accepted(), sub->buffered_trajectories(),
          sub->buffered_groups());
    }
  }
  v1::TrainStepRequest request;
  for (const std::string& g : args.GetAll("group")) {
    for (absl::string_view id : absl::StrSplit(g, ',', absl::SkipEmpty())) {
      request.add_group_ids(std::string(id));
    }
  }
  if (args.Has("expected_version")) {
    absl::StatusOr<int64_t> v = args.GetInt("expected_version", 0);
    if (!v.ok()) return Usage(std::string(v.status().message()));
    request.set_expected_version(static_cast<uint64_t>(*v));
  }
  request.set_skip_push(args.GetBool("skip_push"));
  absl::StatusOr<v1::TrainStepResponse> r = (*c)->TrainStep(request);
  if (!r.ok()) return r.status();
  if (json) {
    std::cout << ToJson(*r) << "\n";
    return 0;
  }
  const v1::MismatchStats& m = r->mismatch();
  std::cout << absl::StrFormat(
      "step %d -> weight version %d: loss=%.6g policy_loss=%.6g grad_norm=%.6g "
      "clip_fraction=%.4g\n"
      "  %d trajectories in %d groups, %d tokens; reward mean=%.4g std=%.4g "
      "min=%.4g max=%.4g\n"
      "  mismatch: %d tokens compared, %d mismatched (exact %.4f%%), %d stale, "
      "max |dlogprob|=%.6g\n",
      r->step(), r->weight_version(), r->loss(), r->policy_loss(),
      r->grad_norm(), r->clip_fraction(), r->num_trajectories(),
      r->num_groups(), r->num_tokens(), r->reward().mean(), r->reward().std(),
      r->reward().min(), r->reward().max(), m.tokens_compared(),
      m.tokens_mismatched(), 100.0 * m.exact_fraction(), m.tokens_stale(),
      m.max_abs_diff());
  for (const v1::WeightPushResult& p : r->pushes()) {
    std::cout << absl::StrFormat(
        "  push to %s: %s (version %d, %d bytes, %.3f s)\n", p.endpoint(),
        p.code() == 0 ? "OK"
                      : absl::StrCat("code ", p.code(), ": ", p.message()),
        p.weight_version(), p.bytes(), p.duration_seconds());
  }
  return 0;
}

}  // namespace

Command TrainStepCommand() {
  Command t{
      "train-step",
      "one learner optimizer step (TrainStep)",
      "[flags]",
      "Optionally submits trajectories first (--trajectories: JSON Lines, or "
      "a\n"
      "JSON array, of lockstep.v1.Trajectory in the proto3 JSON mapping), "
      "then\n"
      "trains on the buffered groups and pushes the new weights to the\n"
      "registered rollouts.\n"
      "Example: lockstep train-step --trajectories=batch.jsonl",
      ConnectionFlags(false, true),
      RunTrainStep};
  std::vector<FlagSpec> own = {
      {"trajectories", "FILE", "submit these trajectories first"},
      {"group", "IDS", "train on these group ids only (comma separated)", "",
       true},
      {"expected_version", "V", "apply only if the learner is at this version"},
      {"skip_push", "", "do not push the new weights to the rollouts"}};
  t.flags.insert(t.flags.begin(), own.begin(), own.end());
  return t;
}

}  // namespace lockstep::cli
