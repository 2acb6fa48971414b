// Rotary position embedding, in place, Llama/Qwen ("rotate half") layout:
// for each head and i < rot/2, with a = x[i], b = x[i + rot/2],
//   a' = a*c_i - b*s_i,  b' = b*c_i + a*s_i,
//   c_i = fp32(cos(p*f_i) * m),  s_i = fp32(sin(p*f_i) * m),
// where f_i = inv_freq[i] (the model's table: plain, linear, llama3 or YaRN
// RoPE, computed once in float64 by common/rope_parameters) and m the
// attention factor (YaRN's; 1 otherwise). Angle, cos, sin and the scale are
// double, rounded once to fp32, and the rotation is fp32 without
// contraction, so a token's result depends only on its own values and
// position.
#ifndef LOCKSTEP_KERNELS_ROPE_H_
#define LOCKSTEP_KERNELS_ROPE_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/device.h"

namespace lockstep::kernels {

struct RopeArgs {
  float* x = nullptr;                // [tokens, heads, head_dim], row stride ldx
  int64_t ldx = 0;                   // stride between tokens (>= heads*head_dim)
  const int32_t* positions = nullptr;  // [tokens], >= 0
  int64_t tokens = 0;
  int64_t heads = 0;
  int64_t head_dim = 0;              // even
  int64_t rotary_dim = 0;            // even, <= head_dim (0 means head_dim)
  // [rotary_dim / 2] inverse frequencies, finite and >= 0; host memory for
  // the CPU, device memory for CUDA.
  const double* inv_freq = nullptr;
  double attention_factor = 1.0;     // finite, > 0: scales cos and sin
};

absl::Status ApplyRope(const RopeArgs& args, const ExecContext& ctx = {});

}  // namespace lockstep::kernels

#endif  // LOCKSTEP_KERNELS_ROPE_H_
