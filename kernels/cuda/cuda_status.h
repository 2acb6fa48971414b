// CUDA error -> absl::Status helpers for kernels/cuda/*.cu. CUDA-only: this
// header includes <cuda_runtime.h> and is included by .cu files alone, never
// by the public kernels/cuda/<op>.h headers.
#ifndef LOCKSTEP_KERNELS_CUDA_CUDA_STATUS_H_
#define LOCKSTEP_KERNELS_CUDA_CUDA_STATUS_H_

#include <cuda_runtime.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace lockstep::kernels::cuda {

// INTERNAL error naming the failed expression, the CUDA error and its place.
inline absl::Status CudaErrorStatus(cudaError_t err, const char* expr,
                                    const char* file, int line) {
  return absl::InternalError(absl::StrCat(expr, " failed: ",
                                          cudaGetErrorName(err), " (",
                                          cudaGetErrorString(err), ") at ",
                                          file, ":", line));
}

// The cudaStream_t carried as void* by ExecContext.
inline cudaStream_t AsStream(void* stream) {
  return static_cast<cudaStream_t>(stream);
}

// True when `stream` is being captured into a CUDA graph: host read-backs
// (validation of device-resident values) are then skipped.
inline bool StreamIsCapturing(cudaStream_t stream) {
  cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &st) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return st != cudaStreamCaptureStatusNone;
}

// Grid size that keeps every SM busy with a grid-stride loop.
inline int SmCount() {
  int dev = 0;
  int sms = 132;
  if (cudaGetDevice(&dev) == cudaSuccess &&
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) ==
          cudaSuccess) {
    return sms;
  }
  (void)cudaGetLastError();
  return 132;
}

}  // namespace lockstep::kernels::cuda

// Evaluates a cudaError_t expression; returns INTERNAL on failure.
#define LOCKSTEP_CUDA_RETURN_IF_ERROR(expr)                                  \
  do {                                                                       \
    const cudaError_t lockstep_cuda_err_ = (expr);                           \
    if (lockstep_cuda_err_ != cudaSuccess) {                                 \
      return ::lockstep::kernels::cuda::CudaErrorStatus(lockstep_cuda_err_,  \
                                                        #expr, __FILE__,     \
                                                        __LINE__);           \
    }                                                                        \
  } while (0)

// Checks the launch just queued (configuration errors, missing images...).
#define LOCKSTEP_CUDA_CHECK_LAUNCH(name) \
  LOCKSTEP_CUDA_RETURN_IF_ERROR((static_cast<void>(name), cudaGetLastError()))

#endif  // LOCKSTEP_KERNELS_CUDA_CUDA_STATUS_H_
