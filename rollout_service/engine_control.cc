// Engine: generation control — Pause / Resume and Sleep / WakeUp (see
// engine.h). Everything here runs on the engine thread at a step boundary,
// queued through RunOnEngineThread.
#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"
#include "rollout_service/engine.h"

namespace lockstep::rollout {
namespace {

int64_t WeightBytes(const common::Model& model) {
  int64_t bytes = 0;
  for (const auto& [name, tensor] : model.tensors()) {
    bytes += static_cast<int64_t>(tensor.data.size());
  }
  return bytes;
}

}  // namespace

absl::Status Engine::RunOnEngineThread(std::function<void()> fn) {
  ControlJob job;
  job.run = std::move(fn);
  absl::MutexLock lock(&mu_);
  if (stop_) return absl::UnavailableError("engine stopped");
  controls_.push_back(&job);
  work_cv_.Signal();
  while (!job.done) done_cv_.Wait(&mu_);
  if (!job.ran) return absl::UnavailableError("rollout engine stopped");
  return absl::OkStatus();
}

void Engine::SetPaused(bool paused) {
  absl::MutexLock lock(&mu_);
  paused_ = paused;
  paused_flag_.store(paused, std::memory_order_release);
}

void Engine::SetSleep(SleepLevel level) {
  absl::MutexLock lock(&mu_);
  sleep_ = level;
  sleep_flag_.store(static_cast<int>(level), std::memory_order_release);
}

absl::StatusOr<PauseResult> Engine::Pause(PauseMode mode) {
  PauseResult result;
  LOCKSTEP_RETURN_IF_ERROR(RunOnEngineThread([&] {
    result.was_paused = paused_;
    SetPaused(true);
    if (mode == PauseMode::kRetract) scheduler_->PreemptAll();
    ReportOccupancy();
    result.held_requests = static_cast<int64_t>(requests_.size());
    result.running = scheduler_->num_running();
    result.kv_usage = scheduler_->blocks().usage();
    result.version = version_.load();
  }));
  return result;
}

absl::StatusOr<bool> Engine::Resume() {
  bool was_paused = false;
  LOCKSTEP_RETURN_IF_ERROR(RunOnEngineThread([&] {
    was_paused = paused_;
    SetPaused(false);
  }));
  return was_paused;
}

absl::StatusOr<SleepResult> Engine::Sleep(SleepLevel level) {
  if (level != SleepLevel::kKvCache && level != SleepLevel::kKvCacheAndWeights) {
    return absl::InvalidArgumentError("Sleep needs level KV_CACHE or KV_CACHE_AND_WEIGHTS");
  }
  SleepResult result;
  absl::Status status;
  LOCKSTEP_RETURN_IF_ERROR(RunOnEngineThread([&] {
    const absl::Time start = absl::Now();
    const kernels::Device device = model_options_.device;
    absl::StatusOr<common::DeviceMemory> before = common::DeviceMemoryInfo(device);
    if (!before.ok()) {
      status = before.status();
      return;
    }
    // Nothing holds K/V afterwards: every running sample goes back to the
    // queue and is recomputed after WakeUp (the same bits, by invariance).
    scheduler_->PreemptAll();
    if (cache_ != nullptr) {
      result.kv_cache_bytes = num_pages_ * model_->KvBytesPerPage(options_.page_size);
      cache_.reset();
    }
    if (model_ != nullptr) {
      result.graph_bytes = model_->cuda_graph_stats().capture_bytes;
      status = model_->ReleaseCaches();
      if (!status.ok()) return;
      if (level == SleepLevel::kKvCacheAndWeights) {
        result.weight_bytes = WeightBytes(*model_);
        model_.reset();
        absl::MutexLock lock(&mu_);
        published_model_.reset();
      }
    }
    SetSleep(std::max(sleep_, level));
    status = common::ReleaseCachedDeviceMemory(device);
    if (!status.ok()) return;
    absl::StatusOr<common::DeviceMemory> after = common::DeviceMemoryInfo(device);
    if (!after.ok()) {
      status = after.status();
      return;
    }
    result.device_free_bytes = after->free_bytes;
    result.device_bytes_freed = std::max<int64_t>(0, after->free_bytes - before->free_bytes);
    result.level = sleep_;
    result.version = version_.load();
    result.duration = absl::Now() - start;
    ReportOccupancy();
  }));
  LOCKSTEP_RETURN_IF_ERROR(status);
  return result;
}

absl::StatusOr<WakeResult> Engine::WakeUp() {
  WakeResult result;
  absl::Status status;
  LOCKSTEP_RETURN_IF_ERROR(RunOnEngineThread([&] {
    const absl::Time start = absl::Now();
    result.was_asleep = sleep_ != SleepLevel::kAwake;
    result.version = version_.load();
    if (!result.was_asleep) return;
    if (model_ == nullptr) {
      status = absl::FailedPreconditionError(
          "the rollout slept with its weights released: push weights before WakeUp");
      return;
    }
    absl::StatusOr<std::unique_ptr<common::KvCache>> cache =
        model_->CreateKvCache(num_pages_, options_.page_size);
    if (!cache.ok()) {
      status = absl::ResourceExhaustedError(
          absl::StrCat("allocating the KV cache failed: ", cache.status().message()));
      return;
    }
    cache_ = *std::move(cache);
    result.kv_cache_bytes = num_pages_ * model_->KvBytesPerPage(options_.page_size);
    SetSleep(SleepLevel::kAwake);
    absl::StatusOr<common::DeviceMemory> now = common::DeviceMemoryInfo(model_options_.device);
    if (now.ok()) result.device_free_bytes = now->free_bytes;
    result.duration = absl::Now() - start;
  }));
  LOCKSTEP_RETURN_IF_ERROR(status);
  return result;
}

}  // namespace lockstep::rollout
