#include "learner_service/server/learner_metrics.h"

#include "absl/strings/str_cat.h"

#include <cmath>
#include <string>
#include <vector>

namespace lockstep::learner {
namespace {

prometheus::Histogram::BucketBoundaries AbsDiffBounds() {
  return prometheus::Histogram::BucketBoundaries(kAbsDiffBucketBounds.begin(),
                                                 kAbsDiffBucketBounds.end());
}

prometheus::Counter& MakeCounter(prometheus::Registry& r, const std::string& name,
                                 const std::string& help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(r).Add({});
}

prometheus::Gauge& MakeGauge(prometheus::Registry& r, const std::string& name,
                             const std::string& help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(r).Add({});
}

prometheus::Histogram& MakeHistogram(
    prometheus::Registry& r, const std::string& name, const std::string& help,
    const prometheus::Histogram::BucketBoundaries& bounds) {
  return prometheus::BuildHistogram().Name(name).Help(help).Register(r).Add(
      {}, bounds);
}

}  // namespace

LearnerMetrics::MismatchFamilies::MismatchFamilies(prometheus::Registry& registry,
                                                   const char* prefix, const char* what)
    : abs_diff(MakeHistogram(
          registry, absl::StrCat(prefix, "logprob_abs_diff"),
          absl::StrCat("Absolute difference between the learner's and the rollout's ", what,
                       " logprob of each compared token (le=\"0\": bit-identical)"),
          AbsDiffBounds())),
      compared(MakeCounter(
          registry, absl::StrCat(prefix, "tokens_compared_total"),
          absl::StrCat("Trained tokens whose rollout weight version equals the learner's "
                       "(their ", what, " logprobs are compared)"))),
      mismatched(MakeCounter(
          registry, absl::StrCat(prefix, "tokens_mismatched_total"),
          absl::StrCat("Compared tokens whose learner and rollout ", what,
                       " logprobs differ"))),
      abs_diff_max(MakeGauge(
          registry, absl::StrCat(prefix, "logprob_abs_diff_max"),
          absl::StrCat("Largest |learner - rollout| ", what,
                       " logprob difference of the last step"))),
      kl_k3(MakeGauge(registry, absl::StrCat(prefix, "mismatch_kl_k3"),
                      absl::StrCat("Mean k3 estimate of KL(rollout || learner) over the "
                                   "compared tokens' ", what, " logprobs of the last step"))) {}

void LearnerMetrics::MismatchFamilies::Observe(const MismatchStats& m) {
  std::vector<double> buckets(m.bucket_counts.begin(), m.bucket_counts.end());
  buckets.push_back(static_cast<double>(m.overflow));
  // sum_abs_diff excludes NaN diffs; the count still includes them (+Inf).
  abs_diff.ObserveMultiple(buckets, m.sum_abs_diff);
  compared.Increment(static_cast<double>(m.tokens_compared));
  mismatched.Increment(static_cast<double>(m.tokens_mismatched));
  abs_diff_max.Set(m.max_abs_diff);
  kl_k3.Set(m.kl_k3());
}

LearnerMetrics::LearnerMetrics(prometheus::Registry& registry,
                               const common::BuildInfo& info)
    : raw_(registry, "lockstep_", "raw (temperature-1)"),
      sampled_(registry, "lockstep_sampled_", "sampled-distribution"),
      stale_(MakeCounter(registry, "lockstep_tokens_stale_total",
                         "Trained tokens generated with an older weight "
                         "version (policy lag; not compared)")),
      step_duration_(MakeHistogram(
          registry, "lockstep_learner_step_duration_seconds",
          "Wall time of one training step (forward, backward, optimizer)",
          common::LatencyBuckets())),
      loss_(MakeGauge(registry, "lockstep_learner_loss",
                      "Loss of the last training step")),
      reward_mean_(MakeGauge(registry, "lockstep_learner_reward_mean",
                             "Mean reward of the last step's trajectories")),
      push_duration_(MakeHistogram(
          registry, "lockstep_weight_push_duration_seconds",
          "Wall time of one weight push to one rollout (retries included)",
          common::LatencyBuckets())),
      push_bytes_(MakeCounter(registry, "lockstep_weight_push_bytes_total",
                              "Tensor bytes of successful weight pushes")),
      push_failures_(MakeCounter(
          registry, "lockstep_weight_push_failures_total",
          "Weight pushes that failed after their retries")),
      push_retries_(MakeCounter(registry, "lockstep_weight_push_retries_total",
                                "Weight push tries after the first (a rollout "
                                "unavailable or restarting)")),
      push_paths_(prometheus::BuildCounter()
                      .Name("lockstep_weight_updates_total")
                      .Help("Successful weight pushes, by how the bytes went")
                      .Register(registry)),
      generate_retries_(MakeCounter(registry, "lockstep_learner_generate_retries_total",
                                    "Generate calls the driver retried (a rollout "
                                    "unavailable or restarting)")),
      weight_version_(common::RegisterWeightVersion(registry, "learner")) {
  common::RegisterBuildInfo(registry, info);
}

void LearnerMetrics::OnStep(const StepResult& step) {
  raw_.Observe(step.mismatch);
  sampled_.Observe(step.sampled_mismatch);
  stale_.Increment(static_cast<double>(step.mismatch.tokens_stale));
  step_duration_.Observe(step.seconds);
  loss_.Set(step.loss);
  reward_mean_.Set(step.reward.mean);
  weight_version_.Set(static_cast<double>(step.weight_version));
}

void LearnerMetrics::OnGenerateRetry() { generate_retries_.Increment(); }

void LearnerMetrics::OnPush(const PushResult& push) {
  push_duration_.Observe(push.seconds);
  if (push.attempts > 1) push_retries_.Increment(static_cast<double>(push.attempts - 1));
  if (push.status.ok()) {
    push_bytes_.Increment(static_cast<double>(push.bytes));
    push_paths_
        .Add({{"role", "learner"},
              {"path", push.path == v1::WEIGHT_PATH_SHARED_MEMORY ? "shared_memory" : "stream"}})
        .Increment();
  } else {
    push_failures_.Increment();
  }
}

void LearnerMetrics::OnWeightVersion(int64_t version) {
  weight_version_.Set(static_cast<double>(version));
}

}  // namespace lockstep::learner
