// RMSNorm: one row per block of a constant 256 threads (never sized from the
// row count), so a row's reduction tree is the same in every batch.
//
// Per row: thread t owns the 4-element groups starting at 4t + 1024i and
// accumulates x*x with fma in increasing index order; the 256 partial sums
// then combine by the fixed tree of BlockSumFixed. The vector and scalar load
// paths visit the same elements in the same order, so alignment (which can
// differ between a row alone and the same row inside a batch) never changes
// the bits.
#include "kernels/cuda/rms_norm.h"

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_util.cuh"

namespace lockstep::kernels::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kGroup = 4;  // elements per thread per step

struct RmsNormParams {
  const float* x;
  int64_t ldx;
  const void* weight;
  float* y;
  int64_t ldy;
  int64_t rows;
  int64_t n;
  float eps;
};

template <typename WT>
__global__ void __launch_bounds__(kThreads) RmsNormKernel(const RmsNormParams p) {
  __shared__ float scratch[kWarps];
  const WT* w = static_cast<const WT*>(p.weight);
  for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
    const float* x = p.x + row * p.ldx;
    float* y = p.y + row * p.ldy;
    float ss = 0.0f;
    for (int64_t base = kGroup * threadIdx.x; base < p.n;
         base += kGroup * kThreads) {
#pragma unroll
      for (int c = 0; c < kGroup; ++c) {
        if (base + c < p.n) {
          const float v = x[base + c];
          ss = __fmaf_rn(v, v, ss);
        }
      }
    }
    ss = BlockSumFixed<kWarps>(ss, scratch);
    const float inv = __fdiv_rn(
        1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(ss, static_cast<float>(p.n)),
                                   p.eps)));
    // y may alias x: each element is read and written by the same thread, and
    // every read of the row happened before the barrier inside BlockSumFixed.
    for (int64_t base = kGroup * threadIdx.x; base < p.n;
         base += kGroup * kThreads) {
#pragma unroll
      for (int c = 0; c < kGroup; ++c) {
        const int64_t j = base + c;
        if (j < p.n) {
          y[j] = __fmul_rn(__fmul_rn(x[j], inv), LoadF32<WT>(w, j));
        }
      }
    }
    __syncthreads();
  }
}

}  // namespace

absl::Status RmsNorm(const RmsNormArgs& args, void* stream) {
  if (args.rows <= 0 || args.n <= 0) return absl::OkStatus();
  const RmsNormParams p{args.x, args.ldx, args.weight, args.y,
                        args.ldy, args.rows, args.n, args.eps};
  const int grid = static_cast<int>(
      args.rows < SmCount() * 16LL ? args.rows : SmCount() * 16LL);
  if (args.weight_dtype == DType::kBF16) {
    RmsNormKernel<uint16_t><<<grid, kThreads, 0, AsStream(stream)>>>(p);
  } else {
    RmsNormKernel<float><<<grid, kThreads, 0, AsStream(stream)>>>(p);
  }
  LOCKSTEP_CUDA_CHECK_LAUNCH("RmsNormKernel");
  return absl::OkStatus();
}

}  // namespace lockstep::kernels::cuda
