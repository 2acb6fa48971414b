// Batch-invariant linear layer: y = x · wᵀ.
//
// Numerics contract: every output element y[i][j] is
//   acc = 0; for k in 0..K-1: acc = fma(x[i][k], w[j][k], acc)
// in fp32 (bf16 inputs are widened exactly), then stored in y's dtype. The
// order never depends on M, on the row's position, on the thread count or on
// the SIMD level, so a row's output is bit-identical whatever else is in the
// batch.
#ifndef LOCKSTEP_KERNELS_MATMUL_H_
#define LOCKSTEP_KERNELS_MATMUL_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/device.h"
#include "kernels/dtype.h"

namespace lockstep::kernels {

// Arguments of Matmul. Strides are in elements.
struct MatmulArgs {
  const void* x = nullptr;  // [m, k], row stride ldx
  DType x_dtype = DType::kF32;
  int64_t ldx = 0;
  const void* w = nullptr;  // [n, k] (out_features, in_features), row stride ldw
  DType w_dtype = DType::kF32;
  int64_t ldw = 0;
  void* y = nullptr;        // [m, n], row stride ldy
  DType y_dtype = DType::kF32;
  int64_t ldy = 0;
  int64_t m = 0;
  int64_t n = 0;
  int64_t k = 0;
};

// y = x · wᵀ with the contract above. INVALID_ARGUMENT on null pointers,
// negative sizes or strides smaller than the row length. m == 0 is a no-op.
absl::Status Matmul(const MatmulArgs& args, const ExecContext& ctx = {});

// A weight matrix [n, k] repacked once into the CPU kernel's panel layout so
// that repeated matmuls skip the per-call packing. Same bits as Matmul on the
// unpacked matrix. CPU only.
class PackedWeight {
 public:
  // Packs w [n, k] (row stride ldw, dtype kept). INVALID_ARGUMENT on bad
  // shapes.
  static absl::StatusOr<std::shared_ptr<const PackedWeight>> Pack(
      const void* w, DType w_dtype, int64_t ldw, int64_t n, int64_t k);

  int64_t n() const { return n_; }
  int64_t k() const { return k_; }
  DType dtype() const { return dtype_; }
  // Opaque panel storage; layout private to kernels/cpu/matmul.cc.
  const void* data() const { return data_.data(); }

 private:
  PackedWeight() = default;
  int64_t n_ = 0;
  int64_t k_ = 0;
  DType dtype_ = DType::kF32;
  std::vector<uint8_t> data_;
  friend class PackedWeightBuilder;
};

// y = x · wᵀ for a packed w. args.w/ldw/w_dtype/n/k are ignored (taken from
// `w`). Bit-identical to Matmul with the original matrix.
absl::Status MatmulPacked(const MatmulArgs& args, const PackedWeight& w);

}  // namespace lockstep::kernels

#endif  // LOCKSTEP_KERNELS_MATMUL_H_
