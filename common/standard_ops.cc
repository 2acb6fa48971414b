#include <cmath>

#include "common/reference_ops.h"
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
                   int64_t heads, int64_t head_dim, double theta) {
  const int64_t half = head_dim / 2;
  // Angles in double, rounded once to float, like the kernel.
  auto idx = torch::arange(half, torch::TensorOptions().dtype(torch::kDouble));
  auto inv_freq = torch::pow(theta, -2.0 * idx / static_cast<double>(head_dim));
  auto ang = positions.to(torch::kDouble).cpu().unsqueeze(1) * inv_freq.unsqueeze(0);
  auto cos = torch::cos(ang).to(torch::kFloat).to(x.device()).unsqueeze(1);
  auto sin = torch::sin(ang).to(torch::kFloat).to(x.device()).unsqueeze(1);
  auto xv = x.view({x.size(0), heads, head_dim});
  auto a = xv.narrow(2, 0, half);
  auto b = xv.narrow(2, half, half);
  auto out = torch::cat({a * cos - b * sin, b * cos + a * sin}, 2);
  return out.view({x.size(0), heads * head_dim});
}

torch::Tensor SiluMul(const torch::Tensor& gate, const torch::Tensor& up) {
  return torch::silu(gate) * up;
}

torch::Tensor Attention(const torch::Tensor& q, const torch::Tensor& k,
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
  auto mask = key_pos.unsqueeze(0) > q_positions.to(torch::kLong).unsqueeze(1);  // [nq, nk]
  scores = scores.masked_fill(mask.unsqueeze(0), -std::numeric_limits<float>::infinity());
  auto probs = torch::softmax(scores, -1);
  return torch::matmul(probs, vh).transpose(0, 1).reshape({nq, q_heads * head_dim});
}

torch::Tensor TargetLogprobs(const torch::Tensor& logits, const torch::Tensor& targets) {
  return torch::log_softmax(logits, -1).gather(1, targets.unsqueeze(1)).squeeze(1);
}

namespace {

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
                     int64_t heads, int64_t head_dim, double theta) override {
    return reference::Rope(x, positions, heads, head_dim, theta);
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
    // K/V go into the pages like in invariant mode; then every sequence's
    // context is gathered into contiguous tensors for ordinary matmuls.
    const int64_t page_size = kv.k.size(1);
    auto flat_k = kv.k.view({-1, kv_heads * head_dim});
    auto flat_v = kv.v.view({-1, kv_heads * head_dim});
    auto slots = meta.slots.to(torch::kLong);
    flat_k.index_copy_(0, slots, k.to(kv.k.scalar_type()));
    flat_v.index_copy_(0, slots, v.to(kv.v.scalar_type()));
    auto out = torch::empty_like(q);
    auto positions = meta.positions.cpu().to(torch::kLong);
    auto seq_ids = meta.seq_ids.cpu().to(torch::kLong);
    auto tables = meta.block_tables.cpu().to(torch::kLong);
    const int64_t T = q.size(0);
    auto pos_a = positions.accessor<int64_t, 1>();
    auto seq_a = seq_ids.accessor<int64_t, 1>();
    auto tab_a = tables.accessor<int64_t, 2>();
    int64_t i = 0;
    while (i < T) {
      // A run of consecutive rows of one sequence.
      int64_t j = i;
      int64_t max_pos = 0;
      while (j < T && seq_a[j] == seq_a[i]) max_pos = std::max(max_pos, pos_a[j++]);
      std::vector<int64_t> ctx_slots(max_pos + 1);
      for (int64_t p = 0; p <= max_pos; ++p) {
        ctx_slots[p] = tab_a[seq_a[i]][p / page_size] * page_size + p % page_size;
      }
      auto idx = torch::tensor(ctx_slots, torch::kLong).to(q.device());
      auto ck = flat_k.index_select(0, idx).to(torch::kFloat);
      auto cv = flat_v.index_select(0, idx).to(torch::kFloat);
      auto res = reference::Attention(q.narrow(0, i, j - i), ck, cv,
                                      positions.narrow(0, i, j - i).to(q.device()),
                                      q_heads, kv_heads, head_dim);
      out.narrow(0, i, j - i).copy_(res);
      i = j;
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
};

}  // namespace

std::unique_ptr<Ops> CreateStandardOps() { return std::make_unique<StandardOps>(); }

}  // namespace lockstep::common::reference
