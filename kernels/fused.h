// Fused row-wise kernels of the decoder forward: each one does, in one pass,
// what a chain of the single ops (rms_norm.h, rope.h, activation.h) plus the
// bf16 storage casts between them does, with the SAME per-element
// arithmetic in the same order, so its bits are those of the chain:
//
//   AddRmsNorm      h = R(h + R(delta));  y = R(RmsNorm(h))
//   HeadNormRope    x = R(Rope(R(RmsNorm_per_head(R(x)))))
//   SiluMulRound    out = R(SiluMul(R(gate), R(up)))
//
// where R is the bf16 storage cast (round to nearest even, kept as fp32;
// kernels/dtype.h RoundToBF16) when `round_bf16` is set and the identity
// otherwise. The norms follow the contract of kernels/rms_norm.h on the
// backend they run on (the CUDA per-row tree of kernels/cuda/rms_norm.cu,
// the CPU sequential fma chain), RoPE that of kernels/rope.h, SwiGLU that of
// kernels/activation.h. Rows (tokens) are independent, so batching never
// changes a row's bits. Outputs written as bf16 (`*_dtype` = kBF16) hold the
// same values as the rounded fp32 outputs (R is exact into bf16).
#ifndef LOCKSTEP_KERNELS_FUSED_H_
#define LOCKSTEP_KERNELS_FUSED_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/device.h"
#include "kernels/dtype.h"

namespace lockstep::kernels {

// Residual add + RMSNorm: for each row, when `delta` is non-null,
// h[j] = R(h[j] + R(delta[j])) (fp32 add) is written back to h; then
// y = R(RmsNorm(h)) with `weight`. With delta null, h is only read.
struct AddRmsNormArgs {
  float* h = nullptr;            // [rows, n], row stride ldh: the residual
  int64_t ldh = 0;
  const float* delta = nullptr;  // [rows, n], row stride ld_delta; may be null
  int64_t ld_delta = 0;
  const void* weight = nullptr;  // [n]
  DType weight_dtype = DType::kF32;
  void* y = nullptr;             // [rows, n] of y_dtype, row stride ldy; must
                                 // not overlap h or delta
  DType y_dtype = DType::kF32;   // kF32 or kBF16 (then R is applied anyway)
  int64_t ldy = 0;
  int64_t rows = 0;
  int64_t n = 0;
  float eps = 1e-6f;
  bool round_bf16 = false;
};

absl::Status AddRmsNorm(const AddRmsNormArgs& args, const ExecContext& ctx = {});

// Per-head RMSNorm (QK-norm) and RoPE of x [tokens, heads, head_dim], in
// place: x = R(Rope(R(RmsNorm(R(x)) per head with `norm_weight`))). With
// norm_weight null there is no norm: x = R(Rope(R(x))). RoPE as
// kernels/rope.h with rotary_dim = head_dim.
struct HeadNormRopeArgs {
  float* x = nullptr;                  // [tokens, heads * head_dim], row stride ldx
  int64_t ldx = 0;
  const int32_t* positions = nullptr;  // [tokens], >= 0
  int64_t tokens = 0;
  int64_t heads = 0;
  int64_t head_dim = 0;                // even
  const void* norm_weight = nullptr;   // [head_dim]; null: no norm
  DType norm_dtype = DType::kF32;
  float eps = 1e-6f;
  // [head_dim / 2] inverse frequencies, finite and >= 0; host memory for the
  // CPU, device memory for CUDA.
  const double* inv_freq = nullptr;
  double attention_factor = 1.0;       // finite, > 0
  bool round_bf16 = false;
};

absl::Status HeadNormRope(const HeadNormRopeArgs& args, const ExecContext& ctx = {});

// SwiGLU with the storage casts: out = R(silu(R(gate)) * R(up)), silu as
// kernels/activation.h. gate and up may be two halves of one [rows, 2n]
// GEMM output (ld_gate = ld_up = 2n, up = gate + n).
struct SiluMulRoundArgs {
  const float* gate = nullptr;  // [rows, n], row stride ld_gate
  int64_t ld_gate = 0;
  const float* up = nullptr;    // [rows, n], row stride ld_up
  int64_t ld_up = 0;
  void* out = nullptr;          // [rows, n] of out_dtype, row stride ld_out;
                                // may alias gate when out_dtype is kF32
  DType out_dtype = DType::kF32;  // kF32 or kBF16
  int64_t ld_out = 0;
  int64_t rows = 0;
  int64_t n = 0;
  bool round_bf16 = false;
};

absl::Status SiluMulRound(const SiluMulRoundArgs& args, const ExecContext& ctx = {});

}  // namespace lockstep::kernels

#endif  // LOCKSTEP_KERNELS_FUSED_H_
