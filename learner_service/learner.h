// The learner core: a trainer, a buffer of submitted trajectories, the
// registered rollouts and the weight push after every step, checkpoints and
// metrics. Both the gRPC adapter (client-driven loop) and the built-in driver
// (`--drive`) call it; it knows nothing of the server side of gRPC.
#ifndef LOCKSTEP_LEARNER_SERVICE_LEARNER_H_
#define LOCKSTEP_LEARNER_SERVICE_LEARNER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/net/channel_security.h"
#include "common/formats/host_tensor.h"
#include "learner_service/mismatch.h"
#include "learner_service/trainer.h"
#include "learner_service/weight_push.h"
#include "sdk/cpp/rollout_client.h"

namespace prometheus {
class Registry;
}  // namespace prometheus

namespace lockstep::learner {

struct LearnerOptions {
  TrainerOptions trainer;
  // Root of Save/LoadCheckpoint names; empty disables them
  // (FAILED_PRECONDITION).
  std::string checkpoint_dir;
  // Trajectories the buffer may hold (RESOURCE_EXHAUSTED past it).
  int64_t max_buffered_trajectories = 65536;
  PushOptions push;
  // Bearer token presented to the rollouts (empty: none).
  std::string rollout_auth_token;
  // Transport security of the channels to the rollouts (default:
  // plaintext; see ConnectRollout). Build it with
  // common::MakeChannelSecurity, which reads and checks the CA / client
  // certificate files once (learner_service: --rollout_tls, --rollout_tls_ca,
  // --rollout_tls_cert, --rollout_tls_key, --rollout_tls_server_name).
  common::ChannelSecurity rollout_security;
  // Deadline of the GetModelInfo call that registering a rollout makes (it
  // waits for the endpoint to come up within this time), and of the one
  // that re-checks the rollout before every push attempt.
  absl::Duration register_timeout = absl::Seconds(10);
  // A learner restarted from a checkpoint (learner_service --resume) whose
  // rollouts kept serving newer versions: instead of refusing them,
  // registration labels the learner's weights with a version past every
  // rollout's and pushes them (the rollouts then serve the checkpoint's
  // weights; the lost steps are taken again).
  bool adopt_newer_rollouts = false;
};

// One field in which a rollout's arithmetic differs from the learner's.
struct FingerprintDifference {
  std::string field;    // e.g. "rope_theta", "kernel_mode", "kernel_build_id"
  std::string learner;  // the learner's value, printed
  std::string rollout;  // the rollout's value, printed
};

// Compares everything that changes a token's logprob bits between the
// learner's fingerprint and a rollout's GetModelInfo answer, in this order:
// the model config (model_type, vocab_size, hidden_size, intermediate_size,
// num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim,
// tie_word_embeddings, qk_norm, qkv_bias, rms_norm_eps, rope_theta, every
// rope.* field, max_position_embeddings, bos_token_id, eos_token_ids,
// dtype), then kernel_mode, device, gpu_architecture and kernel_build_id.
// Doubles are compared bit for bit. Not compared: config_json (text whose
// parsed fields are compared), num_parameters (derived from the shapes),
// checkpoint_dtype and ignored_config_keys (informational), tp_size (in
// invariant mode the TP degree does not change any bit, docs/design.md
// "Tensor parallelism"; in standard mode logprobs already depend on the
// batch, so TP adds nothing to check) and the serving limits. Empty when
// they agree.
std::vector<FingerprintDifference> CompareFingerprints(
    const lockstep::v1::ModelInfo& learner,
    const lockstep::v1::ModelInfo& rollout);

// OK when CompareFingerprints finds nothing; otherwise FAILED_PRECONDITION
// naming `endpoint` and the first difference (field, learner value, rollout
// value) and how many more there are.
absl::Status CheckCompatible(const lockstep::v1::ModelInfo& learner,
                             const lockstep::v1::ModelInfo& rollout,
                             const std::string& endpoint);

struct SubmitResult {
  int64_t accepted = 0;
  int64_t buffered_trajectories = 0;
  int64_t buffered_groups = 0;
  int64_t buffered_tokens = 0;
};

struct TrainStepOptions {
  // Groups to train on; empty: the whole buffer.
  std::vector<std::string> group_ids;
  // FAILED_PRECONDITION unless the learner is at this version.
  std::optional<int64_t> expected_version;
  bool skip_push = false;
};

struct StepReport {
  StepResult step;
  std::vector<PushResult> pushes;  // one per registered rollout
  double push_seconds = 0.0;       // wall time of the parallel push
};

// A registered rollout.
struct RolloutInfo {
  std::string endpoint;
  int64_t weight_version = 0;  // last version known to be served
  common::KernelMode mode = common::KernelMode::kInvariant;
  // Its tensor-parallel degree (recorded, not required to match: see
  // CompareFingerprints).
  int tp_size = 1;
  int64_t pushes_ok = 0;
  int64_t pushes_failed = 0;
  std::optional<PushResult> last_push;
};

struct CheckpointInfo {
  std::string path;
  int64_t step = 0;
  int64_t weight_version = 0;
  int64_t dropped_trajectories = 0;  // LoadCheckpoint only
  // LoadCheckpoint only: the extra state saved beside the weights (what the
  // checkpoint hooks saved, e.g. the driver's prompt generator), for a
  // caller that installs its hooks later (learner_service --resume).
  std::map<std::string, std::string> extra;
};

struct LearnerStatus {
  int64_t step = 0;
  int64_t weight_version = 0;
  int64_t buffered_trajectories = 0;
  int64_t buffered_groups = 0;
  int64_t buffered_tokens = 0;
  int64_t max_buffered_trajectories = 0;
  MismatchStats mismatch_total;  // all steps since start (raw logprobs)
  MismatchStats sampled_mismatch_total;  // the same, sampled-distribution
  std::optional<StepReport> last_step;
  std::vector<RolloutInfo> rollouts;
  double learning_rate = 0.0;
};

// Extra state saved with every checkpoint and handed back on load (the
// driver stores its prompt RNG here).
struct CheckpointHooks {
  std::function<std::map<std::string, std::string>()> save;
  std::function<absl::Status(const std::map<std::string, std::string>&)> load;
};

// What the learner reports as it works (the server's metrics implement it;
// learner_service/server/learner_metrics.h). Called from the thread doing
// the work; must not block.
class LearnerObserver {
 public:
  virtual ~LearnerObserver() = default;
  virtual void OnStep(const StepResult& step) {}
  virtual void OnPush(const PushResult& push) {}
  virtual void OnWeightVersion(int64_t version) {}
  // The driver retried a Generate call (a rollout was unavailable).
  virtual void OnGenerateRetry() {}
};

// Thread-safe. Steps, checkpoint operations and pushes are serialised; a
// step's push finishes before the next step starts, so rollouts receive
// versions in order. Submissions and reads run concurrently with a step.
class Learner {
 public:
  // `observer` may be null; it must outlive the learner.
  static absl::StatusOr<std::unique_ptr<Learner>> Create(const LearnerOptions& options,
                                                         LearnerObserver* observer = nullptr);

