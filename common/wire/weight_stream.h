// Weights on the wire: encoding tensors as an UpdateWeights stream
// (lockstep.v1.WeightUpdate messages) and staging such a stream back into a
// verified TensorMap. The one encoder of the stream: the learner (pushes,
// GetWeights) and the client SDK (sdk/cpp/weights.h) send with it, the
// rollout service receives with the stager.
//
// Stream layout: one WeightUpdateHeader (target version + manifest: name,
// dtype, shape, total bytes and whole-tensor CRC-32C of every tensor), then
// TensorChunks (name, offset, 1 byte..4 MiB of data, CRC-32C of the data).
// A tensor's chunks arrive in increasing offset order without gaps or
// overlaps; chunks of different tensors may interleave.
#ifndef LOCKSTEP_COMMON_WIRE_WEIGHT_STREAM_H_
#define LOCKSTEP_COMMON_WIRE_WEIGHT_STREAM_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/formats/host_tensor.h"
#include "common/formats/model_config.h"
#include "kernels/dtype.h"
#include "lockstep/v1/common.pb.h"

namespace lockstep::common {

// Chunk payload size senders use by default (well under gRPC's default 4 MiB
// message limit).
inline constexpr size_t kDefaultWeightChunkBytes = size_t{1} << 20;
// Largest chunk payload a WeightStager accepts.
inline constexpr size_t kMaxWeightChunkBytes = size_t{4} << 20;
// The largest weight version a stream may announce (2^62, the learner's
// limit too): a version near 2^64 would leave no room for later updates.
inline constexpr uint64_t kMaxWeightVersion = uint64_t{1} << 62;
// The most parallel streams ("parts", WeightUpdateHeader.stream_count) one
// weight update may travel as.
inline constexpr uint32_t kMaxWeightStreams = 16;

// Whether manifest tensor `index` travels in part `stream_index` of
// `stream_count` (index % stream_count == stream_index; stream_count 0 or 1:
// the single stream carries every tensor).
inline bool TensorInPart(size_t index, uint32_t stream_index, uint32_t stream_count) {
  return stream_count <= 1 || index % stream_count == stream_index;
}

// kernels::DType <-> lockstep.v1.DType. FromProtoDType: INVALID_ARGUMENT for
// DTYPE_UNSPECIFIED or unknown values.
v1::DType ToProtoDType(kernels::DType dtype);
absl::StatusOr<kernels::DType> FromProtoDType(int dtype);

// Bytes per element of a wire dtype: 4 for DTYPE_F32, 2 for DTYPE_BF16, 0
// for anything else (no tensor travels as that).
int WireDTypeSize(v1::DType dtype);

// The wire form of a model config (config_json is config.ToJson()).
v1::ModelConfig ModelConfigToProto(const ModelConfig& config);

struct WeightStreamOptions {
  // Payload bytes per chunk, in [1, kMaxWeightChunkBytes]; a tensor's last
  // chunk (and a tensor smaller than this) is shorter.
  size_t chunk_bytes = kDefaultWeightChunkBytes;
  // Free text copied to WeightUpdateHeader.source.
  std::string source;
};

// One tensor as the stream carries it, by reference: the bytes stay where
// they are (a HostTensor, a mapped safetensors file, a caller's buffer) and
// must outlive the call that reads them.
struct WireTensor {
  std::string name;                 // Hugging Face name, "model.norm.weight"
  v1::DType dtype = v1::DTYPE_F32;  // as the manifest announces it
  std::vector<int64_t> shape;       // row-major; empty for a scalar
  const uint8_t* data = nullptr;    // [nbytes], little-endian, any alignment
  size_t nbytes = 0;                // numel(shape) * WireDTypeSize(dtype)
};

// INVALID_ARGUMENT, naming the tensor, for a negative dim, a dtype without a
// wire size, or nbytes other than numel(shape) * WireDTypeSize(dtype).
absl::Status CheckWireTensor(const WireTensor& tensor);

// Views of `tensors` in map (name) order, dtypes mapped by ToProtoDType (an
// fp16 tensor gets DTYPE_UNSPECIFIED and fails CheckWireTensor). They point
// into `tensors`, which must outlive them.
std::vector<WireTensor> ToWireTensors(const TensorMap& tensors);

// The header of a stream carrying `tensors`: the target version, `source`
// and the manifest in the given order with each tensor's CRC-32C. The
// tensors must pass CheckWireTensor (StreamWeights checks them; the TensorMap
// overload of MakeWeightUpdateHeader below checks and then calls this).
// `crcs`, when given, holds the tensors' CRC-32Cs already computed (one per
// tensor, in order) and replaces the pass over their bytes.
v1::WeightUpdateHeader WeightUpdateHeaderOf(
    absl::Span<const WireTensor> tensors, uint64_t target_version,
    const std::string& source, const std::vector<uint32_t>* crcs = nullptr);

// Emits the whole stream for `tensors` to `sink`: the header, then every
// tensor's chunks in the given order. Stops at and returns the first error
// of `sink`. INVALID_ARGUMENT for a bad chunk_bytes or a tensor that fails
// CheckWireTensor (before anything reaches `sink`).
absl::Status StreamWeights(
    absl::Span<const WireTensor> tensors, uint64_t target_version,
    const std::function<absl::Status(const v1::WeightUpdate&)>& sink,
    const WeightStreamOptions& options = {});

// A stream's header and every chunk's CRC-32C, computed once (one pass over
// the bytes) so that the parts of a parallel update (StreamWeightPart) share
// them instead of each checksumming every tensor again.
struct WeightStreamPlan {
  v1::WeightUpdateHeader header;  // stream_index/stream_count unset
  size_t chunk_bytes = kDefaultWeightChunkBytes;
  std::vector<std::vector<uint32_t>> chunk_crcs;  // [tensor][chunk]
};

// The plan of a stream carrying `tensors` as `target_version` (chunking and
// source from `options`; its stream_index/stream_count are ignored).
// INVALID_ARGUMENT for a bad chunk_bytes or a tensor that fails
// CheckWireTensor.
absl::StatusOr<WeightStreamPlan> PlanWeightStream(absl::Span<const WireTensor> tensors,
                                                  uint64_t target_version,
                                                  const WeightStreamOptions& options = {});

// Emits part `stream_index` of `stream_count` of the planned stream to
// `sink`: the plan's header with stream_index/stream_count set (left unset
// when stream_count <= 1), then the chunks of the tensors with
// TensorInPart(i, stream_index, stream_count), in order. `tensors` must be
// the ones planned. Stops at and returns the first error of `sink`;
// INVALID_ARGUMENT for stream_count above kMaxWeightStreams, stream_index >=
// max(stream_count, 1) or tensors other than the plan's count.
absl::Status StreamWeightPart(absl::Span<const WireTensor> tensors, const WeightStreamPlan& plan,
                              uint32_t stream_index, uint32_t stream_count,
                              const std::function<absl::Status(const v1::WeightUpdate&)>& sink);

// The TensorMap forms of the above, for senders that hold their weights in
// one (the learner, tests): ToWireTensors(tensors), then the same stream.
//
// The header of a stream carrying `tensors` (manifest in map order, with each
// tensor's CRC-32C). INVALID_ARGUMENT when a tensor fails CheckWireTensor.
absl::StatusOr<v1::WeightUpdateHeader> MakeWeightUpdateHeader(
    const TensorMap& tensors, uint64_t target_version,
    const std::string& source = "");

// Emits the whole stream for `tensors` to `sink`: the header, then every
// tensor's chunks in map order. Stops at and returns the first error of
// `sink`. INVALID_ARGUMENT for a bad chunk_bytes or a tensor that fails
// CheckWireTensor.
absl::Status StreamWeights(
    const TensorMap& tensors, uint64_t target_version,
    const std::function<absl::Status(const v1::WeightUpdate&)>& sink,
    const WeightStreamOptions& options = {});

// StreamWeights into a vector (tests, small models).
absl::StatusOr<std::vector<v1::WeightUpdate>> SplitWeights(
    const TensorMap& tensors, uint64_t target_version,
    const WeightStreamOptions& options = {});

// Receives one weight-update stream and yields the verified tensors. Error
// codes (the first error is sticky: later calls return it again):
//   INVALID_ARGUMENT  malformed stream: a chunk before the header, a second
//                     header, an empty or duplicate manifest name, an unknown
//                     dtype, total_bytes inconsistent with shape and dtype, a
//                     chunk naming a tensor not in the manifest, an empty
//                     chunk or one over kMaxWeightChunkBytes, a chunk whose
//                     offset is not the next expected byte of its tensor
//                     (gap, overlap, reorder) or that runs past its end, or
//                     Finish() without a header; with a shared buffer
//                     (WeightUpdateHeader.shared): a path outside
//                     /dev/shm/lockstep-weights-*, tensors outside the
//                     buffer or overlapping, any chunk;
//                     parts (WeightUpdateHeader.stream_count > 1): a
//                     stream_count above kMaxWeightStreams, a stream_index
//                     >= max(stream_count, 1), a shared buffer with
//                     stream_count > 1, a chunk of a tensor of another part;
//   FAILED_PRECONDITION  a shared buffer this process cannot read (another
//                     host, missing, wrong size: send the stream instead);
//   ABORTED           the manifest does not match the model (tensor names not
//                     in the config's ExpectedTensors, expected tensors
//                     missing, a shape or dtype different from the config's),
//                     a chunk or whole-tensor CRC-32C mismatch, or Finish()
//                     before every byte of every tensor arrived.
// A part of a parallel update (stream_count > 1) is checked against the
// model in full (its manifest is the whole one) but stages, and Finish
// returns, only the tensors of its part; the union of every part's Finish is
// what the single stream's would be.
// Not thread-safe; one stager per stream.
class WeightStager {
 public:
  // Tensors are validated against ExpectedTensors(config) and config.dtype.
  explicit WeightStager(ModelConfig config);

