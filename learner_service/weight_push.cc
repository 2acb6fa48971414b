#include "learner_service/weight_push.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
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

absl::StatusOr<WeightPathChoice> ParseWeightPathChoice(const std::string& name) {
  if (name == "auto") return WeightPathChoice::kAuto;
  if (name == "stream") return WeightPathChoice::kStream;
  if (name == "shared_memory") return WeightPathChoice::kSharedMemory;
  return absl::InvalidArgumentError(
      absl::StrCat("weight path must be auto, stream or shared_memory, got '", name, "'"));
}

absl::Status CheckPushStreams(int streams) {
  if (streams < 1 || streams > static_cast<int>(common::kMaxWeightStreams)) {
    return absl::InvalidArgumentError(absl::StrCat("push streams must be in [1, ",
                                                   common::kMaxWeightStreams, "], got ", streams));
  }
  return absl::OkStatus();
}

namespace {

// PushWeights over options.streams concurrent parts: the set is one try;
// UNAVAILABLE from any part tries the whole set again.
PushResult PushWeightParts(client::RolloutClient& client, const common::TensorMap& tensors,
                           uint64_t version, const std::string& source,
                           const PushOptions& options) {
  PushResult result;
  result.path = v1::WEIGHT_PATH_STREAM;
  result.endpoint = client.connection().options().target;
  const auto start = std::chrono::steady_clock::now();
  const uint32_t n = static_cast<uint32_t>(options.streams);
  common::WeightStreamOptions stream_options;
  if (options.chunk_bytes > 0) stream_options.chunk_bytes = options.chunk_bytes;
  stream_options.source = source;
  const std::vector<common::WireTensor> wire = common::ToWireTensors(tensors);
  // The header and every chunk CRC once, shared by the parts and the tries.
  absl::StatusOr<common::WeightStreamPlan> plan =
      common::PlanWeightStream(wire, version, stream_options);
  auto finish = [&] {
    result.seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return result;
  };
  if (!plan.ok()) {
    result.status = plan.status();
    return finish();
  }
  const int max_attempts = std::max(1, options.retry.max_attempts);
  const absl::Time window_end = options.retry_window > absl::ZeroDuration()
                                    ? absl::Now() + options.retry_window
                                    : absl::InfinitePast();
  absl::Duration backoff = options.retry.initial_backoff;
  // Each try's set_id: a straggler part of a failed try is then refused by
  // the rollout instead of opening a set the retry would collide with.
  std::mt19937_64 ids(std::random_device{}());
  for (;;) {
    ++result.attempts;
    common::WeightStreamPlan try_plan = *plan;
    do {
      try_plan.header.set_set_id(ids());
    } while (try_plan.header.set_id() == 0);
    absl::Status attempt = absl::OkStatus();
    bool retryable = false;
    if (options.check) {
      absl::Status checked = options.check(client);
      if (absl::IsUnavailable(checked)) {
        attempt = absl::AbortedError(checked.message());
        retryable = true;
      } else if (!checked.ok()) {
        result.status = checked;
        return finish();
      }
    }
    std::vector<absl::StatusOr<v1::UpdateWeightsResponse>> parts(n);
    if (attempt.ok()) {
      client::CallOptions call;
      call.attempt_timeout = options.attempt_timeout;
      call.timeout = options.attempt_timeout;
      call.max_attempts = 1;  // the set retries as a whole, below
      std::vector<std::thread> threads;
      threads.reserve(n);
      for (uint32_t p = 0; p < n; ++p) {
        threads.emplace_back([&, p] {
          parts[p] = client.UpdateWeights(
              [&, p](const client::WeightSink& sink) {
                return common::StreamWeightPart(wire, try_plan, p, n, sink);
              },
              call);
        });
      }
      for (std::thread& t : threads) t.join();
      // The part that failed first names the cause; the others' ABORTED
      // ("part k failed") follow from it.
      for (const auto& r : parts) {
        if (r.ok()) continue;
        if (absl::IsUnavailable(r.status())) retryable = true;
        if (attempt.ok() || (absl::IsAborted(attempt) && !absl::IsAborted(r.status()))) {
          attempt = r.status();
        }
      }
    }
    if (attempt.ok()) {
      result.status = absl::OkStatus();
      result.bytes = parts[0]->bytes();
      result.rollout_version = parts[0]->weight_version();
      return finish();
    }
    const bool more = retryable && result.attempts < max_attempts &&
                      (options.retry_window <= absl::ZeroDuration() ||
                       absl::Now() + backoff < window_end);
    if (!more) {
      result.status = absl::Status(
          attempt.code(), absl::StrCat("push of version ", version, " to ", result.endpoint, " in ",
                                       n, " streams (attempt ", result.attempts,
                                       "): ", attempt.message()));
      return finish();
    }
    absl::SleepFor(backoff);
    backoff = std::min(backoff * options.retry.backoff_multiplier, options.retry.max_backoff);
  }
}

}  // namespace

