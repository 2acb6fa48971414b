// The trainer: fp32 master weights with AdamW, a compute-dtype copy that is
// exactly what rollouts receive, GRPO advantages with the PPO clipped
// objective (and an optional k3 KL penalty to the initial policy), gradient
// accumulation over the trajectories in a fixed order (the update does not
// depend on micro_batch_size), gradient clipping, mismatch accounting
// against the rollout's logprobs, and checkpoints that resume bit-identically.
//
// No gRPC here; LibTorch stays behind the pimpl so that includers do not pay
// for <torch/torch.h>.
#ifndef LOCKSTEP_LEARNER_SERVICE_TRAINER_H_
#define LOCKSTEP_LEARNER_SERVICE_TRAINER_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/formats/host_tensor.h"
#include "common/model/kernel_mode.h"
#include "common/formats/model_config.h"
#include "kernels/device.h"
#include "kernels/dtype.h"
#include "learner_service/grpo.h"
#include "common/sampling/sampling_spec.h"
#include "learner_service/mismatch.h"

namespace lockstep::learner {

// How per-token losses become the step's loss (verl's loss_agg_mode).
enum class LossAggregation {
  kTokenMean,              // sum over every trained token / their count
  kSequenceMeanTokenMean,  // mean over sequences of each one's token mean
  kSequenceMeanTokenSum,   // mean over sequences of each one's token sum (Dr. GRPO)
};
// "token-mean", "seq-mean-token-mean", "seq-mean-token-sum".
absl::StatusOr<LossAggregation> ParseLossAggregation(const std::string& name);

// Estimators of KL(policy || reference) per token from d = log ref - log pi
// (Schulman's k1, k2, k3; k3 is verl's "low_var_kl").
enum class KlEstimator { kK1, kK2, kK3 };
// "k1", "k2", "k3".
absl::StatusOr<KlEstimator> ParseKlEstimator(const std::string& name);

// Learning-rate schedule after a linear warmup.
enum class LrSchedule { kConstant, kLinear, kCosine };
// "constant", "linear", "cosine".
absl::StatusOr<LrSchedule> ParseLrSchedule(const std::string& name);

struct TrainerOptions {
  // Directory with config.json and the weights, as model.safetensors or as
  // model.safetensors.index.json + shards (Hugging Face layout; see
  // LoadModelDir): the initial weights (weight version 0).
  std::string model_dir;
  // Kernels of the training forward (must match the rollouts' for the
  // logprobs to agree bitwise).
  common::KernelMode mode = common::KernelMode::kInvariant;
  kernels::Device device = kernels::Device::kCpu;
  // Storage dtype of the compute copy (the pushed weights); unset: the
  // model config's torch_dtype. Master weights are always fp32.
  std::optional<kernels::DType> compute_dtype;

  // AdamW (torch::optim::AdamW).
  double learning_rate = 1e-3;
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.999;
  double adam_eps = 1e-8;
  double weight_decay = 0.0;
  // Weight decay also on norm weights and biases (1-D tensors); false
  // excludes them, as Hugging Face's Trainer and verl do.
  bool decay_norms_and_biases = false;
  // The learning rate of step s (0-based): learning_rate * (s + 1) /
  // lr_warmup_steps during the warmup, then constant, or decaying linearly
  // or by a half cosine to learning_rate * min_lr_ratio at lr_total_steps
  // (held there after).
  LrSchedule lr_schedule = LrSchedule::kConstant;
  int64_t lr_warmup_steps = 0;
  int64_t lr_total_steps = 0;  // > lr_warmup_steps for kLinear / kCosine
  double min_lr_ratio = 0.0;   // in [0, 1]

