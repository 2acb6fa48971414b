#include "tests/testing/test_certs.h"

#include <cstdlib>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "tests/testing/service_process.h"

namespace lockstep::testing {

absl::StatusOr<std::string> MakeTestCerts() {
  absl::StatusOr<std::string> dir = MakeTempDir("lockstep-test-certs");
  if (!dir.ok()) return dir.status();
  std::string source = SourceDir();
  if (source.empty()) source = ".";
  const std::string cmd = absl::StrCat(
      "bash '", source, "/tests/testing/make_test_certs.sh' '", *dir, "'");
  if (std::system(cmd.c_str()) != 0) {
    RemoveTree(*dir);
    return absl::InternalError(absl::StrCat("failed: ", cmd));
  }
  return dir;
}

}  // namespace lockstep::testing
