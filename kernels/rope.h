// Rotary position embedding, in place, Llama/Qwen ("rotate half") layout:
// for each head and i < rot/2, with a = x[i], b = x[i + rot/2],
//   a' = a*cos(p*f_i) - b*sin(p*f_i),  b' = b*cos(p*f_i) + a*sin(p*f_i),
// f_i = theta^(-2i/rot). cos/sin are computed in double and rounded to fp32,
// so a token's result depends only on its own values and position.
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
  double theta = 10000.0;
};

absl::Status ApplyRope(const RopeArgs& args, const ExecContext& ctx = {});

}  // namespace lockstep::kernels

#endif  // LOCKSTEP_KERNELS_ROPE_H_
