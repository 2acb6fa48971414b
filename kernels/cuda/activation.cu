// Elementwise ops: SwiGLU, the bf16 storage cast and the residual add. Each
// output element depends on the same-index inputs only, so batch invariance
// is automatic; -fmad=false and the explicit _rn intrinsics keep the
// arithmetic exactly the contract's (no contraction into fma).
#include "kernels/cuda/activation.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_util.cuh"

namespace lockstep::kernels::cuda {
namespace {

constexpr int kThreads = 256;

struct SiluMulParams {
  const float* gate;
  const float* up;
  int64_t ld_in;
  float* out;
  int64_t ld_out;
  int64_t rows;
  int64_t n;
};

// One grid-stride pass over rows*n elements; (row, col) from the flat index
// so that any row count fits in the grid.
__global__ void SiluMulKernel(const SiluMulParams p) {
  const int64_t total = p.rows * p.n;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       i < total; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / p.n;
    const int64_t c = i - r * p.n;
    const float g = p.gate[r * p.ld_in + c];
    const float u = p.up[r * p.ld_in + c];
    // silu(g) = g / (1 + expf(-g)), then * up: the contract's three roundings.
    const float s = __fdiv_rn(g, __fadd_rn(1.0f, expf(-g)));
    p.out[r * p.ld_out + c] = __fmul_rn(s, u);
  }
}

struct RoundParams {
  float* x;
  int64_t ld;
  int64_t rows;
  int64_t n;
};

__global__ void RoundRowsKernel(const RoundParams p) {
  const int64_t total = p.rows * p.n;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       i < total; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / p.n;
    const int64_t c = i - r * p.n;
    float* e = p.x + r * p.ld + c;
    *e = Bf16BitsToF32(F32ToBf16Bits(*e));
  }
}

struct AddParams {
  float* y;
  int64_t ldy;
  const float* x;
  int64_t ldx;
  int64_t rows;
  int64_t n;
};

__global__ void AddInPlaceKernel(const AddParams p) {
  const int64_t total = p.rows * p.n;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       i < total; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / p.n;
    const int64_t c = i - r * p.n;
    float* e = p.y + r * p.ldy + c;
    *e = __fadd_rn(*e, p.x[r * p.ldx + c]);
  }
}

int GridFor(int64_t total) {
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  return static_cast<int>(std::min<int64_t>(blocks, SmCount() * 8LL));
}

}  // namespace

absl::Status SiluMul(const SiluMulArgs& args, void* stream) {
  if (args.rows <= 0 || args.n <= 0) return absl::OkStatus();
  const SiluMulParams p{args.gate, args.up, args.ld_in, args.out,
                        args.ld_out, args.rows, args.n};
  SiluMulKernel<<<GridFor(args.rows * args.n), kThreads, 0,
                  AsStream(stream)>>>(p);
  LOCKSTEP_CUDA_CHECK_LAUNCH("SiluMulKernel");
  return absl::OkStatus();
}

absl::Status RoundRowsToBF16(float* x, int64_t ld, int64_t rows, int64_t n,
                             void* stream) {
  if (rows <= 0 || n <= 0) return absl::OkStatus();
  const RoundParams p{x, ld, rows, n};
  RoundRowsKernel<<<GridFor(rows * n), kThreads, 0, AsStream(stream)>>>(p);
  LOCKSTEP_CUDA_CHECK_LAUNCH("RoundRowsKernel");
  return absl::OkStatus();
}

absl::Status AddInPlace(float* y, int64_t ldy, const float* x, int64_t ldx,
                        int64_t rows, int64_t n, void* stream) {
  if (rows <= 0 || n <= 0) return absl::OkStatus();
  const AddParams p{y, ldy, x, ldx, rows, n};
  AddInPlaceKernel<<<GridFor(rows * n), kThreads, 0, AsStream(stream)>>>(p);
  LOCKSTEP_CUDA_CHECK_LAUNCH("AddInPlaceKernel");
  return absl::OkStatus();
}

}  // namespace lockstep::kernels::cuda
