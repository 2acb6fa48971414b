#include "sdk/cpp/rollout_client.h"

#include <grpcpp/support/sync_stream.h>

#include <algorithm>
#include <utility>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "common/wire/grpc_status.h"

namespace lockstep::client {
namespace {

class ReaderImpl final : public GenerateStreamReader {
 public:
  ReaderImpl(std::shared_ptr<Connection> connection,
             v1::RolloutService::Stub* stub, v1::GenerateRequest request,
             CallOptions call)
      : connection_(std::move(connection)),
        stub_(stub),
        request_(std::move(request)),
        call_(std::move(call)),
        deadline_(connection_->Deadline(call_)),
        max_attempts_(connection_->MaxAttempts(call_)) {
    Start();
  }

  ~ReaderImpl() override {
    if (reader_ != nullptr && !finished_) {
      context_->TryCancel();
      reader_->Finish().ok();
    }
  }

  bool Next(v1::GenerateStreamResponse* message) override {
    if (finished_) return false;
    while (true) {
      if (reader_->Read(message)) {
        received_ = true;
        return true;
      }
      status_ = reader_->Finish();
      if (status_.error_code() != grpc::StatusCode::UNAVAILABLE || received_ ||
          attempts_ >= max_attempts_) {
        finished_ = true;
        return false;
      }
      const absl::Duration delay = BackoffDelay(
          connection_->Retry(call_), attempts_, absl::Uniform(rng_, 0.0, 1.0));
      if (absl::Now() + delay >= deadline_) {
        status_ = grpc::Status(
            grpc::StatusCode::DEADLINE_EXCEEDED,
            absl::StrCat(
                "deadline exceeded after ", attempts_,
                " tries; last error: UNAVAILABLE: ", status_.error_message()));
        finished_ = true;
        return false;
      }
      absl::SleepFor(delay);
      Start();
    }
  }

  absl::Status Finish() override {
    if (!finished_) {
      context_->TryCancel();
      v1::GenerateStreamResponse drain;
      while (reader_->Read(&drain)) {
      }
      status_ = reader_->Finish();
      finished_ = true;
    }
    return common::FromGrpcStatus(status_);
  }

  void Cancel() override {
    if (context_ != nullptr) context_->TryCancel();
  }

 private:
  void Start() {
    reader_.reset();
    context_ = std::make_unique<grpc::ClientContext>();
    connection_->Prepare(context_.get(), deadline_, call_);
    reader_ = stub_->GenerateStream(context_.get(), request_);
    ++attempts_;
  }

