// C++ client of lockstep.v1.RolloutService: generation (unary and
// streaming), scoring, model info and versioned weight updates.
//
//   lockstep::client::ClientOptions options;
//   options.target = "127.0.0.1:50051";
//   auto rollout = lockstep::client::RolloutClient::Create(options);
//   if (!rollout.ok()) return rollout.status();
//   const std::vector<int32_t> prompt = {1, 2, 3};
//   lockstep::v1::GenerateRequest request;
//   request.add_prompts()->mutable_token_ids()->Add(prompt.begin(),
//   prompt.end()); request.set_n(4);
//   request.mutable_sampling()->set_max_tokens(16);
//   request.mutable_sampling()->set_seed(7);
//   auto response = (*rollout)->Generate(request,
//       lockstep::client::CallOptions::Timeout(absl::Seconds(10)));
//
// Deadlines, retries (UNAVAILABLE only) and errors: see client_options.h.
// Thread-safe: one client may serve many threads at once.
#ifndef LOCKSTEP_SDK_CPP_ROLLOUT_CLIENT_H_
#define LOCKSTEP_SDK_CPP_ROLLOUT_CLIENT_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "lockstep/v1/rollout.grpc.pb.h"
#include "sdk/cpp/client_options.h"
#include "sdk/cpp/connection.h"
#include "sdk/cpp/weights.h"

namespace lockstep::client {

// Health-check service name of the rollout service.
inline constexpr char kRolloutServiceName[] = "lockstep.v1.RolloutService";

// Reads a GenerateStream message by message (see
// RolloutClient::StartGenerateStream). Not thread-safe.
class GenerateStreamReader {
 public:
  virtual ~GenerateStreamReader() = default;
  // The next message; false when the stream has ended (call Finish()).
  virtual bool Next(v1::GenerateStreamResponse* message) = 0;
  // The stream's final status (after Next() returned false; cancels the
  // call first if it is still running).
  virtual absl::Status Finish() = 0;
  // Asks the server to stop; Next() then returns false soon and Finish()
  // CANCELLED.
  virtual void Cancel() = 0;
};

// Collects GenerateStream messages into whole completions.
class CompletionAccumulator {
 public:
  // Appends the message's tokens to its sample's completion.
  void Add(const v1::GenerateStreamResponse& message);
  // The completions so far, in (prompt_index, sample_index) order, in the
  // layout of GenerateResponse.completions.
  std::vector<v1::Completion> Completions() const;
  // True when every sample seen so far has a finish reason.
  bool AllFinished() const;

 private:
  std::map<std::pair<uint32_t, uint32_t>, v1::Completion> samples_;
};

// Where a WeightStreamProducer writes the stream: returns an error once the
// call has ended (the server answered early; the call's status says why).
using WeightSink = std::function<absl::Status(const v1::WeightUpdate&)>;
// Emits a whole UpdateWeights stream (header first) to the sink and returns
// the sink's first error or its own. RolloutClient::UpdateWeights calls it
// once per try, so it must emit the same stream every time.
using WeightStreamProducer = std::function<absl::Status(const WeightSink&)>;

class RolloutClient {
 public:
  // Connects (lazily) as `options` says; see Connection::Create for errors.
  static absl::StatusOr<std::unique_ptr<RolloutClient>> Create(
      const ClientOptions& options);
  // Shares an existing connection (e.g. with a LearnerClient to the same
  // address, or several clients of one channel).
  explicit RolloutClient(std::shared_ptr<Connection> connection);

  const Connection& connection() const { return *connection_; }
  v1::RolloutService::Stub* stub() { return stub_.get(); }

  // Generates request.n() samples of every prompt and returns them all.
  // Retried on UNAVAILABLE (a seeded request gives the same samples again).
  absl::StatusOr<v1::GenerateResponse> Generate(
      const v1::GenerateRequest& request, const CallOptions& call = {});

  // GenerateStream with a callback: `on_message` gets every message in
  // order; returning false cancels the call (the result is then OK). Retried
  // on UNAVAILABLE only until the first message has arrived.
  absl::Status GenerateStream(
      const v1::GenerateRequest& request,
      const std::function<bool(const v1::GenerateStreamResponse&)>& on_message,
      const CallOptions& call = {});

