#include "kernels/cpu/simd.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/strings/str_cat.h"

namespace lockstep::kernels {
namespace {

SimdLevel InitialLevel() {
  const SimdLevel detected = DetectSimdLevel();
  const char* env = std::getenv("LOCKSTEP_SIMD");
  if (env == nullptr || *env == '\0') return detected;
  absl::StatusOr<SimdLevel> parsed = ParseSimdLevel(env);
  if (!parsed.ok()) {
    std::fprintf(stderr,
                 "lockstep: ignoring LOCKSTEP_SIMD=%s (want scalar, avx2 or "
                 "avx512); using %s\n",
                 env, std::string(SimdLevelName(detected)).c_str());
    return detected;
  }
  // Asking for more than the CPU has must not crash with SIGILL later.
  return static_cast<int>(*parsed) > static_cast<int>(detected) ? detected
                                                                 : *parsed;
}

// -1 until first use, so that LOCKSTEP_SIMD is read lazily (after main()
// starts, not during static initialisation).
std::atomic<int> g_active_level{-1};

}  // namespace

std::string_view SimdLevelName(SimdLevel level) {
  switch (level) {
    case SimdLevel::kScalar:
      return "scalar";
    case SimdLevel::kAvx2:
      return "avx2";
    case SimdLevel::kAvx512:
      return "avx512";
  }
  return "unknown";
}

absl::StatusOr<SimdLevel> ParseSimdLevel(std::string_view name) {
  if (name == "scalar") return SimdLevel::kScalar;
  if (name == "avx2") return SimdLevel::kAvx2;
  if (name == "avx512") return SimdLevel::kAvx512;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown SIMD level \"", std::string(name),
                   "\" (want scalar, avx2 or avx512)"));
}

SimdLevel DetectSimdLevel() {
#if defined(__x86_64__) || defined(__i386__)
  static const SimdLevel detected = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return SimdLevel::kAvx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
      return SimdLevel::kAvx2;
    }
    return SimdLevel::kScalar;
  }();
  return detected;
#else
  return SimdLevel::kScalar;
#endif
}

SimdLevel ActiveSimdLevel() {
  int level = g_active_level.load(std::memory_order_acquire);
  if (level < 0) {
    int expected = -1;
    const int initial = static_cast<int>(InitialLevel());
    // A racing first call computes the same value; whoever wins, both agree.
    g_active_level.compare_exchange_strong(expected, initial,
                                           std::memory_order_acq_rel);
    level = g_active_level.load(std::memory_order_acquire);
  }
  return static_cast<SimdLevel>(level);
}

absl::Status SetSimdLevel(SimdLevel level) {
  const SimdLevel detected = DetectSimdLevel();
  if (static_cast<int>(level) > static_cast<int>(detected)) {
    return absl::FailedPreconditionError(
        absl::StrCat("SIMD level ", std::string(SimdLevelName(level)),
                     " is not supported by this CPU (highest: ",
                     std::string(SimdLevelName(detected)), ")"));
  }
  g_active_level.store(static_cast<int>(level), std::memory_order_release);
  return absl::OkStatus();
}

}  // namespace lockstep::kernels
