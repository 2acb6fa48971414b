#include "sdk/cli/commands/score.h"

#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "sdk/cli/client_flags.h"
#include "sdk/cli/command.h"
#include "sdk/cli/flags.h"
#include "sdk/cli/output.h"
#include "sdk/cpp/learner_client.h"
#include "sdk/cpp/rollout_client.h"

namespace lockstep::cli {
namespace {

using client::ClientOptions;

absl::StatusOr<int> RunScore(const Args& args) {
  std::vector<std::string> seqs = args.GetAll("tokens");
  if (seqs.empty()) return Usage("at least one --tokens=IDS is required");
  std::vector<std::string> lens = args.GetAll("prompt_len");
  if (lens.empty()) return Usage("--prompt_len=N is required");
  if (lens.size() != 1 && lens.size() != seqs.size()) {
    return Usage("give one --prompt_len for all sequences or one per --tokens");
  }
  v1::ComputeLogprobsRequest request;
  for (size_t i = 0; i < seqs.size(); ++i) {
    absl::StatusOr<std::vector<int32_t>> ids = ParseIdList(seqs[i]);
    if (!ids.ok()) return Usage(std::string(ids.status().message()));
    int64_t len;
    if (!absl::SimpleAtoi(lens.size() == 1 ? lens[0] : lens[i], &len) ||
        len < 0) {
      return Usage("--prompt_len must be a non-negative integer");
    }
    v1::ScoredSequence* s = request.add_sequences();
    s->mutable_token_ids()->Add(ids->begin(), ids->end());
    s->set_prompt_len(static_cast<uint32_t>(len));
  }
  absl::StatusOr<int64_t> top = args.GetInt("top_logprobs", 0);
  if (!top.ok()) return Usage(std::string(top.status().message()));
  request.set_top_logprobs(static_cast<uint32_t>(*top));
  if (args.Has("weight_version")) {
    absl::StatusOr<int64_t> v = args.GetInt("weight_version", 0);
    if (!v.ok()) return Usage(std::string(v.status().message()));
    request.set_weight_version(static_cast<uint64_t>(*v));
  }
  const std::string on = args.Get("on", "rollout");
  absl::StatusOr<v1::ComputeLogprobsResponse> response;
  if (on == "rollout") {
    absl::StatusOr<ClientOptions> o =
        MakeClientOptions(args, "rollout", kDefaultRollout);
    if (!o.ok()) return o.status();
    auto c = client::RolloutClient::Create(*o);
    if (!c.ok()) return c.status();
    response = (*c)->ComputeLogprobs(request);
  } else if (on == "learner") {
    absl::StatusOr<ClientOptions> o =
        MakeClientOptions(args, "learner", kDefaultLearner);
    if (!o.ok()) return o.status();
    auto c = client::LearnerClient::Create(*o);
    if (!c.ok()) return c.status();
    response = (*c)->ComputeLogprobs(request);
  } else {
    return Usage("--on must be rollout or learner");
  }
  if (!response.ok()) return response.status();
  if (args.GetBool("json")) {
    std::cout << ToJson(*response) << "\n";
    return 0;
  }
  std::cout << "scored on the " << on << " with weight version "
            << response->weight_version() << "\n";
  for (int i = 0; i < response->results_size(); ++i) {
    double sum = 0;
    for (float f : response->results(i).logprobs()) sum += f;
    std::cout << absl::StrFormat("sequence %d: sum=%.6g logprobs: %s\n", i, sum,
                                 Floats(response->results(i).logprobs()));
  }
  return 0;
}

}  // namespace

Command ScoreCommand() {
  Command s{
      "score",
      "logprobs of given token sequences (ComputeLogprobs)",
      "--tokens=IDS --prompt_len=N [flags]",
      "Scores the tokens after the first N of each sequence with the served\n"
      "weights, on the rollout (default) or the learner (--on=learner).\n"
      "Example: lockstep score --tokens=1,2,3,4,5 --prompt_len=2",
      ConnectionFlags(true, true),
      RunScore};
  std::vector<FlagSpec> own = {
      {"tokens", "IDS", "a sequence: prompt then scored tokens", "", true},
      {"prompt_len", "N", "prompt length (one for all, or one per --tokens)",
       "", true},
      {"on", "SERVICE", "rollout or learner", "rollout"},
      {"top_logprobs", "N", "also return the N most likely tokens per position",
       "0"},
      {"weight_version", "V", "fail unless this version is served"}};
  s.flags.insert(s.flags.begin(), own.begin(), own.end());
  return s;
}

}  // namespace lockstep::cli
