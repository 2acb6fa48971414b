#include "learner_service/weight_push.h"

#include <chrono>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/wire/weight_stream.h"
#include "sdk/cpp/connection.h"

namespace lockstep::learner {

absl::StatusOr<std::shared_ptr<client::RolloutClient>> ConnectRollout(
    const std::string& endpoint, const std::string& auth_token,
    const common::ChannelSecurity& security) {
  client::ClientOptions options;
  options.target = endpoint;
  options.auth_token = auth_token;
  // A push may run for minutes; its tries carry their own deadlines.
  options.default_timeout = absl::InfiniteDuration();
  options.max_receive_message_bytes = 256 << 20;
  options.max_send_message_bytes = 64 << 20;
  options.keepalive_time = absl::ZeroDuration();
  // Reconnect quickly after a rollout restarts (gRPC's default backoff grows
  // to 2 minutes, longer than any retry budget here).
  options.min_reconnect_backoff = absl::Milliseconds(100);
  options.max_reconnect_backoff = absl::Seconds(1);
  options.connect_timeout = absl::Seconds(20);
  absl::StatusOr<std::shared_ptr<client::Connection>> connection =
      client::Connection::Create(options, security);
  if (!connection.ok()) return connection.status();
  return std::make_shared<client::RolloutClient>(*std::move(connection));
}

client::RetryPolicy DefaultPushRetry() {
  client::RetryPolicy retry;
  retry.max_attempts = 5;
  retry.initial_backoff = absl::Milliseconds(100);
  retry.max_backoff = absl::InfiniteDuration();
  retry.backoff_multiplier = 2.0;
  retry.jitter = 0.0;
  return retry;
}

PushResult PushWeights(client::RolloutClient& client,
                       const common::TensorMap& tensors, uint64_t version,
                       const std::string& source, const PushOptions& options) {
  PushResult result;
  result.endpoint = client.connection().options().target;
  const auto start = std::chrono::steady_clock::now();
  common::WeightStreamOptions stream_options;
  if (options.chunk_bytes > 0) stream_options.chunk_bytes = options.chunk_bytes;
  stream_options.source = source;
  client::CallOptions call;
  call.attempt_timeout = options.attempt_timeout;
  call.retry = options.retry;
  if (options.retry_window > absl::ZeroDuration()) {
    call.deadline = absl::Now() + options.retry_window + options.attempt_timeout;
  }
  // An error of the encoder itself (inconsistent tensors) is the learner's:
  // reported as is, and not retried.
  absl::Status local;
  absl::StatusOr<v1::UpdateWeightsResponse> response = client.UpdateWeights(
      [&](const client::WeightSink& sink) {
        ++result.attempts;
        if (options.check) {
          absl::Status checked = options.check(client);
          if (absl::IsUnavailable(checked)) {
            // The rollout is (re)starting: this attempt fails as a broken
            // stream would and the retry policy decides.
            return absl::AbortedError(checked.message());
          }
          if (!checked.ok()) {
            local = checked;
            return checked;
          }
        }
        bool sink_failed = false;
        absl::Status s = common::StreamWeights(
            tensors, version,
            [&](const v1::WeightUpdate& message) {
              absl::Status written = sink(message);
              sink_failed = !written.ok();
              return written;
            },
            stream_options);
        if (!s.ok() && !sink_failed) local = s;
        return s;
      },
      call);
  if (response.ok()) {
    result.bytes = response->bytes();
    result.rollout_version = response->weight_version();
  } else if (!local.ok()) {
    result.status = local;
  } else {
    result.status = absl::Status(
        response.status().code(),
        absl::StrCat("push of version ", version, " to ", result.endpoint,
                     " (attempt ", result.attempts,
                     "): ", response.status().message()));
  }
  result.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  return result;
}

std::vector<PushResult> PushToAll(
    const std::vector<client::RolloutClient*>& clients,
    const common::TensorMap& tensors, uint64_t version,
    const std::string& source, const PushOptions& options) {
  std::vector<PushResult> results(clients.size());
  if (clients.size() == 1) {
    results[0] = PushWeights(*clients[0], tensors, version, source, options);
    return results;
  }
  std::vector<std::thread> threads;
  threads.reserve(clients.size());
  for (size_t i = 0; i < clients.size(); ++i) {
    threads.emplace_back([&, i] {
      results[i] = PushWeights(*clients[i], tensors, version, source, options);
    });
  }
  for (std::thread& t : threads) t.join();
  return results;
}

}  // namespace lockstep::learner
