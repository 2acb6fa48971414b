#include "learner_service/server/learner_grpc_service.h"

#include <grpcpp/server_context.h>

#include <algorithm>
#include <limits>
#include <optional>

#include "absl/strings/str_cat.h"
#include "common/sampling/sampling_proto.h"
#include "common/wire/grpc_status.h"
#include "common/net/metrics.h"
#include "common/wire/weight_stream.h"

namespace lockstep::learner {
namespace {

namespace v1 = ::lockstep::v1;

grpc::Status Draining() {
  return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                      "the learner is shutting down");
}

v1::KernelMode ModeToProto(common::KernelMode mode) {
  return mode == common::KernelMode::kStandard ? v1::KERNEL_MODE_STANDARD
                                               : v1::KERNEL_MODE_INVARIANT;
}

void RolloutInfoToProto(const RolloutInfo& info, v1::RolloutStatus* out) {
  out->set_endpoint(info.endpoint);
  out->set_weight_version(static_cast<uint64_t>(info.weight_version));
  out->set_kernel_mode(ModeToProto(info.mode));
  out->set_pushes_ok(static_cast<uint64_t>(info.pushes_ok));
  out->set_pushes_failed(static_cast<uint64_t>(info.pushes_failed));
  if (info.last_push.has_value()) {
    PushResultToProto(*info.last_push, out->mutable_last_push());
  }
}

}  // namespace

absl::StatusOr<Trajectory> TrajectoryFromProto(const v1::Trajectory& p) {
  Trajectory t;
  t.prompt_tokens.assign(p.prompt_token_ids().begin(),
                         p.prompt_token_ids().end());
  t.completion_tokens.assign(p.completion_token_ids().begin(),
                             p.completion_token_ids().end());
  t.rollout_logprobs.assign(p.rollout_logprobs().begin(),
                            p.rollout_logprobs().end());
  // Versions are uint64 on the wire; the trainer's int64 covers every
  // version a learner can reach, anything larger is simply unknown.
  constexpr uint64_t kMaxVersion = uint64_t{1} << 62;
  if (p.weight_version() > kMaxVersion) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight version ", p.weight_version(), " is unknown"));
  }
  t.weight_version = static_cast<int64_t>(p.weight_version());
  for (uint64_t v : p.token_weight_versions()) {
    if (v > kMaxVersion) {
      return absl::InvalidArgumentError(
          absl::StrCat("token weight version ", v, " is unknown"));
    }
    t.token_weight_versions.push_back(static_cast<int64_t>(v));
  }
  t.reward = p.reward();
  t.group_id = p.group_id();
  if (p.has_sampling()) {
    // Ids are checked against the model's vocabulary by the trainer.
    absl::StatusOr<common::SamplingSpec> spec = common::SamplingSpecFromProto(
        p.sampling(), std::numeric_limits<int32_t>::max());
    if (!spec.ok()) return spec.status();
    t.sampling = *std::move(spec);
  }
  t.rollout_sampled_logprobs.assign(p.rollout_sampled_logprobs().begin(),
                                    p.rollout_sampled_logprobs().end());
  // Values above 1 stay above 1 (2), for the trainer to refuse.
  for (uint32_t m : p.loss_mask()) t.loss_mask.push_back(static_cast<uint8_t>(std::min(m, 2u)));
  t.advantages.assign(p.advantages().begin(), p.advantages().end());
  return t;
}

void MismatchToProto(const MismatchStats& s, v1::MismatchStats* out) {
  out->set_tokens_compared(static_cast<uint64_t>(s.tokens_compared));
  out->set_tokens_mismatched(static_cast<uint64_t>(s.tokens_mismatched));
  out->set_tokens_stale(static_cast<uint64_t>(s.tokens_stale));
  out->set_max_abs_diff(s.max_abs_diff);
  out->set_mean_abs_diff(s.mean_abs_diff());
  out->set_kl_k3(s.kl_k3());
  out->set_exact_fraction(s.exact_fraction());
}

void PushResultToProto(const PushResult& p, v1::WeightPushResult* out) {
  out->set_endpoint(p.endpoint);
  out->set_code(static_cast<int32_t>(p.status.code()));
  out->set_message(std::string(p.status.message()));
  out->set_attempts(static_cast<uint32_t>(p.attempts));
  out->set_duration_seconds(p.seconds);
  out->set_bytes(p.bytes);
  out->set_weight_version(p.rollout_version);
  out->set_path(p.path);
}

