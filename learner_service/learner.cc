#include "learner_service/learner.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <set>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/status/status_macros.h"
#include "common/wire/weight_stream.h"
#include "kernels/build_id.h"

namespace lockstep::learner {
namespace {

// "HOST:PORT" with a non-empty host and a port in [1, 65535] (IPv6 hosts in
// brackets). INVALID_ARGUMENT otherwise.
absl::Status ValidateEndpoint(const std::string& endpoint) {
  const size_t colon = endpoint.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("endpoint '", endpoint, "' is not HOST:PORT"));
  }
  int port = 0;
  if (!absl::SimpleAtoi(endpoint.substr(colon + 1), &port) || port < 1 ||
      port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("endpoint '", endpoint, "' has no valid port"));
  }
  return absl::OkStatus();
}

bool ValidCheckpointName(const std::string& name) {
  if (name.empty() || name == "." || name == ".." || name.size() > 200) {
    return false;
  }
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                    (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

// Printed values of a fingerprint field: doubles with every digit (two
// epsilons that print alike under %g still differ), enums by name.
std::string Show(double v) { return absl::StrFormat("%.17g", v); }
std::string Show(int64_t v) { return absl::StrCat(v); }
std::string Show(bool v) { return v ? "true" : "false"; }
std::string Show(const std::string& v) { return absl::StrCat("\"", v, "\""); }

}  // namespace

std::vector<FingerprintDifference> CompareFingerprints(
    const lockstep::v1::ModelInfo& learner,
    const lockstep::v1::ModelInfo& rollout) {
  std::vector<FingerprintDifference> diffs;
  auto add = [&](const char* field, std::string a, std::string b) {
    if (a != b) diffs.push_back({field, std::move(a), std::move(b)});
  };
  // Doubles by bits: -0.0 vs 0.0 or two NaNs must not pass as equal / differ
  // by accident of ==.
  auto add_double = [&](const char* field, double a, double b) {
    if (std::memcmp(&a, &b, sizeof a) != 0) {
      diffs.push_back({field, Show(a), Show(b)});
    }
  };
  const lockstep::v1::ModelConfig& a = learner.config();
  const lockstep::v1::ModelConfig& b = rollout.config();
  add("model_type", Show(a.model_type()), Show(b.model_type()));
  add("vocab_size", Show(a.vocab_size()), Show(b.vocab_size()));
  add("hidden_size", Show(a.hidden_size()), Show(b.hidden_size()));
  add("intermediate_size", Show(a.intermediate_size()),
      Show(b.intermediate_size()));
  add("num_hidden_layers", Show(a.num_hidden_layers()),
      Show(b.num_hidden_layers()));
  add("num_attention_heads", Show(a.num_attention_heads()),
      Show(b.num_attention_heads()));
  add("num_key_value_heads", Show(a.num_key_value_heads()),
      Show(b.num_key_value_heads()));
  add("head_dim", Show(a.head_dim()), Show(b.head_dim()));
  add("tie_word_embeddings", Show(a.tie_word_embeddings()),
      Show(b.tie_word_embeddings()));
  add("qk_norm", Show(a.qk_norm()), Show(b.qk_norm()));
  add("qkv_bias", Show(a.qkv_bias()), Show(b.qkv_bias()));
  add("num_experts", Show(a.num_experts()), Show(b.num_experts()));
  add("num_experts_per_tok", Show(a.num_experts_per_tok()), Show(b.num_experts_per_tok()));
  add("moe_intermediate_size", Show(a.moe_intermediate_size()),
      Show(b.moe_intermediate_size()));
  add("norm_topk_prob", Show(a.norm_topk_prob()), Show(b.norm_topk_prob()));
  add("decoder_sparse_step", Show(a.decoder_sparse_step()), Show(b.decoder_sparse_step()));
  add("mlp_only_layers", absl::StrCat("[", absl::StrJoin(a.mlp_only_layers(), ", "), "]"),
      absl::StrCat("[", absl::StrJoin(b.mlp_only_layers(), ", "), "]"));
  // The arithmetic beyond the shapes: a different epsilon or RoPE makes
  // every token mismatch while both sides look healthy.
  add_double("rms_norm_eps", a.rms_norm_eps(), b.rms_norm_eps());
  add_double("rope_theta", a.rope_theta(), b.rope_theta());
  const lockstep::v1::RopeParameters& ra = a.rope();
  const lockstep::v1::RopeParameters& rb = b.rope();
  add("rope.rope_type", Show(ra.rope_type()), Show(rb.rope_type()));
  add_double("rope.rope_theta", ra.rope_theta(), rb.rope_theta());
  add_double("rope.factor", ra.factor(), rb.factor());
  add_double("rope.low_freq_factor", ra.low_freq_factor(),
             rb.low_freq_factor());
  add_double("rope.high_freq_factor", ra.high_freq_factor(),
             rb.high_freq_factor());
  add("rope.original_max_position_embeddings",
      Show(ra.original_max_position_embeddings()),
      Show(rb.original_max_position_embeddings()));
  add_double("rope.beta_fast", ra.beta_fast(), rb.beta_fast());
  add_double("rope.beta_slow", ra.beta_slow(), rb.beta_slow());
  add_double("rope.attention_factor", ra.attention_factor(),
             rb.attention_factor());
  add("rope.truncate", Show(ra.truncate()), Show(rb.truncate()));
  add("max_position_embeddings", Show(a.max_position_embeddings()),
      Show(b.max_position_embeddings()));
  add("bos_token_id",
      a.has_bos_token_id() ? Show(a.bos_token_id()) : std::string("none"),
      b.has_bos_token_id() ? Show(b.bos_token_id()) : std::string("none"));
  add("eos_token_ids", absl::StrCat("[", absl::StrJoin(a.eos_token_ids(), ", "), "]"),
      absl::StrCat("[", absl::StrJoin(b.eos_token_ids(), ", "), "]"));
  add("dtype", lockstep::v1::DType_Name(a.dtype()),
      lockstep::v1::DType_Name(b.dtype()));
  add("kernel_mode", lockstep::v1::KernelMode_Name(learner.kernel_mode()),
      lockstep::v1::KernelMode_Name(rollout.kernel_mode()));
  add("device", lockstep::v1::Device_Name(learner.device()),
      lockstep::v1::Device_Name(rollout.device()));
  // Empty from a rollout built before these fields existed: unknown, so
  // refused like any other value.
  add("gpu_architecture", Show(learner.gpu_architecture()),
      Show(rollout.gpu_architecture()));
  add("kernel_build_id", Show(learner.kernel_build_id()),
      Show(rollout.kernel_build_id()));
  return diffs;
}

absl::Status CheckCompatible(const lockstep::v1::ModelInfo& learner,
                             const lockstep::v1::ModelInfo& rollout,
                             const std::string& endpoint) {
  const std::vector<FingerprintDifference> diffs =
      CompareFingerprints(learner, rollout);
  if (diffs.empty()) return absl::OkStatus();
  const FingerprintDifference& first = diffs.front();
  std::string more;
  if (diffs.size() > 1) {
    std::vector<std::string> names;
    for (size_t i = 1; i < diffs.size(); ++i) names.push_back(diffs[i].field);
    more = absl::StrCat(" (and ", diffs.size() - 1, " more: ",
                        absl::StrJoin(names, ", "), ")");
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "rollout ", endpoint,
      " does not compute as the learner does, its logprobs would not match: ",
      first.field, " differs (learner ", first.learner, ", rollout ",
      first.rollout, ")", more));
}

