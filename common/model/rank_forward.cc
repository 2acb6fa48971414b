#include "common/model/rank_forward.h"

#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/model/moe_forward.h"
#include "common/status/status_macros.h"

namespace lockstep::common {
namespace {

// x·wᵀ (+ bias): the bias add is elementwise, per row. A bf16 bias is
// promoted to fp32 inside the add (exactly), so no converted copy is made.
torch::Tensor LinearWithBias(Ops& ops, const torch::Tensor& x, const LinearWeight& w) {
  auto y = ops.Linear(x, w);
  if (w.bias.defined()) y = y + w.bias;
  return y;
}

}  // namespace

torch::Tensor StoreActivation(const ModelConfig& config, Ops& ops, torch::Tensor x) {
  return config.dtype == kernels::DType::kBF16 ? ops.StoreBF16(std::move(x)) : x;
}

RopeTable MakeRopeTable(const ModelConfig& config, const torch::Device& device) {
  const std::vector<double> inv = config.rope.InverseFrequencies(config.head_dim);
  RopeTable t;
  t.inv_freq = torch::tensor(inv, torch::TensorOptions().dtype(torch::kDouble)).to(device);
  t.attention_factor = config.rope.EffectiveAttentionFactor();
  return t;
}

absl::StatusOr<RankWeights> BuildRankWeights(const ModelConfig& c, int rank, int tp,
                                             const WeightSource& source,
                                             const LinearMaker& make_linear,
                                             const torch::Device& device,
                                             bool stack_projections) {
  const int64_t D = c.head_dim, Hq = c.num_attention_heads, Hkv = c.num_key_value_heads;
  const int64_t q_local = Hq / tp;
  const int64_t kv_local = Hkv >= tp ? Hkv / tp : 1;
  const int64_t kv_begin = Hkv >= tp ? rank * kv_local : (rank * q_local) / (Hq / Hkv);
  const int64_t vocab_local = c.vocab_size / tp;
  auto whole = [&](const std::string& name) { return source(name, -1, 0, 0); };
  // A column-parallel layer's rows [begin, begin + count): weight and, when
  // the family has one, bias.
  auto column = [&](const std::string& prefix, int64_t begin, int64_t count,
                    bool bias) -> absl::StatusOr<LinearWeight> {
    LOCKSTEP_ASSIGN_OR_RETURN(torch::Tensor w, source(prefix + ".weight", 0, begin, count));
    LOCKSTEP_ASSIGN_OR_RETURN(LinearWeight lw, make_linear(w));
    if (bias) {
      LOCKSTEP_ASSIGN_OR_RETURN(lw.bias, source(prefix + ".bias", 0, begin, count));
    }
    return lw;
  };
  // Column-parallel layers reading one input, stacked: rows [begin, begin +
  // count) of each, laid one after the other. The shards are only views or
  // single copies, so the stacked matrix is the one copy that stays.
  struct Block {
    std::string prefix;
    int64_t begin, count;
  };
  auto stacked = [&](const std::vector<Block>& blocks,
                     bool bias) -> absl::StatusOr<LinearWeight> {
    std::vector<torch::Tensor> ws, bs;
    for (const Block& b : blocks) {
      LOCKSTEP_ASSIGN_OR_RETURN(torch::Tensor w, source(b.prefix + ".weight", 0, b.begin, b.count));
      ws.push_back(std::move(w));
      if (bias) {
        LOCKSTEP_ASSIGN_OR_RETURN(torch::Tensor t, source(b.prefix + ".bias", 0, b.begin, b.count));
        bs.push_back(std::move(t));
      }
    }
    torch::Tensor w = torch::cat(ws, 0);
    ws.clear();
    LOCKSTEP_ASSIGN_OR_RETURN(LinearWeight lw, make_linear(std::move(w)));
    if (bias) lw.bias = torch::cat(bs, 0);
    return lw;
  };
  auto row = [&](const std::string& name, int64_t begin,
                 int64_t count) -> absl::StatusOr<LinearWeight> {
    LOCKSTEP_ASSIGN_OR_RETURN(torch::Tensor w, source(name, 1, begin, count));
    return make_linear(w);
  };
  RankWeights rw;
  rw.q_heads = q_local;
  rw.kv_heads = kv_local;
  LOCKSTEP_ASSIGN_OR_RETURN(rw.embed, whole("model.embed_tokens.weight"));
  LOCKSTEP_ASSIGN_OR_RETURN(rw.final_norm, whole("model.norm.weight"));
  LOCKSTEP_ASSIGN_OR_RETURN(
      rw.lm_head, column(c.tie_word_embeddings ? "model.embed_tokens" : "lm_head",
                         rank * vocab_local, vocab_local, /*bias=*/false));
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    LayerWeights lw;
    LOCKSTEP_ASSIGN_OR_RETURN(lw.input_norm, whole(p + "input_layernorm.weight"));
    LOCKSTEP_ASSIGN_OR_RETURN(lw.post_norm, whole(p + "post_attention_layernorm.weight"));
    if (stack_projections) {
      LOCKSTEP_ASSIGN_OR_RETURN(
          lw.qkv, stacked({{p + "self_attn.q_proj", rank * q_local * D, q_local * D},
                           {p + "self_attn.k_proj", kv_begin * D, kv_local * D},
                           {p + "self_attn.v_proj", kv_begin * D, kv_local * D}},
                          c.qkv_bias));
    } else {
      LOCKSTEP_ASSIGN_OR_RETURN(
          lw.q, column(p + "self_attn.q_proj", rank * q_local * D, q_local * D, c.qkv_bias));
      LOCKSTEP_ASSIGN_OR_RETURN(
          lw.k, column(p + "self_attn.k_proj", kv_begin * D, kv_local * D, c.qkv_bias));
      LOCKSTEP_ASSIGN_OR_RETURN(
          lw.v, column(p + "self_attn.v_proj", kv_begin * D, kv_local * D, c.qkv_bias));
    }
    LOCKSTEP_ASSIGN_OR_RETURN(lw.o,
                              row(p + "self_attn.o_proj.weight", rank * q_local * D, q_local * D));
    if (c.qk_norm) {
      LOCKSTEP_ASSIGN_OR_RETURN(lw.q_norm, whole(p + "self_attn.q_norm.weight"));
      LOCKSTEP_ASSIGN_OR_RETURN(lw.k_norm, whole(p + "self_attn.k_norm.weight"));
    }
    // A SwiGLU MLP of width `width` under `prefix` (mlp. or mlp.experts.<e>.).
    auto mlp = [&](const std::string& prefix, int64_t width) -> absl::StatusOr<MlpWeights> {
      const int64_t local = width / tp;
      MlpWeights m;
      if (stack_projections) {
        LOCKSTEP_ASSIGN_OR_RETURN(m.gate_up, stacked({{prefix + "gate_proj", rank * local, local},
                                                      {prefix + "up_proj", rank * local, local}},
                                                     /*bias=*/false));
      } else {
        LOCKSTEP_ASSIGN_OR_RETURN(m.gate,
                                  column(prefix + "gate_proj", rank * local, local, false));
        LOCKSTEP_ASSIGN_OR_RETURN(m.up, column(prefix + "up_proj", rank * local, local, false));
      }
      LOCKSTEP_ASSIGN_OR_RETURN(m.down, row(prefix + "down_proj.weight", rank * local, local));
      return m;
    };
    if (c.IsSparseLayer(l)) {
      LOCKSTEP_ASSIGN_OR_RETURN(torch::Tensor router, whole(p + "mlp.gate.weight"));
      LOCKSTEP_ASSIGN_OR_RETURN(lw.router, make_linear(router));
      for (int64_t e = 0; e < c.num_experts; ++e) {
        LOCKSTEP_ASSIGN_OR_RETURN(
            MlpWeights expert,
            mlp(absl::StrCat(p, "mlp.experts.", e, "."), c.moe_intermediate_size));
        lw.experts.push_back(std::move(expert));
      }
    } else {
      LOCKSTEP_ASSIGN_OR_RETURN(lw.mlp, mlp(p + "mlp.", c.intermediate_size));
    }
    rw.layers.push_back(std::move(lw));
  }
  rw.rope = MakeRopeTable(c, device);
  return rw;
}

