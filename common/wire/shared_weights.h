// The same-host weight path (WEIGHT_PATH_SHARED_MEMORY): the sender writes
// every tensor once into one file in /dev/shm and sends only the header of an
// UpdateWeights stream (manifest with offsets and CRC-32Cs, plus
// WeightUpdateHeader.shared); the rollout maps the file read-only, copies
// each tensor out and verifies its CRC (tensors in parallel), and the usual
// staging, verification and atomic swap follow. Nothing crosses the socket
// but the header, so the cost is two memory copies and one CRC pass.
//
// Safety: the rollout opens only regular files directly in /dev/shm whose
// name starts with kSharedWeightsPrefix (no other path a client names is
// ever read), without following links, of exactly the announced size.
#ifndef LOCKSTEP_COMMON_WIRE_SHARED_WEIGHTS_H_
#define LOCKSTEP_COMMON_WIRE_SHARED_WEIGHTS_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/wire/weight_stream.h"
#include "lockstep/v1/common.pb.h"

namespace lockstep::common {

inline constexpr char kSharedWeightsDir[] = "/dev/shm/";
inline constexpr char kSharedWeightsPrefix[] = "lockstep-weights-";

// This host as the shared-memory path sees it: the kernel's boot id and the
// device number of /dev/shm (two containers of one node with separate
// /dev/shm mounts differ). Empty when /proc or /dev/shm is unreadable.
std::string HostId();

// INVALID_ARGUMENT unless `path` is kSharedWeightsDir + kSharedWeightsPrefix
// + [A-Za-z0-9._-]+.
absl::Status CheckSharedWeightsPath(const std::string& path);

// Unlinks the weights files in /dev/shm that no living writer holds (each
// writer keeps an flock on its file; a process that crashed before unlinking
// its file left it unlocked) and that are older than a minute. Works across
// PID namespaces (the lock is the kernel's, per file). Returns how many were
// removed. SharedWeightsFile::Write calls it first.
int RemoveStaleSharedWeights();

// A weights file written by the sender; unlinked when destroyed (a
// receiver's open descriptor stays valid until it closes it).
class SharedWeightsFile {
 public:
  // Writes `tensors` (CheckWireTensor-valid) at 64-byte aligned offsets into
  // a new file and builds the header announcing them as `target_version`.
  // INVALID_ARGUMENT for a bad tensor; INTERNAL when /dev/shm cannot hold
  // the file (errno in the message).
  static absl::StatusOr<std::unique_ptr<SharedWeightsFile>> Write(
      absl::Span<const WireTensor> tensors, uint64_t target_version, const std::string& source);

  ~SharedWeightsFile();
  SharedWeightsFile(const SharedWeightsFile&) = delete;
  SharedWeightsFile& operator=(const SharedWeightsFile&) = delete;

  // Header-only stream of this update (WeightUpdateHeader.shared set).
  const v1::WeightUpdateHeader& header() const { return header_; }
  const std::string& path() const { return path_; }
  uint64_t size() const { return size_; }

 private:
  SharedWeightsFile() = default;
  std::string path_;
  uint64_t size_ = 0;
  int lock_fd_ = -1;  // holds the flock while the file exists
  v1::WeightUpdateHeader header_;
};

// A receiver's handle on a sender's file. Reads use pread, not a mapping,
// so a file truncated meanwhile yields an error, never a SIGBUS.
class SharedWeightsSource {
 public:
  // Checks `shared` (path, host, size) and opens it. INVALID_ARGUMENT for a
  // path CheckSharedWeightsPath refuses; FAILED_PRECONDITION when the file
  // is on another host (host_id differs), missing, a link, not a regular
  // file or of another size (the sender then falls back to the stream).
  static absl::StatusOr<std::unique_ptr<SharedWeightsSource>> Open(const v1::SharedWeights& shared);

  ~SharedWeightsSource();
  SharedWeightsSource(const SharedWeightsSource&) = delete;
  SharedWeightsSource& operator=(const SharedWeightsSource&) = delete;

  // Copies bytes [offset, offset + n) into dst[n]. Thread-safe. ABORTED when
  // the file ends early (the sender changed it) or a read fails.
  absl::Status ReadAt(uint64_t offset, uint8_t* dst, uint64_t n) const;
  uint64_t size() const { return size_; }

 private:
  SharedWeightsSource() = default;
  int fd_ = -1;
  uint64_t size_ = 0;
  std::string path_;
};

}  // namespace lockstep::common

#endif  // LOCKSTEP_COMMON_WIRE_SHARED_WEIGHTS_H_
