// Op-level proof that each fused step of InvariantOps (torch_ops.h,
// kernels/fused.h) gives the bits of its chain of single ops, on one device:
// the same inputs through the op set with LOCKSTEP_FUSED_KERNELS unset (the
// fused kernels) and "0" (the chains), compared with memcmp; and that the
// switch really changes the path (the fused AddRmsNorm updates h in place).
#ifndef LOCKSTEP_TESTS_COMMON_MODEL_FUSED_STEPS_H_
#define LOCKSTEP_TESTS_COMMON_MODEL_FUSED_STEPS_H_

#include <cstdlib>
#include <cstring>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/model/kernel_mode.h"
#include "common/model/torch_ops.h"
#include "kernels/matmul.h"

namespace lockstep::common::testing {

// Sets LOCKSTEP_FUSED_KERNELS for its scope.
class FusedKernelsEnv {
 public:
  explicit FusedKernelsEnv(bool on) { setenv("LOCKSTEP_FUSED_KERNELS", on ? "1" : "0", 1); }
  ~FusedKernelsEnv() { unsetenv("LOCKSTEP_FUSED_KERNELS"); }
};

// The bytes of t as float32 on the host (a bf16 "Linear input" widened,
// exactly).
inline std::vector<float> HostF32(const torch::Tensor& t) {
  auto c = t.detach().to(torch::kCPU, torch::kFloat).contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

inline void ExpectSameBits(const torch::Tensor& a, const torch::Tensor& b, const char* what) {
  const auto x = HostF32(a), y = HostF32(b);
  ASSERT_EQ(x.size(), y.size()) << what;
  EXPECT_EQ(0, std::memcmp(x.data(), y.data(), x.size() * sizeof(float))) << what;
}

// Runs every fused step on `device` for rows in {1, 3, 64}, round on and
// off, bf16 and fp32 norm weights, with and without QK-norm.
inline void CheckFusedStepsMatchChains(const torch::Device& device, bool bf16_activations) {
  const int64_t n = 384, heads = 3, head_dim = 64, inter = 200;
  RopeTable rope;
  rope.inv_freq = torch::pow(1.0e6, -torch::arange(0, head_dim, 2, torch::kDouble) / head_dim)
                      .to(device);
  rope.attention_factor = 1.0;
  for (int64_t rows : {1, 3, 64}) {
    torch::manual_seed(11 + rows);
    // Values as a GEMM leaves them (not bf16-exact), and a bf16-exact residual.
    const auto h0 = torch::randn({rows, n}).to(torch::kBFloat16).to(torch::kFloat).to(device);
    const auto delta = (torch::randn({rows, n}) * 3).to(device);
    const auto x0 = torch::randn({rows, heads * head_dim}).to(device) * 2;
    const auto gate0 = (torch::randn({rows, inter}) * 4).to(device);
    const auto up0 = torch::randn({rows, inter}).to(device);
    const auto positions = (torch::arange(rows, torch::kInt) * 37 + 5).to(device);
    for (bool round : {true, false}) {
      for (auto wdt : {torch::kFloat, torch::kBFloat16}) {
        SCOPED_TRACE(::testing::Message() << "rows " << rows << " round " << round
                                          << " weight " << wdt);
        const auto w = (torch::rand({n}) + 0.5).to(wdt).to(device);
        const auto qn = (torch::rand({head_dim}) + 0.5).to(wdt).to(device);
        torch::Tensor out[2][6];
        for (int fused = 0; fused < 2; ++fused) {
          FusedKernelsEnv env(fused == 1);
          auto ops = CreateOps(KernelMode::kInvariant, bf16_activations);
          torch::NoGradGuard no_grad;
          auto h = h0.clone();
          const void* h_ptr = h.data_ptr();
          auto [h1, x1] = ops->AddRmsNorm(h, delta.clone(), w, 1e-6, round);
          // The switch works: only the fused kernel updates h in place.
          EXPECT_EQ(h1.data_ptr() == h_ptr, fused == 1) << "AddRmsNorm path";
          auto [h2, x2] = ops->AddRmsNorm(h0.clone(), torch::Tensor(), w, 1e-6, round);
          out[fused][0] = h1;
          out[fused][1] = x1;
          out[fused][2] = x2;
          out[fused][3] = ops->HeadNormRope(x0.clone(), qn, positions, heads, head_dim, rope,
                                            1e-6, round);
          out[fused][4] = ops->HeadNormRope(x0.clone(), torch::Tensor(), positions, heads,
                                            head_dim, rope, 1e-6, round);
          out[fused][5] = ops->SiluMulStore(gate0.clone(), up0.clone(), round);
        }
        const char* names[6] = {"AddRmsNorm h", "AddRmsNorm x", "RmsNorm (no delta) x",
                                "HeadNormRope", "Rope (no norm)", "SiluMulStore"};
        for (int i = 0; i < 6; ++i) ExpectSameBits(out[0][i], out[1][i], names[i]);
      }
    }
  }
}

// StackedLinear (q/k/v with and without biases, gate/up; fp32 and bf16
// weights, packed as the CPU model packs them) against its chain, one Linear
// per block on its own weight, for rows in {1, 3, 64}; and the row-strided
// slices the fused step returns through the steps that take them in place
// (StoreBF16 of v, HeadNormRope of q and k, SiluMulStore of gate and up),
// round on and off. The switch works: only the fused step returns views of
// one GEMM output.
inline void CheckStackedLinearMatchesChain(const torch::Device& device, bool bf16_activations) {
  const int64_t hidden = 96, head_dim = 32, q_heads = 4, kv_heads = 2, inter = 72;
  const std::vector<int64_t> qkv_splits = {q_heads * head_dim, kv_heads * head_dim,
                                           kv_heads * head_dim};
  RopeTable rope;
  rope.inv_freq = torch::pow(1.0e6, -torch::arange(0, head_dim, 2, torch::kDouble) / head_dim)
                      .to(device);
  auto make = [&](const torch::Tensor& w, const torch::Tensor& bias) {
    LinearWeight lw;
    lw.w = w.to(device);
    if (bias.defined()) lw.bias = bias.to(device);
    if (!lw.w.is_cuda()) {
      auto packed = kernels::PackedWeight::Pack(
          w.data_ptr(), w.scalar_type() == torch::kFloat ? kernels::DType::kF32
                                                         : kernels::DType::kBF16,
          w.size(1), w.size(0), w.size(1));
      EXPECT_TRUE(packed.ok()) << packed.status();
      if (packed.ok()) lw.packed = *packed;
    }
    return lw;
  };
  for (int64_t rows : {1, 3, 64}) {
    for (auto wdt : {torch::kFloat, torch::kBFloat16}) {
      for (bool bias : {false, true}) {
        for (bool round : {true, false}) {
          SCOPED_TRACE(::testing::Message() << "rows " << rows << " weight " << wdt << " bias "
                                            << bias << " round " << round);
          torch::manual_seed(29 + rows);
          // A Linear input (bf16-valued), the stacked weights and biases.
          const auto x =
              torch::randn({rows, hidden}).to(torch::kBFloat16).to(torch::kFloat).to(device);
          const auto wqkv =
              (torch::randn({(q_heads + 2 * kv_heads) * head_dim, hidden}) * 0.1).to(wdt);
          const auto bqkv = bias ? (torch::randn({wqkv.size(0)}) * 0.1).to(wdt) : torch::Tensor();
          const auto wgu = (torch::randn({2 * inter, hidden}) * 0.1).to(wdt);
          const auto qn = (torch::rand({head_dim}) + 0.5).to(wdt).to(device);
          const auto positions = (torch::arange(rows, torch::kInt) * 13 + 2).to(device);
          const LinearWeight qkv = make(wqkv, bqkv), gate_up = make(wgu, torch::Tensor());
          torch::Tensor out[2][8];
          for (int fused = 0; fused < 2; ++fused) {
            FusedKernelsEnv env(fused == 1);
            auto ops = CreateOps(KernelMode::kInvariant, bf16_activations);
            torch::NoGradGuard no_grad;
            std::vector<torch::Tensor> y = ops->StackedLinear(x, qkv, qkv_splits);
            std::vector<torch::Tensor> gu = ops->StackedLinear(x, gate_up, {inter, inter});
            EXPECT_EQ(y.size(), 3u);
            EXPECT_EQ(gu.size(), 2u);
            // Only the fused step returns slices of one output.
            const bool views =
                y[1].data_ptr<float>() == y[0].data_ptr<float>() + qkv_splits[0] &&
                y[2].data_ptr<float>() == y[1].data_ptr<float>() + qkv_splits[1] &&
                gu[1].data_ptr<float>() == gu[0].data_ptr<float>() + inter;
            EXPECT_EQ(views, fused == 1) << "StackedLinear path";
            for (int i = 0; i < 3; ++i) out[fused][i] = y[i].to(torch::kCPU).clone();
            out[fused][3] = round ? ops->StoreBF16(y[2]) : y[2];
            out[fused][4] = ops->HeadNormRope(y[0], qn, positions, q_heads, head_dim, rope, 1e-6,
                                              round);
            out[fused][5] = ops->HeadNormRope(y[1], torch::Tensor(), positions, kv_heads,
                                              head_dim, rope, 1e-6, round);
            out[fused][6] = gu[0].to(torch::kCPU).clone();
            out[fused][7] = ops->SiluMulStore(gu[0], gu[1], round);
          }
          const char* names[8] = {"q",        "k",           "v",         "StoreBF16(v)",
                                  "HeadNormRope(q)", "Rope(k)", "gate", "SiluMulStore"};
          for (int i = 0; i < 8; ++i) ExpectSameBits(out[0][i], out[1][i], names[i]);
        }
      }
    }
  }
}

}  // namespace lockstep::common::testing

#endif  // LOCKSTEP_TESTS_COMMON_MODEL_FUSED_STEPS_H_
