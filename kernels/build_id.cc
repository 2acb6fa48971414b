#include "kernels/build_id.h"

#include <string>
#include <utility>

// Like kernels/dispatch.h, this dispatcher tests LOCKSTEP_WITH_CUDA: the
// CUDA half of the id (nvcc version, arch list) is only known to nvcc, so it
// is compiled in kernels/cuda/build_id.cu.

namespace lockstep::kernels {

#if LOCKSTEP_WITH_CUDA
namespace cuda {
const char* CudaBuildId();                // kernels/cuda/build_id.cu
std::string CurrentDeviceArchitecture();  // kernels/cuda/build_id.cu
}  // namespace cuda
#endif

namespace {

// Mirrors common/net/metrics.h's kLockstepVersion (kernels/ depends on
// nothing in common/).
#ifdef LOCKSTEP_VERSION_STRING
constexpr char kVersion[] = LOCKSTEP_VERSION_STRING;
#else
constexpr char kVersion[] = "0.1.0";
#endif

#if defined(__clang__)
constexpr char kCompiler[] = "clang " __clang_version__;
#elif defined(__GNUC__)
constexpr char kCompiler[] = "gcc " __VERSION__;
#else
constexpr char kCompiler[] = "unknown compiler";
#endif

}  // namespace

const std::string& KernelBuildId() {
  static const std::string* const id = [] {
    std::string s = std::string("lockstep ") + kVersion + "; " + kCompiler;
#if LOCKSTEP_WITH_CUDA
    s += std::string("; ") + cuda::CudaBuildId();
#else
    s += "; cuda none";
#endif
    return new std::string(std::move(s));
  }();
  return *id;
}

std::string GpuArchitecture(Device device) {
  if (device == Device::kCpu) return "none";
#if LOCKSTEP_WITH_CUDA
  return cuda::CurrentDeviceArchitecture();
#else
  return "unknown";
#endif
}

}  // namespace lockstep::kernels