Learner::Learner(LearnerOptions options, std::unique_ptr<Trainer> trainer,
                 LearnerObserver* observer)
    : options_(std::move(options)), trainer_(std::move(trainer)), observer_(observer) {
  const TrainerOptions& t = trainer_->options();
  *fingerprint_.mutable_config() = common::ModelConfigToProto(trainer_->config());
  fingerprint_.set_kernel_mode(t.mode == common::KernelMode::kInvariant
                                   ? lockstep::v1::KERNEL_MODE_INVARIANT
                                   : lockstep::v1::KERNEL_MODE_STANDARD);
  fingerprint_.set_device(t.device == kernels::Device::kCuda
                              ? lockstep::v1::DEVICE_CUDA
                              : lockstep::v1::DEVICE_CPU);
  fingerprint_.set_tp_size(1);
  fingerprint_.set_kernel_build_id(kernels::KernelBuildId());
  fingerprint_.set_gpu_architecture(kernels::GpuArchitecture(t.device));
}

absl::Status Learner::CheckRollout(client::RolloutClient& client) const {
  const std::string endpoint = client.connection().options().target;
  client::CallOptions call;
  call.timeout = options_.register_timeout;
  call.max_attempts = 1;
  absl::StatusOr<lockstep::v1::ModelInfo> info = client.GetModelInfo(call);
  if (!info.ok()) {
    return absl::Status(info.status().code(),
                        absl::StrCat("rollout ", endpoint,
                                     ": GetModelInfo before the push: ",
                                     info.status().message()));
  }
  return CheckCompatible(fingerprint_, *info, endpoint);
}