  // Validates every trajectory (Trainer::ValidateTrajectory); all or none are
  // buffered. INVALID_ARGUMENT (naming the index) / RESOURCE_EXHAUSTED.
  absl::StatusOr<SubmitResult> Submit(std::vector<Trajectory> trajectories);

  // One optimizer step over the selected buffered trajectories, then the
  // push. FAILED_PRECONDITION (empty buffer, expected_version mismatch),
  // NOT_FOUND (unknown group id), and the trainer's errors; on error the
  // buffer and the weights are unchanged.
  absl::StatusOr<StepReport> TrainStep(const TrainStepOptions& options);

  // `sampling` empty or one per sequence: for each non-null entry,
  // (*sampled)[s] gets the logprobs under that sampling distribution
  // (bit-identical to the rollout's sampled logprobs in invariant mode).
  // Scores with the current weights, all under the step lock: when
  // `expected_version` is set it must be the version scored with
  // (FAILED_PRECONDITION otherwise, checked under the lock, so a step that
  // lands meanwhile cannot slip in), and *version_out (when not null) gets
  // the version the logprobs are of.
  absl::StatusOr<std::vector<std::vector<float>>> ComputeLogprobs(
      const std::vector<std::vector<int32_t>>& sequences,
      const std::vector<int64_t>& prefix_lens,
      const std::vector<const common::SamplingSpec*>& sampling = {},
      std::vector<std::vector<float>>* sampled = nullptr,
      std::optional<int64_t> expected_version = std::nullopt,
      int64_t* version_out = nullptr);

