// Top-k routing: one thread per token runs router_math::RouteRow, the same
// code (and, with -fmad=false and the portable exponential, the same bits)
// as the CPU. A row's work is O(E k) scalar operations, small next to the
// expert GEMMs it feeds.
#include "kernels/cuda/router.h"

#include <cuda_runtime.h>

#include "kernels/cuda/cuda_status.h"
#include "kernels/router_math.h"

namespace lockstep::kernels::cuda {
namespace {

constexpr int kThreads = 128;

__global__ void RouteTopKKernel(const RouteTopKArgs a) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= a.rows) return;
  router_math::RouteRow(a.logits + r * a.ld, a.experts, a.k, a.normalize, a.weights + r * a.k,
                        a.ids + r * a.k, a.probs == nullptr ? nullptr : a.probs + r * a.experts);
}

}  // namespace

absl::Status RouteTopK(const RouteTopKArgs& args, void* stream) {
  if (args.rows <= 0) return absl::OkStatus();
  const int blocks = static_cast<int>((args.rows + kThreads - 1) / kThreads);
  RouteTopKKernel<<<blocks, kThreads, 0, AsStream(stream)>>>(args);
  LOCKSTEP_CUDA_CHECK_LAUNCH("RouteTopKKernel");
  return absl::OkStatus();
}

}  // namespace lockstep::kernels::cuda