absl::StatusOr<std::unique_ptr<Learner>> Learner::Create(const LearnerOptions& options,
                                                         LearnerObserver* observer) {
  if (options.max_buffered_trajectories <= 0) {
    return absl::InvalidArgumentError("max_buffered_trajectories must be > 0");
  }
  if (!options.checkpoint_dir.empty()) {
    // What crashed saves of a previous run left behind.
    absl::StatusOr<int> cleaned = CleanCheckpointLeftovers(options.checkpoint_dir);
    if (!cleaned.ok()) {
      std::fprintf(stderr, "learner: cleaning %s: %s\n",
                   options.checkpoint_dir.c_str(),
                   std::string(cleaned.status().message()).c_str());
    }
  }
  LOCKSTEP_ASSIGN_OR_RETURN(std::unique_ptr<Trainer> trainer,
                            Trainer::Create(options.trainer));
  if (observer != nullptr) observer->OnWeightVersion(trainer->version());
  return std::unique_ptr<Learner>(new Learner(options, std::move(trainer), observer));
}

void Learner::BufferCounts(SubmitResult* out) const {
  std::set<std::string> groups;
  int64_t tokens = 0;
  for (const Buffered& b : buffer_) {
    groups.insert(b.trajectory.group_id);
    tokens += static_cast<int64_t>(b.trajectory.completion_tokens.size());
  }
  out->buffered_trajectories = static_cast<int64_t>(buffer_.size());
  out->buffered_groups = static_cast<int64_t>(groups.size());
  out->buffered_tokens = tokens;
}

absl::StatusOr<SubmitResult> Learner::Submit(
    std::vector<Trajectory> trajectories) {
  if (trajectories.empty()) {
    return absl::InvalidArgumentError("no trajectories submitted");
  }
  for (size_t i = 0; i < trajectories.size(); ++i) {
    absl::Status s = trainer_->ValidateTrajectory(trajectories[i]);
    if (!s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("trajectory ", i, ": ", s.message()));
    }
  }
  std::lock_guard<std::mutex> lock(buffer_mu_);
  if (static_cast<int64_t>(buffer_.size() + trajectories.size()) >
      options_.max_buffered_trajectories) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "trajectory buffer full: ", buffer_.size(), " buffered + ",
        trajectories.size(), " submitted > ",
        options_.max_buffered_trajectories, "; run TrainStep first"));
  }
  SubmitResult result;
  result.accepted = static_cast<int64_t>(trajectories.size());
  for (Trajectory& t : trajectories) {
    buffer_.push_back(Buffered{next_id_++, std::move(t)});
  }
  BufferCounts(&result);
  return result;
}

absl::StatusOr<StepReport> Learner::TrainStep(const TrainStepOptions& options) {
  std::lock_guard<std::mutex> step_lock(step_mu_);
  if (options.expected_version.has_value() &&
      *options.expected_version != trainer_->version()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "expected weight version ", *options.expected_version,
        " but the learner is at ", trainer_->version()));
  }
  std::vector<Trajectory> batch;
  std::set<uint64_t> taken;
  {
    std::lock_guard<std::mutex> lock(buffer_mu_);
    if (buffer_.empty()) {
      return absl::FailedPreconditionError(
          "no trajectories buffered; SubmitTrajectories first");
    }
    const std::set<std::string> wanted(options.group_ids.begin(),
                                       options.group_ids.end());
    std::set<std::string> found;
    for (const Buffered& b : buffer_) {
      if (wanted.empty() || wanted.count(b.trajectory.group_id) > 0) {
        batch.push_back(b.trajectory);
        taken.insert(b.id);
        found.insert(b.trajectory.group_id);
      }
    }
    for (const std::string& g : wanted) {
      if (found.count(g) == 0) {
        return absl::NotFoundError(
            absl::StrCat("group id '", g, "' has no buffered trajectories"));
      }
    }
  }
  LOCKSTEP_ASSIGN_OR_RETURN(StepResult step, trainer_->Step(batch));
  {
    // The step is applied: its trajectories leave the buffer.
    std::lock_guard<std::mutex> lock(buffer_mu_);
    buffer_.erase(std::remove_if(buffer_.begin(), buffer_.end(),
                                 [&](const Buffered& b) {
                                   return taken.count(b.id) > 0;
                                 }),
                  buffer_.end());
  }
  if (observer_ != nullptr) observer_->OnStep(step);
  StepReport report;
  report.step = step;
  if (!options.skip_push) report.pushes = PushLocked({}, &report.push_seconds);
  {
    std::lock_guard<std::mutex> lock(state_mu_);
    mismatch_total_.Merge(step.mismatch);
    sampled_mismatch_total_.Merge(step.sampled_mismatch);
    last_step_ = report;
  }
  return report;
}