  std::shared_ptr<Connection> connection_;
  v1::RolloutService::Stub* stub_;
  v1::GenerateRequest request_;
  CallOptions call_;
  absl::Time deadline_;
  int max_attempts_;
  int attempts_ = 0;
  bool received_ = false;
  bool finished_ = false;
  grpc::Status status_;
  absl::BitGen rng_;
  std::unique_ptr<grpc::ClientContext> context_;
  std::unique_ptr<grpc::ClientReader<v1::GenerateStreamResponse>> reader_;
};

}  // namespace

void CompletionAccumulator::Add(const v1::GenerateStreamResponse& m) {
  v1::Completion& c = samples_[{m.prompt_index(), m.sample_index()}];
  c.set_prompt_index(m.prompt_index());
  c.set_sample_index(m.sample_index());
  c.set_seed(m.seed());
  c.mutable_token_ids()->Add(m.token_ids().begin(), m.token_ids().end());
  c.mutable_logprobs()->Add(m.logprobs().begin(), m.logprobs().end());
  c.mutable_token_weight_versions()->Add(m.token_weight_versions().begin(),
                                         m.token_weight_versions().end());
  for (const v1::TopLogprobs& t : m.top_logprobs()) *c.add_top_logprobs() = t;
  if (!m.token_weight_versions().empty()) {
    c.set_weight_version(
        m.token_weight_versions(m.token_weight_versions_size() - 1));
  }
  if (m.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
    c.set_finish_reason(m.finish_reason());
  }
}

std::vector<v1::Completion> CompletionAccumulator::Completions() const {
  std::vector<v1::Completion> out;
  out.reserve(samples_.size());
  for (const auto& [key, c] : samples_) out.push_back(c);
  return out;
}

bool CompletionAccumulator::AllFinished() const {
  return std::all_of(samples_.begin(), samples_.end(), [](const auto& kv) {
    return kv.second.finish_reason() != v1::FINISH_REASON_UNSPECIFIED;
  });
}

absl::StatusOr<std::unique_ptr<RolloutClient>> RolloutClient::Create(
    const ClientOptions& options) {
  absl::StatusOr<std::shared_ptr<Connection>> c = Connection::Create(options);
  if (!c.ok()) return c.status();
  return std::make_unique<RolloutClient>(*std::move(c));
}

RolloutClient::RolloutClient(std::shared_ptr<Connection> connection)
    : connection_(std::move(connection)),
      stub_(v1::RolloutService::NewStub(connection_->channel())) {}

absl::StatusOr<v1::GenerateResponse> RolloutClient::Generate(
    const v1::GenerateRequest& request, const CallOptions& call) {
  return connection_->Unary<v1::GenerateResponse>(
      call, [&](grpc::ClientContext* ctx, v1::GenerateResponse* response) {
        return stub_->Generate(ctx, request, response);
      });
}

absl::Status RolloutClient::GenerateStream(
    const v1::GenerateRequest& request,
    const std::function<bool(const v1::GenerateStreamResponse&)>& on_message,
    const CallOptions& call) {
  bool received = false;
  bool stopped = false;
  absl::Status s = connection_->Run(
      call,
      [&](grpc::ClientContext* ctx, int) {
        std::unique_ptr<grpc::ClientReader<v1::GenerateStreamResponse>> reader =
            stub_->GenerateStream(ctx, request);
        v1::GenerateStreamResponse message;
        while (reader->Read(&message)) {
          received = true;
          if (!on_message(message)) {
            stopped = true;
            ctx->TryCancel();
            while (reader->Read(&message)) {
            }
            break;
          }
        }
        grpc::Status status = reader->Finish();
        if (stopped) return grpc::Status::OK;
        return status;
      },
      [&] { return !received; });
  return s;
}

std::unique_ptr<GenerateStreamReader> RolloutClient::StartGenerateStream(
    const v1::GenerateRequest& request, const CallOptions& call) {
  return std::make_unique<ReaderImpl>(connection_, stub_.get(), request, call);
}

absl::StatusOr<v1::ComputeLogprobsResponse> RolloutClient::ComputeLogprobs(
    const v1::ComputeLogprobsRequest& request, const CallOptions& call) {
  return connection_->Unary<v1::ComputeLogprobsResponse>(
      call,
      [&](grpc::ClientContext* ctx, v1::ComputeLogprobsResponse* response) {
        return stub_->ComputeLogprobs(ctx, request, response);
      });
}

absl::StatusOr<v1::ModelInfo> RolloutClient::GetModelInfo(
    const CallOptions& call) {
  return connection_->Unary<v1::ModelInfo>(
      call, [&](grpc::ClientContext* ctx, v1::ModelInfo* response) {
        return stub_->GetModelInfo(ctx, v1::GetModelInfoRequest(), response);
      });
}

absl::StatusOr<v1::RolloutLoad> RolloutClient::GetLoad(const CallOptions& call) {
  return connection_->Unary<v1::RolloutLoad>(
      call, [&](grpc::ClientContext* ctx, v1::RolloutLoad* response) {
        return stub_->GetLoad(ctx, v1::GetLoadRequest(), response);
      });
}

absl::StatusOr<v1::AbortResponse> RolloutClient::Abort(const v1::AbortRequest& request,
                                                       const CallOptions& call) {
  return connection_->Unary<v1::AbortResponse>(
      call, [&](grpc::ClientContext* ctx, v1::AbortResponse* response) {
        return stub_->Abort(ctx, request, response);
      });
}

absl::StatusOr<v1::PauseResponse> RolloutClient::Pause(v1::PauseMode mode,
                                                       const CallOptions& call) {
  v1::PauseRequest request;
  request.set_mode(mode);
  return connection_->Unary<v1::PauseResponse>(
      call, [&](grpc::ClientContext* ctx, v1::PauseResponse* response) {
        return stub_->Pause(ctx, request, response);
      });
}

absl::StatusOr<v1::ResumeResponse> RolloutClient::Resume(const CallOptions& call) {
  return connection_->Unary<v1::ResumeResponse>(
      call, [&](grpc::ClientContext* ctx, v1::ResumeResponse* response) {
        return stub_->Resume(ctx, v1::ResumeRequest(), response);
      });
}

absl::StatusOr<v1::SleepResponse> RolloutClient::Sleep(v1::SleepLevel level,
                                                       const CallOptions& call) {
  v1::SleepRequest request;
  request.set_level(level);
  return connection_->Unary<v1::SleepResponse>(
      call, [&](grpc::ClientContext* ctx, v1::SleepResponse* response) {
        return stub_->Sleep(ctx, request, response);
      });
}

absl::StatusOr<v1::WakeUpResponse> RolloutClient::WakeUp(const CallOptions& call) {
  return connection_->Unary<v1::WakeUpResponse>(
      call, [&](grpc::ClientContext* ctx, v1::WakeUpResponse* response) {
        return stub_->WakeUp(ctx, v1::WakeUpRequest(), response);
      });
}

absl::StatusOr<v1::UpdateWeightsResponse> RolloutClient::UpdateWeights(
    const WeightStreamProducer& produce, const CallOptions& call) {
  v1::UpdateWeightsResponse response;
  absl::Status produce_error;
  absl::Status s = connection_->Run(
      call,
      [&](grpc::ClientContext* ctx, int) {
        response.Clear();
        std::unique_ptr<grpc::ClientWriter<v1::WeightUpdate>> writer =
            stub_->UpdateWeights(ctx, &response);
        produce_error = produce([&](const v1::WeightUpdate& m) {
          // false: the server ended the call; Finish() tells why.
          if (!writer->Write(m)) return absl::AbortedError("stream closed");
          return absl::OkStatus();
        });
        if (!produce_error.ok() && !absl::IsAborted(produce_error)) {
          // A local error (unreadable input): abandon the call.
          ctx->TryCancel();
          writer->Finish().ok();
          return grpc::Status::OK;
        }
        produce_error = absl::OkStatus();
        writer->WritesDone();
        return writer->Finish();
      },
      [&] { return produce_error.ok(); });
  if (!produce_error.ok()) return produce_error;
  if (!s.ok()) return s;
  return response;
}

absl::StatusOr<v1::UpdateWeightsResponse> RolloutClient::UpdateWeights(
    const WeightSet& weights, const WeightUploadOptions& options,
    const CallOptions& call) {
  WeightUploadOptions o = options;
  // One deadline for the version lookup and the upload.
  CallOptions c = call;
  c.deadline = connection_->Deadline(call);
  c.timeout = absl::ZeroDuration();
  if (o.target_version == 0) {
    absl::StatusOr<v1::ModelInfo> info = GetModelInfo(c);
    if (!info.ok()) return info.status();
    o.target_version = info->weight_version() + 1;
  }
  return UpdateWeights(
      [&](const WeightSink& sink) {
        return StreamWeightUpdate(weights, o, sink);
      },
      c);
}

absl::StatusOr<v1::UpdateWeightsResponse> RolloutClient::UpdateWeightsFromFile(
    const std::string& path, const WeightUploadOptions& options,
    const CallOptions& call, bool convert_dtype) {
  absl::StatusOr<WeightSet> weights = WeightSet::FromSafetensors(path);
  if (!weights.ok()) return weights.status();
  CallOptions c = call;
  c.deadline = connection_->Deadline(call);
  c.timeout = absl::ZeroDuration();
  WeightUploadOptions o = options;
  if (convert_dtype || o.target_version == 0) {
    absl::StatusOr<v1::ModelInfo> info = GetModelInfo(c);
    if (!info.ok()) return info.status();
    if (o.target_version == 0) o.target_version = info->weight_version() + 1;
    const v1::DType want = info->config().dtype();
    if (convert_dtype && common::WireDTypeSize(want) != 0 &&
        weights->dtype() != want) {
      absl::StatusOr<WeightSet> converted = weights->ConvertedTo(want);
      if (!converted.ok()) return converted.status();
      weights = *std::move(converted);
    }
  }
  return UpdateWeights(*weights, o, c);
}

absl::StatusOr<v1::UpdateWeightsResponse> RolloutClient::UpdateWeights(
    const std::vector<v1::WeightUpdate>& messages, const CallOptions& call) {
  return UpdateWeights(
      [&](const WeightSink& sink) {
        for (const v1::WeightUpdate& m : messages) {
          absl::Status s = sink(m);
          if (!s.ok()) return s;
        }
        return absl::OkStatus();
      },
      call);
}

absl::StatusOr<HealthStatus> RolloutClient::Health(const CallOptions& call) {
  return connection_->CheckHealth(kRolloutServiceName, call);
}

}  // namespace lockstep::client