  // GenerateStream as an iterator:
  //   auto reader = client.StartGenerateStream(request);
  //   v1::GenerateStreamResponse m;
  //   while (reader->Next(&m)) { ... }
  //   absl::Status status = reader->Finish();
  // The call's deadline runs from here. An UNAVAILABLE before the first
  // message is retried inside Next().
  std::unique_ptr<GenerateStreamReader> StartGenerateStream(
      const v1::GenerateRequest& request, const CallOptions& call = {});

  // Logprobs of given token sequences under the served weights.
  absl::StatusOr<v1::ComputeLogprobsResponse> ComputeLogprobs(
      const v1::ComputeLogprobsRequest& request, const CallOptions& call = {});

  // Model config, served weight version, kernel mode, device, engine limits.
  absl::StatusOr<v1::ModelInfo> GetModelInfo(const CallOptions& call = {});

  // The engine's load now (waiting and running sequences, KV usage).
  absl::StatusOr<v1::RolloutLoad> GetLoad(const CallOptions& call = {});

  // Generation control (see rollout.proto): Abort calls by request id (or
  // all), Pause / Resume generation, Sleep / WakeUp for colocation.
  absl::StatusOr<v1::AbortResponse> Abort(const v1::AbortRequest& request,
                                          const CallOptions& call = {});
  absl::StatusOr<v1::PauseResponse> Pause(v1::PauseMode mode, const CallOptions& call = {});
  absl::StatusOr<v1::ResumeResponse> Resume(const CallOptions& call = {});
  absl::StatusOr<v1::SleepResponse> Sleep(v1::SleepLevel level, const CallOptions& call = {});
  absl::StatusOr<v1::WakeUpResponse> WakeUp(const CallOptions& call = {});

  // Uploads `weights` as options.target_version (0: served version + 1,
  // from a GetModelInfo first). The whole stream is replayed on
  // UNAVAILABLE. The tensors must match the model's names, shapes and
  // storage dtype (ABORTED otherwise; use WeightSet::ConvertedTo to convert
  // the dtype).
  absl::StatusOr<v1::UpdateWeightsResponse> UpdateWeights(
      const WeightSet& weights, const WeightUploadOptions& options,
      const CallOptions& call = {});

  // Same from a safetensors file or a checkpoint directory (see
  // WeightSet::FromSafetensors: model.safetensors, or an index and shards).
  // When `convert_dtype` is set, the tensors are converted to the served
  // model's storage dtype (from GetModelInfo) if they differ.
  absl::StatusOr<v1::UpdateWeightsResponse> UpdateWeightsFromFile(
      const std::string& path, const WeightUploadOptions& options,
      const CallOptions& call = {}, bool convert_dtype = true);

  // Forwards a complete, already encoded stream (e.g. the messages of
  // LearnerClient::GetWeights). Replayed on UNAVAILABLE.
  absl::StatusOr<v1::UpdateWeightsResponse> UpdateWeights(
      const std::vector<v1::WeightUpdate>& messages,
      const CallOptions& call = {});

  // Streams what `produce` emits as one UpdateWeights call (e.g. a sender's
  // own tensors through common::StreamWeights), replayed on UNAVAILABLE:
  // `produce` runs once per try. An error of `produce` other than the
  // sink's (unreadable or inconsistent input) cancels the call and is
  // returned as is, without a retry.
  absl::StatusOr<v1::UpdateWeightsResponse> UpdateWeights(
      const WeightStreamProducer& produce, const CallOptions& call = {});

  // grpc.health.v1 status of lockstep.v1.RolloutService (no token needed).
  absl::StatusOr<HealthStatus> Health(const CallOptions& call = {});

 private:
  std::shared_ptr<Connection> connection_;
  std::unique_ptr<v1::RolloutService::Stub> stub_;
};

}  // namespace lockstep::client

#endif  // LOCKSTEP_SDK_CPP_ROLLOUT_CLIENT_H_