  // PPO clip range: the ratio is clipped to [1 - low, 1 + high].
  double clip_ratio_low = 0.2;
  double clip_ratio_high = 0.2;
  // Dual-clip PPO: for negative advantages the per-token loss is also
  // capped at -A * clip_ratio_c. 0: off; else > 1 (3 is usual).
  double clip_ratio_c = 0.0;
  LossAggregation loss_aggregation = LossAggregation::kTokenMean;
  // > 0: a KL penalty to the reference policy, kl_coef * KL per token with
  // `kl_estimator`: in the loss (aggregated like the policy loss), or, with
  // kl_in_reward, subtracted from each trajectory's reward (summed over its
  // trained tokens, with the rollout's logprobs as the policy) before the
  // advantages.
  double kl_coef = 0.0;
  KlEstimator kl_estimator = KlEstimator::kK3;
  // > 0: an entropy bonus, -entropy_coef * entropy per token (aggregated
  // like the policy loss; common::SequenceScores::entropy).
  double entropy_coef = 0.0;
  // > 0 (mixture-of-experts models only): adds router_aux_loss_coef times
  // transformers' load-balancing loss (common::LoadBalancingLoss over every
  // sparse layer's routing of a trajectory's tokens), averaged over the
  // batch's trajectories; not with checkpoint_layers.
  double router_aux_loss_coef = 0.0;
  bool kl_in_reward = false;
  // The frozen reference policy: a model directory of the same config
  // (loaded once, kept on `device`); empty: the initial weights.
  std::string reference_model_dir;
  AdvantageOptions advantages;
  // Global L2 gradient-norm clip; <= 0 disables clipping (the norm is still
  // reported).
  double max_grad_norm = 1.0;
  // Trajectories per no-grad forward of a step (the reference policy's
  // logprobs when kl_coef > 0). The gradient pass runs one forward and
  // backward per trajectory and sums the trajectories' gradients in batch
  // order (fp32, acc += g_i), so a step is a single optimizer update whose
  // bits do not depend on micro_batch_size: the same batch gives the same
  // weights, optimizer state, loss, grad norm and statistics, bit for bit,
  // for every micro_batch_size >= 1 (invariant mode; in standard mode too
  // without a KL penalty: only the batched reference logprobs go through
  // LibTorch's batch-dependent ops). The loss weights (loss_aggregation)
  // and advantages are computed over the whole batch first. Memory: one
  // trajectory's activations, the running sum and one trajectory's gradient
  // (two fp32 gradient buffers).
  int64_t micro_batch_size = 16;
  // Activation checkpointing (common/model/layer_checkpoints.h): keep only
  // each layer's input and recompute the layer in the backward; the same
  // bits, one layer's activations in memory instead of all.
  bool checkpoint_layers = false;
  // CUDA only, process-wide: LibTorch's float32 matmuls may run on the TF32
  // tensor cores (at::globalContext().setAllowTF32CuBLAS). They are the
  // backward's GEMMs (LinearFn's dX = dY·W and dW = dYᵀ·X, the recomputed
  // attention blocks) and the standard-mode training forward; the invariant
  // forward is the project's kernels and never changes. The operands the
  // forward stored (bf16 weights, bf16-rounded activations, q, k, v) are
  // exact in TF32, so only the gradients' own mantissas are cut to 10 bits
  // (autocast's bf16 backward keeps 7); cuBLAS stays deterministic.
  // false: full fp32 SIMT GEMMs (~67 TFLOP/s on an H200 instead of ~400+).
  bool allow_tf32 = true;
  // CPU threads of the invariant kernels (process-wide; 0: their default,
  // LOCKSTEP_NUM_THREADS or all cores). Thread counts never change their
  // bits.
  int num_threads = 0;
  // LibTorch intra-op threads (backward, optimizer, standard-mode ops;
  // process-wide; 0: LibTorch's default). More threads than free cores make
  // OpenMP spin against the co-located rollout: keep it small on shared CPUs.
  int torch_threads = 0;
};

// One trajectory as the trainer consumes it.
struct Trajectory {
  std::vector<int32_t> prompt_tokens;      // [P] P >= 1
  std::vector<int32_t> completion_tokens;  // [C] C >= 1
  // [C] the rollout's raw (temperature-1) log p(completion[i] | prefix).
  std::vector<float> rollout_logprobs;
  // Weight version the rollout generated the completion with.
  int64_t weight_version = 0;
  // Empty, or [C] the version each token was generated with (a weight update
  // can land mid-sample); empty means every token has weight_version.
  std::vector<int64_t> token_weight_versions;
  float reward = 0.0f;
  // Trajectories with the same group id (the samples of one prompt) are
  // normalised together for the GRPO advantage.
  std::string group_id;
  // The distribution the completion was sampled from. When set, the PPO
  // ratio and the KL use the logprobs under it (the learner's own, from its
  // forward, against rollout_sampled_logprobs); else the raw ones.
  std::optional<common::SamplingSpec> sampling;
  // [C] when `sampling` is set: the rollout's log q(completion[i] | prefix).
  std::vector<float> rollout_sampled_logprobs;
  // Empty, or [C] 0/1: tokens with 0 are not trained on (tool output, an
  // environment's turns); at least one 1. They still count in the mismatch
  // statistics.
  std::vector<uint8_t> loss_mask;
  // Empty, or [C] the client's per-token advantages (finite), used as given
  // instead of the group-relative advantage of `reward`.
  std::vector<float> advantages;
};

// What one optimizer step did.
struct StepResult {
  int64_t step = 0;            // optimizer steps taken so far (after this one)
  int64_t weight_version = 0;  // version of the new weights
  double loss = 0.0;  // policy_loss + kl_coef * kl (in the loss) - entropy_coef * entropy
  double policy_loss = 0.0;    // clipped surrogate, mean over tokens
  double kl = 0.0;             // mean per-token KL to the reference (kl_coef > 0)
  double entropy = 0.0;        // mean per-token entropy (entropy_coef > 0)
  double router_aux_loss = 0.0;  // mean load-balancing loss (router_aux_loss_coef > 0)
  double grad_norm = 0.0;      // global L2 norm before clipping
  double clip_fraction = 0.0;  // fraction of trained tokens where a clip was active
  double learning_rate = 0.0;  // the step's (after the schedule)
  int64_t num_trajectories = 0;
  int64_t num_groups = 0;
  int64_t num_tokens = 0;  // completion tokens trained on (loss_mask 1)
  RewardStats reward;
  // Learner vs rollout logprobs from the training forward itself.
  MismatchStats mismatch;          // raw logprobs
  MismatchStats sampled_mismatch;  // sampled-distribution logprobs
  double seconds = 0.0;  // wall time of the step
  // Where `seconds` went (on the GPU each phase ends with a device
  // synchronisation, so a phase holds its own kernels): the reference
  // policy's no-grad forward (kl_coef > 0); the training forwards (each with
  // the compute copy it differentiates through) and the loss terms; the backward passes (with activation checkpointing, the
  // layers' recomputation); gradient clipping and AdamW; the refresh of the
  // compute copy and its snapshot. The rest (validation, advantages, the
  // per-trajectory gradient sums) is seconds minus these.
  double reference_seconds = 0.0;
  double forward_seconds = 0.0;
  double backward_seconds = 0.0;
  double optimizer_seconds = 0.0;
  double snapshot_seconds = 0.0;
};

class Trainer {
 public:
  // Loads the model, builds master weights, optimizer and compute copy.
  // INVALID_ARGUMENT on bad options; errors of the model loader otherwise.
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(
      const TrainerOptions& options);

  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // OK when `t` could be trained on now: non-empty prompt and completion,
  // token ids in [0, vocab), prompt + completion within
  // max_position_embeddings, one finite logprob <= 0 per completion token, a
  // finite reward, a non-empty group id, 0 <= weight_version <= version(),
  // and token_weight_versions empty or one per completion token, each in
  // [0, version()].
  // INVALID_ARGUMENT naming the problem otherwise.
  absl::Status ValidateTrajectory(const Trajectory& t) const;

