// SwiGLU activation: out = silu(gate) * up, silu(g) = g / (1 + expf(-g)).
// Elementwise, so trivially batch invariant.
#ifndef LOCKSTEP_KERNELS_ACTIVATION_H_
#define LOCKSTEP_KERNELS_ACTIVATION_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/device.h"

namespace lockstep::kernels {

struct SiluMulArgs {
  const float* gate = nullptr;  // [rows, n], row stride ld_in
  const float* up = nullptr;    // [rows, n], row stride ld_in
  int64_t ld_in = 0;
  float* out = nullptr;         // [rows, n], row stride ld_out; may alias gate
  int64_t ld_out = 0;
  int64_t rows = 0;
  int64_t n = 0;
};

absl::Status SiluMul(const SiluMulArgs& args, const ExecContext& ctx = {});

// Rounds every element of x [rows, n] (row stride ld) to the nearest bf16
// value in place: the "bf16 storage between ops" cast, applied at the same
// points by every forward.
absl::Status RoundRowsToBF16(float* x, int64_t ld, int64_t rows, int64_t n,
                             const ExecContext& ctx = {});

// y[i][j] += x[i][j] (residual add, fp32).
absl::Status AddInPlace(float* y, int64_t ldy, const float* x, int64_t ldx,
                        int64_t rows, int64_t n, const ExecContext& ctx = {});

}  // namespace lockstep::kernels

#endif  // LOCKSTEP_KERNELS_ACTIVATION_H_
