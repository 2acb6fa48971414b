#include "tests/kernels/backend_ops_backend.h"

#include "absl/strings/str_cat.h"

namespace lockstep::kernels::backend_ops {

absl::Status Backend::RunInMode(int mode,
                                const std::function<absl::Status()>& fn) {
  return absl::InvalidArgumentError(
      absl::StrCat(name(), " has no execution mode ", mode));
}

absl::Status Backend::LeafMatmulWithConfig(const MatmulArgs& args, int leaves,
                                           int64_t leaf_len, int config) {
  return absl::InvalidArgumentError(
      absl::StrCat(name(), " has no GEMM configuration ", config));
}

std::vector<std::string> BackendNames() { return {"cpu", "cuda"}; }

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(absl::string_view name) {
  if (name == "cpu") return CreateCpuBackend();
  if (name == "cuda") return CreateCudaBackend();
  return absl::NotFoundError(absl::StrCat("no backend named ", name));
}

}  // namespace lockstep::kernels::backend_ops
