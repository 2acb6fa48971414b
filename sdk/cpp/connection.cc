#include "sdk/cpp/connection.h"

#include <grpc/grpc.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/channel_arguments.h>

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/net/channel_security.h"
#include "common/wire/grpc_status.h"

namespace lockstep::client {
namespace {

constexpr char kUserAgent[] = "lockstep-client/0.1";

// TlsOptions' fields as MakeChannelSecurity's errors name them.
const common::ChannelSecurityNames& TlsOptionNames() {
  static const common::ChannelSecurityNames* names =
      new common::ChannelSecurityNames{
          "TlsOptions.enabled", "TlsOptions.ca_file", "TlsOptions.cert_file",
          "TlsOptions.key_file", "TlsOptions.server_name"};
  return *names;
}

int ClampMillis(absl::Duration d) {
  const int64_t ms = absl::ToInt64Milliseconds(d);
  return static_cast<int>(std::clamp<int64_t>(ms, 0, INT32_MAX));
}

// The checks of ClientOptions that need no file.
absl::Status CheckOptions(const ClientOptions& options) {
  if (options.target.empty()) {
    return absl::InvalidArgumentError("ClientOptions.target is empty");
  }
  if (options.retry.max_attempts < 1) {
    return absl::InvalidArgumentError("RetryPolicy.max_attempts must be >= 1");
  }
  if (options.retry.backoff_multiplier < 1.0 ||
      options.retry.initial_backoff < absl::ZeroDuration() ||
      options.retry.max_backoff < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "RetryPolicy: backoff_multiplier must be >= 1 and backoffs >= 0");
  }
  if (options.default_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "ClientOptions.default_timeout must be > 0");
  }
  return absl::OkStatus();
}

// "Bearer <token>" from auth_token_file (read here) or auth_token; empty
// when there is no token.
absl::StatusOr<std::string> Authorization(const ClientOptions& options) {
  absl::StatusOr<std::string> token = std::string();
  if (!options.auth_token_file.empty()) {
    token = common::ReadTokenFile("ClientOptions.auth_token_file", options.auth_token_file);
  } else if (!absl::StripAsciiWhitespace(options.auth_token).empty()) {
    token = common::CheckBearerToken("ClientOptions.auth_token", options.auth_token);
  }
  if (!token.ok()) return token.status();
  if (token->empty()) return std::string();
  return absl::StrCat("Bearer ", *token);
}

// Protobuf wire encoding of grpc.health.v1.HealthCheckRequest{service}.
std::string EncodeHealthRequest(const std::string& service) {
  std::string out;
  if (service.empty()) return out;
  out.push_back(0x0a);  // field 1, length-delimited
  uint64_t n = service.size();
  while (n >= 0x80) {
    out.push_back(static_cast<char>((n & 0x7f) | 0x80));
    n >>= 7;
  }
  out.push_back(static_cast<char>(n));
  out += service;
  return out;
}

// Field 1 (varint) of grpc.health.v1.HealthCheckResponse; 0 when absent.
absl::StatusOr<int> DecodeHealthResponse(const std::string& bytes) {
  size_t i = 0;
  int status = 0;
  auto varint = [&](uint64_t* v) {
    *v = 0;
    for (int shift = 0; i < bytes.size() && shift < 64; shift += 7) {
      const uint8_t b = static_cast<uint8_t>(bytes[i++]);
      *v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if ((b & 0x80) == 0) return true;
    }
    return false;
  };
  while (i < bytes.size()) {
    uint64_t key;
    if (!varint(&key)) break;
    const int wire = static_cast<int>(key & 7);
    if (wire == 0) {
      uint64_t v;
      if (!varint(&v)) break;
      if ((key >> 3) == 1) status = static_cast<int>(v);
    } else if (wire == 2) {
      uint64_t len;
      if (!varint(&len) || len > bytes.size() - i) break;
      i += len;
    } else if (wire == 1) {
      i += 8;
    } else if (wire == 5) {
      i += 4;
    } else {
      break;
    }
    if (i > bytes.size()) break;
    if (i == bytes.size()) return status;
  }
  if (i == bytes.size()) return status;
  return absl::InternalError("malformed grpc.health.v1.HealthCheckResponse");
}

}  // namespace

