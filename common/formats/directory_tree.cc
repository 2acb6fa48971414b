#include "common/formats/directory_tree.h"

#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace lockstep::common {
namespace {

// nftw's callback cannot carry state; the first failure is kept here for
// the call on this thread.
thread_local int failed_errno = 0;
thread_local std::string* failed_path = nullptr;

int RemoveEntry(const char* path, const struct stat*, int type, struct FTW*) {
  const int rc = (type == FTW_DP) ? ::rmdir(path) : ::unlink(path);
  if (rc != 0 && errno != ENOENT && failed_errno == 0) {
    failed_errno = errno;
    *failed_path = path;
  }
  return 0;  // keep going: remove what can be removed
}

}  // namespace

absl::Status RemoveDirectoryTree(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return absl::OkStatus();
    const int err = errno;
    return absl::Status(absl::ErrnoToStatusCode(err),
                        absl::StrCat("cannot remove ", path, ": ", std::strerror(err)));
  }
  std::string where;
  failed_errno = 0;
  failed_path = &where;
  if (::nftw(path.c_str(), RemoveEntry, 16, FTW_DEPTH | FTW_PHYS) != 0 && failed_errno == 0) {
    failed_errno = errno;
    where = path;
  }
  failed_path = nullptr;
  if (failed_errno != 0) {
    return absl::Status(absl::ErrnoToStatusCode(failed_errno),
                        absl::StrCat("cannot remove ", where, ": ", std::strerror(failed_errno)));
  }
  return absl::OkStatus();
}

}  // namespace lockstep::common
