#include "sdk/cpp/learner_client.h"

#include <grpcpp/support/sync_stream.h>

#include <utility>

namespace lockstep::client {

v1::Trajectory MakeTrajectory(const std::vector<int32_t>& prompt_token_ids,
                              const v1::Completion& completion, float reward,
                              const std::string& group_id) {
  v1::Trajectory t;
  t.mutable_prompt_token_ids()->Add(prompt_token_ids.begin(),
                                    prompt_token_ids.end());
  *t.mutable_completion_token_ids() = completion.token_ids();
  *t.mutable_rollout_logprobs() = completion.logprobs();
  t.set_weight_version(completion.weight_version());
  *t.mutable_token_weight_versions() = completion.token_weight_versions();
  t.set_reward(reward);
  t.set_group_id(group_id);
  if (completion.has_sampling()) {
    // The distribution the tokens were drawn from: the learner trains on
    // the logprobs under it.
    *t.mutable_sampling() = completion.sampling();
    *t.mutable_rollout_sampled_logprobs() = completion.sampled_logprobs();
  }
  return t;
}

absl::StatusOr<std::unique_ptr<LearnerClient>> LearnerClient::Create(
    const ClientOptions& options) {
  absl::StatusOr<std::shared_ptr<Connection>> c = Connection::Create(options);
  if (!c.ok()) return c.status();
  return std::make_unique<LearnerClient>(*std::move(c));
}

LearnerClient::LearnerClient(std::shared_ptr<Connection> connection)
    : connection_(std::move(connection)),
      stub_(v1::LearnerService::NewStub(connection_->channel())) {}

absl::StatusOr<v1::SubmitTrajectoriesResponse>
LearnerClient::SubmitTrajectories(
    const std::vector<v1::Trajectory>& trajectories, const CallOptions& call,
    const SubmitOptions& options) {
  if (trajectories.empty()) {
    return absl::InvalidArgumentError("no trajectories to submit");
  }
  // Pack once; every try sends the same messages. The first announces the
  // total, so a message lost in transit fails the call instead of
  // committing part of it.
  std::vector<v1::SubmitTrajectoriesRequest> messages(1);
  messages[0].set_stream_trajectories(trajectories.size());
  size_t bytes = 0;
  for (const v1::Trajectory& t : trajectories) {
    const size_t size = t.ByteSizeLong();
    if (bytes > 0 && bytes + size > options.max_message_bytes) {
      messages.emplace_back();
      bytes = 0;
    }
    *messages.back().add_trajectories() = t;
    bytes += size + 8;
  }
  return connection_->Unary<v1::SubmitTrajectoriesResponse>(
      call,
      [&](grpc::ClientContext* ctx, v1::SubmitTrajectoriesResponse* response) {
        std::unique_ptr<grpc::ClientWriter<v1::SubmitTrajectoriesRequest>>
            writer = stub_->SubmitTrajectories(ctx, response);
        for (const v1::SubmitTrajectoriesRequest& m : messages) {
          if (!writer->Write(m)) break;  // Finish() says why
        }
        writer->WritesDone();
        return writer->Finish();
      });
}

absl::StatusOr<v1::TrainStepResponse> LearnerClient::TrainStep(
    const v1::TrainStepRequest& request, const CallOptions& call) {
  return connection_->Unary<v1::TrainStepResponse>(
      call, [&](grpc::ClientContext* ctx, v1::TrainStepResponse* r) {
        return stub_->TrainStep(ctx, request, r);
      });
}

absl::StatusOr<v1::ComputeLogprobsResponse> LearnerClient::ComputeLogprobs(
    const v1::ComputeLogprobsRequest& request, const CallOptions& call) {
  return connection_->Unary<v1::ComputeLogprobsResponse>(
      call, [&](grpc::ClientContext* ctx, v1::ComputeLogprobsResponse* r) {
        return stub_->ComputeLogprobs(ctx, request, r);
      });
}

absl::StatusOr<v1::RegisterRolloutResponse> LearnerClient::RegisterRollout(
    const std::vector<std::string>& endpoints, bool push_now,
    const CallOptions& call) {
  v1::RegisterRolloutRequest request;
  for (const std::string& e : endpoints) request.add_endpoints(e);
  request.set_push_now(push_now);
  return connection_->Unary<v1::RegisterRolloutResponse>(
      call, [&](grpc::ClientContext* ctx, v1::RegisterRolloutResponse* r) {
        return stub_->RegisterRollout(ctx, request, r);
      });
}

absl::StatusOr<v1::UnregisterRolloutResponse> LearnerClient::UnregisterRollout(
    const std::vector<std::string>& endpoints, const CallOptions& call) {
  v1::UnregisterRolloutRequest request;
  for (const std::string& e : endpoints) request.add_endpoints(e);
  return connection_->Unary<v1::UnregisterRolloutResponse>(
      call, [&](grpc::ClientContext* ctx, v1::UnregisterRolloutResponse* r) {
        return stub_->UnregisterRollout(ctx, request, r);
      });
}

absl::StatusOr<v1::PushWeightsResponse> LearnerClient::PushWeights(
    const CallOptions& call) {
  return connection_->Unary<v1::PushWeightsResponse>(
      call, [&](grpc::ClientContext* ctx, v1::PushWeightsResponse* r) {
        return stub_->PushWeights(ctx, v1::PushWeightsRequest(), r);
      });
}

absl::Status LearnerClient::GetWeights(
    const std::function<absl::Status(const v1::WeightUpdate&)>& sink,
    uint32_t chunk_bytes, const CallOptions& call) {
  v1::GetWeightsRequest request;
  request.set_chunk_bytes(chunk_bytes);
  bool received = false;
  absl::Status sink_error;
  absl::Status s = connection_->Run(
      call,
      [&](grpc::ClientContext* ctx, int) {
        std::unique_ptr<grpc::ClientReader<v1::WeightUpdate>> reader =
            stub_->GetWeights(ctx, request);
        v1::WeightUpdate message;
        while (reader->Read(&message)) {
          received = true;
          sink_error = sink(message);
          if (!sink_error.ok()) {
            ctx->TryCancel();
            while (reader->Read(&message)) {
            }
            reader->Finish().ok();
            return grpc::Status::OK;
          }
        }
        return reader->Finish();
      },
      [&] { return !received; });
  if (!sink_error.ok()) return sink_error;
  return s;
}

absl::StatusOr<std::vector<v1::WeightUpdate>> LearnerClient::GetWeights(
    uint32_t chunk_bytes, const CallOptions& call) {
  std::vector<v1::WeightUpdate> out;
  absl::Status s = GetWeights(
      [&](const v1::WeightUpdate& m) {
        out.push_back(m);
        return absl::OkStatus();
      },
      chunk_bytes, call);
  if (!s.ok()) return s;
  return out;
}

absl::StatusOr<v1::SaveCheckpointResponse> LearnerClient::SaveCheckpoint(
    const std::string& name, const CallOptions& call) {
  v1::SaveCheckpointRequest request;
  request.set_name(name);
  return connection_->Unary<v1::SaveCheckpointResponse>(
      call, [&](grpc::ClientContext* ctx, v1::SaveCheckpointResponse* r) {
        return stub_->SaveCheckpoint(ctx, request, r);
      });
}

absl::StatusOr<v1::LoadCheckpointResponse> LearnerClient::LoadCheckpoint(
    const std::string& name, const CallOptions& call) {
  v1::LoadCheckpointRequest request;
  request.set_name(name);
  return connection_->Unary<v1::LoadCheckpointResponse>(
      call, [&](grpc::ClientContext* ctx, v1::LoadCheckpointResponse* r) {
        return stub_->LoadCheckpoint(ctx, request, r);
      });
}

absl::StatusOr<v1::LearnerStats> LearnerClient::GetStats(
    const CallOptions& call) {
  return connection_->Unary<v1::LearnerStats>(
      call, [&](grpc::ClientContext* ctx, v1::LearnerStats* r) {
        return stub_->GetStats(ctx, v1::GetStatsRequest(), r);
      });
}

absl::StatusOr<HealthStatus> LearnerClient::Health(const CallOptions& call) {
  return connection_->CheckHealth(kLearnerServiceName, call);
}

}  // namespace lockstep::client
