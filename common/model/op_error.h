// Carrying a kernel's absl::Status through LibTorch. Op implementations run
// inside LibTorch (autograd functions, tensor code) where failures are
// exceptions; at the module boundary (Model, SequenceLogprobs, the Trainer)
// they become absl::Status again — with the kernel's code, so that a
// kernel's INVALID_ARGUMENT reaches the client as INVALID_ARGUMENT, not
// INTERNAL.
#ifndef LOCKSTEP_COMMON_MODEL_OP_ERROR_H_
#define LOCKSTEP_COMMON_MODEL_OP_ERROR_H_

#include <exception>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace lockstep::common {

// Throws a c10::Error whose message starts with "[lockstep:<CODE>] " and
// then `status`'s message. `status` must not be OK.
[[noreturn]] void ThrowStatus(const absl::Status& status);

// The status an exception stands for: the code ThrowStatus encoded (the
// message prefixed by `context`), or INTERNAL "<context>: <what>" for any
// other exception.
absl::Status StatusFromException(const std::exception& e, absl::string_view context);

}  // namespace lockstep::common

#endif  // LOCKSTEP_COMMON_MODEL_OP_ERROR_H_
