#include "sdk/cli/client_flags.h"

#include <cstdlib>

#include "absl/time/time.h"
#include "sdk/cli/command.h"

namespace lockstep::cli {

using client::ClientOptions;

std::string EnvOr(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::string(v) : fallback;
}

std::vector<FlagSpec> ConnectionFlags(bool rollout, bool learner) {
  std::vector<FlagSpec> f;
  if (rollout) {
    f.push_back({"rollout", "HOST:PORT",
                 "rollout service address (env LOCKSTEP_ROLLOUT)",
                 kDefaultRollout});
  }
  if (learner) {
    f.push_back({"learner", "HOST:PORT",
                 "learner service address (env LOCKSTEP_LEARNER)",
                 kDefaultLearner});
  }
  f.push_back(
      {"timeout", "SECONDS", "deadline of each call, retries included", "60"});
  f.push_back({"retries", "N", "tries of a call answered UNAVAILABLE", "5"});
  f.push_back({"tls", "", "connect with TLS (implied by --tls_ca/--tls_cert)"});
  f.push_back({"tls_ca", "PEM", "CA bundle that signs the server certificate"});
  f.push_back({"tls_cert", "PEM", "client certificate chain (mTLS)"});
  f.push_back({"tls_key", "PEM", "client private key (mTLS)"});
  f.push_back(
      {"tls_server_name", "NAME", "name to check the server certificate for"});
  f.push_back(
      {"auth_token_file", "FILE",
       "file with the bearer token (env LOCKSTEP_AUTH_TOKEN_FILE, or the "
       "token itself in LOCKSTEP_AUTH_TOKEN)"});
  f.push_back({"json", "", "print the result as JSON (proto3 JSON mapping)"});
  f.push_back({"help", "", "show this help"});
  return f;
}

absl::StatusOr<ClientOptions> MakeClientOptions(const Args& args,
                                                const std::string& which,
                                                const std::string& fallback) {
  ClientOptions o;
  o.target = args.Get(
      which, EnvOr(which == "rollout" ? "LOCKSTEP_ROLLOUT" : "LOCKSTEP_LEARNER",
                   fallback));
  absl::StatusOr<double> timeout = args.GetDouble("timeout", 60.0);
  if (!timeout.ok()) return Usage(std::string(timeout.status().message()));
  if (*timeout <= 0) return Usage("--timeout must be > 0");
  o.default_timeout = absl::Seconds(*timeout);
  absl::StatusOr<int64_t> retries = args.GetInt("retries", 5);
  if (!retries.ok()) return Usage(std::string(retries.status().message()));
  if (*retries < 1) return Usage("--retries must be >= 1");
  o.retry.max_attempts = static_cast<int>(*retries);
  o.tls.enabled = args.GetBool("tls");
  o.tls.ca_file = args.Get("tls_ca");
  o.tls.cert_file = args.Get("tls_cert");
  o.tls.key_file = args.Get("tls_key");
  o.tls.server_name = args.Get("tls_server_name");
  if (o.tls.cert_file.empty() != o.tls.key_file.empty()) {
    return Usage("--tls_cert and --tls_key go together");
  }
  o.auth_token_file =
      args.Get("auth_token_file", EnvOr("LOCKSTEP_AUTH_TOKEN_FILE", ""));
  if (o.auth_token_file.empty())
    o.auth_token = EnvOr("LOCKSTEP_AUTH_TOKEN", "");
  return o;
}

}  // namespace lockstep::cli
