// The rollout service's Prometheus metrics (DESIGN.md §5 and the self-check
// counters): the engine reports steps, self-checks and swaps through
// EngineObserver; the gRPC adapter records requests and latencies.
#ifndef LOCKSTEP_ROLLOUT_SERVICE_SERVER_ROLLOUT_METRICS_H_
#define LOCKSTEP_ROLLOUT_SERVICE_SERVER_ROLLOUT_METRICS_H_

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "common/net/metrics.h"
#include "rollout_service/engine.h"

namespace lockstep::rollout {

class RolloutMetrics : public EngineObserver {
 public:
  RolloutMetrics(std::shared_ptr<prometheus::Registry> registry, const common::BuildInfo& info);

  void OnStep(const StepStats& s) override;
  void OnSelfCheck(int64_t tokens, int64_t mismatched) override;
  void OnWeightSwap(const SwapResult& r) override;
  void OnOccupancy(int64_t waiting, int64_t running, double kv_usage) override;

  // One finished RPC of `method` with `code`.
  void RecordRequest(const char* method, absl::StatusCode code);
  void SetWeightVersion(uint64_t v);
  // Pause / Sleep state (lockstep_rollout_paused, lockstep_rollout_sleep_level).
  void SetPaused(bool paused);
  void SetSleepLevel(SleepLevel level);
  // A weight update that arrived by `path` ("stream", "shared_memory").
  void RecordWeightPath(const char* path);

  prometheus::Counter& prompt_tokens() { return prompt_tokens_; }
  prometheus::Histogram& ttft() { return ttft_; }
  prometheus::Histogram& itl() { return itl_; }
  prometheus::Histogram& request_duration() { return request_duration_; }
  prometheus::Histogram& weight_update() { return weight_update_; }

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Counter& generated_tokens_;
  prometheus::Counter& prompt_tokens_;
  prometheus::Counter& preemptions_;
  prometheus::Histogram& batch_size_;
  prometheus::Histogram& batch_tokens_;
  prometheus::Histogram& step_duration_;
  prometheus::Histogram& ttft_;
  prometheus::Histogram& itl_;
  prometheus::Histogram& request_duration_;
  prometheus::Gauge& kv_usage_;
  prometheus::Gauge& queue_depth_;
  prometheus::Gauge& running_;
  prometheus::Histogram& weight_update_;
  prometheus::Counter& selfcheck_sequences_;
  prometheus::Counter& selfcheck_mismatch_;
  prometheus::Counter& selfcheck_tokens_;
  prometheus::Counter& selfcheck_mismatched_tokens_;
  prometheus::Gauge& weight_version_;
  prometheus::Gauge& paused_;
  prometheus::Gauge& sleep_level_;
  prometheus::Family<prometheus::Counter>& weight_paths_;
};

}  // namespace lockstep::rollout

#endif  // LOCKSTEP_ROLLOUT_SERVICE_SERVER_ROLLOUT_METRICS_H_
