#include "common/model/kernel_mode.h"

#include <string>

namespace lockstep::common {

std::string_view KernelModeName(KernelMode mode) {
  return mode == KernelMode::kInvariant ? "invariant" : "standard";
}

absl::StatusOr<KernelMode> ParseKernelMode(std::string_view name) {
  if (name == "invariant") return KernelMode::kInvariant;
  if (name == "standard") return KernelMode::kStandard;
  return absl::InvalidArgumentError("unknown kernel mode '" + std::string(name) +
                                    "' (expected invariant or standard)");
}

}  // namespace lockstep::common