  // Feeds the next message of the stream.
  absl::Status Add(const v1::WeightUpdate& message);

  // Checks that the stream is complete and returns the tensors (once; later
  // calls return FAILED_PRECONDITION).
  absl::StatusOr<TensorMap> Finish();

  bool has_header() const { return has_header_; }
  // The header's target version (0 before the header).
  uint64_t target_version() const { return header_.target_version(); }
  const v1::WeightUpdateHeader& header() const { return header_; }
  // The header's part: index in [0, stream_count()), count >= 1 (1 for a
  // single stream).
  uint32_t stream_index() const { return header_.stream_index(); }
  uint32_t stream_count() const { return std::max<uint32_t>(header_.stream_count(), 1); }
  // Tensor payload bytes accepted so far.
  uint64_t bytes_received() const { return bytes_received_; }
  // Total bytes the manifest announces.
  uint64_t bytes_expected() const { return bytes_expected_; }
  // How the bytes come: WEIGHT_PATH_SHARED_MEMORY when the header names a
  // shared buffer (read in Finish, see shared_weights.h), else STREAM.
  v1::WeightPath path() const {
    return header_.has_shared() ? v1::WEIGHT_PATH_SHARED_MEMORY : v1::WEIGHT_PATH_STREAM;
  }

 private:
  struct Staged {
    HostTensor tensor;
    uint64_t received = 0;  // next expected offset
    uint32_t crc = 0;       // running CRC-32C of bytes [0, received)
    uint32_t expected_crc = 0;
    uint64_t offset = 0;  // in the shared buffer (WeightUpdateHeader.shared)
  };

  absl::Status AddHeader(const v1::WeightUpdateHeader& header);
  absl::Status AddChunk(const v1::TensorChunk& chunk);
  absl::Status Fail(absl::Status status);
  // Copies and verifies every tensor out of the header's shared buffer.
  absl::Status ReadShared();

  ModelConfig config_;
  bool has_header_ = false;
  bool finished_ = false;
  absl::Status error_;
  v1::WeightUpdateHeader header_;
  std::map<std::string, Staged> staged_;
  // Manifest tensors that travel in the other parts (empty for one stream).
  std::set<std::string> other_parts_;
  uint64_t bytes_received_ = 0;
  uint64_t bytes_expected_ = 0;
};

}  // namespace lockstep::common

#endif  // LOCKSTEP_COMMON_WIRE_WEIGHT_STREAM_H_
