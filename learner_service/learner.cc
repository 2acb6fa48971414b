#include "learner_service/learner.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <set>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status/status_macros.h"
#include "common/wire/weight_stream.h"

namespace lockstep::learner {
namespace {

// The fields a rollout must share with the learner for a pushed tensor set
// to be loadable and the logprobs to be comparable.
absl::Status CheckSameModel(const common::ModelConfig& mine,
                            const lockstep::v1::ModelConfig& theirs,
                            const std::string& endpoint) {
  const lockstep::v1::ModelConfig want = common::ModelConfigToProto(mine);
  std::vector<std::string> diffs;
  auto check = [&](const char* name, auto a, auto b) {
    if (a != b) diffs.push_back(absl::StrCat(name, " ", b, " != ", a));
  };
  check("vocab_size", want.vocab_size(), theirs.vocab_size());
  check("hidden_size", want.hidden_size(), theirs.hidden_size());
  check("intermediate_size", want.intermediate_size(),
        theirs.intermediate_size());
  check("num_hidden_layers", want.num_hidden_layers(),
        theirs.num_hidden_layers());
  check("num_attention_heads", want.num_attention_heads(),
        theirs.num_attention_heads());
  check("num_key_value_heads", want.num_key_value_heads(),
        theirs.num_key_value_heads());
  check("head_dim", want.head_dim(), theirs.head_dim());
  check("tie_word_embeddings", want.tie_word_embeddings(),
        theirs.tie_word_embeddings());
  check("qk_norm", want.qk_norm(), theirs.qk_norm());
  check("dtype", static_cast<int>(want.dtype()),
        static_cast<int>(theirs.dtype()));
  // The arithmetic beyond the shapes: a different epsilon, RoPE or bias set
  // would make every token mismatch while both sides look healthy.
  check("model_type", want.model_type(), theirs.model_type());
  check("qkv_bias", want.qkv_bias(), theirs.qkv_bias());
  check("rms_norm_eps", want.rms_norm_eps(), theirs.rms_norm_eps());
  check("rope_theta", want.rope_theta(), theirs.rope_theta());
  check("rope.rope_type", want.rope().rope_type(), theirs.rope().rope_type());
  check("rope.factor", want.rope().factor(), theirs.rope().factor());
  check("rope.low_freq_factor", want.rope().low_freq_factor(),
        theirs.rope().low_freq_factor());
  check("rope.high_freq_factor", want.rope().high_freq_factor(),
        theirs.rope().high_freq_factor());
  check("rope.original_max_position_embeddings",
        want.rope().original_max_position_embeddings(),
        theirs.rope().original_max_position_embeddings());
  check("rope.beta_fast", want.rope().beta_fast(), theirs.rope().beta_fast());
  check("rope.beta_slow", want.rope().beta_slow(), theirs.rope().beta_slow());
  check("rope.attention_factor", want.rope().attention_factor(),
        theirs.rope().attention_factor());
  check("rope.truncate", want.rope().truncate(), theirs.rope().truncate());
  if (diffs.empty()) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat("rollout ", endpoint,
                   " serves another model than the learner's (theirs vs "
                   "ours): ",
                   absl::StrJoin(diffs, ", ")));
}

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

}  // namespace

Learner::Learner(LearnerOptions options, std::unique_ptr<Trainer> trainer,
                 LearnerObserver* observer)
    : options_(std::move(options)), trainer_(std::move(trainer)), observer_(observer) {}

absl::StatusOr<std::unique_ptr<Learner>> Learner::Create(const LearnerOptions& options,
                                                         LearnerObserver* observer) {
  if (options.max_buffered_trajectories <= 0) {
    return absl::InvalidArgumentError("max_buffered_trajectories must be > 0");
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
  const auto start = std::chrono::steady_clock::now();
  std::vector<PushResult> results =
      PushToAll(raw, *weights, static_cast<uint64_t>(version),
                absl::StrCat("learner step ", trainer_->step()),
                options_.push);
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
    const std::vector<int64_t>& prefix_lens) {
  if (sequences.empty()) {
    return absl::InvalidArgumentError("no sequences to score");
  }
  std::lock_guard<std::mutex> lock(step_mu_);
  return trainer_->ComputeLogprobs(sequences, prefix_lens);
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
    LOCKSTEP_RETURN_IF_ERROR(CheckSameModel(trainer_->config(), info->config(), e));
    if (static_cast<int64_t>(info->weight_version()) > trainer_->version()) {
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
    fresh.push_back(std::move(r));
  }
  std::lock_guard<std::mutex> step_lock(step_mu_);
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
  if (!std::filesystem::exists(path)) {
    return absl::NotFoundError(absl::StrCat("no checkpoint ", path));
  }
  LOCKSTEP_ASSIGN_OR_RETURN(auto extra, trainer_->LoadCheckpoint(path));
  if (hooks_.load) LOCKSTEP_RETURN_IF_ERROR(hooks_.load(extra));
  CheckpointInfo info;
  info.path = path;
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