  // One optimizer step over `batch` (all of it; one AdamW update). Every
  // trajectory is validated first; on any error nothing changes (weights,
  // optimizer state, step, version). Errors: INVALID_ARGUMENT (empty batch,
  // bad trajectory), INTERNAL (LibTorch failure or a non-finite gradient;
  // the update is then not applied).
  absl::StatusOr<StepResult> Step(const std::vector<Trajectory>& batch);

  // The learner's logprobs of sequences[s][i+1] for i >= prefix_lens[s]-1
  // with the current compute weights (no grad). INVALID_ARGUMENT on bad
  // tokens or prefix lengths.
  // `sampling` empty or one per sequence: for each non-null entry,
  // (*sampled)[s] gets the logprobs under that sampling distribution
  // (bit-identical to the rollout's sampled logprobs in invariant mode).
  absl::StatusOr<std::vector<std::vector<float>>> ComputeLogprobs(
      const std::vector<std::vector<int32_t>>& sequences,
      const std::vector<int64_t>& prefix_lens,
      const std::vector<const common::SamplingSpec*>& sampling = {},
      std::vector<std::vector<float>>* sampled = nullptr);

  // The compute-dtype weights of version() with HF names: exactly the bytes
  // a weight push sends. Immutable snapshot, replaced after every step.
  std::shared_ptr<const common::TensorMap> compute_weights() const;