PushResult PushWeights(client::RolloutClient& client,
                       const common::TensorMap& tensors, uint64_t version,
                       const std::string& source, const PushOptions& options,
                       const common::SharedWeightsFile* shared) {
  if (shared == nullptr && options.streams > 1) {
    absl::Status streams = CheckPushStreams(options.streams);
    if (!streams.ok()) {
      PushResult bad;
      bad.endpoint = client.connection().options().target;
      bad.status = streams;
      bad.path = v1::WEIGHT_PATH_STREAM;
      return bad;
    }
    return PushWeightParts(client, tensors, version, source, options);
  }
  if (shared != nullptr && options.path == WeightPathChoice::kAuto) {
    PushOptions only_shared = options;
    only_shared.path = WeightPathChoice::kSharedMemory;
    PushResult first = PushWeights(client, tensors, version, source, only_shared, shared);
    if (!absl::IsFailedPrecondition(first.status)) return first;
    // The rollout could not read the buffer (another /dev/shm): the stream.
    PushOptions stream = options;
    stream.path = WeightPathChoice::kStream;
    PushResult second = PushWeights(client, tensors, version, source, stream, nullptr);
    second.attempts += first.attempts;
    second.seconds += first.seconds;
    return second;
  }
  PushResult result;
  result.path = shared != nullptr ? v1::WEIGHT_PATH_SHARED_MEMORY : v1::WEIGHT_PATH_STREAM;
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
        if (shared != nullptr) {
          v1::WeightUpdate header;
          *header.mutable_header() = shared->header();
          return sink(header);
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
  // Which rollouts share this host, and the buffer they read (written once).
  std::vector<bool> same_host(clients.size(), options.path == WeightPathChoice::kSharedMemory);
  const std::string here = common::HostId();
  if (options.path == WeightPathChoice::kAuto && !here.empty()) {
    client::CallOptions quick;
    quick.attempt_timeout = absl::Seconds(5);
    quick.max_attempts = 1;
    for (size_t i = 0; i < clients.size(); ++i) {
      absl::StatusOr<v1::ModelInfo> info = clients[i]->GetModelInfo(quick);
      same_host[i] = info.ok() && info->host_id() == here;
    }
  }
  std::unique_ptr<common::SharedWeightsFile> shared;
  if (std::find(same_host.begin(), same_host.end(), true) != same_host.end()) {
    absl::StatusOr<std::unique_ptr<common::SharedWeightsFile>> file =
        common::SharedWeightsFile::Write(common::ToWireTensors(tensors), version, source);
    if (file.ok()) {
      shared = *std::move(file);
    } else if (options.path == WeightPathChoice::kSharedMemory) {
      for (size_t i = 0; i < clients.size(); ++i) {
        results[i].endpoint = clients[i]->connection().options().target;
        results[i].status = file.status();
        results[i].path = v1::WEIGHT_PATH_SHARED_MEMORY;
      }
      return results;
    } else {
      std::fprintf(stderr, "learner: shared-memory weights unavailable (%s); streaming\n",
                   std::string(file.status().message()).c_str());
    }
  }
  auto push = [&](size_t i) {
    results[i] = PushWeights(*clients[i], tensors, version, source, options,
                             same_host[i] ? shared.get() : nullptr);
  };
  if (clients.size() == 1) {
    push(0);
    return results;
  }
  std::vector<std::thread> threads;
  threads.reserve(clients.size());
  for (size_t i = 0; i < clients.size(); ++i) threads.emplace_back(push, i);
  for (std::thread& t : threads) t.join();
  return results;
}

}  // namespace lockstep::learner
