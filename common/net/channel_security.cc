#include "common/net/channel_security.h"

#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace lockstep::common {
namespace {

}  // namespace

absl::StatusOr<std::string> ReadConfigFile(const std::string& name,
                                           const std::string& path) {
  errno = 0;
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int err = errno;
    const std::string what = absl::StrCat(
        name, "=", path, ": ", err != 0 ? std::strerror(err) : "cannot open");
    if (err == ENOENT) return absl::NotFoundError(what);
    if (err == EACCES || err == EPERM) return absl::PermissionDeniedError(what);
    return absl::InvalidArgumentError(what);
  }
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) {
    return absl::DataLossError(absl::StrCat(name, "=", path, ": read error"));
  }
  return ss.str();
}

absl::StatusOr<std::string> CheckBearerToken(const std::string& name, const std::string& token) {
  const absl::string_view stripped = absl::StripAsciiWhitespace(token);
  if (stripped.empty()) return absl::InvalidArgumentError(absl::StrCat(name, ": the token is empty"));
  for (char c : stripped) {
    // A metadata value must be printable ASCII (RFC 7230 field-value).
    if (c < 0x20 || c > 0x7e) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": the bearer token must be printable ASCII"));
    }
  }
  return std::string(stripped);
}

absl::StatusOr<std::string> ReadTokenFile(const std::string& name, const std::string& path) {
  absl::StatusOr<std::string> text = ReadConfigFile(name, path);
  if (!text.ok()) return text.status();
  return CheckBearerToken(absl::StrCat(name, "=", path), *text);
}

absl::StatusOr<std::string> ReadPemFile(const std::string& name,
                                        const std::string& path) {
  absl::StatusOr<std::string> pem = ReadConfigFile(name, path);
  if (!pem.ok()) return pem.status();
  // gRPC would accept garbage here and fail every handshake later with an
  // UNAVAILABLE that does not say why.
  if (!absl::StrContains(*pem, "-----BEGIN")) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, "=", path, " holds no PEM block"));
  }
  return pem;
}


std::shared_ptr<grpc::ChannelCredentials> ChannelSecurity::credentials() const {
  return credentials_ != nullptr ? credentials_
                                 : grpc::InsecureChannelCredentials();
}

void ChannelSecurity::ApplyToArguments(grpc::ChannelArguments* args) const {
  if (tls_ && !server_name_.empty()) {
    args->SetSslTargetNameOverride(server_name_);
  }
}

std::string ChannelSecurity::Describe() const {
  if (!tls_) return "tls=off";
  return absl::StrCat(
      "tls=on ca=", ca_file_.empty() ? "default" : ca_file_,
      " client_cert=", client_certificate_ ? "on" : "off",
      server_name_.empty() ? "" : " server_name=", server_name_);
}

absl::StatusOr<ChannelSecurity> MakeChannelSecurity(
    const ChannelSecurityOptions& options, const ChannelSecurityNames& names) {
  if (options.cert_file.empty() != options.key_file.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(names.cert_file, " and ", names.key_file,
                     " must be given together (the client certificate "
                     "chain and its private key)"));
  }
  ChannelSecurity security;
  if (!options.UsesTls()) {
    if (!options.server_name.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          names.server_name, "=", options.server_name, " needs TLS (",
          names.enabled, " or ", names.ca_file, ")"));
    }
    return security;
  }
  grpc::SslCredentialsOptions ssl;
  if (!options.ca_file.empty()) {
    absl::StatusOr<std::string> pem = ReadPemFile(names.ca_file, options.ca_file);
    if (!pem.ok()) return pem.status();
    ssl.pem_root_certs = *std::move(pem);
  }
  if (!options.cert_file.empty()) {
    absl::StatusOr<std::string> pem =
        ReadPemFile(names.cert_file, options.cert_file);
    if (!pem.ok()) return pem.status();
    ssl.pem_cert_chain = *std::move(pem);
    pem = ReadPemFile(names.key_file, options.key_file);
    if (!pem.ok()) return pem.status();
    ssl.pem_private_key = *std::move(pem);
  }
  security.credentials_ = grpc::SslCredentials(ssl);
  if (security.credentials_ == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("gRPC refused the TLS credentials of ", names.ca_file,
                     " / ", names.cert_file, " / ", names.key_file));
  }
  security.tls_ = true;
  security.client_certificate_ = !options.cert_file.empty();
  security.ca_file_ = options.ca_file;
  security.server_name_ = options.server_name;
  return security;
}

}  // namespace lockstep::common
