// The CUDA stream the invariant op set (invariant_ops.cc) queues its kernels
// on, per thread: nullptr (the legacy default stream, LibTorch's default
// too) unless a ScopedKernelStream is active on the calling thread. The
// device-resident step (device_step.h) runs LibTorch's ops and the kernels
// on one non-default stream, which CUDA-graph capture requires. No CUDA or
// LibTorch headers here: the stream travels as void* (a cudaStream_t).
#ifndef LOCKSTEP_COMMON_MODEL_KERNEL_STREAM_H_
#define LOCKSTEP_COMMON_MODEL_KERNEL_STREAM_H_

namespace lockstep::common {

// The calling thread's kernel stream (a cudaStream_t; nullptr: legacy).
void* CurrentKernelStream();

// Sets the calling thread's kernel stream for its lifetime, then restores
// the previous one. Not copyable.
class ScopedKernelStream {
 public:
  explicit ScopedKernelStream(void* cuda_stream);
  ~ScopedKernelStream();
  ScopedKernelStream(const ScopedKernelStream&) = delete;
  ScopedKernelStream& operator=(const ScopedKernelStream&) = delete;

 private:
  void* previous_;
};

}  // namespace lockstep::common

#endif  // LOCKSTEP_COMMON_MODEL_KERNEL_STREAM_H_
