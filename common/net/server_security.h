// Transport security and bearer-token authentication shared by the lockstep
// servers (rollout_service, learner_service).
//
// A server builds one ServerSecurity from its flags
//   --tls_cert=PEM --tls_key=PEM   serve TLS with this certificate chain + key
//   --tls_ca=PEM                   also require client certificates signed by
//                                  this CA bundle (mutual TLS); needs TLS
//   --auth_token_file=FILE         every RPC must carry the metadata
//                                  "authorization: Bearer <token>", <token>
//                                  being the file's content (surrounding
//                                  whitespace stripped)
// and uses it for its listening port:
//
//   ServerSecurityOptions so;
//   so.tls_cert_file = absl::GetFlag(FLAGS_tls_cert);  // ... and the others
//   LOCKSTEP_ASSIGN_OR_RETURN(ServerSecurity security, MakeServerSecurity(so));
//   grpc::ServerBuilder builder;
//   builder.AddListeningPort(address, security.credentials(), &port);
//   security.ApplyToBuilder(&builder);
//   ... RegisterService, BuildAndStart ...
//
// The token check runs in gRPC's server auth filter (a core auth-metadata
// processor installed on the credentials, TLS or plaintext), before the call
// reaches any service: a call with a missing or wrong token fails with
// UNAUTHENTICATED and no handler runs, so nothing is processed or counted.
// Exempt (always allowed, so that probes and tooling need no token): the
// gRPC health service (/grpc.health.v1.Health/*) and server reflection
// (/grpc.reflection.v1alpha.ServerReflection/*,
// /grpc.reflection.v1.ServerReflection/*). The token is compared in
// constant time.
//
// ApplyToBuilder also sets the HTTP/2 keepalive policy the lockstep clients
// rely on (see kMinClientPingInterval): clients may ping every 10 s or more,
// also without calls in flight.
#ifndef LOCKSTEP_COMMON_NET_SERVER_SECURITY_H_
#define LOCKSTEP_COMMON_NET_SERVER_SECURITY_H_

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace grpc {
class ServerBuilder;
class ServerCredentials;
}  // namespace grpc

namespace lockstep::common {

// What a server was asked for on its command line. Every field may be empty.
struct ServerSecurityOptions {
  // PEM certificate chain and private key of the server. Both or neither:
  // both enable TLS.
  std::string tls_cert_file;
  std::string tls_key_file;
  // PEM bundle of the CAs that sign client certificates. Non-empty: clients
  // must present a certificate that verifies against it (mTLS). Requires
  // tls_cert_file and tls_key_file.
  std::string tls_ca_file;
  // File holding the bearer token (surrounding whitespace stripped; must not
  // be empty). Empty: no token is required.
  std::string auth_token_file;
  // The token itself, for callers that do not keep it in a file (tests).
  // Used only when auth_token_file is empty.
  std::string auth_token;
};

// Shortest interval between client keepalive pings the servers accept
// (GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS). The SDK's default
// keepalive (30 s) is above it.
inline constexpr absl::Duration kMinClientPingInterval = absl::Seconds(10);

// True for the methods that never need a token: gRPC health and reflection.
// `method` is the HTTP/2 :path, e.g. "/grpc.health.v1.Health/Check".
bool IsAuthExemptMethod(std::string_view method);

// True when `authorization` (a header or metadata value) is "Bearer <token>":
// the scheme case-insensitive (RFC 7235), surrounding whitespace ignored, the
// token compared in constant time. The one check of the gRPC auth filter and
// the /metrics endpoint.
bool BearerMatches(std::string_view authorization, std::string_view token);

// The security a server was configured with. Cheap to copy (the credentials
// are shared); immutable.
class ServerSecurity {
 public:
  // Credentials for grpc::ServerBuilder::AddListeningPort: TLS / mTLS or
  // plaintext, with the token check installed when a token is configured.
  std::shared_ptr<grpc::ServerCredentials> credentials() const {
    return credentials_;
  }

  // Sets the server-wide options that go with these credentials (keepalive
  // policy). Call once per builder, before BuildAndStart.
  void ApplyToBuilder(grpc::ServerBuilder* builder) const;

  bool tls() const { return tls_; }
  bool mtls() const { return mtls_; }
  bool token_required() const { return token_required_; }

  // "tls=off mtls=off token=on": for the servers' start-up log line.
  std::string Describe() const;

 private:
  friend absl::StatusOr<ServerSecurity> MakeServerSecurity(
      const ServerSecurityOptions& options);

  std::shared_ptr<grpc::ServerCredentials> credentials_;
  bool tls_ = false;
  bool mtls_ = false;
  bool token_required_ = false;
};

// Reads the files named in `options` and builds the credentials. Errors:
//   INVALID_ARGUMENT  only one of tls_cert_file / tls_key_file, tls_ca_file
//                     without TLS, an empty token (file), a PEM file without
//                     a "-----BEGIN" block;
//   NOT_FOUND / PERMISSION_DENIED / ...  a file cannot be read (errno).
// The message names the flag and the file.
absl::StatusOr<ServerSecurity> MakeServerSecurity(
    const ServerSecurityOptions& options);

}  // namespace lockstep::common

#endif  // LOCKSTEP_COMMON_NET_SERVER_SECURITY_H_
