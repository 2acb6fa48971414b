#include "rollout_service/server/rollout_metrics.h"

#include <utility>

#include "absl/time/time.h"

namespace lockstep::rollout {

RolloutMetrics::RolloutMetrics(std::shared_ptr<prometheus::Registry> registry,
                             const common::BuildInfo& info)
    : registry_(std::move(registry)),
      requests_(prometheus::BuildCounter()
                    .Name("lockstep_rollout_requests_total")
                    .Help("RPCs handled, by method and gRPC status code")
                    .Register(*registry_)),
      generated_tokens_(prometheus::BuildCounter()
                            .Name("lockstep_rollout_generated_tokens_total")
                            .Help("Tokens sampled")
                            .Register(*registry_)
                            .Add({})),
      prompt_tokens_(prometheus::BuildCounter()
                         .Name("lockstep_rollout_prompt_tokens_total")
                         .Help("Prompt tokens of admitted Generate requests")
                         .Register(*registry_)
                         .Add({})),
      preemptions_(prometheus::BuildCounter()
                       .Name("lockstep_rollout_preemptions_total")
                       .Help("Samples preempted (KV freed, recomputed later)")
                       .Register(*registry_)
                       .Add({})),
      batch_size_(prometheus::BuildHistogram()
                      .Name("lockstep_rollout_batch_size")
                      .Help("Sequences in one engine step's batch")
                      .Register(*registry_)
                      .Add({}, common::ExponentialBuckets(1, 2, 11))),
      batch_tokens_(prometheus::BuildHistogram()
                        .Name("lockstep_rollout_batch_tokens")
                        .Help("Tokens computed in one engine step")
                        .Register(*registry_)
                        .Add({}, common::ExponentialBuckets(1, 2, 14))),
      step_duration_(
          prometheus::BuildHistogram()
              .Name("lockstep_rollout_step_duration_seconds")
              .Help("Duration of one engine step (forward and sampling)")
              .Register(*registry_)
              .Add({}, common::LatencyBuckets())),
      ttft_(
          prometheus::BuildHistogram()
              .Name("lockstep_rollout_time_to_first_token_seconds")
              .Help("Time from a request's arrival to a sample's first token")
              .Register(*registry_)
              .Add({}, common::LatencyBuckets())),
      itl_(prometheus::BuildHistogram()
               .Name("lockstep_rollout_inter_token_latency_seconds")
               .Help("Time between consecutive tokens of a sample")
               .Register(*registry_)
               .Add({}, common::LatencyBuckets())),
      request_duration_(
          prometheus::BuildHistogram()
              .Name("lockstep_rollout_request_duration_seconds")
              .Help("Duration of Generate and GenerateStream calls")
              .Register(*registry_)
              .Add({}, common::LatencyBuckets())),
      kv_usage_(prometheus::BuildGauge()
                    .Name("lockstep_rollout_kv_cache_usage_ratio")
                    .Help("Fraction of KV-cache pages in use")
                    .Register(*registry_)
                    .Add({})),
      queue_depth_(prometheus::BuildGauge()
                       .Name("lockstep_rollout_queue_depth")
                       .Help("Samples waiting for admission")
                       .Register(*registry_)
                       .Add({})),
      running_(prometheus::BuildGauge()
                   .Name("lockstep_rollout_running_sequences")
                   .Help("Sequences holding KV-cache pages")
                   .Register(*registry_)
                   .Add({})),
      weight_update_(
          prometheus::BuildHistogram()
              .Name("lockstep_weight_update_duration_seconds")
              .Help("Weight updates: header arrival to swap")
              .Register(*registry_)
              .Add({{"role", "rollout"}}, common::LatencyBuckets())),
      selfcheck_sequences_(
          prometheus::BuildCounter()
              .Name("lockstep_rollout_selfcheck_sequences_total")
              .Help("Finished samples re-scored alone by the self-check")
              .Register(*registry_)
              .Add({})),
      selfcheck_mismatch_(
          prometheus::BuildCounter()
              .Name("lockstep_rollout_selfcheck_mismatch_total")
              .Help("Self-checked samples whose re-scored logprobs differ "
                    "bitwise from the returned ones")
              .Register(*registry_)
              .Add({})),
      selfcheck_tokens_(prometheus::BuildCounter()
                            .Name("lockstep_rollout_selfcheck_tokens_total")
                            .Help("Tokens compared by the self-check")
                            .Register(*registry_)
                            .Add({})),
      selfcheck_mismatched_tokens_(
          prometheus::BuildCounter()
              .Name("lockstep_rollout_selfcheck_mismatched_tokens_total")
              .Help("Tokens whose re-scored logprob differs bitwise")
              .Register(*registry_)
              .Add({})),
      weight_version_(common::RegisterWeightVersion(*registry_, "rollout")),
      paused_(prometheus::BuildGauge()
                  .Name("lockstep_rollout_paused")
                  .Help("1 while generation is paused (RolloutService.Pause)")
                  .Register(*registry_)
                  .Add({})),
      sleep_level_(prometheus::BuildGauge()
                       .Name("lockstep_rollout_sleep_level")
                       .Help("0 awake, 1 KV cache released, 2 KV cache and weights released")
                       .Register(*registry_)
                       .Add({})),
      weight_paths_(prometheus::BuildCounter()
                        .Name("lockstep_weight_updates_total")
                        .Help("Weight updates received, by how the bytes came")
                        .Register(*registry_)) {
  common::RegisterBuildInfo(*registry_, info);
}

void RolloutMetrics::OnStep(const StepStats& s) {
  batch_size_.Observe(static_cast<double>(s.sequences));
  batch_tokens_.Observe(static_cast<double>(s.tokens));
  step_duration_.Observe(absl::ToDoubleSeconds(s.duration));
  generated_tokens_.Increment(static_cast<double>(s.sampled));
  if (s.preempted > 0)
    preemptions_.Increment(static_cast<double>(s.preempted));
  kv_usage_.Set(s.kv_usage);
  queue_depth_.Set(static_cast<double>(s.waiting));
  running_.Set(static_cast<double>(s.running));
}

void RolloutMetrics::OnSelfCheck(int64_t tokens, int64_t mismatched) {
  selfcheck_sequences_.Increment();
  selfcheck_tokens_.Increment(static_cast<double>(tokens));
  if (mismatched > 0) {
    selfcheck_mismatch_.Increment();
    selfcheck_mismatched_tokens_.Increment(static_cast<double>(mismatched));
  }
}

void RolloutMetrics::OnWeightSwap(const SwapResult& r) {
  weight_version_.Set(static_cast<double>(r.version));
  if (r.preempted > 0)
    preemptions_.Increment(static_cast<double>(r.preempted));
}

void RolloutMetrics::OnOccupancy(int64_t waiting, int64_t running, double kv_usage) {
  queue_depth_.Set(static_cast<double>(waiting));
  running_.Set(static_cast<double>(running));
  kv_usage_.Set(kv_usage);
}

void RolloutMetrics::RecordRequest(const char* method, absl::StatusCode code) {
  requests_
      .Add({{"method", method}, {"code", absl::StatusCodeToString(code)}})
      .Increment();
}

void RolloutMetrics::SetWeightVersion(uint64_t v) {
  weight_version_.Set(static_cast<double>(v));
}

void RolloutMetrics::SetPaused(bool paused) { paused_.Set(paused ? 1.0 : 0.0); }

void RolloutMetrics::SetSleepLevel(SleepLevel level) {
  sleep_level_.Set(static_cast<double>(static_cast<int>(level)));
}

void RolloutMetrics::RecordWeightPath(const char* path) {
  weight_paths_.Add({{"role", "rollout"}, {"path", path}}).Increment();
}

}  // namespace lockstep::rollout
