// The learner-driven RL loop (`learner_service --drive`): prompts from a
// built-in task, Generate on the registered rollouts, rewards, a training
// step, the weight push, and one printed line per step.
#ifndef LOCKSTEP_LEARNER_SERVICE_DRIVER_H_
#define LOCKSTEP_LEARNER_SERVICE_DRIVER_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <ostream>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "learner_service/learner.h"
#include "learner_service/tasks.h"

namespace lockstep::learner {

struct DriverOptions {
  std::string task = "reverse";  // see MakeTask
  // The learner's step count to reach (a fresh learner: the number of
  // steps; one resumed from a checkpoint continues to the same total).
  // 0: until stopped.
  int64_t steps = 20;
  int prompts_per_step = 16;
  int samples_per_prompt = 8;  // GRPO group size
  uint64_t seed = 1;           // prompt generator and sampling seeds
  float temperature = 1.0f;
  float top_p = 1.0f;  // the sampling distribution's filters (the learner
  int top_k = 0;       // trains on the logprobs under it)
  float min_p = 0.0f;
  int max_tokens = 0;  // 0: the task's max_completion_tokens()
  absl::Duration generate_timeout = absl::Seconds(300);
  // A Generate that fails with UNAVAILABLE (a rollout restarting) is tried
  // again with exponential backoff (100 ms doubling to 5 s) for this long;
  // before each retry the rollout gets the learner's current weights if it
  // serves another version (Learner::SyncRollout). Every retry is reported
  // to the learner's observer (lockstep_learner_generate_retries_total).
  absl::Duration retry_window = absl::Seconds(60);
  // Save the checkpoint "drive" (under the learner's checkpoint_dir) after
  // every this many steps (0: never); learner_service --resume continues
  // from it.
  int64_t checkpoint_every = 0;
  // Extra state of a checkpoint loaded before the driver started
  // (CheckpointInfo::extra): the prompt generator continues from it.
  std::map<std::string, std::string> resume_state;
  // Per-step lines (and a header) go here; null: silent.
  std::ostream* out = nullptr;
  // Stop with FAILED_PRECONDITION at the first step that shows a mismatched
  // token, raw or sampled (meant for invariant kernels, where any mismatch
  // is a bug).
  bool fail_on_mismatch = false;
  // A weight push that fails (after its retries) ends the loop with the
  // push's error: the rollouts would otherwise generate off-policy.
  bool fail_on_push_error = true;
  // Colocation (the rollouts share the learner's GPU): after generating,
  // every rollout sleeps with its KV cache and weights released, the learner
  // trains, the push installs the new weights, and the rollouts wake up.
  // Each step then also prints its time breakdown.
  bool colocate = false;
};

// One driven step as printed.
struct DriveStep {
  int64_t step = 0;
  int64_t weight_version = 0;
  double reward_mean = 0.0;
  double loss = 0.0;
  int64_t tokens_compared = 0;
  int64_t tokens_mismatched = 0;
  double exact_fraction = 1.0;
  double max_abs_diff = 0.0;
  // The same for the logprobs under the sampling distribution.
  int64_t sampled_compared = 0;
  int64_t sampled_mismatched = 0;
  double push_ms = 0.0;
  double generate_ms = 0.0;
  double train_ms = 0.0;
  // --colocate: Sleep and WakeUp of all rollouts, and the device memory
  // their Sleep gave back.
  double sleep_ms = 0.0;
  double wake_ms = 0.0;
  uint64_t device_bytes_freed = 0;
};

struct DriveSummary {
  std::vector<DriveStep> steps;
  int64_t tokens_compared = 0;
  int64_t tokens_mismatched = 0;
  int64_t sampled_compared = 0;
  int64_t sampled_mismatched = 0;
  double max_abs_diff = 0.0;
  double reward_first = 0.0;  // mean reward of the first step
  double reward_last = 0.0;   // mean reward of the last step
  double mean_push_ms = 0.0;
  double seconds = 0.0;
};

// Drives `learner` (which must have at least one registered rollout) for
// options.steps steps or until `stop` becomes true. Registers checkpoint
// hooks so that the prompt generator's state is saved and restored with the
// learner's checkpoints. Errors: INVALID_ARGUMENT (bad options, unknown
// task, vocabulary too small for the task), FAILED_PRECONDITION (no
// rollouts; fail_on_mismatch), the rollouts' Generate errors and the
// learner's TrainStep errors.
absl::StatusOr<DriveSummary> RunDriver(Learner* learner,
                                       const DriverOptions& options,
                                       const std::atomic<bool>* stop);

// The header line and one formatted line per step, as RunDriver prints them:
//   step  ver  reward    loss      compared  exact%   max|dlp|   push_ms
std::string DriveHeaderLine();
std::string FormatDriveStep(const DriveStep& step);

}  // namespace lockstep::learner

#endif  // LOCKSTEP_LEARNER_SERVICE_DRIVER_H_