std::vector<PushResult> Learner::PushLocked(
    const std::vector<std::string>& only, double* seconds) {
  std::vector<std::shared_ptr<client::RolloutClient>> clients;
  {
    std::lock_guard<std::mutex> lock(state_mu_);
    for (const Rollout& r : rollouts_) {
      if (only.empty() || std::find(only.begin(), only.end(),
                                    r.info.endpoint) != only.end()) {
        clients.push_back(r.client);
      }
    }
  }
  if (seconds != nullptr) *seconds = 0.0;
  if (clients.empty()) return {};
  const int64_t version = trainer_->version();
  std::shared_ptr<const common::TensorMap> weights =
      trainer_->compute_weights();
  std::vector<client::RolloutClient*> raw;
  for (const auto& c : clients) raw.push_back(c.get());
  // Every attempt first re-checks the rollout: it may have been restarted
  // with another config since it registered.
  PushOptions push = options_.push;
  push.check = [this](client::RolloutClient& c) {
    if (shutting_down()) return absl::CancelledError("the learner is shutting down");
    return CheckRollout(c);
  };
  const auto start = std::chrono::steady_clock::now();
  std::vector<PushResult> results =
      PushToAll(raw, *weights, static_cast<uint64_t>(version),
                absl::StrCat("learner step ", trainer_->step()), push);
  if (seconds != nullptr) {
    *seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                             start)
                   .count();
  }
  std::lock_guard<std::mutex> lock(state_mu_);
  for (const PushResult& p : results) {
    if (observer_ != nullptr) observer_->OnPush(p);
    for (Rollout& r : rollouts_) {
      if (r.info.endpoint != p.endpoint) continue;
      if (p.status.ok()) {
        ++r.info.pushes_ok;
        r.info.weight_version = static_cast<int64_t>(p.rollout_version);
      } else {
        ++r.info.pushes_failed;
      }
      r.info.last_push = p;
    }
  }
  return results;
}

absl::StatusOr<std::vector<std::vector<float>>> Learner::ComputeLogprobs(
    const std::vector<std::vector<int32_t>>& sequences,
    const std::vector<int64_t>& prefix_lens,
    const std::vector<const common::SamplingSpec*>& sampling,
    std::vector<std::vector<float>>* sampled, std::optional<int64_t> expected_version,
    int64_t* version_out) {
  if (sequences.empty()) {
    return absl::InvalidArgumentError("no sequences to score");
  }
  std::lock_guard<std::mutex> lock(step_mu_);
  if (expected_version.has_value() && *expected_version != trainer_->version()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "weight version ", *expected_version, " requested; the learner is at ",
        trainer_->version()));
  }
  if (version_out != nullptr) *version_out = trainer_->version();
  return trainer_->ComputeLogprobs(sequences, prefix_lens, sampling, sampled);
}

