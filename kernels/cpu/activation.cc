#include "kernels/cpu/activation.h"

#include <cmath>

#include "kernels/cpu/threading.h"
#include "kernels/dtype.h"

namespace lockstep::kernels::cpu {
namespace {

// Rows per task so that one task touches at least ~16K elements.
int64_t RowGrain(int64_t n) { return n >= 16384 ? 1 : 16384 / n; }

}  // namespace

absl::Status SiluMul(const SiluMulArgs& args) {
  if (args.rows == 0 || args.n == 0) return absl::OkStatus();
  ParallelFor(args.rows, RowGrain(args.n), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* g = args.gate + r * args.ld_in;
      const float* u = args.up + r * args.ld_in;
      float* o = args.out + r * args.ld_out;
      // out may alias gate: element j reads g[j] and u[j] before writing o[j].
      for (int64_t j = 0; j < args.n; ++j) {
        const float gj = g[j];
        const float silu = gj / (1.0f + std::exp(-gj));
        o[j] = silu * u[j];
      }
    }
  });
  return absl::OkStatus();
}

absl::Status RoundRowsToBF16(float* x, int64_t ld, int64_t rows, int64_t n) {
  if (rows == 0 || n == 0) return absl::OkStatus();
  ParallelFor(rows, RowGrain(n), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float* row = x + r * ld;
      for (int64_t j = 0; j < n; ++j) row[j] = RoundToBF16(row[j]);
    }
  });
  return absl::OkStatus();
}

absl::Status AddInPlace(float* y, int64_t ldy, const float* x, int64_t ldx,
                        int64_t rows, int64_t n) {
  if (rows == 0 || n == 0) return absl::OkStatus();
  ParallelFor(rows, RowGrain(n), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float* yr = y + r * ldy;
      const float* xr = x + r * ldx;
      for (int64_t j = 0; j < n; ++j) yr[j] = yr[j] + xr[j];
    }
  });
  return absl::OkStatus();
}

}  // namespace lockstep::kernels::cpu
