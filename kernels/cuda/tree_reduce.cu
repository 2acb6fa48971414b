// TP-tree matmul and the top levels of the fixed tree.
//
// TreeMatmulPartial is LeafMatmul over the rank's own leaves: each leaf is
// reduced from zero by the same instruction sequence as a plain matmul over
// that leaf, and the rank's leaves combine by the lower levels of the tree.
// TreeCombine then applies the top levels to the gathered subtree values in
// rank order. Because every leaf's arithmetic and every tree level is the
// same whichever rank computes it, t = 1, 2, 4, 8 give identical bits.
#include "kernels/cuda/tree_reduce.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/matmul.h"

namespace lockstep::kernels::cuda {
namespace {

struct CombineParams {
  const float* partials;  // [t, m, n]
  int t;
  void* y;
  int64_t ldy;
  int y_bf16;
  int64_t m;
  int64_t n;
};

__global__ void TreeCombineKernel(const CombineParams p) {
  const int64_t total = p.m * p.n;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       i < total; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / p.n;
    const int64_t c = i - r * p.n;
    float v[8];
    for (int k = 0; k < p.t; ++k) v[k] = p.partials[k * total + i];
    // The top log2(t) levels, left operand first.
    for (int width = p.t; width > 1; width >>= 1) {
      for (int k = 0; k < width / 2; ++k) {
        v[k] = __fadd_rn(v[2 * k], v[2 * k + 1]);
      }
    }
    if (p.y_bf16) {
      StoreF32<uint16_t>(static_cast<uint16_t*>(p.y), r * p.ldy + c, v[0]);
    } else {
      StoreF32<float>(static_cast<float*>(p.y), r * p.ldy + c, v[0]);
    }
  }
}

}  // namespace

absl::Status TreeMatmulPartial(const TreeMatmulArgs& args, void* stream) {
  return LeafMatmul(args.base, args.leaf_count, args.k_total / kTreeLeaves,
                    nullptr, stream);
}

absl::Status TreeCombine(const TreeCombineArgs& args, void* stream) {
  if (args.m <= 0 || args.n <= 0) return absl::OkStatus();
  if (!IsValidTreeSplit(args.t)) {
    return absl::InvalidArgumentError("TreeCombine: t must be 1, 2, 4 or 8");
  }
  const CombineParams p{args.partials, args.t, args.y, args.ldy,
                        args.y_dtype == DType::kBF16 ? 1 : 0, args.m, args.n};
  const int64_t total = args.m * args.n;
  const int grid = static_cast<int>(
      std::min<int64_t>((total + 255) / 256, SmCount() * 16LL));
  TreeCombineKernel<<<grid, 256, 0, AsStream(stream)>>>(p);
  LOCKSTEP_CUDA_CHECK_LAUNCH("TreeCombineKernel");
  return absl::OkStatus();
}

}  // namespace lockstep::kernels::cuda