const char* HealthStatusName(HealthStatus status) {
  switch (status) {
    case HealthStatus::kServing:
      return "SERVING";
    case HealthStatus::kNotServing:
      return "NOT_SERVING";
    default:
      return "UNKNOWN";
  }
}

absl::Duration BackoffDelay(const RetryPolicy& policy, int retry,
                            double unit_random) {
  double scale = 1.0;
  for (int i = 1; i < retry; ++i) {
    scale *= policy.backoff_multiplier;
    if (policy.initial_backoff * scale >= policy.max_backoff) break;
  }
  absl::Duration d =
      std::min(policy.initial_backoff * scale, policy.max_backoff);
  const double jitter = std::clamp(policy.jitter, 0.0, 1.0);
  return d * (1.0 + jitter * (2.0 * unit_random - 1.0));
}

absl::StatusOr<std::shared_ptr<Connection>> Connection::Create(
    const ClientOptions& options) {
  absl::Status valid = CheckOptions(options);
  if (!valid.ok()) return valid;
  absl::StatusOr<std::string> authorization = Authorization(options);
  if (!authorization.ok()) return authorization.status();
  const TlsOptions& tls = options.tls;
  common::ChannelSecurityOptions tls_options;
  tls_options.enabled = tls.enabled;
  tls_options.ca_file = tls.ca_file;
  tls_options.cert_file = tls.cert_file;
  tls_options.key_file = tls.key_file;
  // The SDK has always ignored server_name on a plaintext channel.
  if (tls_options.UsesTls()) tls_options.server_name = tls.server_name;
  absl::StatusOr<common::ChannelSecurity> security =
      common::MakeChannelSecurity(tls_options, TlsOptionNames());
  if (!security.ok()) return security.status();
  return Build(options, *std::move(authorization), *security);
}

absl::StatusOr<std::shared_ptr<Connection>> Connection::Create(
    const ClientOptions& options, const common::ChannelSecurity& security) {
  const TlsOptions& tls = options.tls;
  if (tls.enabled || !tls.ca_file.empty() || !tls.cert_file.empty() ||
      !tls.key_file.empty() || !tls.server_name.empty()) {
    return absl::InvalidArgumentError(
        "ClientOptions.tls must be left default when the channel security is "
        "given");
  }
  absl::Status valid = CheckOptions(options);
  if (!valid.ok()) return valid;
  absl::StatusOr<std::string> authorization = Authorization(options);
  if (!authorization.ok()) return authorization.status();
  return Build(options, *std::move(authorization), security);
}

absl::StatusOr<std::shared_ptr<Connection>> Connection::Build(
    const ClientOptions& options, std::string authorization,
    const common::ChannelSecurity& security) {
  std::shared_ptr<Connection> c(new Connection());
  c->options_ = options;
  c->authorization_ = std::move(authorization);
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options.max_receive_message_bytes);
  args.SetMaxSendMessageSize(options.max_send_message_bytes);
  if (options.keepalive_time > absl::ZeroDuration()) {
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS,
                ClampMillis(options.keepalive_time));
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
                ClampMillis(options.keepalive_timeout));
  }
  // GRPC_ARG_MIN_RECONNECT_BACKOFF_MS is gRPC's per-attempt connect timeout
  // (see ClientOptions::connect_timeout); the first reconnect delay is
  // GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS.
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS,
              ClampMillis(options.connect_timeout));
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS,
              ClampMillis(options.min_reconnect_backoff));
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS,
              ClampMillis(options.max_reconnect_backoff));
  // Retries are the SDK's own (UNAVAILABLE only, replay-aware). No service
  // config sets a retry policy, so gRPC itself only retries transparently
  // (calls that never reached the server).
  args.SetUserAgentPrefix(kUserAgent);
  security.ApplyToArguments(&args);
  c->channel_ =
      grpc::CreateCustomChannel(options.target, security.credentials(), args);
  if (c->channel_ == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot create a channel to ", options.target));
  }
  return c;
}

absl::Time Connection::Deadline(const CallOptions& call) const {
  const absl::Time now = absl::Now();
  absl::Time deadline = call.deadline;
  if (call.timeout > absl::ZeroDuration()) {
    deadline = std::min(deadline, now + call.timeout);
  }
  if (deadline == absl::InfiniteFuture())
    deadline = now + options_.default_timeout;
  return deadline;
}

