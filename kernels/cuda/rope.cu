// Rotary embedding. cos/sin come from the float64 frequency table and
// double-precision cos/sin (times the attention factor) rounded once to fp32
// per (position, i), exactly as the contract states, so a token's
// result depends only on its own values and position. One block per token;
// the angle of pair i is computed once and applied to every head.
#include "kernels/cuda/rope.h"

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "kernels/cuda/cuda_status.h"

namespace lockstep::kernels::cuda {
namespace {

constexpr int kThreads = 128;

struct RopeParams {
  float* x;
  int64_t ldx;
  const int32_t* positions;
  int64_t tokens;
  int64_t heads;
  int64_t head_dim;
  int64_t half;  // rotary_dim / 2
  const double* inv_freq;  // [half], device memory
  double scale;            // attention factor
};

__global__ void __launch_bounds__(kThreads) RopeKernel(const RopeParams p) {
  for (int64_t t = blockIdx.x; t < p.tokens; t += gridDim.x) {
    const int32_t pos = p.positions[t];
    float* row = p.x + t * p.ldx;
    for (int64_t i = threadIdx.x; i < p.half; i += blockDim.x) {
      float c;
      float s;
      if (pos < 0) {
        // A negative position is invalid input: poison the rotated pairs
        // rather than read or write anything out of place.
        c = s = __int_as_float(0x7fc00000);
      } else {
        const double angle = static_cast<double>(pos) * p.inv_freq[i];
        c = static_cast<float>(cos(angle) * p.scale);
        s = static_cast<float>(sin(angle) * p.scale);
      }
      for (int64_t h = 0; h < p.heads; ++h) {
        float* xh = row + h * p.head_dim;
        const float a = xh[i];
        const float b = xh[i + p.half];
        xh[i] = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
        xh[i + p.half] = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
      }
    }
  }
}

}  // namespace

absl::Status ApplyRope(const RopeArgs& args, void* stream) {
  if (args.tokens <= 0 || args.heads <= 0) return absl::OkStatus();
  const int64_t rot = args.rotary_dim == 0 ? args.head_dim : args.rotary_dim;
  if (rot <= 0 || rot % 2 != 0 || rot > args.head_dim) {
    return absl::InvalidArgumentError("ApplyRope: bad rotary_dim");
  }
  const RopeParams p{args.x,     args.ldx,   args.positions,
                     args.tokens, args.heads, args.head_dim,
                     rot / 2,     args.inv_freq, args.attention_factor};
  const int grid = static_cast<int>(
      args.tokens < SmCount() * 16LL ? args.tokens : SmCount() * 16LL);
  RopeKernel<<<grid, kThreads, 0, AsStream(stream)>>>(p);
  LOCKSTEP_CUDA_CHECK_LAUNCH("RopeKernel");
  return absl::OkStatus();
}

}  // namespace lockstep::kernels::cuda
