#include "sdk/cli/commands/generate.h"

#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "sdk/cli/client_flags.h"
#include "sdk/cli/command.h"
#include "sdk/cli/flags.h"
#include "sdk/cli/output.h"
#include "sdk/cpp/learner_client.h"
#include "sdk/cpp/rollout_client.h"

namespace lockstep::cli {
namespace {

using client::ClientOptions;

absl::StatusOr<int> RunGenerate(const Args& args) {
  std::vector<std::string> prompts = args.GetAll("prompt");
  if (prompts.empty()) return Usage("at least one --prompt=IDS is required");
  v1::GenerateRequest request;
  for (const std::string& p : prompts) {
    absl::StatusOr<std::vector<int32_t>> ids = ParseIdList(p);
    if (!ids.ok()) return Usage(std::string(ids.status().message()));
    request.add_prompts()->mutable_token_ids()->Add(ids->begin(), ids->end());
  }
  absl::StatusOr<int64_t> n = args.GetInt("n", 1);
  absl::StatusOr<int64_t> max_tokens = args.GetInt("max_tokens", 16);
  absl::StatusOr<int64_t> top_k = args.GetInt("top_k", 0);
  absl::StatusOr<int64_t> top_logprobs = args.GetInt("top_logprobs", 0);
  absl::StatusOr<int64_t> seed = args.GetInt("seed", 0);
  absl::StatusOr<double> temperature = args.GetDouble("temperature", 1.0);
  absl::StatusOr<double> top_p = args.GetDouble("top_p", 1.0);
  absl::StatusOr<double> min_p = args.GetDouble("min_p", 0.0);
  absl::StatusOr<double> repetition = args.GetDouble("repetition_penalty", 1.0);
  absl::StatusOr<double> presence = args.GetDouble("presence_penalty", 0.0);
  absl::StatusOr<double> frequency = args.GetDouble("frequency_penalty", 0.0);
  absl::StatusOr<int64_t> min_tokens = args.GetInt("min_tokens", 0);
  for (const absl::Status& s :
       {n.status(), max_tokens.status(), top_k.status(), top_logprobs.status(),
        seed.status(), temperature.status(), top_p.status(), min_p.status(),
        repetition.status(), presence.status(), frequency.status(), min_tokens.status()}) {
    if (!s.ok()) return Usage(std::string(s.message()));
  }
  if (*n < 1 || *max_tokens < 0 || *top_logprobs < 0 || *min_tokens < 0) {
    return Usage("--n must be >= 1, --max_tokens, --min_tokens and --top_logprobs >= 0");
  }
  request.set_n(static_cast<uint32_t>(*n));
  request.set_request_id(args.Get("request_id"));
  v1::SamplingParams* sp = request.mutable_sampling();
  sp->set_max_tokens(static_cast<uint32_t>(*max_tokens));
  if (args.Has("temperature"))
    sp->set_temperature(static_cast<float>(*temperature));
  if (args.Has("top_p")) sp->set_top_p(static_cast<float>(*top_p));
  sp->set_top_k(static_cast<int32_t>(*top_k));
  sp->set_min_p(static_cast<float>(*min_p));
  if (args.Has("repetition_penalty")) {
    sp->set_repetition_penalty(static_cast<float>(*repetition));
  }
  sp->set_presence_penalty(static_cast<float>(*presence));
  sp->set_frequency_penalty(static_cast<float>(*frequency));
  sp->set_min_tokens(static_cast<uint32_t>(*min_tokens));
  if (args.Has("logit_bias")) {
    // ID:BIAS,ID:BIAS,...
    for (absl::string_view item : absl::StrSplit(args.Get("logit_bias"), ',')) {
      std::pair<std::string, std::string> kv = absl::StrSplit(item, ':');
      int32_t id = 0;
      float bias = 0.0f;
      if (!absl::SimpleAtoi(kv.first, &id) || !absl::SimpleAtof(kv.second, &bias)) {
        return Usage(absl::StrCat("--logit_bias: expected ID:BIAS, got '", item, "'"));
      }
      (*sp->mutable_logit_bias())[id] = bias;
    }
  }
  if (args.Has("stop_sequences")) {
    // IDS;IDS;... (each comma separated)
    for (absl::string_view seq : absl::StrSplit(args.Get("stop_sequences"), ';')) {
      absl::StatusOr<std::vector<int32_t>> ids = ParseIdList(std::string(seq));
      if (!ids.ok()) return Usage(std::string(ids.status().message()));
      sp->add_stop_sequences()->mutable_token_ids()->Add(ids->begin(), ids->end());
    }
  }
  if (args.Has("seed")) sp->set_seed(static_cast<uint64_t>(*seed));
  sp->set_top_logprobs(static_cast<uint32_t>(*top_logprobs));
  sp->set_ignore_eos(args.GetBool("ignore_eos"));
  if (args.Has("stop")) {
    absl::StatusOr<std::vector<int32_t>> stop = ParseIdList(args.Get("stop"));
    if (!stop.ok()) return Usage(std::string(stop.status().message()));
    sp->mutable_stop_token_ids()->Add(stop->begin(), stop->end());
  }

  absl::StatusOr<ClientOptions> options =
      MakeClientOptions(args, "rollout", kDefaultRollout);
  if (!options.ok()) return options.status();
  absl::StatusOr<std::unique_ptr<client::RolloutClient>> rollout =
      client::RolloutClient::Create(*options);
  if (!rollout.ok()) return rollout.status();
  const bool json = args.GetBool("json");

  if (args.GetBool("stream")) {
    if (args.Has("trajectories_out"))
      return Usage("--trajectories_out needs unary generate");
    client::CompletionAccumulator acc;
    absl::Status s = (*rollout)->GenerateStream(request, [&](const auto& m) {
      acc.Add(m);
      if (json) {
        std::cout << ToJson(m, /*multiline=*/false) << "\n";
      } else {
        std::cout << absl::StrFormat("[prompt %d sample %d] %s",
                                     m.prompt_index(), m.sample_index(),
                                     absl::StrJoin(m.token_ids(), " "));
        if (m.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
          std::cout << "  <" << FinishName(m.finish_reason()) << ">";
        }
        std::cout << "\n";
      }
      std::cout.flush();
      return true;
    });
    if (!s.ok()) return s;
    return 0;
  }

  absl::StatusOr<v1::GenerateResponse> response = (*rollout)->Generate(request);
  if (!response.ok()) return response.status();
  if (args.Has("trajectories_out")) {
    absl::StatusOr<double> reward = args.GetDouble("reward", 0.0);
    if (!reward.ok()) return Usage(std::string(reward.status().message()));
    const std::string path = args.Get("trajectories_out");
    std::ofstream out(path, std::ios::trunc);
    const std::string prefix = args.Get("group_prefix", "p");
    for (const v1::Completion& c : response->completions()) {
      if (c.token_ids_size() == 0) continue;
      const auto& prompt =
          request.prompts(static_cast<int>(c.prompt_index())).token_ids();
      v1::Trajectory t = client::MakeTrajectory(
          std::vector<int32_t>(prompt.begin(), prompt.end()), c,
          static_cast<float>(*reward), absl::StrCat(prefix, c.prompt_index()));
      out << ToJson(t, /*multiline=*/false) << "\n";
    }
    out.close();
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  }
  if (json) {
    std::cout << ToJson(*response) << "\n";
    return 0;
  }
  for (const v1::Completion& c : response->completions()) {
    std::cout << absl::StrFormat(
        "prompt %d sample %d: %d tokens, finish=%s, weight_version=%d, "
        "seed=%d\n"
        "  tokens:   %s\n  logprobs: %s\n  sampled:  %s\n",
        c.prompt_index(), c.sample_index(), c.token_ids_size(),
        FinishName(c.finish_reason()), c.weight_version(), c.seed(),
        absl::StrJoin(c.token_ids(), " "), Floats(c.logprobs()),
        Floats(c.sampled_logprobs()));
  }
  return 0;
}

}  // namespace

Command GenerateCommand() {
  Command g{
      "generate",
      "sample completions from a rollout (Generate / GenerateStream)",
      "--prompt=IDS [--prompt=IDS ...] [flags]",
      "Prints every completion's tokens and per-token logprobs (raw model\n"
      "distribution, and under the sampling distribution). With --stream,\n"
      "tokens are printed as they are sampled.\n"
      "Example: lockstep generate --rollout=127.0.0.1:50051 --prompt=1,2,3 "
      "--n=2 "
      "--max_tokens=8 --seed=7",
      ConnectionFlags(true, false),
      RunGenerate};
  std::vector<FlagSpec> own = {
      {"prompt", "IDS", "prompt token ids, comma separated", "", true},
      {"n", "N", "samples per prompt", "1"},
      {"max_tokens", "N", "tokens to generate per sample (0: until stop)",
       "16"},
      {"temperature", "T", "sampling temperature (0: greedy)", "1"},
      {"top_k", "K", "keep the K most likely tokens (0: off)", "0"},
      {"top_p", "P", "nucleus mass in (0, 1]", "1"},
      {"min_p", "P", "keep tokens with p >= P * p_max (0: off)", "0"},
      {"repetition_penalty", "R", "vLLM repetition penalty (> 0; 1: off)", "1"},
      {"presence_penalty", "X", "subtracted once per output token, [-2, 2]", "0"},
      {"frequency_penalty", "X", "subtracted per occurrence, [-2, 2]", "0"},
      {"logit_bias", "ID:B,...", "add B to the logit of ID"},
      {"min_tokens", "N", "no EOS / stop token before N tokens", "0"},
      {"stop_sequences", "IDS;IDS", "stop after any of these id sequences"},
      {"seed", "S", "base seed (unset: the server picks one)"},
      {"stop", "IDS", "stop token ids, comma separated"},
      {"ignore_eos", "", "do not stop at end-of-sequence ids"},
      {"top_logprobs", "N", "also return the N most likely tokens per position",
       "0"},
      {"request_id", "ID", "request id echoed by the server"},
      {"stream", "", "use GenerateStream and print tokens as they arrive"},
      {"trajectories_out", "FILE",
       "also write the completions as lockstep.v1.Trajectory JSON Lines for "
       "`lockstep train-step --trajectories` (one group per prompt)"},
      {"reward", "R", "reward written to --trajectories_out", "0"},
      {"group_prefix", "P", "group id of prompt i in --trajectories_out: P<i>",
       "p"}};
  g.flags.insert(g.flags.begin(), own.begin(), own.end());
  return g;
}

}  // namespace lockstep::cli
