// The channel, credentials, token and retry loop that RolloutClient and
// LearnerClient share. Most users need only the clients; Connection is public
// for those who want the raw channel (e.g. to build their own stubs with the
// same security settings) or the gRPC health check.
#ifndef LOCKSTEP_SDK_CPP_CONNECTION_H_
#define LOCKSTEP_SDK_CPP_CONNECTION_H_

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>
#include <grpcpp/support/status.h>

#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/net/channel_security.h"
#include "sdk/cpp/client_options.h"

namespace lockstep::client {

// Answer of the gRPC health service (grpc.health.v1.Health/Check).
enum class HealthStatus {
  kUnknown = 0,     // the server answered UNKNOWN
  kServing = 1,     // SERVING
  kNotServing = 2,  // NOT_SERVING (e.g. draining)
};

// "SERVING" / "NOT_SERVING" / "UNKNOWN".
const char* HealthStatusName(HealthStatus status);

class Connection {
 public:
  // Builds the channel (connects lazily, on the first call; TLS through
  // common/net/channel_security.h). Errors: INVALID_ARGUMENT for an empty
  // target, only one of the client certificate / key files, a TLS file
  // without a PEM block, bad option values; the error of reading a file
  // (NOT_FOUND, PERMISSION_DENIED, ...) or an empty token file.
  static absl::StatusOr<std::shared_ptr<Connection>> Create(
      const ClientOptions& options);
  // Same over transport security the caller has built already
  // (common::MakeChannelSecurity, e.g. from a program's own flags, so that
  // its errors name those flags). options.tls must be left default
  // (INVALID_ARGUMENT otherwise).
  static absl::StatusOr<std::shared_ptr<Connection>> Create(
      const ClientOptions& options, const common::ChannelSecurity& security);

  const ClientOptions& options() const { return options_; }
  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }
  // True when a bearer token is sent with every call.
  bool has_token() const { return !authorization_.empty(); }

  // The absolute deadline of a call started now with `call`.
  absl::Time Deadline(const CallOptions& call) const;
  // The number of tries a call with `call` may make.
  int MaxAttempts(const CallOptions& call) const;
  // The backoff between the tries of a call with `call`.
  const RetryPolicy& Retry(const CallOptions& call) const;

  // Sets the deadline (that of the call, or the try's attempt_timeout from
  // now when earlier), wait-for-ready, token and extra metadata of one try
  // of a call whose deadline is `deadline`.
  void Prepare(grpc::ClientContext* context, absl::Time deadline,
               const CallOptions& call) const;

  // Runs `attempt` on a fresh, prepared context until it returns anything
  // but UNAVAILABLE, `retryable` (when given) returns false after an
  // UNAVAILABLE, the tries run out, or the deadline passes (then
  // DEADLINE_EXCEEDED, naming the last error). `attempt` is told the index
  // of the try (0-based). Errors keep the gRPC code and message
  // (common::FromGrpcStatus); an UNAVAILABLE that ends several tries adds
  // " (gave up after N tries)" to the message.
  absl::Status Run(const CallOptions& call,
                   const std::function<grpc::Status(grpc::ClientContext*,
                                                    int attempt)>& attempt,
                   const std::function<bool()>& retryable = nullptr) const;

  // Run for a unary call: `method(context, &response)` on every try (with
  // the response cleared first); the response of the try that succeeded.
  template <typename Response, typename Method>
  absl::StatusOr<Response> Unary(const CallOptions& call,
                                 Method&& method) const {
    Response response;
    absl::Status s = Run(call, [&](grpc::ClientContext* context, int) {
      response.Clear();
      return method(context, &response);
    });
    if (!s.ok()) return s;
    return response;
  }

  // grpc.health.v1.Health/Check for `service` ("" = the server as a whole;
  // "lockstep.v1.RolloutService" / "lockstep.v1.LearnerService" for one
  // service). Needs no token. NOT_FOUND when the server does not know
  // `service`; the usual call errors otherwise.
  absl::StatusOr<HealthStatus> CheckHealth(const std::string& service,
                                           const CallOptions& call = {}) const;

 private:
  Connection() = default;
  // The channel for `options` over `security`, sending `authorization`
  // ("Bearer <token>" or empty) with every call.
  static absl::StatusOr<std::shared_ptr<Connection>> Build(
      const ClientOptions& options, std::string authorization,
      const common::ChannelSecurity& security);

  ClientOptions options_;
  std::string authorization_;  // "Bearer <token>" or empty
  std::shared_ptr<grpc::Channel> channel_;
};

// The delay before retry `retry` (1 for the first retry) under `policy`,
// `unit_random` in [0, 1) choosing the jitter (0.5: none). Exposed for tests.
absl::Duration BackoffDelay(const RetryPolicy& policy, int retry,
                            double unit_random);

}  // namespace lockstep::client

#endif  // LOCKSTEP_SDK_CPP_CONNECTION_H_
