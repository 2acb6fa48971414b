#include "common/model/op_error.h"

#include <string>

#include <c10/util/Exception.h>

#include "absl/strings/str_cat.h"

namespace lockstep::common {
namespace {

constexpr char kTag[] = "[lockstep:";
constexpr size_t kTagSize = sizeof(kTag) - 1;

}  // namespace

void ThrowStatus(const absl::Status& status) {
  TORCH_CHECK(false, std::string(kTag), absl::StatusCodeToString(status.code()), "] ",
              std::string(status.message()));
  std::terminate();  // not reached: TORCH_CHECK(false) throws
}

absl::Status StatusFromException(const std::exception& e, absl::string_view context) {
  const auto* c10_error = dynamic_cast<const c10::Error*>(&e);
  const std::string what = c10_error != nullptr ? c10_error->what_without_backtrace() : e.what();
  const size_t at = what.find(kTag);
  if (at != std::string::npos) {
    const size_t code_begin = at + kTagSize;
    const size_t code_end = what.find("] ", code_begin);
    if (code_end != std::string::npos) {
      const std::string name = what.substr(code_begin, code_end - code_begin);
      for (int c = 0; c <= static_cast<int>(absl::StatusCode::kUnauthenticated); ++c) {
        const auto code = static_cast<absl::StatusCode>(c);
        if (absl::StatusCodeToString(code) == name && code != absl::StatusCode::kOk) {
          std::string message = what.substr(code_end + 2);
          // Keep only the first line: LibTorch may append its own context.
          if (size_t nl = message.find('\n'); nl != std::string::npos) message.resize(nl);
          return absl::Status(code, absl::StrCat(context, ": ", message));
        }
      }
    }
  }
  return absl::InternalError(absl::StrCat(context, ": ", what));
}

}  // namespace lockstep::common