  // fp32 master weights (copies), for tests and checkpoint comparisons.
  common::TensorMap MasterWeights() const;

  // Writes a checkpoint directory: master.safetensors (fp32 master),
  // optimizer.pt (AdamW state), trainer_state.json (step, version, options
  // that affect the math, `extra` — e.g. the driver's prompt RNG), plus
  // config.json + model.safetensors of the compute copy so that the
  // directory is itself a model dir a rollout can load. Crash-safe: the
  // files are written to `dir`.tmp-PID, every file and that directory are
  // fsynced, and PublishCheckpointDir swaps it in; then the leftovers of
  // earlier crashed saves of this name are removed
  // (CleanCheckpointLeftovers). At no moment is there no loadable
  // checkpoint of this name (once one was saved). Errors: errno-derived
  // I/O errors, INTERNAL (LibTorch); the previous checkpoint is then kept.
  absl::Status SaveCheckpoint(
      const std::string& dir,
      const std::map<std::string, std::string>& extra) const;

  // Restores weights, optimizer state, step and version from `dir` (or,
  // when a save was interrupted in its fallback publish, from the complete
  // `dir`.old-PID it left: ResolveCheckpointDir); returns the `extra` map
  // it was saved with. Errors leave the trainer unchanged: NOT_FOUND (no
  // such checkpoint), DATA_LOSS (a file missing, truncated or corrupt:
  // trainer_state.json, master.safetensors, optimizer.pt),
  // INVALID_ARGUMENT (a checkpoint of another model or compute dtype).
  absl::StatusOr<std::map<std::string, std::string>> LoadCheckpoint(
      const std::string& dir);

  int64_t step() const;
  int64_t version() const;
  // Labels the current weights with version max(version(), at_least): a
  // learner resumed from a checkpoint older than what its rollouts serve
  // pushes its weights under a version they accept. Nothing else changes.
  void AdvanceVersion(int64_t at_least);
  // The model config with dtype = the compute dtype.
  const common::ModelConfig& config() const;
  const TrainerOptions& options() const;

  // Changes the AdamW learning rate from the next step on.
  void set_learning_rate(double lr);

 private:
  struct Impl;
  explicit Trainer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Replaces checkpoint directory `dir` by the complete, fsynced directory
// `tmp` so that `dir` is never missing: renameat2(RENAME_EXCHANGE) swaps
// them (then the old copy, now at `tmp`, is removed); on file systems
// without it, the old `dir` is renamed to `dir`.old-PID, `tmp` to `dir`,
// and the old copy removed (ResolveCheckpointDir and
// CleanCheckpointLeftovers recover a crash between the two renames). The
// parent directory is fsynced after each rename. On error `tmp` is removed
// and the old checkpoint kept; errno-derived errors naming `dir`.
absl::Status PublishCheckpointDir(const std::string& tmp,
                                  const std::string& dir);

// Removes what crashed saves left in `root`: NAME.tmp-PID directories
// (possibly half-written) and NAME.old-PID copies, except that an .old copy
// whose NAME is missing is renamed back to NAME (it is then the last
// complete checkpoint). Entries of another live process (PID alive and not
// ours: it may be saving now) are kept; our own PID counts as a previous
// incarnation's (containers reuse PIDs). `only_name` non-empty: only that
// NAME. Returns how many entries were removed or restored; OK (0) when
// `root` does not exist; the first removal error otherwise (after trying
// all). The learner calls it on `--checkpoint_dir` at start-up.
absl::StatusOr<int> CleanCheckpointLeftovers(const std::string& root,
                                             const std::string& only_name = "");

// The directory holding checkpoint `dir`: `dir` itself when it exists,
// else a complete `dir`.old-PID (one with trainer_state.json) left by an
// interrupted publish; NOT_FOUND otherwise.
absl::StatusOr<std::string> ResolveCheckpointDir(const std::string& dir);

// common::LoadCheckpoint(dir) as a (config, tensors) pair: the same loader
// as the rollout's Model::Load, so both services read a checkpoint (fp16
// widening, dropped buffers) identically.
absl::StatusOr<std::pair<common::ModelConfig, common::TensorMap>> LoadModelDir(
    const std::string& dir);

}  // namespace lockstep::learner

#endif  // LOCKSTEP_LEARNER_SERVICE_TRAINER_H_
