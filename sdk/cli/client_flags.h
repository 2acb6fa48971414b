// The flags every `lockstep` command that calls a service shares (address,
// deadline, tries, TLS, token, --json, --help) and the client::ClientOptions
// they make.
#ifndef LOCKSTEP_SDK_CLI_CLIENT_FLAGS_H_
#define LOCKSTEP_SDK_CLI_CLIENT_FLAGS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "sdk/cli/flags.h"
#include "sdk/cpp/client_options.h"

namespace lockstep::cli {

// Where the services are when neither a flag nor the environment says.
inline constexpr char kDefaultRollout[] = "127.0.0.1:50051";
inline constexpr char kDefaultLearner[] = "127.0.0.1:50052";

// The environment variable `name`, or `fallback` when it is unset or empty.
std::string EnvOr(const char* name, const std::string& fallback);

// The shared flags: --rollout and/or --learner as asked, then --timeout,
// --retries, --tls*, --auth_token_file, --json, --help.
std::vector<FlagSpec> ConnectionFlags(bool rollout, bool learner);

// ClientOptions for the service `which` ("rollout" or "learner"): the
// address from --<which>, else $LOCKSTEP_ROLLOUT / $LOCKSTEP_LEARNER, else
// `fallback`; the other shared flags; the token from --auth_token_file,
// $LOCKSTEP_AUTH_TOKEN_FILE or $LOCKSTEP_AUTH_TOKEN. Usage() errors for bad
// values.
absl::StatusOr<client::ClientOptions> MakeClientOptions(
    const Args& args, const std::string& which, const std::string& fallback);

}  // namespace lockstep::cli

#endif  // LOCKSTEP_SDK_CLI_CLIENT_FLAGS_H_
