#include "common/net/server_security.h"

#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/net/channel_security.h"

namespace lockstep::common {
namespace {

// Constant-time comparison: the time taken does not depend on where the
// first differing byte is (only on the lengths).
bool TimingSafeEqual(std::string_view a, std::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  const size_t n = a.size();
  for (size_t i = 0; i < n; ++i) {
    diff |= static_cast<unsigned char>(a[i]) ^
            static_cast<unsigned char>(i < b.size() ? b[i] : ~a[i]);
  }
  return diff == 0;
}

std::string_view SliceView(const grpc_slice& s) {
  return std::string_view(
      reinterpret_cast<const char*>(GRPC_SLICE_START_PTR(s)),
      GRPC_SLICE_LENGTH(s));
}

// The core auth-metadata processor. It is installed on the core credentials
// (TLS and plaintext alike) rather than through
// grpc::ServerCredentials::SetAuthMetadataProcessor, which gRPC's C++
// plaintext credentials do not support; the core server auth filter runs it
// on every call's initial metadata before the call is dispatched, so a
// rejected call never reaches a handler.
struct TokenChecker {
  std::string token;  // expected after "Bearer "

  static void Process(void* state, grpc_auth_context* /*context*/,
                      const grpc_metadata* md, size_t num_md,
                      grpc_process_auth_metadata_done_cb cb, void* user_data) {
    const auto* self = static_cast<const TokenChecker*>(state);
    std::string_view path;
    std::string_view authorization;
    bool has_authorization = false;
    for (size_t i = 0; i < num_md; ++i) {
      const std::string_view key = SliceView(md[i].key);
      if (key == ":path") {
        path = SliceView(md[i].value);
      } else if (key == "authorization") {
        authorization = SliceView(md[i].value);
        has_authorization = true;
      }
    }
    const bool token_ok = has_authorization && BearerMatches(authorization, self->token);
    if (IsAuthExemptMethod(path) || token_ok) {
      cb(user_data, nullptr, 0, nullptr, 0, GRPC_STATUS_OK, nullptr);
      return;
    }
    cb(user_data, nullptr, 0, nullptr, 0, GRPC_STATUS_UNAUTHENTICATED,
       has_authorization
           ? "wrong bearer token in the authorization metadata"
           : "missing authorization metadata (expected \"Bearer <token>\")");
  }

  static void Destroy(void* state) { delete static_cast<TokenChecker*>(state); }
};

// grpc::ServerCredentials over core credentials built here. gRPC 1.51's C++
// API offers no plaintext credentials that accept an auth-metadata
// processor; the core API does, and ServerCredentials::AddPortToServer is
// the (overridable) hook through which grpc::Server binds a port.
class CoreServerCredentials final : public grpc::ServerCredentials {
 public:
  // `pem_root_certs` empty: no client certificates are requested.
  // `cert_chain` empty: plaintext. `token` empty: no token check.
  CoreServerCredentials(const std::string& cert_chain,
                        const std::string& private_key,
                        const std::string& pem_root_certs,
                        const std::string& token) {
    // The base class has initialised the gRPC library by now.
    if (cert_chain.empty()) {
      creds_ = grpc_insecure_server_credentials_create();
    } else {
      grpc_ssl_pem_key_cert_pair pair{private_key.c_str(), cert_chain.c_str()};
      creds_ = grpc_ssl_server_credentials_create_ex(
          pem_root_certs.empty() ? nullptr : pem_root_certs.c_str(), &pair, 1,
          pem_root_certs.empty()
              ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
              : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY,
          nullptr);
    }
    if (!token.empty()) {
      grpc_auth_metadata_processor processor;
      processor.process = &TokenChecker::Process;
      processor.destroy = &TokenChecker::Destroy;
      processor.state = new TokenChecker{token};
      grpc_server_credentials_set_auth_metadata_processor(creds_, processor);
    }
  }

  ~CoreServerCredentials() override {
    if (creds_ != nullptr) grpc_server_credentials_release(creds_);
  }