absl::StatusOr<std::vector<PushResult>> Learner::RegisterRollouts(
    const std::vector<std::string>& endpoints, bool push_now) {
  if (endpoints.empty()) {
    return absl::InvalidArgumentError("no rollout endpoints given");
  }
  for (const std::string& e : endpoints) {
    LOCKSTEP_RETURN_IF_ERROR(ValidateEndpoint(e));
  }
  std::vector<Rollout> fresh;
  for (const std::string& e : endpoints) {
    if (std::any_of(fresh.begin(), fresh.end(),
                    [&](const Rollout& r) { return r.info.endpoint == e; })) {
      continue;
    }
    Rollout r;
    LOCKSTEP_ASSIGN_OR_RETURN(r.client,
                              ConnectRollout(e, options_.rollout_auth_token,
                                             options_.rollout_security));
    // One try that waits for the endpoint to come up.
    client::CallOptions call;
    call.timeout = options_.register_timeout;
    call.wait_for_ready = true;
    call.max_attempts = 1;
    absl::StatusOr<lockstep::v1::ModelInfo> info = r.client->GetModelInfo(call);
    if (!info.ok()) {
      const std::string message = absl::StrCat(
          "rollout ", e, ": GetModelInfo: ", info.status().message());
      // A rollout that does not answer in time is unreachable.
      if (absl::IsDeadlineExceeded(info.status())) {
        return absl::UnavailableError(message);
      }
      return absl::Status(info.status().code(), message);
    }
    LOCKSTEP_RETURN_IF_ERROR(CheckCompatible(fingerprint_, *info, e));
    if (static_cast<int64_t>(info->weight_version()) > trainer_->version() &&
        !options_.adopt_newer_rollouts) {
      // Its weights are not ones this learner produced (or it kept running
      // while the learner restarted): training on its samples would be
      // off-policy from the start, and pushes would be refused as version
      // regressions.
      return absl::FailedPreconditionError(absl::StrCat(
          "rollout ", e, " serves weight version ", info->weight_version(),
          ", newer than the learner's ", trainer_->version(),
          "; restart it from the learner's weights (rollout_service "
          "--model_dir=<checkpoint> --initial_version=<version>) or "
          "LoadCheckpoint first"));
    }
    r.info.endpoint = e;
    r.info.weight_version = static_cast<int64_t>(info->weight_version());
    r.info.mode = info->kernel_mode() == lockstep::v1::KERNEL_MODE_STANDARD
                      ? common::KernelMode::kStandard
                      : common::KernelMode::kInvariant;
    r.info.tp_size = static_cast<int>(info->tp_size());
    fresh.push_back(std::move(r));
  }
  std::lock_guard<std::mutex> step_lock(step_mu_);
  if (options_.adopt_newer_rollouts) {
    // Resumed from a checkpoint while the rollouts kept newer weights: the
    // learner's weights take a version past all of them (and are pushed).
    int64_t newest = -1;
    for (const Rollout& r : fresh) newest = std::max(newest, r.info.weight_version);
    // (An equal version is the same weights: the checkpoint was saved after
    // its push.)
    if (newest > trainer_->version()) {
      trainer_->AdvanceVersion(newest + 1);
      if (observer_ != nullptr) observer_->OnWeightVersion(trainer_->version());
    }
  }
  std::vector<std::string> behind;
  {
    std::lock_guard<std::mutex> lock(state_mu_);
    for (Rollout& r : fresh) {
      if (r.info.weight_version < trainer_->version()) {
        behind.push_back(r.info.endpoint);
      }
      auto it = std::find_if(rollouts_.begin(), rollouts_.end(),
                             [&](const Rollout& x) {
                               return x.info.endpoint == r.info.endpoint;
                             });
      if (it != rollouts_.end()) {
        r.info.pushes_ok = it->info.pushes_ok;
        r.info.pushes_failed = it->info.pushes_failed;
        r.info.last_push = it->info.last_push;
        *it = std::move(r);
      } else {
        rollouts_.push_back(std::move(r));
      }
    }
  }
  if (!push_now || behind.empty()) return std::vector<PushResult>{};
  return PushLocked(behind, nullptr);
}

int Learner::UnregisterRollouts(const std::vector<std::string>& endpoints) {
  std::lock_guard<std::mutex> lock(state_mu_);
  const size_t before = rollouts_.size();
  rollouts_.erase(
      std::remove_if(rollouts_.begin(), rollouts_.end(),
                     [&](const Rollout& r) {
                       return std::find(endpoints.begin(), endpoints.end(),
                                        r.info.endpoint) != endpoints.end();
                     }),
      rollouts_.end());
  return static_cast<int>(before - rollouts_.size());
}

std::vector<PushResult> Learner::PushWeights() {
  std::lock_guard<std::mutex> step_lock(step_mu_);
  return PushLocked({}, nullptr);
}

absl::StatusOr<std::vector<PushResult>> Learner::SyncRollout(const std::string& endpoint) {
  std::shared_ptr<client::RolloutClient> client;
  {
    std::lock_guard<std::mutex> lock(state_mu_);
    for (const Rollout& r : rollouts_) {
      if (r.info.endpoint == endpoint) client = r.client;
    }
  }
  if (client == nullptr) {
    return absl::NotFoundError(absl::StrCat("rollout ", endpoint, " is not registered"));
  }
  client::CallOptions call;
  call.timeout = options_.register_timeout;
  call.max_attempts = 1;
  absl::StatusOr<lockstep::v1::ModelInfo> info = client->GetModelInfo(call);
  if (!info.ok()) {
    return absl::Status(info.status().code(), absl::StrCat("rollout ", endpoint, ": GetModelInfo: ",
                                                           info.status().message()));
  }
  std::lock_guard<std::mutex> step_lock(step_mu_);
  if (static_cast<int64_t>(info->weight_version()) == trainer_->version()) {
    return std::vector<PushResult>{};
  }
  // Restarted from its initial weights (or behind after a failed push).
  return PushLocked({endpoint}, nullptr);
}

