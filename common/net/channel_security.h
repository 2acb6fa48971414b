// Transport security of the lockstep gRPC clients: the client SDK
// (sdk/cpp/connection.cc), which the learner uses to reach the rollouts too.
// The client-side counterpart of common/net/server_security.h.
//
// A client builds one ChannelSecurity from its options (or flags)
//   enabled          speak TLS, trusting gRPC's default roots
//   ca_file=PEM      speak TLS, trusting this CA bundle instead
//   cert_file=PEM    speak TLS and present this client certificate chain
//   key_file=PEM     ... with this private key (servers started with
//                    --tls_ca require one: mutual TLS); both or neither
//   server_name=N    check the server certificate for N instead of the
//                    target's host (e.g. "localhost" when dialing
//                    127.0.0.1); needs TLS
// and uses it for its channel:
//
//   LOCKSTEP_ASSIGN_OR_RETURN(ChannelSecurity security,
//                             MakeChannelSecurity(options));
//   grpc::ChannelArguments args;
//   security.ApplyToArguments(&args);
//   auto channel = grpc::CreateCustomChannel(target, security.credentials(),
//                                            args);
//
// The files are read once, by MakeChannelSecurity; a channel reconnecting
// later does not re-read them. Bearer tokens are not handled here (they are
// per-call metadata; see the clients).
#ifndef LOCKSTEP_COMMON_NET_CHANNEL_SECURITY_H_
#define LOCKSTEP_COMMON_NET_CHANNEL_SECURITY_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace grpc {
class ChannelArguments;
class ChannelCredentials;
}  // namespace grpc

namespace lockstep::common {

// What a client was asked for. The default value means plaintext.
struct ChannelSecurityOptions {
  // Speak TLS. Implied when any of the files below is set.
  bool enabled = false;
  // PEM bundle of the CAs that sign the server's certificate. Empty: gRPC's
  // default roots (GRPC_DEFAULT_SSL_ROOTS_FILE_PATH or the bundled ones).
  std::string ca_file;
  // PEM client certificate chain and private key, for servers that require
  // client certificates (mTLS: the servers' --tls_ca). Both or neither.
  std::string cert_file;
  std::string key_file;
  // Name checked against the server certificate instead of the target's
  // host (GRPC_SSL_TARGET_NAME_OVERRIDE_ARG). Empty: the target's host.
  // Requires TLS.
  std::string server_name;

  // True when these options ask for TLS (enabled or any file set).
  bool UsesTls() const {
    return enabled || !ca_file.empty() || !cert_file.empty() ||
           !key_file.empty();
  }
};

// How error messages name the options: a program's flags (e.g.
// "--rollout_tls_ca") or a struct's fields (the defaults).
struct ChannelSecurityNames {
  std::string enabled = "enabled";
  std::string ca_file = "ca_file";
  std::string cert_file = "cert_file";
  std::string key_file = "key_file";
  std::string server_name = "server_name";
};

// The security a client channel was configured with. Cheap to copy (the
// credentials are shared); immutable. A default-constructed value is
// plaintext.
class ChannelSecurity {
 public:
  ChannelSecurity() = default;

  // Credentials for grpc::CreateCustomChannel: TLS (with the client
  // certificate, if any) or insecure.
  std::shared_ptr<grpc::ChannelCredentials> credentials() const;

  // Sets the channel arguments that go with the credentials (the target
  // name override of server_name). Call on the arguments of every channel
  // made with credentials().
  void ApplyToArguments(grpc::ChannelArguments* args) const;

  bool tls() const { return tls_; }
  // True when a client certificate is presented.
  bool client_certificate() const { return client_certificate_; }
  // The name checked against the server certificate ("" : the target's
  // host).
  const std::string& server_name() const { return server_name_; }

  // "tls=on ca=<file> client_cert=on server_name=localhost", "tls=off":
  // for start-up log lines.
  std::string Describe() const;

 private:
  friend absl::StatusOr<ChannelSecurity> MakeChannelSecurity(
      const ChannelSecurityOptions& options, const ChannelSecurityNames& names);

  std::shared_ptr<grpc::ChannelCredentials> credentials_;  // null: insecure
  bool tls_ = false;
  bool client_certificate_ = false;
  std::string ca_file_;  // for Describe()
  std::string server_name_;
};

// Reads the files named in `options` and builds the credentials. Errors:
//   INVALID_ARGUMENT  only one of cert_file / key_file, server_name without
//                     TLS, a file without a "-----BEGIN" PEM block;
//   NOT_FOUND / PERMISSION_DENIED / ...  a file cannot be read (errno).
// Messages name the option as `names` spells it, and the file.
absl::StatusOr<ChannelSecurity> MakeChannelSecurity(
    const ChannelSecurityOptions& options,
    const ChannelSecurityNames& names = ChannelSecurityNames());

// The whole content of the file `path`, asked for by the option `name`
// (e.g. "--tls_ca" or "TlsOptions.ca_file"; errors say "name=path: why"):
// NOT_FOUND, PERMISSION_DENIED, INVALID_ARGUMENT (cannot open) or DATA_LOSS
// (read error). Shared with common/server_security.cc.
absl::StatusOr<std::string> ReadConfigFile(const std::string& name,
                                           const std::string& path);

// A bearer token as every lockstep program takes it (the servers'
// --auth_token_file, the learner's --rollout_auth_token_file, the SDK's
// auth_token_file and the CLI): surrounding whitespace (spaces, tabs, CR, LF)
// stripped, then INVALID_ARGUMENT when it is empty or holds anything but
// printable ASCII (a gRPC metadata value may not).
absl::StatusOr<std::string> CheckBearerToken(const std::string& name, const std::string& token);

// ReadConfigFile, then CheckBearerToken of its content.
absl::StatusOr<std::string> ReadTokenFile(const std::string& name, const std::string& path);

// ReadConfigFile, and INVALID_ARGUMENT when the content holds no PEM block.
absl::StatusOr<std::string> ReadPemFile(const std::string& name,
                                        const std::string& path);

}  // namespace lockstep::common

#endif  // LOCKSTEP_COMMON_NET_CHANNEL_SECURITY_H_
