#include <algorithm>
#include <cmath>
#include <limits>

#include "common/model/reference_ops.h"
#include "kernels/attention.h"

namespace lockstep::common::reference {

float AttentionScale(int64_t head_dim) {
  return static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim)));
}

torch::Tensor Linear(const torch::Tensor& x, const torch::Tensor& w) {
  return torch::matmul(x, w.to(torch::kFloat).t());
}

torch::Tensor RmsNorm(const torch::Tensor& x, const torch::Tensor& w, double eps) {
  auto inv = torch::rsqrt(x.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return (x * inv) * w.to(torch::kFloat);
}

torch::Tensor Rope(const torch::Tensor& x, const torch::Tensor& positions,
                   int64_t heads, int64_t head_dim, const RopeTable& rope) {
  const int64_t half = head_dim / 2;
  // Angles, cos, sin and the attention factor in double, rounded once to
  // float, like the kernel; on x's device (no host round trip: in the
  // training backward this runs twice per layer).
  auto inv_freq = rope.inv_freq.to(x.device(), torch::kDouble);
  auto ang = positions.to(x.device(), torch::kDouble).unsqueeze(1) * inv_freq.unsqueeze(0);
  const double m = rope.attention_factor;
  auto cos = (torch::cos(ang) * m).to(torch::kFloat).unsqueeze(1);
  auto sin = (torch::sin(ang) * m).to(torch::kFloat).unsqueeze(1);
  auto xv = x.view({x.size(0), heads, head_dim});
  auto a = xv.narrow(2, 0, half);
  auto b = xv.narrow(2, half, half);
  auto out = torch::cat({a * cos - b * sin, b * cos + a * sin}, 2);
  return out.view({x.size(0), heads * head_dim});
}

torch::Tensor SiluMul(const torch::Tensor& gate, const torch::Tensor& up) {
  return torch::silu(gate) * up;
}

namespace {

// Causal attention of queries at q_positions (int64 [nq], on q's device)
// against keys 0..nk-1: the one formulation behind Attention and
// AttentionRows.
torch::Tensor CausalAttention(const torch::Tensor& q, const torch::Tensor& k,
                              const torch::Tensor& v, const torch::Tensor& q_positions,
                              int64_t q_heads, int64_t kv_heads, int64_t head_dim) {
  const int64_t nq = q.size(0), nk = k.size(0);
  auto qh = q.view({nq, q_heads, head_dim}).transpose(0, 1);   // [Hq, nq, D]
  auto kh = k.view({nk, kv_heads, head_dim}).transpose(0, 1);  // [Hkv, nk, D]
  auto vh = v.view({nk, kv_heads, head_dim}).transpose(0, 1);
  if (q_heads != kv_heads) {
    kh = kh.repeat_interleave(q_heads / kv_heads, 0);
    vh = vh.repeat_interleave(q_heads / kv_heads, 0);
  }
  auto scores = torch::matmul(qh, kh.transpose(1, 2)) * AttentionScale(head_dim);
  auto key_pos = torch::arange(nk, torch::TensorOptions().dtype(torch::kLong).device(q.device()));
  auto mask = key_pos.unsqueeze(0) > q_positions.unsqueeze(1);  // [nq, nk]
  scores = scores.masked_fill(mask.unsqueeze(0), -std::numeric_limits<float>::infinity());
  auto probs = torch::softmax(scores, -1);
  return torch::matmul(probs, vh).transpose(0, 1).reshape({nq, q_heads * head_dim});
}

}  // namespace

torch::Tensor Attention(const torch::Tensor& q, const torch::Tensor& k,
                        const torch::Tensor& v, const torch::Tensor& q_positions,
                        int64_t q_heads, int64_t kv_heads, int64_t head_dim) {
  return CausalAttention(q, k, v, q_positions.to(torch::kLong), q_heads, kv_heads, head_dim);
}

torch::Tensor AttentionRows(const torch::Tensor& q, const torch::Tensor& k,
                            const torch::Tensor& v, int64_t first_row, int64_t q_heads,
                            int64_t kv_heads, int64_t head_dim) {
  auto pos = torch::arange(first_row, first_row + q.size(0),
                           torch::TensorOptions().dtype(torch::kLong).device(q.device()));
  return CausalAttention(q, k, v, pos, q_heads, kv_heads, head_dim);
}

torch::Tensor TargetLogprobs(const torch::Tensor& logits, const torch::Tensor& targets) {
  return torch::log_softmax(logits, -1).gather(1, targets.unsqueeze(1)).squeeze(1);
}

torch::Tensor RoutingWeights(const torch::Tensor& logits, const torch::Tensor& ids,
                             bool normalize) {
  auto w = torch::softmax(logits.to(torch::kFloat), -1).gather(1, ids);
  return normalize ? w / w.sum(-1, /*keepdim=*/true) : w;
}

namespace {

// Upper bound on one attention chunk's fp32 K, V, scores and probabilities.
constexpr int64_t kAttentionChunkBytes = int64_t{512} << 20;

class StandardOps : public Ops {
 public:
  torch::Tensor Linear(const torch::Tensor& x, const LinearWeight& w) override {
    return reference::Linear(x, w.w);
  }

  torch::Tensor RowParallelLinear(const torch::Tensor& x, const LinearWeight& w,
                                  Communicator* comm) override {
    auto y = reference::Linear(x, w.w).contiguous();
    if (comm != nullptr && comm->size() > 1) y = AllReduceSumTensor(y, comm);
    return y;
  }

  torch::Tensor RmsNorm(const torch::Tensor& x, const torch::Tensor& w,
                        double eps) override {
    return reference::RmsNorm(x, w, eps);
  }

  torch::Tensor Rope(const torch::Tensor& x, const torch::Tensor& positions,
                     int64_t heads, int64_t head_dim, const RopeTable& rope) override {
    return reference::Rope(x, positions, heads, head_dim, rope);
  }

  torch::Tensor SiluMul(const torch::Tensor& gate, const torch::Tensor& up) override {
    return reference::SiluMul(gate, up);
  }

  torch::Tensor PrefillAttention(const torch::Tensor& q, const torch::Tensor& k,
                                 const torch::Tensor& v, int64_t q_heads,
                                 int64_t kv_heads, int64_t head_dim) override {
    auto pos = torch::arange(q.size(0), torch::TensorOptions().dtype(torch::kLong).device(q.device()));
    return reference::Attention(q, k, v, pos, q_heads, kv_heads, head_dim);
  }

  torch::Tensor PagedAttention(const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, LayerKv& kv,
                               const PagedAttentionMeta& meta, int64_t q_heads,
                               int64_t kv_heads, int64_t head_dim) override {
    // K/V go into the pages like in invariant mode; then every query row's
    // context is gathered into a padded [rows, C] batch for batched matmuls,
    // the way a serving engine without a paged kernel would do it.
    const int64_t page_size = kv.k.size(1);
    auto flat_k = kv.k.view({-1, kv_heads, head_dim});
    auto flat_v = kv.v.view({-1, kv_heads, head_dim});
    auto slots = meta.slots.to(torch::kLong);
    flat_k.index_copy_(0, slots, k.reshape({-1, kv_heads, head_dim}).to(kv.k.scalar_type()));
    flat_v.index_copy_(0, slots, v.reshape({-1, kv_heads, head_dim}).to(kv.v.scalar_type()));
    const int64_t T = q.size(0);
    if (T == 0) return torch::empty_like(q);
    const int64_t group = q_heads / kv_heads;
    // Only the chunk bounds come from the host (one small copy per call);
    // the slot matrices are built on q's device.
    auto host_pos = meta.positions.to(torch::kCPU, torch::kLong).contiguous();
    const int64_t* pos_h = host_pos.data_ptr<int64_t>();
    auto positions = meta.positions.to(torch::kLong);
    auto seq_ids = meta.seq_ids.to(torch::kLong);
    auto tables = meta.block_tables.to(torch::kLong);
    auto long_opts = torch::TensorOptions().dtype(torch::kLong).device(q.device());
    // Per row and key: fp32 K and V plus the scores and probabilities.
    const int64_t bytes_per_key = 4 * (2 * kv_heads * head_dim + 2 * q_heads);
    auto out = torch::empty({T, q_heads * head_dim}, q.options().dtype(torch::kFloat));
    int64_t begin = 0;
    while (begin < T) {
      // Grow the chunk while its padded context fits the budget; a single
      // row always goes, however long.
      int64_t end = begin + 1;
      int64_t ctx = pos_h[begin] + 1;
      while (end < T) {
        const int64_t c = std::max(ctx, pos_h[end] + 1);
        if ((end - begin + 1) * c * bytes_per_key > kAttentionChunkBytes) break;
        ctx = c;
        ++end;
      }
      const int64_t rows = end - begin;
      auto pos = positions.narrow(0, begin, rows).unsqueeze(1);  // [rows, 1]
      auto key = torch::arange(ctx, long_opts).unsqueeze(0);     // [1, C]
      // Keys past a row's position read that row's own (just written) slot,
      // so padding never brings stale or unwritten values into the matmul
      // with V (0 * NaN would poison the row).
      auto key_pos = torch::min(key, pos);  // [rows, C]
      auto pages = tables.index_select(0, seq_ids.narrow(0, begin, rows))
                       .gather(1, key_pos.div(page_size, "floor"));
      auto idx = (pages * page_size + key_pos.remainder(page_size)).view({-1});
      // [rows, Hkv, C, D] in fp32, contiguous: one copy per gather.
      auto gather = [&](const torch::Tensor& flat) {
        return flat.index_select(0, idx)
            .view({rows, ctx, kv_heads, head_dim})
            .permute({0, 2, 1, 3})
            .to(torch::kFloat, /*non_blocking=*/false, /*copy=*/false,
                torch::MemoryFormat::Contiguous);
      };
      auto ck = gather(flat_k);
      auto cv = gather(flat_v);
      // Query head h uses KV head h / group (as repeat_interleave would), so
      // the group's queries share one K/V matrix instead of copies of it.
      auto qc = q.narrow(0, begin, rows).reshape({rows, kv_heads, group, head_dim});
      auto scores = torch::matmul(qc, ck.transpose(2, 3)) * AttentionScale(head_dim);
      auto mask = (key > pos).view({rows, 1, 1, ctx});
      scores.masked_fill_(mask, -std::numeric_limits<float>::infinity());
      auto probs = torch::softmax(scores, -1);
      auto res = torch::matmul(probs, cv).reshape({rows, q_heads * head_dim});
      if (rows == T) return res;
      out.narrow(0, begin, rows).copy_(res);
      begin = end;
    }
    return out;
  }

  torch::Tensor TargetLogprobs(const torch::Tensor& logits,
                               const torch::Tensor& targets) override {
    return reference::TargetLogprobs(logits, targets);
  }

  torch::Tensor LogSoftmax(const torch::Tensor& logits) override {
    return torch::log_softmax(logits, -1);
  }

  // transformers' router: softmax, topk, renormalisation.
  std::pair<torch::Tensor, torch::Tensor> RouteTopK(const torch::Tensor& logits, int64_t k,
                                                    bool normalize) override {
    auto [w, ids] = torch::topk(torch::softmax(logits.to(torch::kFloat), -1), k, -1);
    if (normalize) w = w / w.sum(-1, /*keepdim=*/true);
    return {w, ids};
  }
};

}  // namespace

std::unique_ptr<Ops> CreateStandardOps() { return std::make_unique<StandardOps>(); }

}  // namespace lockstep::common::reference
