#include "kernels/cpu/fused.h"

#include <cmath>
#include <cstdint>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/rms_norm.h"
#include "kernels/cpu/rope.h"
#include "kernels/cpu/threading.h"
#include "kernels/dtype.h"

namespace lockstep::kernels::cpu {
namespace {

// Rows per task so that one task touches at least ~16K elements.
int64_t RowGrain(int64_t n) { return n >= 16384 ? 1 : 16384 / n; }

// The storage cast R of kernels/fused.h.
inline float R(float v, bool round) { return round ? RoundToBF16(v) : v; }

// Stores fp32 `v` (already R-rounded when the caller rounds) as element j of
// a row of `dtype`.
inline void Put(void* row, DType dtype, int64_t j, float v) { StoreFromF32(row, dtype, j, v); }

}  // namespace

absl::Status AddRmsNorm(const AddRmsNormArgs& args) {
  if (args.rows == 0) return absl::OkStatus();
  const int64_t n = args.n;
  const int64_t ysize = DTypeSize(args.y_dtype);
  ParallelFor(args.rows, RowGrain(n), [&](int64_t begin, int64_t end) {
    std::vector<float> normed(n);
    for (int64_t r = begin; r < end; ++r) {
      float* h = args.h + r * args.ldh;
      if (args.delta != nullptr) {
        // The residual add of the unfused forward: h + R(delta), then R.
        const float* d = args.delta + r * args.ld_delta;
        for (int64_t j = 0; j < n; ++j) {
          h[j] = R(h[j] + R(d[j], args.round_bf16), args.round_bf16);
        }
      }
      RmsNormRow(h, args.weight, args.weight_dtype, normed.data(), n, args.eps);
      void* y = static_cast<uint8_t*>(args.y) + r * args.ldy * ysize;
      for (int64_t j = 0; j < n; ++j) Put(y, args.y_dtype, j, R(normed[j], args.round_bf16));
    }
  });
  return absl::OkStatus();
}

absl::Status HeadNormRope(const HeadNormRopeArgs& args) {
  for (int64_t t = 0; t < args.tokens; ++t) {
    if (args.positions[t] < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "HeadNormRope: positions[", t, "] = ", args.positions[t], " < 0"));
    }
  }
  if (args.tokens == 0 || args.heads == 0) return absl::OkStatus();
  const int64_t d = args.head_dim, half = d / 2;
  for (int64_t i = 0; i < half; ++i) {
    if (!(args.inv_freq[i] >= 0.0) || std::isinf(args.inv_freq[i])) {
      return absl::InvalidArgumentError(absl::StrCat(
          "HeadNormRope: inv_freq[", i, "] = ", args.inv_freq[i], " is not finite and >= 0"));
    }
  }
  const bool round = args.round_bf16;
  ParallelFor(args.tokens, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> cos_v(half), sin_v(half);
    for (int64_t t = begin; t < end; ++t) {
      RopeCosSin(args.positions[t], args.inv_freq, half, args.attention_factor, cos_v.data(),
                 sin_v.data());
      float* row = args.x + t * args.ldx;
      for (int64_t h = 0; h < args.heads; ++h) {
        float* xh = row + h * d;
        for (int64_t j = 0; j < d; ++j) xh[j] = R(xh[j], round);
        if (args.norm_weight != nullptr) {
          RmsNormRow(xh, args.norm_weight, args.norm_dtype, xh, d, args.eps);
          for (int64_t j = 0; j < d; ++j) xh[j] = R(xh[j], round);
        }
        RopeRotateHead(xh, half, cos_v.data(), sin_v.data());
        for (int64_t j = 0; j < d; ++j) xh[j] = R(xh[j], round);
      }
    }
  });
  return absl::OkStatus();
}

absl::Status SiluMulRound(const SiluMulRoundArgs& args) {
  if (args.rows == 0 || args.n == 0) return absl::OkStatus();
  const int64_t osize = DTypeSize(args.out_dtype);
  const bool round = args.round_bf16;
  ParallelFor(args.rows, RowGrain(args.n), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* g = args.gate + r * args.ld_gate;
      const float* u = args.up + r * args.ld_up;
      void* o = static_cast<uint8_t*>(args.out) + r * args.ld_out * osize;
      // out may alias gate (f32): element j reads g[j] and u[j] first.
      for (int64_t j = 0; j < args.n; ++j) {
        const float gj = R(g[j], round);
        const float uj = R(u[j], round);
        // kernels/cpu/activation.cc's expression, then the cast.
        const float silu = gj / (1.0f + std::exp(-gj));
        Put(o, args.out_dtype, j, R(silu * uj, round));
      }
    }
  });
  return absl::OkStatus();
}

}  // namespace lockstep::kernels::cpu