void StepReportToProto(const StepReport& r, v1::TrainStepResponse* out) {
  const StepResult& s = r.step;
  out->set_step(static_cast<uint64_t>(s.step));
  out->set_weight_version(static_cast<uint64_t>(s.weight_version));
  out->set_loss(s.loss);
  out->set_policy_loss(s.policy_loss);
  out->set_kl(s.kl);
  out->set_grad_norm(s.grad_norm);
  out->set_clip_fraction(s.clip_fraction);
  out->set_num_trajectories(static_cast<uint64_t>(s.num_trajectories));
  out->set_num_groups(static_cast<uint64_t>(s.num_groups));
  out->set_num_tokens(static_cast<uint64_t>(s.num_tokens));
  v1::RewardStats* rw = out->mutable_reward();
  rw->set_mean(s.reward.mean);
  rw->set_std(s.reward.std);
  rw->set_min(s.reward.min);
  rw->set_max(s.reward.max);
  MismatchToProto(s.mismatch, out->mutable_mismatch());
  MismatchToProto(s.sampled_mismatch, out->mutable_sampled_mismatch());
  for (const PushResult& p : r.pushes) PushResultToProto(p, out->add_pushes());
  out->set_step_seconds(s.seconds);
  out->set_push_seconds(r.push_seconds);
  out->set_learning_rate(s.learning_rate);
  out->set_entropy(s.entropy);
  out->set_router_aux_loss(s.router_aux_loss);
}

grpc::Status LearnerServiceImpl::SubmitTrajectories(
    grpc::ServerContext* context,
    grpc::ServerReader<v1::SubmitTrajectoriesRequest>* reader,
    v1::SubmitTrajectoriesResponse* response) {
  if (draining_) return Draining();
  const int64_t limit = learner_->Status().max_buffered_trajectories;
  std::vector<Trajectory> all;
  v1::SubmitTrajectoriesRequest req;
  // Read the whole stream before buffering anything: all or nothing.
  absl::Status bad;
  uint64_t announced = 0;
  while (reader->Read(&req)) {
    if (!bad.ok()) continue;  // drain the stream, report the first error
    if (req.stream_trajectories() != 0) {
      if (announced != 0 && announced != req.stream_trajectories()) {
        bad = absl::InvalidArgumentError(absl::StrCat(
            "stream_trajectories changed from ", announced, " to ",
            req.stream_trajectories(), " within the stream"));
        continue;
      }
      announced = req.stream_trajectories();
    }
    for (const v1::Trajectory& p : req.trajectories()) {
      absl::StatusOr<Trajectory> t = TrajectoryFromProto(p);
      if (!t.ok()) {
        bad = absl::InvalidArgumentError(absl::StrCat(
            "trajectory ", all.size(), ": ", t.status().message()));
        break;
      }
      all.push_back(std::move(*t));
    }
    if (bad.ok() && static_cast<int64_t>(all.size()) > limit) {
      bad = absl::ResourceExhaustedError(absl::StrCat(
          "more than ", limit, " trajectories in one submission"));
    }
  }
  if (context->IsCancelled()) {
    return grpc::Status(grpc::StatusCode::CANCELLED, "client cancelled");
  }
  if (bad.ok() && announced != 0 && announced != all.size()) {
    // A message gRPC could not parse ends the stream early as if the client
    // had finished: only the announced count tells the two apart.
    bad = absl::InvalidArgumentError(absl::StrCat(
        "the stream announced ", announced, " trajectories but carried ", all.size(),
        " (a message was lost or could not be parsed); nothing was buffered"));
  }
  if (!bad.ok()) return common::ToGrpcStatus(bad);
  absl::StatusOr<SubmitResult> r = learner_->Submit(std::move(all));
  if (!r.ok()) return common::ToGrpcStatus(r.status());
  response->set_accepted(static_cast<uint64_t>(r->accepted));
  response->set_buffered_trajectories(
      static_cast<uint64_t>(r->buffered_trajectories));
  response->set_buffered_groups(static_cast<uint64_t>(r->buffered_groups));
  response->set_buffered_tokens(static_cast<uint64_t>(r->buffered_tokens));
  return grpc::Status::OK;
}

grpc::Status LearnerServiceImpl::TrainStep(grpc::ServerContext*,
                                           const v1::TrainStepRequest* request,
                                           v1::TrainStepResponse* response) {
  if (draining_) return Draining();
  TrainStepOptions options;
  options.group_ids.assign(request->group_ids().begin(),
                           request->group_ids().end());
  if (request->has_expected_version()) {
    options.expected_version = static_cast<int64_t>(request->expected_version());
  }
  options.skip_push = request->skip_push();
  absl::StatusOr<StepReport> r = learner_->TrainStep(options);
  if (!r.ok()) return common::ToGrpcStatus(r.status());
  StepReportToProto(*r, response);
  return grpc::Status::OK;
}

