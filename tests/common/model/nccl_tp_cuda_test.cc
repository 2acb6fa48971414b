// Tensor parallelism across GPUs through NCCL (issue 8): logprobs at
// TP = 1, 2, 4, 8 (as many as there are GPUs) are bitwise identical to each
// other and to the single-GPU full-sequence forward in invariant mode, and
// differ in standard mode (NCCL all-reduce). Skips below 2 GPUs.
#include <cstring>
#include <random>

#include <gtest/gtest.h>

#include "common/model/cuda_check.h"
#include "common/model/nccl_communicator.h"
#include "common/model/model.h"
#include "tests/common/model/model_fixture.h"

namespace lockstep::common {
namespace {

std::vector<std::vector<float>> Score(KernelMode mode, int tp, TpBackend backend,
                                      const std::vector<std::vector<int32_t>>& seqs) {
  ModelConfig c = testing::TpConfig();
  c.dtype = kernels::DType::kBF16;
  ModelOptions opts;
  opts.mode = mode;
  opts.tp_size = tp;
  opts.device = kernels::Device::kCuda;
  opts.tp_backend = backend;
  auto m = Model::Create(c, testing::RandomTensors(c, 5), opts);
  EXPECT_TRUE(m.ok()) << m.status();
  auto s = (*m)->Score(seqs, std::vector<int64_t>(seqs.size(), 1));
  EXPECT_TRUE(s.ok()) << s.status();
  return *s;
}

TEST(NcclTpTest, LogprobsIdenticalAtEveryTpSize) {
  if (!NcclBuilt() || CudaDeviceCount() < 2) GTEST_SKIP() << "needs NCCL and >= 2 GPUs";
  std::mt19937_64 rng(3);
  std::vector<std::vector<int32_t>> seqs(3, std::vector<int32_t>(40));
  for (auto& s : seqs) for (auto& t : s) t = rng() % 64;
  const auto ref = Score(KernelMode::kInvariant, 1, TpBackend::kInProcess, seqs);
  const auto std_ref = Score(KernelMode::kStandard, 1, TpBackend::kInProcess, seqs);
  int std_diff = 0;
  for (int tp : {2, 4, 8}) {
    if (CudaDeviceCount() < tp) break;
    const auto inv = Score(KernelMode::kInvariant, tp, TpBackend::kNccl, seqs);
    const auto stdm = Score(KernelMode::kStandard, tp, TpBackend::kNccl, seqs);
    for (size_t s = 0; s < seqs.size(); ++s) {
      EXPECT_EQ(0, std::memcmp(inv[s].data(), ref[s].data(), ref[s].size() * 4)) << "tp " << tp;
      std_diff += std::memcmp(stdm[s].data(), std_ref[s].data(), std_ref[s].size() * 4) != 0;
    }
  }
  EXPECT_GT(std_diff, 0);
}

TEST(NcclTpTest, GroupNeedsEnoughGpus) {
  auto g = CreateNcclGroup(CudaDeviceCount() + 1);
  EXPECT_FALSE(g.ok());
}

}  // namespace
}  // namespace lockstep::common
