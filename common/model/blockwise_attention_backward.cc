#include "common/model/blockwise_attention_backward.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "common/model/recomputed_backward.h"
#include "common/model/reference_ops.h"

namespace lockstep::common {

int64_t AttentionBackwardBlockRows(int64_t q_heads, int64_t rows, const torch::Device& device) {
  if (!device.is_cuda()) return kAttentionBackwardBlockRows;
  const int64_t step = kAttentionBackwardBlockRows;
  const int64_t per_row = std::max<int64_t>(1, q_heads * rows * 4);
  const int64_t fit = std::max<int64_t>(1, kAttentionBackwardBlockBytesCuda / per_row / step);
  // At least kAttentionBackwardMinBlocks blocks where the rows allow: block
  // i only computes keys [0, q1), so k blocks cover (k + 1) / 2k of the
  // [T, T] square instead of all of it.
  const int64_t quarter = (rows + kAttentionBackwardMinBlocks * step - 1) /
                          (kAttentionBackwardMinBlocks * step);
  return std::min(fit, std::max<int64_t>(1, quarter)) * step;
}

torch::Tensor WithBlockwiseAttentionBackward(torch::Tensor value, const torch::Tensor& q,
                                             const torch::Tensor& k, const torch::Tensor& v,
                                             int64_t q_heads, int64_t kv_heads, int64_t head_dim,
                                             int64_t block_rows) {
  TORCH_CHECK(block_rows >= 0, "attention backward block of ", block_rows, " rows");
  if (block_rows == 0) block_rows = AttentionBackwardBlockRows(q_heads, q.size(0), q.device());
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
  torch::NoGradGuard no_grad;
  const int64_t group = q_heads / kv_heads, D = head_dim;
  const float scale = reference::AttentionScale(head_dim);
  // [L, Hkv*D] -> [Hkv, L, D] (a view): the keys or values of rows [0, L).
  const auto by_kv_head = [&](const torch::Tensor& t, int64_t length) {
    return t.narrow(0, 0, length).view({length, kv_heads, D}).permute({1, 0, 2});
  };
  // Query-side rows [q0, q0 + n) of a [T, Hq*D] tensor -> [Hkv, group*n, D]
  // (query head h = kv_head * group + j, as reference::Attention's
  // repeat_interleave pairs them), and back.
  const auto by_group = [&](const torch::Tensor& t, int64_t q0, int64_t n) {
    return t.narrow(0, q0, n).view({n, kv_heads, group, D}).permute({1, 2, 0, 3})
        .reshape({kv_heads, group * n, D});
  };
  const auto from_group = [&](const torch::Tensor& t, int64_t n) {
    return t.view({kv_heads, group, n, D}).permute({2, 0, 1, 3}).reshape({n, q_heads * D});
  };
  for (int64_t q0 = 0; q0 < rows; q0 += block_rows) {
    const int64_t q1 = std::min(rows, q0 + block_rows), n = q1 - q0;
    // Rows [q0, q1) see keys [0, q1): S = (scale Q) Kᵀ with the causal
    // triangle of the last n keys masked, P = softmax(S). The scale goes on
    // the [n, D] operands and results, never on a [n, q1] tensor.
    const torch::Tensor qb = by_group(q, q0, n);
    const torch::Tensor kb = by_kv_head(k, q1), vb = by_kv_head(v, q1);
    const torch::Tensor gb = by_group(grad_out, q0, n);
    torch::Tensor s = torch::matmul(qb * scale, kb.transpose(1, 2));  // [Hkv, group*n, q1]
    const torch::Tensor above = torch::ones({n, n}, q.options().dtype(torch::kBool)).triu(1);
    s.view({kv_heads, group, n, q1}).narrow(3, q0, n).masked_fill_(
        above, -std::numeric_limits<float>::infinity());
    const torch::Tensor p = torch::softmax(s, -1);
    s = torch::Tensor();
    if (wanted[2]) {
      dv.narrow(0, 0, q1).add_(torch::matmul(p.transpose(1, 2), gb).permute({1, 0, 2})
                                   .reshape({q1, kv_heads * D}));
    }
    if (!wanted[0] && !wanted[1]) continue;
    // Softmax's backward in place: dS/scale = P ∘ (dP − rowsum(dO ∘ O)),
    // dP = dO Vᵀ, O = P V (rowsum(P ∘ dP) = rowsum(dO ∘ O): the row term
    // from [n, D] tensors).
    const torch::Tensor row = (gb * torch::matmul(p, vb)).sum(-1, /*keepdim=*/true);
    torch::Tensor ds = torch::matmul(gb, vb.transpose(1, 2));  // dP
    ds.sub_(row).mul_(p);
    if (wanted[0]) dq.narrow(0, q0, n).copy_(from_group(torch::matmul(ds, kb).mul_(scale), n));
    if (wanted[1]) {
      dk.narrow(0, 0, q1).add_(torch::matmul(ds.transpose(1, 2), qb).mul_(scale)
                                   .permute({1, 0, 2}).reshape({q1, kv_heads * D}));
    }
  }
  return {dq, dk, dv};
}

}  // namespace lockstep::common
