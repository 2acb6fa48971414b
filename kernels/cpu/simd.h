// Run-time choice of the CPU vector instruction set. All levels produce the
// same bits: kernels vectorise across independent outputs only, never across
// a reduction, and use fused multiply-add (exactly rounded) on every path.
#ifndef LOCKSTEP_KERNELS_CPU_SIMD_H_
#define LOCKSTEP_KERNELS_CPU_SIMD_H_

#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace lockstep::kernels {

enum class SimdLevel : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

// "scalar" / "avx2" / "avx512".
std::string_view SimdLevelName(SimdLevel level);

// Parses "scalar", "avx2" or "avx512".
absl::StatusOr<SimdLevel> ParseSimdLevel(std::string_view name);

// Highest level this CPU supports.
SimdLevel DetectSimdLevel();

// Level the CPU kernels use now. Initially the detected level, or the one
// named by the environment variable LOCKSTEP_SIMD (capped at the detected
// level; an unknown name is ignored with a warning on stderr).
SimdLevel ActiveSimdLevel();

// Forces the level used by subsequent calls. FAILED_PRECONDITION if the CPU
// lacks it. Not meant to be called while kernels run on other threads.
absl::Status SetSimdLevel(SimdLevel level);

}  // namespace lockstep::kernels

#endif  // LOCKSTEP_KERNELS_CPU_SIMD_H_
