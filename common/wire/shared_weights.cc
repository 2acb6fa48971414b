#include "common/wire/shared_weights.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <algorithm>
#include <fstream>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/wire/crc32c.h"
#include "common/wire/parallel_tensors.h"

namespace lockstep::common {
namespace {

constexpr uint64_t kAlign = 64;

absl::Status Errno(const std::string& what) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(errno)));
}

std::string RandomSuffix() {
  std::random_device rd;
  std::mt19937_64 rng((static_cast<uint64_t>(rd()) << 32) ^ rd() ^ static_cast<uint64_t>(getpid()));
  return absl::StrCat(getpid(), "-", absl::Hex(rng(), absl::kZeroPad16));
}

}  // namespace

std::string HostId() {
  std::ifstream in("/proc/sys/kernel/random/boot_id");
  std::string boot;
  if (!(in >> boot)) return "";
  struct stat st;
  if (stat(kSharedWeightsDir, &st) != 0) return "";
  return absl::StrCat(boot, "/", static_cast<uint64_t>(st.st_dev));
}

absl::Status CheckSharedWeightsPath(const std::string& path) {
  absl::string_view rest = path;
  if (!absl::ConsumePrefix(&rest, kSharedWeightsDir) ||
      !absl::ConsumePrefix(&rest, kSharedWeightsPrefix) || rest.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("shared weights path '", path, "' is not ",
                                                   kSharedWeightsDir, kSharedWeightsPrefix, "*"));
  }
  for (char c : rest) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok || rest == "." || rest == "..") {
      return absl::InvalidArgumentError(
          absl::StrCat("shared weights path '", path, "' has a character outside [A-Za-z0-9._-]"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<SharedWeightsFile>> SharedWeightsFile::Write(
    absl::Span<const WireTensor> tensors, uint64_t target_version, const std::string& source) {
  std::vector<uint64_t> offsets;
  uint64_t size = 0;
  for (const WireTensor& t : tensors) {
    absl::Status st = CheckWireTensor(t);
    if (!st.ok()) return st;
    size = (size + kAlign - 1) / kAlign * kAlign;
    offsets.push_back(size);
    size += t.nbytes;
  }
  std::unique_ptr<SharedWeightsFile> file(new SharedWeightsFile());
  file->path_ = absl::StrCat(kSharedWeightsDir, kSharedWeightsPrefix, RandomSuffix());
  file->size_ = size;
  RemoveStaleSharedWeights();
  const int fd = open(file->path_.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return Errno(absl::StrCat("creating ", file->path_));
  // From here the destructor unlinks the file. The lock marks it as owned
  // for as long as this process lives (RemoveStaleSharedWeights).
  (void)flock(fd, LOCK_EX | LOCK_NB);
  uint8_t* map = nullptr;
  absl::Status status;
  if (size > 0) {
    // posix_fallocate reserves the pages now: a full /dev/shm fails here
    // with ENOSPC instead of SIGBUS while writing.
    const int err = posix_fallocate(fd, 0, static_cast<off_t>(size));
    if (err != 0) {
      errno = err;
      status = Errno(absl::StrCat("reserving ", size, " bytes in ", file->path_));
    } else {
      void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
      if (p == MAP_FAILED) {
        status = Errno(absl::StrCat("mapping ", file->path_));
      } else {
        map = static_cast<uint8_t*>(p);
      }
    }
  }
  if (!status.ok()) {
    close(fd);
    return status;
  }
  file->lock_fd_ = fd;
  // Tensors in parallel; each copied and checksummed in 1 MiB blocks, so the
  // CRC reads what the copy just brought into the cache.
  std::vector<uint32_t> crcs(tensors.size(), 0);
  (void)ForEachTensorInParallel(tensors.size(), [&](size_t i) {
    const WireTensor& t = tensors[i];
    constexpr size_t kBlock = size_t{1} << 20;
    for (size_t off = 0; off < t.nbytes; off += kBlock) {
      const size_t n = std::min(kBlock, t.nbytes - off);
      std::memcpy(map + offsets[i] + off, t.data + off, n);
      crcs[i] = Crc32c(map + offsets[i] + off, n, crcs[i]);
    }
    return absl::OkStatus();
  });
  if (map != nullptr) munmap(map, size);
  file->header_ = WeightUpdateHeaderOf(tensors, target_version, source, &crcs);
  for (int i = 0; i < file->header_.tensors_size(); ++i) {
    file->header_.mutable_tensors(i)->set_offset(offsets[i]);
  }
  v1::SharedWeights* shared = file->header_.mutable_shared();
  shared->set_path(file->path_);
  shared->set_size(size);
  shared->set_host_id(HostId());
  return file;
}

SharedWeightsFile::~SharedWeightsFile() {
  if (!path_.empty()) unlink(path_.c_str());
  if (lock_fd_ >= 0) close(lock_fd_);
}

int RemoveStaleSharedWeights() {
  DIR* dir = opendir(kSharedWeightsDir);
  if (dir == nullptr) return 0;
  int removed = 0;
  const std::string prefix = kSharedWeightsPrefix;
  while (dirent* e = readdir(dir)) {
    const std::string name = e->d_name;
    if (name.rfind(prefix, 0) != 0) continue;
    const std::string path = std::string(kSharedWeightsDir) + name;
    const int fd = open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) continue;
    struct stat st;
    // A writer takes its lock right after creating the file: skip files
    // younger than a minute rather than race with one.
    const bool old_enough = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
                            time(nullptr) - st.st_mtime > 60;
    if (old_enough && flock(fd, LOCK_EX | LOCK_NB) == 0) {
      // Nobody holds it: its writer died before unlinking it.
      if (unlink(path.c_str()) == 0) ++removed;
    }
    close(fd);
  }
  closedir(dir);
  return removed;
}

absl::StatusOr<std::unique_ptr<SharedWeightsSource>> SharedWeightsSource::Open(
    const v1::SharedWeights& shared) {
  absl::Status st = CheckSharedWeightsPath(shared.path());
  if (!st.ok()) return st;
  if (shared.host_id().empty() || shared.host_id() != HostId()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "shared weights come from host '", shared.host_id(), "', this rollout is on '", HostId(),
        "': send them in the stream"));
  }
  const int fd = open(shared.path().c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot open shared weights ", shared.path(), ": ", std::strerror(errno)));
  }
  std::unique_ptr<SharedWeightsSource> src(new SharedWeightsSource());
  src->fd_ = fd;
  src->size_ = shared.size();
  src->path_ = shared.path();
  struct stat s;
  if (fstat(fd, &s) != 0 || !S_ISREG(s.st_mode) ||
      static_cast<uint64_t>(s.st_size) != shared.size()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "shared weights ", shared.path(), " are not a regular file of ", shared.size(), " bytes"));
  }
  return src;
}

SharedWeightsSource::~SharedWeightsSource() {
  if (fd_ >= 0) close(fd_);
}

absl::Status SharedWeightsSource::ReadAt(uint64_t offset, uint8_t* dst, uint64_t n) const {
  while (n > 0) {
    const ssize_t got = pread(fd_, dst, std::min<uint64_t>(n, uint64_t{1} << 30),
                              static_cast<off_t>(offset));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      return absl::AbortedError(absl::StrCat("reading shared weights ", path_, " at ", offset,
                                             got < 0 ? ": " : ": the file ended early",
                                             got < 0 ? std::strerror(errno) : ""));
    }
    dst += got;
    offset += static_cast<uint64_t>(got);
    n -= static_cast<uint64_t>(got);
  }
  return absl::OkStatus();
}

}  // namespace lockstep::common
