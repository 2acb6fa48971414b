#include "learner_service/rollout_client.h"

#include <chrono>
#include <thread>

#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/support/channel_arguments.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/grpc_status.h"
#include "common/weight_stream.h"

namespace lockstep::learner {
namespace {

void SetDeadline(grpc::ClientContext* ctx, absl::Duration timeout) {
  ctx->set_deadline(std::chrono::system_clock::now() +
                    absl::ToChronoMilliseconds(timeout));
}

}  // namespace

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

void RolloutClient::Prepare(grpc::ClientContext* ctx,
                            absl::Duration timeout) const {
  SetDeadline(ctx, timeout);
  if (!auth_token_.empty()) {
    ctx->AddMetadata("authorization", "Bearer " + auth_token_);
  }
}

RolloutClient::RolloutClient(std::string endpoint, std::string auth_token,
                             common::ChannelSecurity security)
    : endpoint_(std::move(endpoint)), auth_token_(std::move(auth_token)) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(256 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  // Reconnect quickly after a rollout restarts (default backoff is up to 2
  // minutes, longer than any retry budget here).
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  // gRPC's per-attempt connect timeout (not a backoff): 100 ms here capped
  // every TCP + HTTP/2 handshake and failed calls on a loaded machine.
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 20000);
  security.ApplyToArguments(&args);
  channel_ =
      grpc::CreateCustomChannel(endpoint_, security.credentials(), args);
  stub_ = lockstep::v1::RolloutService::NewStub(channel_);
}

absl::StatusOr<lockstep::v1::ModelInfo> RolloutClient::GetModelInfo(
    absl::Duration timeout, bool wait_for_ready) {
  grpc::ClientContext ctx;
  Prepare(&ctx, timeout);
  ctx.set_wait_for_ready(wait_for_ready);
  lockstep::v1::GetModelInfoRequest req;
  lockstep::v1::ModelInfo info;
  grpc::Status s = stub_->GetModelInfo(&ctx, req, &info);
  if (!s.ok()) {
    absl::Status st = common::FromGrpcStatus(s);
    return absl::Status(st.code(), absl::StrCat("rollout ", endpoint_,
                                                ": GetModelInfo: ",
                                                st.message()));
  }
  return info;
}

absl::StatusOr<lockstep::v1::GenerateResponse> RolloutClient::Generate(
    const lockstep::v1::GenerateRequest& request, absl::Duration timeout) {
  grpc::ClientContext ctx;
  Prepare(&ctx, timeout);
  lockstep::v1::GenerateResponse resp;
  grpc::Status s = stub_->Generate(&ctx, request, &resp);
  if (!s.ok()) {
    absl::Status st = common::FromGrpcStatus(s);
    return absl::Status(st.code(), absl::StrCat("rollout ", endpoint_,
                                                ": Generate: ", st.message()));
  }
  return resp;
}

PushResult RolloutClient::PushWeights(const common::TensorMap& tensors,
                                      uint64_t version,
                                      const std::string& source,
                                      const PushOptions& options) {
  PushResult result;
  result.endpoint = endpoint_;
  const auto start = std::chrono::steady_clock::now();
  common::WeightStreamOptions stream_options;
  if (options.chunk_bytes > 0) stream_options.chunk_bytes = options.chunk_bytes;
  stream_options.source = source;
  absl::Duration backoff = options.initial_backoff;
  for (int attempt = 1; attempt <= std::max(1, options.max_attempts);
       ++attempt) {
    result.attempts = attempt;
    grpc::ClientContext ctx;
    Prepare(&ctx, options.attempt_timeout);
    lockstep::v1::UpdateWeightsResponse resp;
    std::unique_ptr<grpc::ClientWriter<lockstep::v1::WeightUpdate>> writer =
        stub_->UpdateWeights(&ctx, &resp);
    bool broken = false;
    absl::Status streamed = common::StreamWeights(
        tensors, version,
        [&](const lockstep::v1::WeightUpdate& msg) {
          if (!writer->Write(msg)) {
            broken = true;  // the server ended the call; Finish() says why
            return absl::CancelledError("stream closed by the rollout");
          }
          return absl::OkStatus();
        },
        stream_options);
    if (!broken) writer->WritesDone();
    grpc::Status s = writer->Finish();
    if (!streamed.ok() && !broken) {
      // A local problem (inconsistent tensors): retrying cannot help.
      result.status = streamed;
      break;
    }
    result.status = common::FromGrpcStatus(s);
    if (result.status.ok()) {
      result.bytes = resp.bytes();
      result.rollout_version = resp.weight_version();
      break;
    }
    result.status = absl::Status(
        result.status.code(),
        absl::StrCat("push of version ", version, " to ", endpoint_,
                     " (attempt ", attempt, "): ", result.status.message()));
    if (!absl::IsUnavailable(result.status) ||
        attempt == options.max_attempts) {
      break;
    }
    absl::SleepFor(backoff);
    backoff = backoff * 2;
  }
  result.seconds = std::chrono::duration<double>(
                       std::chrono::steady_clock::now() - start)
                       .count();
  return result;
}

std::vector<PushResult> PushToAll(const std::vector<RolloutClient*>& clients,
                                  const common::TensorMap& tensors,
                                  uint64_t version, const std::string& source,
                                  const PushOptions& options) {
  std::vector<PushResult> results(clients.size());
  if (clients.size() == 1) {
    results[0] = clients[0]->PushWeights(tensors, version, source, options);
    return results;
  }
  std::vector<std::thread> threads;
  threads.reserve(clients.size());
  for (size_t i = 0; i < clients.size(); ++i) {
    threads.emplace_back([&, i] {
      results[i] = clients[i]->PushWeights(tensors, version, source, options);
    });
  }
  for (std::thread& t : threads) t.join();
  return results;
}

}  // namespace lockstep::learner
