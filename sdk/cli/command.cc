#include "sdk/cli/command.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace lockstep::cli {

absl::Status Usage(const std::string& message) {
  return absl::InvalidArgumentError(absl::StrCat("usage: ", message));
}

bool IsUsage(const absl::Status& s) {
  return absl::IsInvalidArgument(s) && absl::StartsWith(s.message(), "usage: ");
}

}  // namespace lockstep::cli
