// Reading and writing safetensors files
// (https://github.com/huggingface/safetensors):
//   [8-byte little-endian header length N][N bytes of JSON header][data buffer]
// The header maps tensor names to {"dtype", "shape", "data_offsets": [begin,
// end)} (offsets relative to the data buffer) plus an optional "__metadata__"
// object of string values. The F32, BF16 and F16 dtypes are supported.
// Checkpoint directories in Hugging Face layout (one model.safetensors, or an
// index plus shards) are opened by SafetensorsCheckpoint.
#ifndef LOCKSTEP_COMMON_FORMATS_SAFETENSORS_H_
#define LOCKSTEP_COMMON_FORMATS_SAFETENSORS_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/dtype.h"

namespace lockstep::common {

// Largest JSON header Open() accepts (the reference implementation's limit).
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100ull << 20;

// One tensor: its name, element type, shape and a view of its bytes.
struct TensorInfo {
  std::string name;
  kernels::DType dtype = kernels::DType::kF32;
  std::vector<int64_t> shape;  // row-major; empty for a scalar
  // [numel() * DTypeSize(dtype)] bytes, row-major, little-endian. In a
  // SafetensorsFile this points into the read-only mapping and lives as long
  // as the file object; it is aligned to DTypeSize(dtype) only when the file
  // places it so (files written by WriteSafetensors/SafetensorsWriter whose
  // preceding tensors all have sizes that are multiples of 4 bytes do), so
  // readers of arbitrary files should memcpy or check alignment.
  const uint8_t* data = nullptr;
  size_t nbytes = 0;  // == numel() * DTypeSize(dtype)

  // Product of the dims (1 for a scalar). Assumes the shape is valid (no
  // negative dims, no overflow), which Open() guarantees.
  int64_t numel() const;
};

// A safetensors file mapped read-only into memory, fully validated at Open().
// Not copyable or movable; share it through the unique_ptr. Thread-safe for
// concurrent reads. The file must not be truncated by another process while
// it is open (writers here replace files by rename, which is safe).
class SafetensorsFile {
 public:
  // Maps and validates `path`. Errors (the message names the path and, where
  // one is involved, the tensor):
  //   NotFound / PermissionDenied / ...: the file cannot be opened (errno);
  //   DataLoss: the file is shorter than 8 bytes, the header length runs past
  //     the end of the file, or a tensor's data_offsets run past the end of
  //     the data buffer (a truncated or corrupt file);
  //   InvalidArgument: the header length exceeds kMaxSafetensorsHeaderBytes;
  //     the header is not valid UTF-8 JSON or not an object; an entry is not
  //     an object or lacks "dtype", "shape" or "data_offsets", or one of them
  //     has the wrong type; the dtype is unknown or unsupported (only F32, BF16
  //     and F16 are); a dim is negative or the shape overflows; data_offsets are
  //     not two non-negative integers with begin <= end; the shape's byte
  //     size differs from end - begin; two tensors' bytes overlap; a tensor
  //     name is empty or duplicated (any duplicate JSON key is rejected);
  //     "__metadata__" is not an object of strings; the data buffer
  //     extends past the end of the last tensor (trailing bytes; the
  //     message names the file and the byte count).
  // Gaps between tensors are allowed.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(
      const std::string& path);

  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  ~SafetensorsFile();

  // All tensors, sorted by name.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }

  // The tensor called `name`, or NotFound (naming the file).
  absl::StatusOr<const TensorInfo*> Get(std::string_view name) const;

  // The "__metadata__" map (empty when the header has none).
  const std::map<std::string, std::string>& metadata() const {
    return metadata_;
  }

  // The path given to Open().
  const std::string& path() const { return path_; }

  // Total size of the file in bytes.
  size_t file_size() const { return size_; }

 private:
  SafetensorsFile(std::string path, const uint8_t* base, size_t size)
      : path_(std::move(path)), base_(base), size_(size) {}

