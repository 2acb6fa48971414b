#include "kernels/cpu/rope.h"

#include <cmath>
#include <cstdint>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/threading.h"

namespace lockstep::kernels::cpu {

void RopeCosSin(int32_t pos, const double* inv_freq, int64_t half, double scale,
                float* cos_v, float* sin_v) {
  const double p = static_cast<double>(pos);
  for (int64_t i = 0; i < half; ++i) {
    const double angle = p * inv_freq[i];
    cos_v[i] = static_cast<float>(std::cos(angle) * scale);
    sin_v[i] = static_cast<float>(std::sin(angle) * scale);
  }
}

void RopeRotateHead(float* xh, int64_t half, const float* cos_v, const float* sin_v) {
  for (int64_t i = 0; i < half; ++i) {
    const float a = xh[i];
    const float b = xh[i + half];
    xh[i] = a * cos_v[i] - b * sin_v[i];
    xh[i + half] = b * cos_v[i] + a * sin_v[i];
  }
}

absl::Status ApplyRope(const RopeArgs& args) {
  for (int64_t t = 0; t < args.tokens; ++t) {
    if (args.positions[t] < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "ApplyRope: positions[", t, "] = ", args.positions[t], " < 0"));
    }
  }
  if (args.tokens == 0 || args.heads == 0) return absl::OkStatus();
  const int64_t rot = args.rotary_dim == 0 ? args.head_dim : args.rotary_dim;
  const int64_t half = rot / 2;
  for (int64_t i = 0; i < half; ++i) {
    if (!(args.inv_freq[i] >= 0.0) || std::isinf(args.inv_freq[i])) {
      return absl::InvalidArgumentError(absl::StrCat(
          "ApplyRope: inv_freq[", i, "] = ", args.inv_freq[i],
          " is not finite and >= 0"));
    }
  }
  // Angles in double, rounded once to fp32 per (position, i): the result
  // depends on nothing but the token's position.
  const double* inv_freq = args.inv_freq;
  const double scale = args.attention_factor;
  ParallelFor(args.tokens, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> cos_v(half), sin_v(half);
    for (int64_t t = begin; t < end; ++t) {
      RopeCosSin(args.positions[t], inv_freq, half, scale, cos_v.data(), sin_v.data());
      float* row = args.x + t * args.ldx;
      for (int64_t h = 0; h < args.heads; ++h) {
        RopeRotateHead(row + h * args.head_dim, half, cos_v.data(), sin_v.data());
      }
    }
  });
  return absl::OkStatus();
}

}  // namespace lockstep::kernels::cpu
