#include "common/transformer_forward.h"

namespace lockstep::common {
namespace {

// The bf16 storage cast between ops, applied at the same points in every
// forward and mode.
torch::Tensor Store(const ModelConfig& config, const torch::Tensor& x) {
  return config.dtype == kernels::DType::kBF16 ? RoundToBF16(x) : x;
}

torch::Tensor HeadNorm(Ops& ops, const torch::Tensor& x, const torch::Tensor& w,
                       int64_t heads, int64_t head_dim, double eps) {
  auto rows = x.reshape({x.size(0) * heads, head_dim});
  return ops.RmsNorm(rows, w, eps).reshape({x.size(0), heads * head_dim});
}

}  // namespace

torch::Tensor RankForward(const ModelConfig& config, const RankWeights& weights,
                          Ops& ops, const ForwardInput& input, Communicator* comm) {
  const int64_t D = config.head_dim;
  const double eps = config.rms_norm_eps;
  auto h = Store(config, weights.embed.index_select(0, input.tokens).to(torch::kFloat));
  for (const LayerWeights& lw : weights.layers) {
    auto x = Store(config, ops.RmsNorm(h, lw.input_norm, eps));
    auto q = Store(config, ops.Linear(x, lw.q));
    auto k = Store(config, ops.Linear(x, lw.k));
    auto v = Store(config, ops.Linear(x, lw.v));
    if (config.qk_norm) {
      q = Store(config, HeadNorm(ops, q, lw.q_norm, weights.q_heads, D, eps));
      k = Store(config, HeadNorm(ops, k, lw.k_norm, weights.kv_heads, D, eps));
    }
    q = Store(config, ops.Rope(q, input.positions, weights.q_heads, D, config.rope_theta));
    k = Store(config, ops.Rope(k, input.positions, weights.kv_heads, D, config.rope_theta));
    torch::Tensor attn;
    if (input.paged != nullptr) {
      const size_t layer = &lw - weights.layers.data();
      attn = ops.PagedAttention(q, k, v, (*input.kv)[layer], *input.paged,
                                weights.q_heads, weights.kv_heads, D);
    } else {
      std::vector<torch::Tensor> outs;
      int64_t start = 0;
      for (int64_t len : input.seq_lens) {
        outs.push_back(ops.PrefillAttention(q.narrow(0, start, len), k.narrow(0, start, len),
                                            v.narrow(0, start, len), weights.q_heads,
                                            weights.kv_heads, D));
        start += len;
      }
      attn = outs.size() == 1 ? outs[0] : torch::cat(outs, 0);
    }
    attn = Store(config, attn);
    h = Store(config, h + Store(config, ops.RowParallelLinear(attn, lw.o, comm)));
    x = Store(config, ops.RmsNorm(h, lw.post_norm, eps));
    auto gate = Store(config, ops.Linear(x, lw.gate));
    auto up = Store(config, ops.Linear(x, lw.up));
    auto act = Store(config, ops.SiluMul(gate, up));
    h = Store(config, h + Store(config, ops.RowParallelLinear(act, lw.down, comm)));
  }
  if (input.logit_rows.numel() == 0) {
    // A step that only fills the KV cache (e.g. a prefill chunk that samples
    // nothing): no head, no collective (every rank sees the same batch).
    return torch::empty({0, config.vocab_size}, h.options());
  }
  auto last = h.index_select(0, input.logit_rows);
  auto x = Store(config, ops.RmsNorm(last, weights.final_norm, eps));
  auto local = Store(config, ops.Linear(x, weights.lm_head));  // [R, V/t]
  const int tp = comm == nullptr ? 1 : comm->size();
  if (tp == 1) return local;
  // Vocabulary shards are gathered as bytes and laid side by side.
  auto gathered = AllGatherTensor(local, comm);
  return gathered.permute({1, 0, 2}).reshape({local.size(0), tp * local.size(1)}).contiguous();
}

}  // namespace lockstep::common
