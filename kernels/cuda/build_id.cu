// The CUDA half of kernels/build_id.h: only nvcc knows its own version and
// the arch list it compiles for.
#include <string>

#include <cuda_runtime_api.h>

#define LOCKSTEP_BUILD_ID_STR2(...) #__VA_ARGS__
#define LOCKSTEP_BUILD_ID_STR(...) LOCKSTEP_BUILD_ID_STR2(__VA_ARGS__)

namespace lockstep::kernels::cuda {

const char* CudaBuildId() {
  return "cuda " LOCKSTEP_BUILD_ID_STR(__CUDACC_VER_MAJOR__) "." LOCKSTEP_BUILD_ID_STR(
      __CUDACC_VER_MINOR__) " archs "
#ifdef __CUDA_ARCH_LIST__
      LOCKSTEP_BUILD_ID_STR(__CUDA_ARCH_LIST__)
#else
      "unknown"
#endif
      ;
}

std::string CurrentDeviceArchitecture() {
  int device = 0;
  int major = 0;
  int minor = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) !=
          cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) !=
          cudaSuccess) {
    (void)cudaGetLastError();  // leave no sticky error behind
    return "unknown";
  }
  return "sm_" + std::to_string(major) + std::to_string(minor);
}

}  // namespace lockstep::kernels::cuda