grpc::Status LearnerServiceImpl::ComputeLogprobs(
    grpc::ServerContext*, const v1::ComputeLogprobsRequest* request,
    v1::ComputeLogprobsResponse* response) {
  if (draining_) return Draining();
  if (request->top_logprobs() > 0) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "the learner does not return top_logprobs; ask a "
                        "rollout");
  }
  constexpr uint64_t kMaxVersion = uint64_t{1} << 62;
  std::optional<int64_t> expected;
  if (request->has_weight_version()) {
    if (request->weight_version() > kMaxVersion) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                          absl::StrCat("weight version ", request->weight_version(),
                                       " requested; the learner is at ", learner_->version()));
    }
    expected = static_cast<int64_t>(request->weight_version());
  }
  std::vector<std::vector<int32_t>> seqs;
  std::vector<int64_t> prefix;
  for (const v1::ScoredSequence& s : request->sequences()) {
    seqs.emplace_back(s.token_ids().begin(), s.token_ids().end());
    prefix.push_back(static_cast<int64_t>(s.prompt_len()));
  }
  // Sampling distributions: the request's, overridden per sequence.
  const int64_t vocab = learner_->config().vocab_size;
  std::vector<common::SamplingSpec> specs;
  specs.reserve(request->sequences_size() + 1);
  std::vector<const common::SamplingSpec*> sampling;
  const common::SamplingSpec* shared = nullptr;
  if (request->has_sampling()) {
    absl::StatusOr<common::SamplingSpec> spec =
        common::SamplingSpecFromProto(request->sampling(), vocab);
    if (!spec.ok()) return common::ToGrpcStatus(spec.status());
    specs.push_back(*std::move(spec));
    shared = &specs.back();
  }
  bool any = shared != nullptr;
  for (int i = 0; i < request->sequences_size(); ++i) {
    const v1::ScoredSequence& s = request->sequences(i);
    if (!s.has_sampling()) {
      sampling.push_back(shared);
      continue;
    }
    absl::StatusOr<common::SamplingSpec> spec =
        common::SamplingSpecFromProto(s.sampling(), vocab);
    if (!spec.ok()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          absl::StrCat("sequence ", i, ": ", spec.status().message()));
    }
    specs.push_back(*std::move(spec));
    sampling.push_back(&specs.back());
    any = true;
  }
  if (!any) sampling.clear();
  // The version is read with the weights, under the learner's step lock: a
  // step landing during the call cannot make the reported version lie.
  int64_t version = 0;
  std::vector<std::vector<float>> sampled;
  absl::StatusOr<std::vector<std::vector<float>>> r =
      learner_->ComputeLogprobs(seqs, prefix, sampling, &sampled, expected, &version);
  if (!r.ok()) return common::ToGrpcStatus(r.status());
  for (size_t i = 0; i < r->size(); ++i) {
    v1::SequenceLogprobs* out = response->add_results();
    out->mutable_logprobs()->Add((*r)[i].begin(), (*r)[i].end());
    if (!sampling.empty() && sampling[i] != nullptr) {
      out->mutable_sampled_logprobs()->Add(sampled[i].begin(), sampled[i].end());
    }
  }
  response->set_weight_version(static_cast<uint64_t>(version));
  return grpc::Status::OK;
}

grpc::Status LearnerServiceImpl::RegisterRollout(
    grpc::ServerContext*, const v1::RegisterRolloutRequest* request,
    v1::RegisterRolloutResponse* response) {
  if (draining_) return Draining();
  std::vector<std::string> endpoints(request->endpoints().begin(),
                                     request->endpoints().end());
  absl::StatusOr<std::vector<PushResult>> r =
      learner_->RegisterRollouts(endpoints, request->push_now());
  if (!r.ok()) return common::ToGrpcStatus(r.status());
  for (const PushResult& p : *r) PushResultToProto(p, response->add_pushes());
  for (const RolloutInfo& info : learner_->Status().rollouts) {
    RolloutInfoToProto(info, response->add_rollouts());
  }
  return grpc::Status::OK;
}

grpc::Status LearnerServiceImpl::UnregisterRollout(
    grpc::ServerContext*, const v1::UnregisterRolloutRequest* request,
    v1::UnregisterRolloutResponse* response) {
  if (draining_) return Draining();
  std::vector<std::string> endpoints(request->endpoints().begin(),
                                     request->endpoints().end());
  response->set_removed(
      static_cast<uint32_t>(learner_->UnregisterRollouts(endpoints)));
  return grpc::Status::OK;
}

