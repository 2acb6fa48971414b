// Where a kernel runs. Every public kernel entry takes an ExecContext; the
// dispatcher (kernels/dispatch.cc) sends the call to kernels/cpu/ or
// kernels/cuda/.
#ifndef LOCKSTEP_KERNELS_DEVICE_H_
#define LOCKSTEP_KERNELS_DEVICE_H_

namespace lockstep::kernels {

enum class Device : int { kCpu = 0, kCuda = 1 };

// Execution context of one kernel call. For kCuda every pointer in the
// arguments is a device pointer and `cuda_stream` is the cudaStream_t the
// launch is queued on (nullptr: the legacy default stream). CPU calls ignore
// `cuda_stream` and return when the work is done.
struct ExecContext {
  Device device = Device::kCpu;
  void* cuda_stream = nullptr;
};

// True when this build contains the CUDA kernels (LOCKSTEP_CUDA=ON).
bool CudaKernelsBuilt();

}  // namespace lockstep::kernels

#endif  // LOCKSTEP_KERNELS_DEVICE_H_
