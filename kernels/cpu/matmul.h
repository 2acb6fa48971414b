// CPU implementation of the batch-invariant matmul family (kernels/matmul.h)
// and the shared GEMM driver used by the tree matmul (kernels/tree_reduce.h).
// Callers are the validating public entries in kernels/; arguments here are
// assumed valid.
#ifndef LOCKSTEP_KERNELS_CPU_MATMUL_H_
#define LOCKSTEP_KERNELS_CPU_MATMUL_H_

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/matmul.h"

namespace lockstep::kernels::cpu {

// Output columns per packed weight panel. A panel holds 32 consecutive rows
// of w transposed to [k][32] (zero padded past n), so the microkernels load
// contiguous output columns for one k.
inline constexpr int kPanelWidth = 32;

// y = x · wᵀ (validated arguments).
absl::Status Matmul(const MatmulArgs& args);

// y = x · wᵀ for a prepacked w; args.w/ldw/w_dtype/n/k are ignored.
absl::Status MatmulPacked(const MatmulArgs& args, const PackedWeight& w);

// Packs w [n, k] (row stride ldw) into panels (validated arguments).
absl::StatusOr<std::shared_ptr<const PackedWeight>> PackWeight(
    const void* w, DType w_dtype, int64_t ldw, int64_t n, int64_t k);

// The GEMM every entry above and the tree matmul run. args.k must equal
// leaf_len * leaf_count. Every output element is computed as leaf_count
// sequential fma chains over consecutive K segments of leaf_len, each started
// from 0, combined by the fixed pairwise tree (leaf_count in {1,2,4,8});
// leaf_count = 1 is the plain matmul contract. When `packed` is non-null it
// replaces args.w/w_dtype/ldw (its n and k must match args).
void RunGemm(const MatmulArgs& args, const PackedWeight* packed,
             int64_t leaf_len, int leaf_count);

// Internal: microkernel table shared by the per-ISA files.
//
// A microkernel computes a tile of `mr` rows by `nv` vectors of columns:
//   c[r * nv*W + j] = fma chain over kk in [0, k) of
//                     a[kk * mr + r] * b_col_j[kk * kPanelWidth]
// where column j lives in panel j / kPanelWidth at b + (j / kPanelWidth) *
// panel_stride + j % kPanelWidth (b may point at column 16 of a panel when
// nv*W <= 16). `b` is fp32 or bf16 according to the table used.
using MicroKernel = void (*)(int64_t k, const float* a, const void* b,
                             int64_t panel_stride, float* c);

// The microkernels of one ISA for one weight dtype.
struct KernelSet {
  int vector_width = 1;  // W: fp32 lanes per vector
  int max_rows = 1;      // MR: rows of the main tile
  // For mr in 1..max_rows: the preferred tile width (in vectors) and its
  // kernel; a "narrow" kernel of narrow_vectors covers what is left.
  int wide_vectors[17] = {};
  MicroKernel wide[17] = {};
  int narrow_vectors = 1;
  MicroKernel narrow[17] = {};
};

// Kernel tables (w_bf16 selects bf16 panels). The AVX ones must only be used
// when the CPU supports them.
const KernelSet& ScalarKernels(bool w_bf16);
const KernelSet& Avx2Kernels(bool w_bf16);
const KernelSet& Avx512Kernels(bool w_bf16);

}  // namespace lockstep::kernels::cpu

#endif  // LOCKSTEP_KERNELS_CPU_MATMUL_H_
