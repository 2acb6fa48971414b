// The blockwise attention backward (blockwise_attention_backward.h): the
// invariant PrefillAttention's training value is the kernel's, its gradients
// match the full reference attention's autograd (dQ to 1e-6, dK/dV to 1e-5)
// and a float64 attention's, for MHA and GQA 4:1, lengths that blocks do and
// do not divide; and the memory between forward and backward, and in the
// backward, stays far below one [heads, T, T] fp32 matrix.
#include "common/model/blockwise_attention_backward.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/model/reference_ops.h"
#include "common/model/torch_ops.h"
#include "tests/common/model/cpu_allocation_counter.h"

namespace lockstep::common {
namespace {

// max |a - b| / max |b| (0 when both are 0).
double RelativeError(const torch::Tensor& a, const torch::Tensor& b) {
  const double scale = b.abs().max().item<double>();
  const double diff = (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
  return scale == 0.0 ? diff : diff / scale;
}

struct Grads {
  torch::Tensor y, dq, dk, dv;
};

// Output and gradients of <attention(q, k, v), g> through `attention`.
template <typename F>
Grads RunAttention(const torch::Tensor& q0, const torch::Tensor& k0, const torch::Tensor& v0,
          const torch::Tensor& g, F attention) {
  auto q = q0.detach().clone().requires_grad_(true);
  auto k = k0.detach().clone().requires_grad_(true);
  auto v = v0.detach().clone().requires_grad_(true);
  torch::Tensor y = attention(q, k, v);
  (y * g.to(y.scalar_type())).sum().backward();
  return {y.detach(), q.grad(), k.grad(), v.grad()};
}

struct Heads {
  int64_t q, kv;
};

TEST(BlockwiseAttentionBackwardTest, MatchesFullAndDoublePrecisionReference) {
  const int64_t D = 16;
  auto ops = CreateOps(KernelMode::kInvariant);
  for (Heads h : {Heads{4, 4}, Heads{8, 2}}) {
    for (int64_t T : {1, 7, 128, 300, 513}) {
      for (int64_t block : {int64_t{64}, kAttentionBackwardBlockRows}) {
        SCOPED_TRACE(::testing::Message() << "heads " << h.q << ":" << h.kv << " T " << T
                                          << " block " << block);
        torch::manual_seed(T * 31 + h.q);
        auto q = torch::randn({T, h.q * D});
        auto k = torch::randn({T, h.kv * D});
        auto v = torch::randn({T, h.kv * D});
        auto g = torch::randn({T, h.q * D});
        // The full reference attention (the graph the old training path
        // built, [heads, T, T] included) and its float64 twin.
        const auto full = [&](const torch::Tensor& a, const torch::Tensor& b,
                              const torch::Tensor& c) {
          auto pos = torch::arange(T, torch::kLong);
          return reference::Attention(a, b, c, pos, h.q, h.kv, D);
        };
        const Grads ref = RunAttention(q, k, v, g, full);
        const Grads f64 =
            RunAttention(q.to(torch::kDouble), k.to(torch::kDouble), v.to(torch::kDouble), g, full);
        // The blockwise backward on the kernel's value.
        const auto blockwise = [&](const torch::Tensor& a, const torch::Tensor& b,
                                   const torch::Tensor& c) {
          torch::Tensor value;
          {
            torch::NoGradGuard no_grad;
            value = ops->PrefillAttention(a, b, c, h.q, h.kv, D);
          }
          return WithBlockwiseAttentionBackward(value, a, b, c, h.q, h.kv, D, block);
        };
        const Grads bw = RunAttention(q, k, v, g, blockwise);
        EXPECT_LT(RelativeError(bw.dq, ref.dq), 1e-6);
        EXPECT_LT(RelativeError(bw.dk, ref.dk), 1e-5);
        EXPECT_LT(RelativeError(bw.dv, ref.dv), 1e-5);
        // Against float64: fp32 attention's rounding.
        EXPECT_LT(RelativeError(bw.dq, f64.dq), 1e-4);
        EXPECT_LT(RelativeError(bw.dk, f64.dk), 1e-4);
        EXPECT_LT(RelativeError(bw.dv, f64.dv), 1e-4);
        EXPECT_LT(RelativeError(ref.dk, f64.dk), 1e-4);
      }
    }
  }
}

// The block heights: 256 rows on the CPU; on CUDA as many 256-row steps as
// fit 1 GiB per [q_heads, block, T] fp32 tensor, at most a quarter of the
// rows (rounded up to 256), at least 256.
TEST(BlockwiseAttentionBackwardTest, BlockHeightsByDevice) {
  const torch::Device cpu(torch::kCPU), cuda(torch::kCUDA, 0);
  EXPECT_EQ(AttentionBackwardBlockRows(16, 4096, cpu), 256);
  EXPECT_EQ(AttentionBackwardBlockRows(16, 4096, cuda), 1024);   // a quarter
  EXPECT_EQ(AttentionBackwardBlockRows(16, 16384, cuda), 1024);  // 1 GiB
  EXPECT_EQ(AttentionBackwardBlockRows(32, 16384, cuda), 512);
  EXPECT_EQ(AttentionBackwardBlockRows(64, 1 << 20, cuda), 256);
  EXPECT_EQ(AttentionBackwardBlockRows(8, 1000, cuda), 256);
  EXPECT_EQ(AttentionBackwardBlockRows(8, 1, cuda), 256);
}

// Through the op set: with grad, PrefillAttention's value is the kernel's
// (the no-grad value, bit for bit) and its backward is the blockwise one
// with the default block.
TEST(BlockwiseAttentionBackwardTest, InvariantPrefillAttentionUsesIt) {
  const int64_t T = 300, D = 16, Hq = 8, Hkv = 2;
  auto ops = CreateOps(KernelMode::kInvariant);
  torch::manual_seed(3);
  auto q = torch::randn({T, Hq * D}), k = torch::randn({T, Hkv * D}),
       v = torch::randn({T, Hkv * D}), g = torch::randn({T, Hq * D});
  torch::Tensor value;
  {
    torch::NoGradGuard no_grad;
    value = ops->PrefillAttention(q, k, v, Hq, Hkv, D);
  }
  const Grads via_ops = RunAttention(q, k, v, g, [&](const auto& a, const auto& b, const auto& c) {
    return ops->PrefillAttention(a, b, c, Hq, Hkv, D);
  });
  EXPECT_TRUE(torch::equal(via_ops.y, value));
  EXPECT_EQ(0, std::memcmp(via_ops.y.data_ptr(), value.data_ptr(), value.numel() * 4));
  const Grads direct = RunAttention(q, k, v, g, [&](const auto& a, const auto& b, const auto& c) {
    return WithBlockwiseAttentionBackward(value, a, b, c, Hq, Hkv, D);
  });
  EXPECT_TRUE(torch::equal(via_ops.dq, direct.dq));
  EXPECT_TRUE(torch::equal(via_ops.dk, direct.dk));
  EXPECT_TRUE(torch::equal(via_ops.dv, direct.dv));
}

// A 4096-token sequence, 4 query heads of 64 sharing one KV head: one
// [heads, T, T] fp32 matrix is 256 MiB, and the old training path kept
// several (scores, probabilities) from the forward to the backward. Now the
// forward keeps the inputs and the output, and the backward's transient
// memory is O(heads × block × T).
TEST(BlockwiseAttentionBackwardTest, MemoryStaysFarBelowTheScoreMatrix) {
  const int64_t T = 4096, D = 64, Hq = 4, Hkv = 1;
  const int64_t score_matrix = Hq * T * T * 4;
  auto ops = CreateOps(KernelMode::kInvariant);
  testing::CountCpuAllocations count;
  auto& c = count.counter();
  torch::manual_seed(5);
  auto q = torch::randn({T, Hq * D}).requires_grad_(true);
  auto k = torch::randn({T, Hkv * D}).requires_grad_(true);
  auto v = torch::randn({T, Hkv * D}).requires_grad_(true);
  auto g = torch::randn({T, Hq * D});
  const int64_t before = c.current();
  c.ResetPeak();
  torch::Tensor y = ops->PrefillAttention(q, k, v, Hq, Hkv, D);
  const int64_t kept = c.current() - before;
  const int64_t forward_peak = c.peak() - before;
  c.ResetPeak();
  const int64_t before_backward = c.current();
  (y * g).sum().backward();
  const int64_t backward_peak = c.peak() - before_backward;
  RecordProperty("kept_bytes", std::to_string(kept));
  RecordProperty("backward_peak_bytes", std::to_string(backward_peak));
  std::printf("T=%lld heads %lld:%lld D=%lld: kept between forward and backward %.1f MiB, "
              "forward peak %.1f MiB, backward peak %.1f MiB; one [heads, T, T] fp32 matrix "
              "%.1f MiB\n",
              static_cast<long long>(T), static_cast<long long>(Hq),
              static_cast<long long>(Hkv), static_cast<long long>(D), kept / 1048576.0,
              forward_peak / 1048576.0, backward_peak / 1048576.0, score_matrix / 1048576.0);
  // Kept: the output (and the product's inputs), T × Hq × D floats each.
  EXPECT_LT(kept, score_matrix / 16);
  EXPECT_LT(forward_peak, score_matrix / 8);
  EXPECT_LT(backward_peak, score_matrix / 2);
  ASSERT_TRUE(q.grad().defined() && k.grad().defined() && v.grad().defined());
  EXPECT_TRUE(torch::isfinite(q.grad()).all().item<bool>());
}

// The counter sees what the check above rules out: the full reference graph
// (the old training path's) keeps at least one [heads, T, T] fp32 matrix
// from the forward to the backward (T = 2048 to keep the test light).
TEST(BlockwiseAttentionBackwardTest, CounterSeesTheFullReferenceScores) {
  const int64_t T = 2048, D = 64, Hq = 4, Hkv = 1;
  const int64_t score_matrix = Hq * T * T * 4;
  testing::CountCpuAllocations count;
  auto& c = count.counter();
  auto q = torch::randn({T, Hq * D}).requires_grad_(true);
  auto k = torch::randn({T, Hkv * D}).requires_grad_(true);
  auto v = torch::randn({T, Hkv * D}).requires_grad_(true);
  const int64_t before = c.current();
  torch::Tensor y = reference::Attention(q, k, v, torch::arange(T, torch::kLong), Hq, Hkv, D);
  const int64_t kept = c.current() - before;
  std::printf("full reference, T=%lld: kept %.1f MiB\n", static_cast<long long>(T),
              kept / 1048576.0);
  EXPECT_GE(kept, score_matrix);
}

}  // namespace
}  // namespace lockstep::common
