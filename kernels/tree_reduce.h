// The fixed binary reduction tree shared by the TP-invariant matmul and the
// vocabulary-parallel log-softmax (DESIGN.md §2, Zhang et al. 2511.17826).
//
// A reduction over K is cut into kTreeLeaves = 8 fixed leaf segments,
// leaf l covering [l*K/8, (l+1)*K/8) (K % 8 == 0 for the matmul). Each leaf
// reduces in index order; the 8 leaf partials p0..p7 are combined as
//   ((p0 + p1) + (p2 + p3)) + ((p4 + p5) + (p6 + p7)).
// A rank of a TP group of size t (t in {1,2,4,8}) owns the contiguous,
// aligned subtree of leaves [r*8/t, (r+1)*8/t) and computes that subtree's
// value; after an all-gather of the t subtree values in rank order, the top
// log2(t) levels are applied by TreeCombine. The result is bit-identical for
// every t.
#ifndef LOCKSTEP_KERNELS_TREE_REDUCE_H_
#define LOCKSTEP_KERNELS_TREE_REDUCE_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/device.h"
#include "kernels/dtype.h"
#include "kernels/matmul.h"

namespace lockstep::kernels {

inline constexpr int kTreeLeaves = 8;

// True for t in {1, 2, 4, 8}.
inline constexpr bool IsValidTreeSplit(int t) {
  return t == 1 || t == 2 || t == 4 || t == 8;
}

// Arguments of TreeMatmulPartial: a rank's share of y = x · wᵀ where the full
// reduction length is k_total and this rank owns leaves
// [leaf_begin, leaf_begin + leaf_count). `base.x` and `base.w` hold only the
// owned columns, so base.k must equal leaf_count * k_total / 8.
struct TreeMatmulArgs {
  MatmulArgs base;          // base.y receives the subtree value (any dtype;
                            // use kF32 when TreeCombine follows)
  int64_t k_total = 0;      // full reduction length, multiple of 8
  int leaf_begin = 0;       // multiple of leaf_count
  int leaf_count = kTreeLeaves;  // 1, 2, 4 or 8
};

// Computes the subtree value of the owned leaves for every output element.
// With leaf_begin = 0, leaf_count = 8 this is the complete TP=1 result.
absl::Status TreeMatmulPartial(const TreeMatmulArgs& args,
                               const ExecContext& ctx = {});

// TreeMatmulPartial for a prepacked weight (CPU only): `w` holds this rank's
// columns of the weight, [n, leaf_count * k_total / 8]; base.w, w_dtype, ldw,
// n and k are taken from it. Bit-identical to TreeMatmulPartial with the
// original matrix.
absl::Status TreeMatmulPartialPacked(const TreeMatmulArgs& args,
                                     const PackedWeight& w);

// Arguments of TreeCombine.
struct TreeCombineArgs {
  const float* partials = nullptr;  // [t, m, n]: rank r's subtree values at
                                    // partials + r*m*n, rows of stride n
  int t = 1;                        // group size, 1/2/4/8
  void* y = nullptr;                // [m, n], row stride ldy
  DType y_dtype = DType::kF32;
  int64_t ldy = 0;
  int64_t m = 0;
  int64_t n = 0;
};

// Applies the top log2(t) tree levels to the gathered subtree values, in
// rank order: t=2: p0+p1; t=4: (p0+p1)+(p2+p3); t=8: the full tree above.
absl::Status TreeCombine(const TreeCombineArgs& args,
                         const ExecContext& ctx = {});

// Combines 8 fp32 leaf values with the fixed tree (scalar reference used by
// tests and by the CPU kernels).
inline float TreeSum8(const float p[8]) {
  return ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
}

}  // namespace lockstep::kernels

#endif  // LOCKSTEP_KERNELS_TREE_REDUCE_H_