grpc::Status LearnerServiceImpl::PushWeights(grpc::ServerContext*,
                                             const v1::PushWeightsRequest*,
                                             v1::PushWeightsResponse* response) {
  if (draining_) return Draining();
  std::vector<PushResult> pushes = learner_->PushWeights();
  response->set_weight_version(static_cast<uint64_t>(learner_->version()));
  for (const PushResult& p : pushes) PushResultToProto(p, response->add_pushes());
  return grpc::Status::OK;
}

grpc::Status LearnerServiceImpl::GetWeights(
    grpc::ServerContext* context, const v1::GetWeightsRequest* request,
    grpc::ServerWriter<v1::WeightUpdate>* writer) {
  if (draining_) return Draining();
  common::WeightStreamOptions options;
  if (request->chunk_bytes() > 0) options.chunk_bytes = request->chunk_bytes();
  auto [version, weights] = learner_->Weights();
  options.source = absl::StrCat("learner version ", version);
  absl::Status s = common::StreamWeights(
      *weights, static_cast<uint64_t>(version),
      [&](const v1::WeightUpdate& m) {
        if (context->IsCancelled() || !writer->Write(m)) {
          return absl::CancelledError("client went away");
        }
        return absl::OkStatus();
      },
      options);
  return common::ToGrpcStatus(s);
}

grpc::Status LearnerServiceImpl::SaveCheckpoint(
    grpc::ServerContext*, const v1::SaveCheckpointRequest* request,
    v1::SaveCheckpointResponse* response) {
  if (draining_) return Draining();
  absl::StatusOr<CheckpointInfo> r = learner_->SaveCheckpoint(request->name());
  if (!r.ok()) return common::ToGrpcStatus(r.status());
  response->set_path(r->path);
  response->set_step(static_cast<uint64_t>(r->step));
  response->set_weight_version(static_cast<uint64_t>(r->weight_version));
  return grpc::Status::OK;
}

grpc::Status LearnerServiceImpl::LoadCheckpoint(
    grpc::ServerContext*, const v1::LoadCheckpointRequest* request,
    v1::LoadCheckpointResponse* response) {
  if (draining_) return Draining();
  absl::StatusOr<CheckpointInfo> r = learner_->LoadCheckpoint(request->name());
  if (!r.ok()) return common::ToGrpcStatus(r.status());
  response->set_path(r->path);
  response->set_step(static_cast<uint64_t>(r->step));
  response->set_weight_version(static_cast<uint64_t>(r->weight_version));
  response->set_dropped_trajectories(
      static_cast<uint64_t>(r->dropped_trajectories));
  return grpc::Status::OK;
}

grpc::Status LearnerServiceImpl::GetStats(grpc::ServerContext*,
                                          const v1::GetStatsRequest*,
                                          v1::LearnerStats* response) {
  const LearnerStatus s = learner_->Status();
  const TrainerOptions& o = learner_->trainer_options();
  response->set_step(static_cast<uint64_t>(s.step));
  response->set_weight_version(static_cast<uint64_t>(s.weight_version));
  response->set_kernel_mode(ModeToProto(o.mode));
  response->set_device(o.device == kernels::Device::kCuda ? v1::DEVICE_CUDA
                                                          : v1::DEVICE_CPU);
  response->set_compute_dtype(common::ToProtoDType(learner_->config().dtype));
  *response->mutable_config() = common::ModelConfigToProto(learner_->config());
  response->set_buffered_trajectories(
      static_cast<uint64_t>(s.buffered_trajectories));
  response->set_buffered_groups(static_cast<uint64_t>(s.buffered_groups));
  response->set_buffered_tokens(static_cast<uint64_t>(s.buffered_tokens));
  response->set_max_buffered_trajectories(
      static_cast<uint64_t>(s.max_buffered_trajectories));
  MismatchToProto(s.mismatch_total, response->mutable_mismatch_total());
  MismatchToProto(s.sampled_mismatch_total, response->mutable_sampled_mismatch_total());
  if (s.last_step.has_value()) {
    StepReportToProto(*s.last_step, response->mutable_last_step());
  }
  for (const RolloutInfo& info : s.rollouts) {
    RolloutInfoToProto(info, response->add_rollouts());
  }
  response->set_learning_rate(s.learning_rate);
  response->set_server_version(common::kLockstepVersion);
  return grpc::Status::OK;
}

}  // namespace lockstep::learner
