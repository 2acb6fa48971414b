#include "common/model/serving_standard_ops.h"

#include <utility>
#include <vector>

#include "common/model/reference_ops.h"

namespace lockstep::common {
namespace {

class ServingStandardOps : public Ops {
 public:
  ServingStandardOps()
      : fused_(CreateOps(KernelMode::kInvariant, /*bf16_activations=*/true)),
        reference_(reference::CreateStandardOps()) {}

  // cuBLAS: bf16 × bf16 → bf16 (fp32 accumulate), widened for the forward.
  torch::Tensor Linear(const torch::Tensor& x, const LinearWeight& w) override {
    const auto dtype = w.w.scalar_type();
    auto xb = x.scalar_type() == dtype ? x : x.to(dtype);
    return torch::matmul(xb, w.w.t()).to(torch::kFloat);
  }

  // One cuBLAS GEMM for q, k, v (gate, up), as a serving stack runs them.
  std::vector<torch::Tensor> StackedLinear(const torch::Tensor& x, const LinearWeight& w,
                                           const std::vector<int64_t>& splits) override {
    if (!FusedKernelsEnabled()) return Ops::StackedLinear(x, w, splits);
    auto y = Linear(x, w);
    if (w.bias.defined()) y.add_(w.bias);
    return SplitColumns(y, splits);
  }

  torch::Tensor RowParallelLinear(const torch::Tensor& x, const LinearWeight& w,
                                  Communicator* comm) override {
    auto y = Linear(x, w).contiguous();
    if (comm != nullptr && comm->size() > 1) y = AllReduceSumTensor(y, comm);
    return y;
  }

  torch::Tensor PagedAttention(const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, LayerKv& kv,
                               const PagedAttentionMeta& meta, int64_t q_heads,
                               int64_t kv_heads, int64_t head_dim) override {
    PagedAttentionMeta splits = meta;
    splits.batch_dependent_splits = true;
    return fused_->PagedAttention(q, k, v, kv, splits, q_heads, kv_heads, head_dim);
  }

  torch::Tensor TargetLogprobs(const torch::Tensor& logits,
                               const torch::Tensor& targets) override {
    return reference_->TargetLogprobs(logits, targets);
  }
  torch::Tensor LogSoftmax(const torch::Tensor& logits) override {
    return reference_->LogSoftmax(logits);
  }
  std::pair<torch::Tensor, torch::Tensor> RouteTopK(const torch::Tensor& logits, int64_t k,
                                                    bool normalize) override {
    return reference_->RouteTopK(logits, k, normalize);
  }

  // The per-row ops: the fused kernels.
  torch::Tensor RmsNorm(const torch::Tensor& x, const torch::Tensor& w,
                        double eps) override {
    return fused_->RmsNorm(x, w, eps);
  }
  torch::Tensor Rope(const torch::Tensor& x, const torch::Tensor& positions, int64_t heads,
                     int64_t head_dim, const RopeTable& rope) override {
    return fused_->Rope(x, positions, heads, head_dim, rope);
  }
  torch::Tensor SiluMul(const torch::Tensor& gate, const torch::Tensor& up) override {
    return fused_->SiluMul(gate, up);
  }
  torch::Tensor PrefillAttention(const torch::Tensor& q, const torch::Tensor& k,
                                 const torch::Tensor& v, int64_t q_heads, int64_t kv_heads,
                                 int64_t head_dim) override {
    return fused_->PrefillAttention(q, k, v, q_heads, kv_heads, head_dim);
  }
  torch::Tensor StoreBF16(torch::Tensor x) override { return fused_->StoreBF16(std::move(x)); }
  torch::Tensor StoreBF16ForLinear(torch::Tensor x) override {
    return fused_->StoreBF16ForLinear(std::move(x));
  }
  std::pair<torch::Tensor, torch::Tensor> AddRmsNorm(torch::Tensor h, torch::Tensor delta,
                                                     const torch::Tensor& w, double eps,
                                                     bool round) override {
    return fused_->AddRmsNorm(std::move(h), std::move(delta), w, eps, round);
  }
  torch::Tensor HeadNormRope(torch::Tensor x, const torch::Tensor& norm_w,
                             const torch::Tensor& positions, int64_t heads, int64_t head_dim,
                             const RopeTable& rope, double eps, bool round) override {
    return fused_->HeadNormRope(std::move(x), norm_w, positions, heads, head_dim, rope, eps,
                                round);
  }
  torch::Tensor SiluMulStore(torch::Tensor gate, torch::Tensor up, bool round) override {
    return fused_->SiluMulStore(std::move(gate), std::move(up), round);
  }

 private:
  const std::unique_ptr<Ops> fused_;
  const std::unique_ptr<Ops> reference_;
};

}  // namespace

bool UsesServingStandardOps(KernelMode mode, kernels::Device device, bool bf16_activations) {
  return mode == KernelMode::kStandard && device == kernels::Device::kCuda && bf16_activations;
}

std::unique_ptr<Ops> CreateForwardOps(KernelMode mode, kernels::Device device,
                                      bool bf16_activations) {
  if (UsesServingStandardOps(mode, device, bf16_activations)) {
    return std::make_unique<ServingStandardOps>();
  }
  return CreateOps(mode, bf16_activations);
}

}  // namespace lockstep::common
