// Options shared by the lockstep C++ clients (RolloutClient, LearnerClient):
// where to connect, transport security, the bearer token, deadlines, retries
// and channel settings.
//
// Conventions (those of gRPC and of NVIDIA Triton's client libraries):
//   * every call has a deadline: CallOptions::timeout / deadline, or
//     ClientOptions::default_timeout when the call sets neither. The deadline
//     covers the whole call, retries and backoff included; when it passes the
//     call fails with DEADLINE_EXCEEDED. A call may also bound each of its
//     tries (CallOptions::attempt_timeout);
//   * only UNAVAILABLE is retried (the code a draining or restarting server
//     answers with), with exponential backoff and jitter (ClientOptions::retry,
//     or the call's own CallOptions::retry); every other code is
//     returned at once. Streams are retried only while nothing of them has
//     been consumed, or when the client side is replayable (weight upload
//     from a file or from tensors, trajectory upload from a vector);
//   * errors are absl::Status with the gRPC code and message unchanged.
#ifndef LOCKSTEP_SDK_CPP_CLIENT_OPTIONS_H_
#define LOCKSTEP_SDK_CPP_CLIENT_OPTIONS_H_

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"

namespace lockstep::client {

// Backoff between tries of a call that failed with UNAVAILABLE. The delay
// before retry k (k = 1, 2, ...) is
//   min(initial_backoff * backoff_multiplier^(k-1), max_backoff)
// scaled by a uniform random factor in [1 - jitter, 1 + jitter], and never
// runs past the call's deadline.
struct RetryPolicy {
  // Tries in all, >= 1 (1: never retry).
  int max_attempts = 5;
  absl::Duration initial_backoff = absl::Milliseconds(100);
  absl::Duration max_backoff = absl::Seconds(5);
  double backoff_multiplier = 2.0;  // >= 1
  double jitter = 0.2;              // in [0, 1]
};

// Transport security of the channel.
struct TlsOptions {
  // Speak TLS. Implied when any of the files below is set.
  bool enabled = false;
  // PEM bundle of the CAs that sign the server's certificate. Empty: gRPC's
  // default roots (GRPC_DEFAULT_SSL_ROOTS_FILE_PATH or the bundled ones).
  std::string ca_file;
  // PEM client certificate chain and private key, for servers that require
  // client certificates (mTLS: the server's --tls_ca). Both or neither.
  std::string cert_file;
  std::string key_file;
  // Name checked against the server certificate instead of the target's
  // host (e.g. "localhost" when connecting to an IP address whose
  // certificate names a host). Empty: the target's host.
  std::string server_name;
};

// How a client connects. One channel (HTTP/2 connection) per client; clients
// are thread-safe and meant to be shared.
struct ClientOptions {
  // "HOST:PORT" (or any gRPC target: "dns:///host:port", "unix:/path").
  std::string target;

  TlsOptions tls;

  // Bearer token sent as the metadata "authorization: Bearer <token>" with
  // every call (the servers' --auth_token_file). auth_token_file, when set,
  // is read once at Create (surrounding whitespace stripped) and wins.
  std::string auth_token;
  std::string auth_token_file;

  // Deadline of a call whose CallOptions set none.
  absl::Duration default_timeout = absl::Seconds(60);

  RetryPolicy retry;

  // Largest message the client accepts / sends (gRPC's defaults are 4 MiB /
  // unlimited). The servers accept requests up to their --max_message_bytes
  // (rollout: 16 MiB by default; learner: 64 MiB) and send responses up to
  // 64 MiB; weight chunks are at most 4 MiB.
  int max_receive_message_bytes = 64 << 20;
  int max_send_message_bytes = 64 << 20;

  // HTTP/2 keepalive: ping the server after keepalive_time without activity
  // and drop the connection when no answer comes within keepalive_timeout,
  // so that a dead server is noticed during a long call. The servers accept
  // pings every 10 s or more (common/server_security.h); gRPC's defaults
  // on the server side accept one every 5 min, and the client stops pinging
  // after two pings without data, so these values are safe with either.
  // Zero keepalive_time: no keepalive pings.
  absl::Duration keepalive_time = absl::Seconds(30);
  absl::Duration keepalive_timeout = absl::Seconds(20);

  // Reconnect backoff of the channel after a lost connection (gRPC's
  // defaults are 1 s growing to 120 s; lower values let retries reach a
  // restarted server quickly).
  absl::Duration min_reconnect_backoff = absl::Milliseconds(100);
  absl::Duration max_reconnect_backoff = absl::Seconds(5);

  // How long one connection attempt (TCP connect + TLS + HTTP/2 handshake)
  // may take. gRPC takes this from GRPC_ARG_MIN_RECONNECT_BACKOFF_MS (its
  // "min connect timeout", 20 s by default); setting that arg to the 100 ms
  // reconnect backoff capped every handshake at 100 ms, and a loaded 2-core
  // machine then failed whole calls with "tcp handshaker shutdown (gave up
  // after 5 tries)" against a healthy server. A refused connection (server
  // down) still fails at once, so this does not slow down reconnects.
  absl::Duration connect_timeout = absl::Seconds(20);
};

// Per-call settings. The default-constructed value means: the client's
// default timeout and retry policy, fail fast when not connected.
struct CallOptions {
  // Deadline relative to the start of the call (0: none given).
  absl::Duration timeout = absl::ZeroDuration();
  // Absolute deadline (InfiniteFuture: none given). When both are given the
  // earlier one applies; when neither, ClientOptions::default_timeout.
  absl::Time deadline = absl::InfiniteFuture();
  // Deadline of each try, from its start (0: none). A try that runs past it
  // fails with DEADLINE_EXCEEDED, which is not retried; the call's deadline
  // still bounds every try.
  absl::Duration attempt_timeout = absl::ZeroDuration();
  // Tries in all (0: the retry policy's max_attempts; 1: no retries).
  int max_attempts = 0;
  // This call's backoff between tries (and, unless max_attempts is set, its
  // number of tries) instead of ClientOptions::retry.
  std::optional<RetryPolicy> retry;
  // Wait (up to the deadline) for the channel to become ready instead of
  // failing with UNAVAILABLE while the server is unreachable.
  bool wait_for_ready = false;
  // Further request metadata (keys in lower case).
  std::vector<std::pair<std::string, std::string>> metadata;

  // CallOptions with just a timeout: client.Generate(req,
  // CallOptions::Timeout(absl::Seconds(5))).
  static CallOptions Timeout(absl::Duration timeout) {
    CallOptions o;
    o.timeout = timeout;
    return o;
  }
};

}  // namespace lockstep::client

#endif  // LOCKSTEP_SDK_CPP_CLIENT_OPTIONS_H_
