// CUDA implementation of kernels/matmul.h (kernels/cuda/matmul.cu), called
// by the dispatcher in CUDA builds only. Arguments arrive validated; every
// pointer is a device pointer; `stream` is the cudaStream_t to queue on
// (nullptr: the legacy default stream). No CUDA types in this header.
//
// Two paths, chosen from the dtypes alone (never from M):
//  - x and w both bf16: the Hopper tensor-core GEMM (TMA + wgmma, sm_90a,
//    persistent grid). Every output element goes through the same sequence
//    of wgmma.k16 instructions over K in increasing order from a zero
//    accumulator, whatever M, the row's position or the tile configuration;
//    so a row's bits never depend on the batch. (Not the CPU's bits: the
//    tensor core's internal k16 summation differs from a chain of fmas.)
//  - any other dtype mix: a SIMT kernel doing exactly the CPU contract
//    (acc = fma(x, w, acc) in k order), hence bit-identical to the CPU path.
// Callers that want the tensor cores pass bf16 activations (the model rounds
// activations to bf16 before every matmul anyway).
#ifndef LOCKSTEP_KERNELS_CUDA_MATMUL_H_
#define LOCKSTEP_KERNELS_CUDA_MATMUL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "kernels/matmul.h"

namespace lockstep::kernels::cuda {

absl::Status Matmul(const MatmulArgs& args, void* stream);

// One tile configuration of the bf16 tensor-core GEMM. All configurations
// run the same per-element instruction sequence; they differ in how much of
// the output one CTA covers. The configuration may therefore adapt to M and
// N (more, smaller tiles when M is small) without changing any bit; the
// tests run every configuration on the same data and compare bits.
struct GemmTileConfig {
  int consumers = 2;  // consumer warpgroups: 64 output rows each (row mode)
  int block_n = 128;  // output columns per tile: the wgmma N (32..256)
  int cluster = 1;    // 2: leaf mode on 2-CTA clusters sharing B by TMA
                      // multicast. Bit-identical, but measured ~2x slower
                      // than cluster 1 on the H100 (not yet understood), so
                      // never chosen by ChooseBf16GemmConfig.
  bool row_tree = false;  // leaves >= 2: row mode (128-row tiles, the two
                          // warpgroups share B and each walks all leaves)
                          // instead of leaf mode

  bool operator==(const GemmTileConfig& o) const {
    return consumers == o.consumers && block_n == o.block_n &&
           cluster == o.cluster && row_tree == o.row_tree;
  }
  std::string ToString() const;
};

// The reduction of LeafMatmul: y = TreeSum over `leaves` consecutive leaves
// of length leaf_len of x · wᵀ (args.k == leaves * leaf_len), each leaf
// reduced from zero, then combined by the fixed tree of tree_reduce.h.
// leaves == 1 is the plain Matmul. With leaves >= 2 and bf16 inputs the two
// consumer warpgroups of a CTA split the leaves of one 64-row tile ("leaf
// mode").
// `config` == nullptr chooses the configuration from (m, n, leaves).
absl::Status LeafMatmul(const MatmulArgs& args, int leaves, int64_t leaf_len,
                        const GemmTileConfig* config, void* stream);

// Configurations LeafMatmul accepts for a bf16 call with `leaves` leaves.
std::vector<GemmTileConfig> Bf16GemmConfigs(int leaves);

// The configuration LeafMatmul picks for a bf16 call (depends on m, n,
// leaves and the device's SM count; never on data).
GemmTileConfig ChooseBf16GemmConfig(int64_t m, int64_t n, int leaves);

// True when this binary holds sm_90a code and the current device can run the
// tensor-core path. When false, bf16 calls fall back to the SIMT path.
bool Bf16TensorCorePathAvailable();

}  // namespace lockstep::kernels::cuda

#endif  // LOCKSTEP_KERNELS_CUDA_MATMUL_H_