int Connection::MaxAttempts(const CallOptions& call) const {
  if (call.max_attempts > 0) return call.max_attempts;
  return std::max(1, Retry(call).max_attempts);
}

const RetryPolicy& Connection::Retry(const CallOptions& call) const {
  return call.retry.has_value() ? *call.retry : options_.retry;
}

void Connection::Prepare(grpc::ClientContext* context, absl::Time deadline,
                         const CallOptions& call) const {
  if (call.attempt_timeout > absl::ZeroDuration()) {
    deadline = std::min(deadline, absl::Now() + call.attempt_timeout);
  }
  context->set_deadline(absl::ToChronoTime(deadline));
  context->set_wait_for_ready(call.wait_for_ready);
  if (!authorization_.empty())
    context->AddMetadata("authorization", authorization_);
  for (const auto& [key, value] : call.metadata)
    context->AddMetadata(key, value);
}

absl::Status Connection::Run(
    const CallOptions& call,
    const std::function<grpc::Status(grpc::ClientContext*, int)>& attempt,
    const std::function<bool()>& retryable) const {
  const absl::Time deadline = Deadline(call);
  const int max_attempts = MaxAttempts(call);
  absl::BitGen rng;
  grpc::Status last;
  int tries = 0;
  for (int i = 0; i < max_attempts; ++i) {
    grpc::ClientContext context;
    Prepare(&context, deadline, call);
    last = attempt(&context, i);
    ++tries;
    if (last.error_code() != grpc::StatusCode::UNAVAILABLE) {
      return common::FromGrpcStatus(last);
    }
    if (retryable && !retryable()) break;
    if (i + 1 == max_attempts) break;
    const absl::Duration delay =
        BackoffDelay(Retry(call), i + 1, absl::Uniform(rng, 0.0, 1.0));
    if (absl::Now() + delay >= deadline) {
      absl::SleepFor(std::max(deadline - absl::Now(), absl::ZeroDuration()));
      return absl::DeadlineExceededError(absl::StrCat(
          "deadline exceeded after ", i + 1,
          " tries; last error: UNAVAILABLE: ", last.error_message()));
    }
    absl::SleepFor(delay);
  }
  absl::Status s = common::FromGrpcStatus(last);
  if (tries > 1) {
    return absl::Status(s.code(), absl::StrCat(s.message(), " (gave up after ",
                                               tries, " tries)"));
  }
  return s;
}

absl::StatusOr<HealthStatus> Connection::CheckHealth(
    const std::string& service, const CallOptions& call) const {
  grpc::GenericStub stub(channel_);
  int code = 0;
  absl::Status status = Run(call, [&](grpc::ClientContext* ctx, int) {
    const std::string bytes = EncodeHealthRequest(service);
    grpc::Slice slice(bytes);
    grpc::ByteBuffer request(&slice, 1);
    grpc::ByteBuffer response;
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    grpc::Status result;
    stub.UnaryCall(ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(),
                   &request, &response, [&](grpc::Status s) {
                     std::lock_guard<std::mutex> lock(mu);
                     result = std::move(s);
                     done = true;
                     cv.notify_one();
                   });
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return done; });
    if (!result.ok()) return result;
    std::vector<grpc::Slice> slices;
    if (!response.Dump(&slices).ok()) {
      return grpc::Status(grpc::StatusCode::INTERNAL,
                          "unreadable health response");
    }
    std::string payload;
    for (const grpc::Slice& s : slices) {
      payload.append(reinterpret_cast<const char*>(s.begin()), s.size());
    }
    absl::StatusOr<int> decoded = DecodeHealthResponse(payload);
    if (!decoded.ok()) {
      return grpc::Status(grpc::StatusCode::INTERNAL,
                          std::string(decoded.status().message()));
    }
    code = *decoded;
    return grpc::Status::OK;
  });
  if (!status.ok()) return status;
  switch (code) {
    case 1:
      return HealthStatus::kServing;
    case 2:
      return HealthStatus::kNotServing;
    default:
      return HealthStatus::kUnknown;
  }
}

}  // namespace lockstep::client
