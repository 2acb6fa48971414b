// Reading and writing safetensors files
// (https://github.com/huggingface/safetensors):
//   [8-byte little-endian header length N][N bytes of JSON header][data buffer]
// The header maps tensor names to {"dtype", "shape", "data_offsets": [begin,
// end)} (offsets relative to the data buffer) plus an optional "__metadata__"
// object of string values. Only the F32 and BF16 dtypes are supported.
#ifndef LOCKSTEP_COMMON_SAFETENSORS_H_
#define LOCKSTEP_COMMON_SAFETENSORS_H_

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
  //     has the wrong type; the dtype is unknown or unsupported (only F32 and
  //     BF16 are); a dim is negative or the shape overflows; data_offsets are
  //     not two non-negative integers with begin <= end; the shape's byte
  //     size differs from end - begin; two tensors' bytes overlap; a tensor
  //     name is empty or duplicated (any duplicate JSON key is rejected);
  //     "__metadata__" is not an object of strings.
  // Gaps between tensors and trailing bytes after the last one are allowed.
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

// The safetensors dtype string of `dtype` ("F32" / "BF16").
std::string_view SafetensorsDTypeName(kernels::DType dtype);

}  // namespace lockstep::common

#endif  // LOCKSTEP_COMMON_SAFETENSORS_H_