torch::Tensor EmbedTokens(const ModelConfig& config, const RankWeights& weights, Ops& ops,
                          const torch::Tensor& tokens) {
  return StoreActivation(config, ops, weights.embed.index_select(0, tokens).to(torch::kFloat));
}

std::pair<torch::Tensor, torch::Tensor> DecoderLayer(const ModelConfig& config,
                                                     const RankWeights& weights, size_t layer,
                                                     Ops& ops, const ForwardInput& input,
                                                     Communicator* comm, torch::Tensor h,
                                                     torch::Tensor pending) {
  const int64_t D = config.head_dim;
  const double eps = config.rms_norm_eps;
  const bool bf16 = config.dtype == kernels::DType::kBF16;
  const torch::Tensor no_norm;
  const LayerWeights& lw = weights.layers[layer];
  torch::Tensor x;
  std::tie(h, x) = ops.AddRmsNorm(std::move(h), std::move(pending), lw.input_norm, eps, bf16);
  torch::Tensor q, k, v;
  if (lw.qkv.w.defined()) {
    // Column slices of one [T, (Hq + 2·Hkv)·D] output where the op set fuses;
    // the ops below take them in place.
    std::vector<torch::Tensor> qkv = ops.StackedLinear(
        x, lw.qkv, {weights.q_heads * D, weights.kv_heads * D, weights.kv_heads * D});
    q = std::move(qkv[0]);
    k = std::move(qkv[1]);
    v = std::move(qkv[2]);
  } else {
    q = LinearWithBias(ops, x, lw.q);
    k = LinearWithBias(ops, x, lw.k);
    v = LinearWithBias(ops, x, lw.v);
  }
  v = StoreActivation(config, ops, std::move(v));
  q = ops.HeadNormRope(std::move(q), config.qk_norm ? lw.q_norm : no_norm, input.positions,
                       weights.q_heads, D, weights.rope, eps, bf16);
  k = ops.HeadNormRope(std::move(k), config.qk_norm ? lw.k_norm : no_norm, input.positions,
                       weights.kv_heads, D, weights.rope, eps, bf16);
  torch::Tensor attn;
  if (input.paged != nullptr) {
    attn = ops.PagedAttention(q, k, v, (*input.kv)[layer], *input.paged, weights.q_heads,
                              weights.kv_heads, D);
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
  if (bf16) attn = ops.StoreBF16ForLinear(std::move(attn));
  std::tie(h, x) = ops.AddRmsNorm(std::move(h), ops.RowParallelLinear(attn, lw.o, comm),
                                  lw.post_norm, eps, bf16);
  if (!lw.experts.empty()) {
    return {std::move(h), SparseMlp(config, lw, ops, x, comm, input.routing)};
  }
  return {std::move(h), SwiGluMlp(config, lw.mlp, ops, x, comm)};
}

torch::Tensor FinalNormRows(const ModelConfig& config, const RankWeights& weights, Ops& ops,
                            const ForwardInput& input, const torch::Tensor& h,
                            torch::Tensor pending) {
  const bool bf16 = config.dtype == kernels::DType::kBF16;
  // The last residual add and the final norm are row-wise: they run on the
  // logit rows only.
  auto last = h.index_select(0, input.logit_rows);
  if (pending.defined()) pending = pending.index_select(0, input.logit_rows);
  return ops.AddRmsNorm(std::move(last), std::move(pending), weights.final_norm,
                        config.rms_norm_eps, bf16)
      .second;
}

torch::Tensor LmHead(const RankWeights& weights, Ops& ops, Communicator* comm,
                     const torch::Tensor& x) {
  // The logits stay fp32 (the GEMM's accumulator) where transformers rounds
  // them to bf16: the logprobs are computed from them, and that rounding
  // alone costs up to half a bf16 ulp of the logit (0.016 nats at |logit|
  // 4..8). Both services do the same, so they stay bit-identical.
  auto local = ops.Linear(x, weights.lm_head);  // [R, V/t]
  const int tp = comm == nullptr ? 1 : comm->size();
  if (tp == 1) return local;
  // Vocabulary shards are gathered as bytes and laid side by side.
  auto gathered = AllGatherTensor(local, comm);
  return gathered.permute({1, 0, 2}).reshape({local.size(0), tp * local.size(1)}).contiguous();
}

torch::Tensor DecoderHead(const ModelConfig& config, const RankWeights& weights, Ops& ops,
                          const ForwardInput& input, Communicator* comm, const torch::Tensor& h,
                          torch::Tensor pending) {
  if (input.logit_rows.numel() == 0) {
    // A step that only fills the KV cache (e.g. a prefill chunk that samples
    // nothing): no head, no collective (every rank sees the same batch).
    return torch::empty({0, config.vocab_size}, h.options());
  }
  return LmHead(weights, ops, comm,
                FinalNormRows(config, weights, ops, input, h, std::move(pending)));
}

namespace {

// The embedding and the decoder layers: the last layer's (h, pending).
std::pair<torch::Tensor, torch::Tensor> DecoderLayers(const ModelConfig& config,
                                                      const RankWeights& weights, Ops& ops,
                                                      const ForwardInput& input,
                                                      Communicator* comm) {
  // Every activation is rounded to bf16 (bf16 models) at the same points as
  // ever: after the embedding, each norm, projection, QK-norm, RoPE,
  // attention, residual add and SwiGLU; the fused steps of Ops
  // (torch_ops.h) say which of those they apply.
  torch::Tensor h = EmbedTokens(config, weights, ops, input.tokens);
  // A layer's MLP output, added to h by the next norm: h = S(h + S(pending)).
  torch::Tensor pending;
  for (size_t layer = 0; layer < weights.layers.size(); ++layer) {
    std::tie(h, pending) =
        DecoderLayer(config, weights, layer, ops, input, comm, std::move(h), std::move(pending));
  }
  return {std::move(h), std::move(pending)};
}

}  // namespace

torch::Tensor RankForward(const ModelConfig& config, const RankWeights& weights,
                          Ops& ops, const ForwardInput& input, Communicator* comm) {
  auto [h, pending] = DecoderLayers(config, weights, ops, input, comm);
  return DecoderHead(config, weights, ops, input, comm, h, std::move(pending));
}

torch::Tensor RankForwardToFinalNorm(const ModelConfig& config, const RankWeights& weights,
                                     Ops& ops, const ForwardInput& input, Communicator* comm) {
  auto [h, pending] = DecoderLayers(config, weights, ops, input, comm);
  return FinalNormRows(config, weights, ops, input, h, std::move(pending));
}

}  // namespace lockstep::common