  // Connects to each endpoint (ConnectRollout), asks it for its model
  // (GetModelInfo, waiting up to register_timeout for it to come up, one
  // try), checks that it computes exactly as the learner does
  // (CheckCompatible against fingerprint()), and registers them all (or
  // none, on the first error: INVALID_ARGUMENT for a malformed endpoint,
  // UNAVAILABLE when unreachable, FAILED_PRECONDITION for an incompatible
  // rollout, naming the first differing field, or for a rollout already
  // serving a newer version than the learner's). Every later push attempt
  // repeats the check first (PushOptions::check): a rollout restarted with
  // another config is refused (FAILED_PRECONDITION push result, nothing
  // sent).
  // Already registered endpoints are refreshed. With `push_now`, rollouts
  // behind the learner's version get the current weights.
  absl::StatusOr<std::vector<PushResult>> RegisterRollouts(
      const std::vector<std::string>& endpoints, bool push_now);

  // Removes endpoints; returns how many were registered.
  int UnregisterRollouts(const std::vector<std::string>& endpoints);

  // Pushes the current weights to every registered rollout now.
  std::vector<PushResult> PushWeights();

  // For a rollout that may have restarted: when the version it serves
  // differs from the learner's, re-checks it and pushes the current weights
  // to it alone (an empty result when it was current). UNAVAILABLE when it
  // does not answer; NOT_FOUND for an endpoint that is not registered.
  absl::StatusOr<std::vector<PushResult>> SyncRollout(const std::string& endpoint);

  // The process is shutting down: pushes waiting for an unavailable rollout
  // give up at their next try (CANCELLED) instead of retrying for their
  // whole window. Thread-safe, idempotent.
  void BeginShutdown() { shutting_down_.store(true); }
  bool shutting_down() const { return shutting_down_.load(); }

  // The observer given at creation (may be null).
  LearnerObserver* observer() const { return observer_; }

  // Current version and its compute-dtype weights.
  std::pair<int64_t, std::shared_ptr<const common::TensorMap>> Weights() const;

  // `name` as in SaveCheckpointRequest (empty: "step-<step>").
  absl::StatusOr<CheckpointInfo> SaveCheckpoint(const std::string& name);
  absl::StatusOr<CheckpointInfo> LoadCheckpoint(const std::string& name);

  LearnerStatus Status() const;

  void SetCheckpointHooks(CheckpointHooks hooks);

  // Clients of the registered rollouts (for the driver's Generate calls).
  std::vector<std::shared_ptr<client::RolloutClient>> rollout_clients() const;

  const common::ModelConfig& config() const { return trainer_->config(); }
  // What the learner compares rollouts with: its model config (compute
  // dtype), kernel mode, device, GPU architecture
  // (kernels::GpuArchitecture), kernel build id (kernels::KernelBuildId) and
  // tp_size 1, as a v1::ModelInfo (the other fields unset).
  const lockstep::v1::ModelInfo& fingerprint() const { return fingerprint_; }
  const TrainerOptions& trainer_options() const { return trainer_->options(); }
  int64_t version() const { return trainer_->version(); }

  // Direct access for tests and benchmarks (not thread-safe against steps).
  Trainer& trainer() { return *trainer_; }

 private:
  struct Buffered {
    uint64_t id;
    Trajectory trajectory;
  };
  struct Rollout {
    std::shared_ptr<client::RolloutClient> client;
    RolloutInfo info;
  };

  Learner(LearnerOptions options, std::unique_ptr<Trainer> trainer, LearnerObserver* observer);

  // Pushes to the given endpoints' rollouts (all when empty); caller holds
  // step_mu_.
  std::vector<PushResult> PushLocked(const std::vector<std::string>& only,
                                     double* seconds);
  absl::StatusOr<std::string> CheckpointPath(const std::string& name) const;
  void BufferCounts(SubmitResult* out) const;  // caller holds buffer_mu_

  // GetModelInfo + CheckCompatible against one rollout (PushOptions::check).
  absl::Status CheckRollout(client::RolloutClient& client) const;

  const LearnerOptions options_;
  std::unique_ptr<Trainer> trainer_;
  lockstep::v1::ModelInfo fingerprint_;
  LearnerObserver* const observer_;
  std::atomic<bool> shutting_down_{false};

  mutable std::mutex step_mu_;  // trainer mutations, pushes, checkpoints
  CheckpointHooks hooks_;       // guarded by step_mu_

  mutable std::mutex buffer_mu_;
  std::vector<Buffered> buffer_;
  uint64_t next_id_ = 0;

  mutable std::mutex state_mu_;
  std::vector<Rollout> rollouts_;
  MismatchStats mismatch_total_;
  MismatchStats sampled_mismatch_total_;
  std::optional<StepReport> last_step_;
};

}  // namespace lockstep::learner

#endif  // LOCKSTEP_LEARNER_SERVICE_LEARNER_H_
