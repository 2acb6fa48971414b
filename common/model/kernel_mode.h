// Which kernels a model runs: the invariant module or ordinary LibTorch ops.
#ifndef LOCKSTEP_COMMON_MODEL_KERNEL_MODE_H_
#define LOCKSTEP_COMMON_MODEL_KERNEL_MODE_H_

#include <string_view>

#include "absl/status/statusor.h"

namespace lockstep::common {

enum class KernelMode : int { kInvariant = 0, kStandard = 1 };

// "invariant" / "standard".
std::string_view KernelModeName(KernelMode mode);

// Parses "invariant" or "standard" (INVALID_ARGUMENT otherwise).
absl::StatusOr<KernelMode> ParseKernelMode(std::string_view name);

}  // namespace lockstep::common

#endif  // LOCKSTEP_COMMON_MODEL_KERNEL_MODE_H_