  // The token check is part of these credentials; another processor would
  // replace it, so this is refused (logged and ignored).
  void SetAuthMetadataProcessor(
      const std::shared_ptr<grpc::AuthMetadataProcessor>& /*processor*/)
      override {
    gpr_log(GPR_ERROR,
            "lockstep ServerSecurity credentials: SetAuthMetadataProcessor "
            "ignored");
  }

 private:
  int AddPortToServer(const std::string& addr, grpc_server* server) override {
    return grpc_server_add_http2_port(server, addr.c_str(), creds_);
  }

  grpc_server_credentials* creds_ = nullptr;
};

}  // namespace

bool BearerMatches(std::string_view authorization, std::string_view token) {
  const absl::string_view value =
      absl::StripAsciiWhitespace(absl::string_view(authorization.data(), authorization.size()));
  constexpr absl::string_view kScheme = "bearer ";
  if (value.size() <= kScheme.size() ||
      !absl::EqualsIgnoreCase(value.substr(0, kScheme.size()), kScheme)) {
    return false;
  }
  const absl::string_view given = absl::StripLeadingAsciiWhitespace(value.substr(kScheme.size()));
  return TimingSafeEqual(std::string_view(given.data(), given.size()), token);
}

bool IsAuthExemptMethod(std::string_view method) {
  for (std::string_view prefix :
       {"/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/",
        "/grpc.reflection.v1.ServerReflection/"}) {
    if (method.substr(0, prefix.size()) == prefix) return true;
  }
  return false;
}

void ServerSecurity::ApplyToBuilder(grpc::ServerBuilder* builder) const {
  builder->AddChannelArgument(
      GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
      static_cast<int>(absl::ToInt64Milliseconds(kMinClientPingInterval)));
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
}

std::string ServerSecurity::Describe() const {
  return absl::StrCat("tls=", tls_ ? "on" : "off",
                      " mtls=", mtls_ ? "on" : "off",
                      " token=", token_required_ ? "on" : "off");
}

absl::StatusOr<ServerSecurity> MakeServerSecurity(
    const ServerSecurityOptions& options) {
  const bool has_cert = !options.tls_cert_file.empty();
  const bool has_key = !options.tls_key_file.empty();
  if (has_cert != has_key) {
    return absl::InvalidArgumentError(
        "--tls_cert and --tls_key must be given together");
  }
  if (!options.tls_ca_file.empty() && !has_cert) {
    return absl::InvalidArgumentError(
        "--tls_ca (client certificate verification) needs --tls_cert and "
        "--tls_key");
  }
  std::string cert_chain, private_key, ca;
  if (has_cert) {
    absl::StatusOr<std::string> pem =
        ReadPemFile("--tls_cert", options.tls_cert_file);
    if (!pem.ok()) return pem.status();
    cert_chain = *std::move(pem);
    pem = ReadPemFile("--tls_key", options.tls_key_file);
    if (!pem.ok()) return pem.status();
    private_key = *std::move(pem);
  }
  if (!options.tls_ca_file.empty()) {
    absl::StatusOr<std::string> pem = ReadPemFile("--tls_ca", options.tls_ca_file);
    if (!pem.ok()) return pem.status();
    ca = *std::move(pem);
  }
  std::string token;
  if (!options.auth_token_file.empty()) {
    absl::StatusOr<std::string> read = ReadTokenFile("--auth_token_file", options.auth_token_file);
    if (!read.ok()) return read.status();
    token = *std::move(read);
  } else if (!absl::StripAsciiWhitespace(options.auth_token).empty()) {
    absl::StatusOr<std::string> checked = CheckBearerToken("auth_token", options.auth_token);
    if (!checked.ok()) return checked.status();
    token = *std::move(checked);
  }

  ServerSecurity security;
  security.credentials_ = std::make_shared<CoreServerCredentials>(
      cert_chain, private_key, ca, token);
  security.tls_ = has_cert;
  security.mtls_ = !ca.empty();
  security.token_required_ = !token.empty();
  return security;
}

}  // namespace lockstep::common
