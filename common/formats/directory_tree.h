// Removing a directory tree without std::filesystem::remove_all. On the GPU
// machine the services link PyTorch's libtorch.so, which exports its own
// std::filesystem::remove_all; the dynamic linker binds the call to that
// copy, which jumps to a null address (SIGSEGV, seen on the H200 in the
// learner's checkpoint code path and the test temp directories). This uses
// POSIX nftw/unlink/rmdir only.
#ifndef LOCKSTEP_COMMON_FORMATS_DIRECTORY_TREE_H_
#define LOCKSTEP_COMMON_FORMATS_DIRECTORY_TREE_H_

#include <string>

#include "absl/status/status.h"

namespace lockstep::common {

// Removes `path` and, if it is a directory, everything below it (symbolic
// links are removed, never followed). OK when `path` does not exist;
// otherwise an errno-derived error naming the entry that could not be
// removed.
absl::Status RemoveDirectoryTree(const std::string& path);

}  // namespace lockstep::common

#endif  // LOCKSTEP_COMMON_FORMATS_DIRECTORY_TREE_H_
