// Weights on the client side: a replayable set of tensors (from a
// safetensors file or from memory) and its encoding as a
// lockstep.v1.RolloutService/UpdateWeights stream.
//
// Stream layout (see proto/lockstep/v1/common.proto): one WeightUpdateHeader
// (target version + manifest: name, dtype, shape, total bytes and CRC-32C of
// every tensor, in name order), then TensorChunks of each tensor in name
// order (name, offset, 1 byte to 4 MiB of data, CRC-32C of the data). The
// encoder is the servers' own, common/wire/weight_stream.h (lockstep::wire,
// no LibTorch); this file adds the weight sets a client uploads from.
#ifndef LOCKSTEP_SDK_CPP_WEIGHTS_H_
#define LOCKSTEP_SDK_CPP_WEIGHTS_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/wire/weight_stream.h"
#include "lockstep/v1/common.pb.h"

namespace lockstep::client {

// Chunk payload the SDK sends by default (1 MiB), and the largest the
// servers take (4 MiB).
using common::kDefaultWeightChunkBytes;
using common::kMaxWeightChunkBytes;

// A view of one tensor's bytes (name, wire dtype, shape, data, nbytes;
// row-major, little-endian): the encoder's common::WireTensor.
using TensorView = common::WireTensor;

// An owned tensor, for weight sets built in memory.
struct Tensor {
  std::string name;
  v1::DType dtype = v1::DTYPE_F32;
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;  // numel(shape) * WireDTypeSize(dtype) bytes
};

// An immutable set of tensors, sorted by name, that can be streamed any
// number of times (which is what makes a weight upload retryable). Cheap to
// copy: copies share the underlying file mapping or buffers.
class WeightSet {
 public:
  WeightSet() = default;

  // Maps `path` read-only: a .safetensors file, or a checkpoint directory in
  // Hugging Face layout (the layout of lockstep_make_model and of learner
  // checkpoints) holding model.safetensors or model.safetensors.index.json
  // and its shards. Errors of common::SafetensorsFile::Open or, for a
  // directory, common::SafetensorsCheckpoint::Open (NOT_FOUND, DATA_LOSS,
  // INVALID_ARGUMENT).
  static absl::StatusOr<WeightSet> FromSafetensors(const std::string& path);

  // Takes ownership of `tensors`. INVALID_ARGUMENT for an empty or
  // duplicate name, an unspecified dtype, a negative dim, or a byte size
  // that does not match shape and dtype.
  static absl::StatusOr<WeightSet> FromTensors(std::vector<Tensor> tensors);

  // A copy with every tensor stored as `dtype`: F32 -> BF16 rounds to
  // nearest even, BF16 -> F32 is exact; tensors already in `dtype` are
  // shared, not copied. INVALID_ARGUMENT for DTYPE_UNSPECIFIED.
  absl::StatusOr<WeightSet> ConvertedTo(v1::DType dtype) const;

  // The tensors, sorted by name.
  const std::vector<TensorView>& tensors() const { return views_; }
  // Sum of the tensors' byte sizes.
  uint64_t total_bytes() const;
  // The dtype every tensor has, or DTYPE_UNSPECIFIED when they differ or the
  // set is empty.
  v1::DType dtype() const;

 private:
  std::vector<std::shared_ptr<const void>> owners_;  // keep views_ valid
  std::vector<TensorView> views_;
};

struct WeightUploadOptions {
  // The version the weights become on the rollout; must be greater than the
  // one it serves (else FAILED_PRECONDITION). 0: the served version + 1
  // (RolloutClient asks GetModelInfo first).
  uint64_t target_version = 0;
  // Free text for the servers' logs (WeightUpdateHeader.source).
  std::string source = "lockstep sdk";
  // Payload bytes per chunk, in [1, kMaxWeightChunkBytes].
  size_t chunk_bytes = kDefaultWeightChunkBytes;
};

// The header announcing `weights` (manifest in name order with each
// tensor's CRC-32C): common::WeightUpdateHeaderOf.
v1::WeightUpdateHeader MakeWeightUpdateHeader(const WeightSet& weights,
                                              uint64_t target_version,
                                              const std::string& source);

// Emits the whole UpdateWeights stream for `weights` to `sink` (through
// common::StreamWeights): the header, then every tensor's chunks. Stops at
// and returns the first error of `sink`. INVALID_ARGUMENT for an empty
// weight set or chunk_bytes outside [1, kMaxWeightChunkBytes].
absl::Status StreamWeightUpdate(
    const WeightSet& weights, const WeightUploadOptions& options,
    const std::function<absl::Status(const v1::WeightUpdate&)>& sink);

}  // namespace lockstep::client

#endif  // LOCKSTEP_SDK_CPP_WEIGHTS_H_
