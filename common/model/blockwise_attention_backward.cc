#include "common/model/blockwise_attention_backward.h"

#include <algorithm>
#include <utility>

#include "common/model/recomputed_backward.h"
#include "common/model/reference_ops.h"

namespace lockstep::common {

torch::Tensor WithBlockwiseAttentionBackward(torch::Tensor value, const torch::Tensor& q,
                                             const torch::Tensor& k, const torch::Tensor& v,
                                             int64_t q_heads, int64_t kv_heads, int64_t head_dim,
                                             int64_t block_rows) {
  TORCH_CHECK(block_rows > 0, "attention backward block of ", block_rows, " rows");
  RecomputedGradient gradient = [=](const std::vector<torch::Tensor>& in,
                                    const std::vector<bool>& wanted,
                                    const std::vector<torch::Tensor>& grads) {
    return BlockwiseAttentionGradient(in[0], in[1], in[2], wanted, grads[0], q_heads, kv_heads,
                                      head_dim, block_rows);
  };
  return WithCustomBackward({std::move(value)}, {q, k, v}, std::move(gradient),
                            "BlockwiseAttentionBackward")[0];
}

std::vector<torch::Tensor> BlockwiseAttentionGradient(const torch::Tensor& q,
                                                      const torch::Tensor& k,
                                                      const torch::Tensor& v,
                                                      const std::vector<bool>& wanted,
                                                      const torch::Tensor& grad_out,
                                                      int64_t q_heads, int64_t kv_heads,
                                                      int64_t head_dim, int64_t block_rows) {
  TORCH_CHECK(q_heads % kv_heads == 0, q_heads, " query heads for ", kv_heads, " KV heads");
  TORCH_CHECK(wanted.size() == 3, "attention has three inputs");
  const int64_t rows = q.size(0);
  TORCH_CHECK(k.size(0) == rows && v.size(0) == rows, "prefill attention of ", rows,
              " queries over ", k.size(0), " keys");
  // Accumulators in the inputs' dtype (dense: the inputs may be views).
  const auto acc = [](const torch::Tensor& t) { return torch::zeros(t.sizes(), t.options()); };
  torch::Tensor dq = wanted[0] ? acc(q) : torch::Tensor();
  torch::Tensor dk = wanted[1] ? acc(k) : torch::Tensor();
  torch::Tensor dv = wanted[2] ? acc(v) : torch::Tensor();
  if (!wanted[0] && !wanted[1] && !wanted[2]) return {dq, dk, dv};
  for (int64_t q0 = 0; q0 < rows; q0 += block_rows) {
    const int64_t q1 = std::min(rows, q0 + block_rows);
    // Rows [q0, q1) see keys [0, q1) only.
    const ReferenceForward block = [=](const std::vector<torch::Tensor>& in) {
      return std::vector<torch::Tensor>{
          reference::AttentionRows(in[0], in[1], in[2], q0, q_heads, kv_heads, head_dim)};
    };
    std::vector<torch::Tensor> g = RecomputeGradient(
        block, {q.narrow(0, q0, q1 - q0), k.narrow(0, 0, q1), v.narrow(0, 0, q1)}, wanted,
        {grad_out.narrow(0, q0, q1 - q0)});
    if (g[0].defined()) dq.narrow(0, q0, q1 - q0).copy_(g[0]);
    if (g[1].defined()) dk.narrow(0, 0, q1).add_(g[1]);
    if (g[2].defined()) dv.narrow(0, 0, q1).add_(g[2]);
  }
  return {dq, dk, dv};
}

}  // namespace lockstep::common
