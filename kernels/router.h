// Top-k routing of a mixture-of-experts layer (Qwen3-MoE), per token with
// fixed arithmetic, identical on the CPU and the GPU.
//
// Contract, for each row x [E] of the router's logits (float32):
//   m   = max_j x_j;
//   e_j = PortableExpNonPositive(double(x_j) - m)   (sampling_math.h: IEEE
//         basic operations only, so both backends give the same bits);
//   z   = e_0 + e_1 + ... + e_{E-1}                  (double, index order);
//   p_j = float(e_j / z);
//   ids = the k experts of largest p, ordered by p descending, equal p by
//         lower expert id (a NaN p ranks below every number);
//   w_r = p_{ids_r}; with `normalize`, s = w_0 + ... + w_{k-1} (float, rank
//         order) and w_r = w_r / s.
// Each row depends on that row alone, so routing is batch-invariant by
// construction.
#ifndef LOCKSTEP_KERNELS_ROUTER_H_
#define LOCKSTEP_KERNELS_ROUTER_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/device.h"

namespace lockstep::kernels {

struct RouteTopKArgs {
  const float* logits = nullptr;  // [rows, experts], row stride ld
  int64_t ld = 0;
  int64_t rows = 0;
  int64_t experts = 0;  // E, in [1, 4096]
  int64_t k = 0;        // in [1, E]
  bool normalize = false;
  float* weights = nullptr;  // [rows, k] (contiguous): w
  int32_t* ids = nullptr;    // [rows, k] (contiguous): chosen experts
  float* probs = nullptr;    // [rows, experts] (contiguous) p, or null
};

// INVALID_ARGUMENT for bad shapes or null pointers; otherwise computes the
// contract above on ctx's device.
absl::Status RouteTopK(const RouteTopKArgs& args, const ExecContext& ctx = {});

}  // namespace lockstep::kernels

#endif  // LOCKSTEP_KERNELS_ROUTER_H_
