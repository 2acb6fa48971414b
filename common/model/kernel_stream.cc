#include "common/model/kernel_stream.h"

namespace lockstep::common {
namespace {
thread_local void* g_kernel_stream = nullptr;
}  // namespace

void* CurrentKernelStream() { return g_kernel_stream; }

ScopedKernelStream::ScopedKernelStream(void* cuda_stream) : previous_(g_kernel_stream) {
  g_kernel_stream = cuda_stream;
}

ScopedKernelStream::~ScopedKernelStream() { g_kernel_stream = previous_; }

}  // namespace lockstep::common
