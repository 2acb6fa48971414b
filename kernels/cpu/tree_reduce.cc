#include "kernels/cpu/tree_reduce.h"

#include <algorithm>
#include <new>

#include "kernels/cpu/matmul.h"
#include "kernels/cpu/threading.h"
#include "kernels/dtype.h"

namespace lockstep::kernels::cpu {

absl::Status TreeMatmulPartial(const TreeMatmulArgs& args,
                               const PackedWeight* packed) {
  MatmulArgs base = args.base;
  if (packed != nullptr) {
    base.w = nullptr;
    base.w_dtype = packed->dtype();
    base.ldw = packed->k();
    base.n = packed->n();
    base.k = packed->k();
  }
  // The subtree of an aligned leaf range has the same shape wherever it
  // sits, so leaf_begin does not enter the arithmetic.
  try {
    RunGemm(base, packed, args.k_total / kTreeLeaves, args.leaf_count);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        "TreeMatmulPartial: out of memory for scratch");
  }
  return absl::OkStatus();
}

absl::Status TreeCombine(const TreeCombineArgs& args) {
  const int64_t plane = args.m * args.n;
  const int t = args.t;
  const int64_t n = args.n;
  ParallelFor(args.m, std::max<int64_t>(1, 16384 / std::max<int64_t>(n, 1)),
              [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float* p = args.partials + i * n;
      for (int64_t j = 0; j < n; ++j) {
        float v;
        switch (t) {
          case 1:
            v = p[j];
            break;
          case 2:
            v = p[j] + p[plane + j];
            break;
          case 4:
            v = (p[j] + p[plane + j]) + (p[2 * plane + j] + p[3 * plane + j]);
            break;
          default: {
            float q[kTreeLeaves];
            for (int r = 0; r < kTreeLeaves; ++r) q[r] = p[r * plane + j];
            v = TreeSum8(q);
          }
        }
        StoreFromF32(args.y, args.y_dtype, i * args.ldy + j, v);
      }
    }
  });
  return absl::OkStatus();
}

}  // namespace lockstep::kernels::cpu