std::pair<int64_t, std::shared_ptr<const common::TensorMap>> Learner::Weights()
    const {
  std::lock_guard<std::mutex> lock(step_mu_);
  return {trainer_->version(), trainer_->compute_weights()};
}

absl::StatusOr<std::string> Learner::CheckpointPath(
    const std::string& name) const {
  if (options_.checkpoint_dir.empty()) {
    return absl::FailedPreconditionError(
        "checkpoints are disabled: start the learner with --checkpoint_dir");
  }
  if (!ValidCheckpointName(name)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "checkpoint name '", name,
        "' must be 1..200 characters of [A-Za-z0-9._-], not '.' or '..'"));
  }
  return (std::filesystem::path(options_.checkpoint_dir) / name).string();
}

absl::StatusOr<CheckpointInfo> Learner::SaveCheckpoint(
    const std::string& name) {
  std::lock_guard<std::mutex> step_lock(step_mu_);
  const std::string n =
      name.empty() ? absl::StrCat("step-", trainer_->step()) : name;
  LOCKSTEP_ASSIGN_OR_RETURN(std::string path, CheckpointPath(n));
  std::error_code ec;
  std::filesystem::create_directories(options_.checkpoint_dir, ec);
  std::map<std::string, std::string> extra;
  if (hooks_.save) extra = hooks_.save();
  LOCKSTEP_RETURN_IF_ERROR(trainer_->SaveCheckpoint(path, extra));
  CheckpointInfo info;
  info.path = path;
  info.step = trainer_->step();
  info.weight_version = trainer_->version();
  return info;
}

absl::StatusOr<CheckpointInfo> Learner::LoadCheckpoint(
    const std::string& name) {
  std::lock_guard<std::mutex> step_lock(step_mu_);
  LOCKSTEP_ASSIGN_OR_RETURN(std::string path, CheckpointPath(name));
  // NOT_FOUND when absent (Trainer::LoadCheckpoint also finds the copy an
  // interrupted save left).
  LOCKSTEP_ASSIGN_OR_RETURN(auto extra, trainer_->LoadCheckpoint(path));
  if (hooks_.load) LOCKSTEP_RETURN_IF_ERROR(hooks_.load(extra));
  CheckpointInfo info;
  info.path = path;
  info.extra = std::move(extra);
  info.step = trainer_->step();
  info.weight_version = trainer_->version();
  {
    // Buffered trajectories may name versions the loaded weights never had.
    std::lock_guard<std::mutex> lock(buffer_mu_);
    info.dropped_trajectories = static_cast<int64_t>(buffer_.size());
    buffer_.clear();
  }
  if (observer_ != nullptr) observer_->OnWeightVersion(trainer_->version());
  return info;
}

LearnerStatus Learner::Status() const {
  LearnerStatus s;
  s.step = trainer_->step();
  s.weight_version = trainer_->version();
  s.max_buffered_trajectories = options_.max_buffered_trajectories;
  s.learning_rate = trainer_->options().learning_rate;
  {
    std::lock_guard<std::mutex> lock(buffer_mu_);
    SubmitResult counts;
    BufferCounts(&counts);
    s.buffered_trajectories = counts.buffered_trajectories;
    s.buffered_groups = counts.buffered_groups;
    s.buffered_tokens = counts.buffered_tokens;
  }
  std::lock_guard<std::mutex> lock(state_mu_);
  s.mismatch_total = mismatch_total_;
  s.sampled_mismatch_total = sampled_mismatch_total_;
  s.last_step = last_step_;
  for (const Rollout& r : rollouts_) s.rollouts.push_back(r.info);
  return s;
}

void Learner::SetCheckpointHooks(CheckpointHooks hooks) {
  std::lock_guard<std::mutex> lock(step_mu_);
  hooks_ = std::move(hooks);
}

std::vector<std::shared_ptr<client::RolloutClient>> Learner::rollout_clients()
    const {
  std::lock_guard<std::mutex> lock(state_mu_);
  std::vector<std::shared_ptr<client::RolloutClient>> out;
  for (const Rollout& r : rollouts_) out.push_back(r.client);
  return out;
}

}  // namespace lockstep::learner