  std::string path_;
  const uint8_t* base_;  // [size_] bytes mapped read-only (null when size_ 0)
  size_t size_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// File names of a Hugging Face checkpoint directory: the whole model in one
// file, or an index naming the shards (each itself a safetensors file).
inline constexpr char kSafetensorsFileName[] = "model.safetensors";
inline constexpr char kSafetensorsIndexFileName[] =
    "model.safetensors.index.json";

// Largest index file SafetensorsCheckpoint::Open() reads (a real one is tens
// of KiB: one line per tensor).
inline constexpr uint64_t kMaxSafetensorsIndexBytes = 100ull << 20;

// The weights of a Hugging Face checkpoint directory, opened through one
// code path whatever their layout:
//   - `dir`/model.safetensors: one file (models up to a few GB), or
//   - `dir`/model.safetensors.index.json plus the shards it names (larger
//     models, e.g. Qwen3-8B, Llama-3-8B):
//       {"metadata": {"total_size": <bytes of tensor data>},
//        "weight_map": {"lm_head.weight": "model-00004-of-00004.safetensors",
//                       ...}}
// When both are present the single file is used and the index is not read,
// as Hugging Face transformers does (it looks for model.safetensors first).
// Every file is mapped read-only and validated as by SafetensorsFile::Open().
// Not copyable or movable; thread-safe for concurrent reads.
class SafetensorsCheckpoint {
 public:
  // Opens the checkpoint in directory `dir`. Errors (the message names the
  // file at fault):
  //   InvalidArgument: `dir` is empty or not a directory;
  //   NotFound: `dir` does not exist, or holds neither model.safetensors nor
  //     model.safetensors.index.json (the message names both);
  //   the errors of SafetensorsFile::Open() for model.safetensors or for a
  //     shard (NotFound for a shard the index lists but that is missing,
  //     DataLoss for a truncated one, ...), with the index named as well;
  //   errno-derived errors when the index cannot be read;
  //   InvalidArgument for an index that is larger than
  //     kMaxSafetensorsIndexBytes, not valid UTF-8 JSON, not an object, or
  //     has a duplicate key; whose "metadata" (optional, not otherwise read:
  //     "total_size" is not checked, as in transformers) is not an object;
  //     whose "weight_map" is missing, not an object, empty, maps an empty
  //     tensor name, or has a value that is not a string or not a plain file
  //     name (empty, ".", "..", or containing '/' or NUL: a name may not
  //     leave `dir`; a shard that is a symbolic link is fine, as in the
  //     Hugging Face cache); and for shards that disagree with the index: a
  //     tensor that the weight_map lists but its shard lacks, a tensor of a
  //     shard that the weight_map does not map to that shard, or a tensor
  //     present in two shards. (Like SafetensorsFile, DataLoss is kept for
  //     truncated files; an inconsistent but complete set of files is
  //     InvalidArgument.)
  // Files in `dir` that the index does not name are not opened.
  static absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> Open(
      const std::string& dir);

  SafetensorsCheckpoint(const SafetensorsCheckpoint&) = delete;
  SafetensorsCheckpoint& operator=(const SafetensorsCheckpoint&) = delete;
  ~SafetensorsCheckpoint();

  // All tensors of all files, sorted by name; each `data` points into its
  // file's mapping and lives as long as this object. For a single file this
  // is exactly SafetensorsFile::tensors() of model.safetensors.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }

  // The tensor called `name`, or NotFound (naming path()).
  absl::StatusOr<const TensorInfo*> Get(std::string_view name) const;

  // The opened files: model.safetensors alone, or the shards sorted by file
  // name.
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const {
    return files_;
  }

  // True when the weights came from an index and its shards.
  bool sharded() const { return sharded_; }

  // The file that describes the checkpoint, for messages:
  // `dir`/model.safetensors or `dir`/model.safetensors.index.json.
  const std::string& path() const { return path_; }

 private:
  // Not default-constructible, so that `{}` converts to no overload taking
  // a checkpoint (CheckTensorShapes(config, {}) means the map one).
  SafetensorsCheckpoint(std::string path, bool sharded)
      : path_(std::move(path)), sharded_(sharded) {}
  static absl::Status OpenShards(const std::string& dir,
                                 SafetensorsCheckpoint* checkpoint);

