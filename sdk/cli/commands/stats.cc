#include "sdk/cli/commands/stats.h"

#include <iostream>

#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "sdk/cli/client_flags.h"
#include "sdk/cli/command.h"
#include "sdk/cli/flags.h"
#include "sdk/cli/output.h"
#include "sdk/cpp/learner_client.h"

namespace lockstep::cli {
namespace {

using client::ClientOptions;

absl::StatusOr<int> RunStats(const Args& args) {
  absl::StatusOr<ClientOptions> o =
      MakeClientOptions(args, "learner", kDefaultLearner);
  if (!o.ok()) return o.status();
  auto c = client::LearnerClient::Create(*o);
  if (!c.ok()) return c.status();
  absl::StatusOr<v1::LearnerStats> s = (*c)->GetStats();
  if (!s.ok()) return s.status();
  if (args.GetBool("json")) {
    std::cout << ToJson(*s) << "\n";
    return 0;
  }
  const v1::MismatchStats& m = s->mismatch_total();
  std::cout << absl::StrFormat(
      "learner %s: step %d, weight version %d, kernels=%s, %d trajectories "
      "buffered "
      "(%d groups, %d tokens)\n"
      "mismatch (all steps): %d tokens compared, %d mismatched, exact %.4f%%, "
      "max |dlogprob|=%.6g, mean |dlogprob|=%.6g, KL(k3)=%.6g, %d stale\n",
      o->target, s->step(), s->weight_version(), KernelName(s->kernel_mode()),
      s->buffered_trajectories(), s->buffered_groups(), s->buffered_tokens(),
      m.tokens_compared(), m.tokens_mismatched(), 100.0 * m.exact_fraction(),
      m.max_abs_diff(), m.mean_abs_diff(), m.kl_k3(), m.tokens_stale());
  if (const v1::MismatchStats& sm = s->sampled_mismatch_total(); sm.tokens_compared() > 0) {
    std::cout << absl::StrFormat(
        "mismatch under the sampling distribution (all steps): %d tokens compared, "
        "%d mismatched, exact %.4f%%, max |dlogprob|=%.6g\n",
        sm.tokens_compared(), sm.tokens_mismatched(), 100.0 * sm.exact_fraction(),
        sm.max_abs_diff());
  }
  if (s->has_last_step()) {
    const v1::MismatchStats& l = s->last_step().mismatch();
    std::cout << absl::StrFormat(
        "last step: %d tokens compared, %d mismatched, max |dlogprob|=%.6g, "
        "loss=%.6g, reward mean=%.4g\n",
        l.tokens_compared(), l.tokens_mismatched(), l.max_abs_diff(),
        s->last_step().loss(), s->last_step().reward().mean());
  }
  for (const v1::RolloutStatus& r : s->rollouts()) {
    std::cout << absl::StrFormat(
        "rollout %s: version %d, kernels=%s, pushes ok=%d failed=%d\n",
        r.endpoint(), r.weight_version(), KernelName(r.kernel_mode()),
        r.pushes_ok(), r.pushes_failed());
  }
  return 0;
}

}  // namespace

Command StatsCommand() {
  return Command{
      "stats",
      "learner statistics and the logprob mismatch summary",
      "[flags]",
      "Prints the learner's step, weight version, buffer, the rollout vs\n"
      "learner logprob mismatch over all steps and the last one, and the\n"
      "registered rollouts.\nExample: lockstep stats --json",
      ConnectionFlags(false, true),
      RunStats};
}

}  // namespace lockstep::cli
