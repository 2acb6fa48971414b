// CPU implementations of kernels/activation.h.
#ifndef LOCKSTEP_KERNELS_CPU_ACTIVATION_H_
#define LOCKSTEP_KERNELS_CPU_ACTIVATION_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/activation.h"

namespace lockstep::kernels::cpu {

// out = silu(gate) * up elementwise, silu(g) = g / (1 + expf(-g)); rows split
// over the worker pool. Arguments must already be validated. Returns OK.
absl::Status SiluMul(const SiluMulArgs& args);

// x[i][j] = RoundToBF16(x[i][j]) for x [rows, n], row stride ld. Returns OK.
absl::Status RoundRowsToBF16(float* x, int64_t ld, int64_t rows, int64_t n);

// y[i][j] += x[i][j] for [rows, n] matrices with row strides ldy, ldx.
// Returns OK.
absl::Status AddInPlace(float* y, int64_t ldy, const float* x, int64_t ldx,
                        int64_t rows, int64_t n);

}  // namespace lockstep::kernels::cpu

#endif  // LOCKSTEP_KERNELS_CPU_ACTIVATION_H_