  std::string path_;
  bool sharded_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::vector<TensorInfo> tensors_;
};

// The Hugging Face name of shard `k` (1-based) of `n`, e.g.
// SafetensorsShardName(1, 4) == "model-00001-of-00004.safetensors".
std::string SafetensorsShardName(int k, int n);

// Writes a model.safetensors.index.json to `path` atomically (temporary file
// in the same directory, fsync, rename), formatted as transformers writes it
// (2-space indent, sorted keys, trailing newline):
//   {"metadata": {"total_size": total_size}, "weight_map": weight_map}
// `weight_map` maps tensor names to shard file names. InvalidArgument when it
// is empty, a tensor name is empty, or a shard name is not a plain file name
// (see SafetensorsCheckpoint::Open); errno-derived errors for I/O.
absl::Status WriteSafetensorsIndex(
    const std::string& path,
    const std::map<std::string, std::string>& weight_map, uint64_t total_size);

// Name, dtype and shape of a tensor to be written by SafetensorsWriter.
struct TensorSpec {
  std::string name;
  kernels::DType dtype = kernels::DType::kF32;
  std::vector<int64_t> shape;  // row-major; empty for a scalar
};

// Streams a safetensors file to disk without holding the tensors in memory:
// Create() writes the header (tensors laid out back to back in the given
// order), Append() the data bytes in that same order, in pieces of any size,
// and Finish() publishes the file atomically (temporary file in the same
// directory, fsync, rename). A writer destroyed before a successful Finish()
// removes its temporary file and leaves `path` untouched. Not thread-safe.
class SafetensorsWriter {
 public:
  // InvalidArgument for an empty, "__metadata__" or duplicate name, a
  // negative dim or an overflowing shape; an errno-derived error when the
  // temporary file cannot be created (e.g. NotFound for a missing directory).
  static absl::StatusOr<std::unique_ptr<SafetensorsWriter>> Create(
      const std::string& path, std::vector<TensorSpec> specs,
      const std::map<std::string, std::string>& metadata);

  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;
  ~SafetensorsWriter();

  // Writes the next `nbytes` data bytes. FailedPrecondition if that would
  // exceed the total size of the declared tensors or after Finish().
  absl::Status Append(const void* data, size_t nbytes);

  // Number of data bytes the declared tensors take / Append()ed so far.
  uint64_t total_data_bytes() const { return total_; }
  uint64_t written_data_bytes() const { return written_; }

  // Byte offset of the data buffer in the file (8 + padded header length,
  // a multiple of 8).
  uint64_t data_start() const { return data_start_; }

  // Checks that every declared byte was written (FailedPrecondition
  // otherwise, and the temporary file is removed), then fsyncs and renames
  // the file into place.
  absl::Status Finish();

 private:
  SafetensorsWriter() = default;
  absl::Status WriteAll(const void* data, size_t nbytes);
  void Abandon();

  std::string path_;
  std::string tmp_path_;
  int fd_ = -1;
  uint64_t total_ = 0;
  uint64_t written_ = 0;
  uint64_t data_start_ = 0;
  bool finished_ = false;
};

// Writes `tensors` (their data pointers and nbytes) to `path` atomically,
// laid out in the given order, with `metadata` as "__metadata__" (omitted
// when empty). InvalidArgument when a tensor's nbytes differs from its
// shape's byte size or its data is null with nbytes > 0, plus the errors of
// SafetensorsWriter::Create.
absl::Status WriteSafetensors(
    const std::string& path, const std::vector<TensorInfo>& tensors,
    const std::map<std::string, std::string>& metadata);

// The safetensors dtype string of `dtype` ("F32" / "BF16" / "F16").
std::string_view SafetensorsDTypeName(kernels::DType dtype);

}  // namespace lockstep::common

#endif  // LOCKSTEP_COMMON_FORMATS_SAFETENSORS_H_
