// CPU implementation of the tree matmul and tree combine
// (kernels/tree_reduce.h). Arguments are assumed validated by the public
// entries in kernels/tree_reduce.cc.
#ifndef LOCKSTEP_KERNELS_CPU_TREE_REDUCE_H_
#define LOCKSTEP_KERNELS_CPU_TREE_REDUCE_H_

#include "absl/status/status.h"
#include "kernels/matmul.h"
#include "kernels/tree_reduce.h"

namespace lockstep::kernels::cpu {

// Subtree value of the owned leaves for every output element. `packed`, when
// non-null, holds base.w prepacked (its n and k equal base.n and base.k).
absl::Status TreeMatmulPartial(const TreeMatmulArgs& args,
                               const PackedWeight* packed = nullptr);

// Top log2(t) tree levels over the gathered subtree values.
absl::Status TreeCombine(const TreeCombineArgs& args);

}  // namespace lockstep::kernels::cpu

#endif  // LOCKSTEP_KERNELS_CPU_TREE_REDUCE_H_
