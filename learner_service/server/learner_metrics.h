// The learner's Prometheus metrics (DESIGN.md §5): logprob mismatch against
// the rollouts, step and push timing, loss and reward.
#ifndef LOCKSTEP_LEARNER_SERVICE_SERVER_LEARNER_METRICS_H_
#define LOCKSTEP_LEARNER_SERVICE_SERVER_LEARNER_METRICS_H_

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "common/net/metrics.h"
#include "learner_service/learner.h"

namespace lockstep::learner {

// Registers, on construction, in `registry`:
//   lockstep_logprob_abs_diff            histogram of |lp_learner - lp_rollout|
//                                        per compared token; le="0" counts
//                                        the bit-identical tokens, then
//                                        1e-7 .. 1 by decades
//   lockstep_tokens_compared_total       counter
//   lockstep_tokens_mismatched_total     counter
//   lockstep_tokens_stale_total          counter (older weight version)
//   lockstep_logprob_abs_diff_max        gauge, max |diff| of the last step
//   lockstep_mismatch_kl_k3              gauge, mean k3 of the last step
//   lockstep_sampled_logprob_abs_diff, lockstep_sampled_tokens_compared_total,
//   lockstep_sampled_tokens_mismatched_total,
//   lockstep_sampled_logprob_abs_diff_max, lockstep_sampled_mismatch_kl_k3
//                                        the same five for the logprobs under
//                                        the sampling distribution
//                                        (trajectories with sampling params)
//   lockstep_learner_step_duration_seconds histogram
//   lockstep_learner_loss                gauge, loss of the last step
//   lockstep_learner_reward_mean         gauge, mean reward of the last step
//   lockstep_weight_push_duration_seconds histogram, one per rollout push
//   lockstep_weight_push_bytes_total     counter, bytes of successful pushes
//   lockstep_weight_push_failures_total  counter, pushes failed after retries
//   lockstep_weight_push_retries_total   counter, push tries after the first
//   lockstep_weight_updates_total{role="learner",path} counter, successful
//                                        pushes by path (stream, shared_memory)
//   lockstep_learner_generate_retries_total counter, the driver's Generate
//                                        retries (a rollout unavailable)
//   lockstep_weight_version{role="learner"}
//   lockstep_build_info{role="learner",version,kernels,device}
// Thread-safe (prometheus-cpp metrics are).
class LearnerMetrics : public LearnerObserver {
 public:
  LearnerMetrics(prometheus::Registry& registry, const common::BuildInfo& info);

  void OnStep(const StepResult& step) override;
  void OnPush(const PushResult& push) override;
  void OnWeightVersion(int64_t version) override;
  void OnGenerateRetry() override;

 private:
  // The mismatch families of one kind of logprob (raw or sampled).
  struct MismatchFamilies {
    MismatchFamilies(prometheus::Registry& registry, const char* prefix, const char* what);
    void Observe(const MismatchStats& m);
    prometheus::Histogram& abs_diff;
    prometheus::Counter& compared;
    prometheus::Counter& mismatched;
    prometheus::Gauge& abs_diff_max;
    prometheus::Gauge& kl_k3;
  };
  MismatchFamilies raw_;
  MismatchFamilies sampled_;
  prometheus::Counter& stale_;
  prometheus::Histogram& step_duration_;
  prometheus::Gauge& loss_;
  prometheus::Gauge& reward_mean_;
  prometheus::Histogram& push_duration_;
  prometheus::Counter& push_bytes_;
  prometheus::Counter& push_failures_;
  prometheus::Counter& push_retries_;
  prometheus::Family<prometheus::Counter>& push_paths_;
  prometheus::Counter& generate_retries_;
  prometheus::Gauge& weight_version_;
};

}  // namespace lockstep::learner

#endif  // LOCKSTEP_LEARNER_SERVICE_SERVER_LEARNER_METRICS_H_
