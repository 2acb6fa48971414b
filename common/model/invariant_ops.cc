// InvariantOps: LibTorch adapters over kernels/. Values always come from the
// invariant kernels. When an input requires grad (training), the matmuls are
// autograd functions with LibTorch backward; the other ops return the
// kernel's value as the output of a node that saves the op's inputs only and
// whose backward recomputes the reference op (reference_ops.h) from them
// (recomputed_backward.h; attention blockwise,
// blockwise_attention_backward.h). So the forward bits are the kernel's, the
// forward runs each op once, and the backward is the reference op's
// derivative.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "common/model/blockwise_attention_backward.h"
#include "common/model/kernel_stream.h"
#include "common/model/op_error.h"
#include "common/model/recomputed_backward.h"
#include "common/model/reference_ops.h"
#include "common/model/torch_ops.h"
#include "kernels/activation.h"
#include "kernels/attention.h"
#include "kernels/fused.h"
#include "kernels/matmul.h"
#include "kernels/rms_norm.h"
#include "kernels/rope.h"
#include "kernels/router.h"
#include "kernels/softmax.h"
#include "kernels/tree_reduce.h"

namespace lockstep::common {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

// A kernel's error keeps its code across LibTorch (common/op_error.h).
void Check(const absl::Status& st) {
  if (!st.ok()) ThrowStatus(st);
}

kernels::ExecContext ContextOf(const torch::Tensor& t) {
  kernels::ExecContext ctx;
  ctx.device = t.is_cuda() ? kernels::Device::kCuda : kernels::Device::kCpu;
  // The thread's kernel stream: nullptr (the legacy default stream, which is
  // LibTorch's default too) unless the device-resident step set its own.
  if (t.is_cuda()) ctx.cuda_stream = CurrentKernelStream();
  return ctx;
}

kernels::DType DTypeOf(const torch::Tensor& t) {
  if (t.scalar_type() == torch::kFloat) return kernels::DType::kF32;
  TORCH_CHECK(t.scalar_type() == torch::kBFloat16, "unsupported dtype ", t.scalar_type());
  return kernels::DType::kBF16;
}

bool NeedsGrad(std::initializer_list<const torch::Tensor*> ts) {
  if (!torch::GradMode::is_enabled()) return false;
  for (auto* t : ts) {
    if (t->defined() && t->requires_grad()) return true;
  }
  return false;
}

// On the GPU a bf16-valued activation is handed to the GEMM as bf16 (an exact
// conversion) so that it runs on the tensor cores; the values, hence the
// bits, are unchanged.
// A bf16 tensor (a fused step's "Linear input") goes in as bf16 exactly where
// its fp32 twin would have been converted, and is widened (exactly) back to
// fp32 elsewhere, so the GEMM always sees the dtype of the unfused forward.
torch::Tensor GemmInput(const torch::Tensor& x, const torch::Tensor& w, bool bf16_activations) {
  const bool bf16_gemm =
      bf16_activations && x.is_cuda() && w.scalar_type() == torch::kBFloat16;
  if (bf16_gemm && x.scalar_type() == torch::kFloat) return x.to(torch::kBFloat16);
  if (!bf16_gemm && x.scalar_type() == torch::kBFloat16) return x.to(torch::kFloat);
  return x;
}

torch::Tensor RawMatmul(const torch::Tensor& x_in, const torch::Tensor& w_in,
                        const kernels::PackedWeight* packed, bool bf16_activations = false) {
  auto x = GemmInput(x_in.detach(), w_in, bf16_activations).contiguous();
  auto w = w_in.detach().contiguous();
  auto y = torch::empty({x.size(0), w.size(0)}, x.options().dtype(torch::kFloat));
  kernels::MatmulArgs a;
  a.x = x.data_ptr();
  a.x_dtype = DTypeOf(x);
  a.ldx = x.size(1);
  a.w = w.data_ptr();
  a.w_dtype = DTypeOf(w);
  a.ldw = w.size(1);
  a.y = y.data_ptr();
  a.y_dtype = kernels::DType::kF32;
  a.ldy = y.size(1);
  a.m = x.size(0);
  a.n = w.size(0);
  a.k = x.size(1);
  if (packed != nullptr && !x.is_cuda()) {
    Check(kernels::MatmulPacked(a, *packed));
  } else {
    Check(kernels::Matmul(a, ContextOf(x)));
  }
  return y;
}

// A rank's subtree value of a row-parallel layer (fp32 [T, out]).
torch::Tensor RawTreePartial(const torch::Tensor& x_in, const torch::Tensor& w_in,
                             const kernels::PackedWeight* packed, int rank, int tp,
                             bool bf16_activations = false) {
  auto x = GemmInput(x_in.detach(), w_in, bf16_activations).contiguous();
  auto w = w_in.detach().contiguous();
  auto y = torch::empty({x.size(0), w.size(0)}, x.options().dtype(torch::kFloat));
  kernels::TreeMatmulArgs a;
  a.base.x = x.data_ptr();
  a.base.x_dtype = DTypeOf(x);
  a.base.ldx = x.size(1);
  a.base.w = w.data_ptr();
  a.base.w_dtype = DTypeOf(w);
  a.base.ldw = w.size(1);
  a.base.y = y.data_ptr();
  a.base.y_dtype = kernels::DType::kF32;
  a.base.ldy = y.size(1);
  a.base.m = x.size(0);
  a.base.n = w.size(0);
  a.base.k = x.size(1);
  a.k_total = x.size(1) * tp;
  a.leaf_count = kernels::kTreeLeaves / tp;
  a.leaf_begin = rank * a.leaf_count;
  if (packed != nullptr && !x.is_cuda()) {
    Check(kernels::TreeMatmulPartialPacked(a, *packed));
  } else {
    Check(kernels::TreeMatmulPartial(a, ContextOf(x)));
  }
  return y;
}

// y = x·wᵀ with invariant forward (plain or TP=1 tree order) and the usual
// matmul gradients: dX = dY·W in fp32 (TF32 tensor cores on CUDA where the
// learner allows them), dW = dYᵀ·X in W's dtype. For a bf16 W and bf16 X on
// CUDA, dW is one bf16 tensor-core GEMM (fp32 accumulation, dY rounded to
// bf16 as autocast's backward does) instead of converting X to fp32 for a
// TF32 GEMM whose result is rounded to bf16 anyway; on the CPU both stay
// fp32.
struct LinearFn : public torch::autograd::Function<LinearFn> {
  static torch::Tensor forward(AutogradContext* ctx, torch::Tensor x,
                               torch::Tensor w, bool tree, bool bf16_activations) {
    // Keeps X as the GEMM reads it: bf16 on CUDA for a bf16 model (half the
    // bytes of the fp32 activation, the same values), else X itself as a
    // saved variable (version-checked).
    torch::Tensor xg = GemmInput(x.detach(), w, bf16_activations);
    if (xg.scalar_type() != x.scalar_type()) {
      ctx->saved_data["x"] = xg;
      ctx->save_for_backward({w});
    } else {
      ctx->save_for_backward({w, x});
    }
    return tree ? RawTreePartial(xg, w, nullptr, 0, 1, bf16_activations)
                : RawMatmul(xg, w, nullptr, bf16_activations);
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor& w = saved[0];
    const torch::Tensor x = saved.size() > 1 ? saved[1] : ctx->saved_data["x"].toTensor();
    auto g = grads[0];
    auto gx = g.mm(w.to(torch::kFloat));
    const bool bf16_dw = g.is_cuda() && w.scalar_type() == torch::kBFloat16 &&
                         x.scalar_type() == torch::kBFloat16;
    auto gw = bf16_dw ? g.to(torch::kBFloat16).t().mm(x)
                      : g.t().mm(x.to(torch::kFloat)).to(w.scalar_type());
    return {gx, gw, torch::Tensor(), torch::Tensor()};
  }
};

// A dense float32 [rows, cols] tensor a fused kernel can take as is.
bool DenseF32(const torch::Tensor& t) {
  return t.defined() && t.dim() == 2 && t.scalar_type() == torch::kFloat && t.is_contiguous();
}

// A float32 [rows, cols] tensor whose rows are dense (a column slice of a
// StackedLinear output, or a dense tensor): a kernel takes it with row
// stride RowStride(t).
bool RowMajorF32(const torch::Tensor& t) {
  return t.defined() && t.dim() == 2 && t.scalar_type() == torch::kFloat &&
         (t.stride(1) == 1 || t.size(1) <= 1) && (t.stride(0) >= t.size(1) || t.size(0) <= 1);
}

int64_t RowStride(const torch::Tensor& t) { return std::max(t.stride(0), t.size(1)); }

// t itself when its rows are dense float32 rows, else a dense copy.
torch::Tensor RowMajor(const torch::Tensor& t) {
  return RowMajorF32(t) ? t.detach() : t.detach().contiguous();
}

class InvariantOps : public Ops {
 public:
  InvariantOps(bool bf16_activations, bool fused)
      : bf16_activations_(bf16_activations), fused_(fused) {}

  // The fused steps (kernels/fused.h). Under autograd, or for inputs the
  // kernels do not take, the chain of single ops (Ops' defaults) runs
  // instead, so the training graph is the unfused one.

  torch::Tensor StoreBF16(torch::Tensor x) override {
    if (!fused_ || NeedsGrad({&x}) || !RowMajorF32(x)) return Ops::StoreBF16(std::move(x));
    Check(kernels::RoundRowsToBF16(x.data_ptr<float>(), RowStride(x), x.size(0), x.size(1),
                                   ContextOf(x)));
    return x;
  }

  torch::Tensor StoreBF16ForLinear(torch::Tensor x) override {
    if (fused_ && !NeedsGrad({&x}) && LinearInputBF16(x) && x.scalar_type() == torch::kFloat) {
      return x.to(torch::kBFloat16);  // round to nearest even: S's values
    }
    return StoreBF16(std::move(x));
  }

  std::pair<torch::Tensor, torch::Tensor> AddRmsNorm(torch::Tensor h, torch::Tensor delta,
                                                     const torch::Tensor& w, double eps,
                                                     bool round) override {
    if (!fused_ || NeedsGrad({&h, &delta, &w}) || !DenseF32(h) ||
        (delta.defined() && (!DenseF32(delta) || !delta.sizes().equals(h.sizes())))) {
      return Ops::AddRmsNorm(std::move(h), std::move(delta), w, eps, round);
    }
    auto wc = w.detach().contiguous();
    const bool bf16_out = round && LinearInputBF16(h);
    auto y = torch::empty(h.sizes(), h.options().dtype(bf16_out ? torch::kBFloat16 : torch::kFloat));
    kernels::AddRmsNormArgs a;
    a.h = h.data_ptr<float>();
    a.ldh = h.size(1);
    if (delta.defined()) {
      a.delta = delta.data_ptr<float>();
      a.ld_delta = delta.size(1);
    }
    a.weight = wc.data_ptr();
    a.weight_dtype = DTypeOf(wc);
    a.y = y.data_ptr();
    a.y_dtype = bf16_out ? kernels::DType::kBF16 : kernels::DType::kF32;
    a.ldy = y.size(1);
    a.rows = h.size(0);
    a.n = h.size(1);
    a.eps = static_cast<float>(eps);
    a.round_bf16 = round;
    Check(kernels::AddRmsNorm(a, ContextOf(h)));
    return {std::move(h), std::move(y)};
  }

  torch::Tensor HeadNormRope(torch::Tensor x, const torch::Tensor& norm_w,
                             const torch::Tensor& positions, int64_t heads, int64_t head_dim,
                             const RopeTable& rope, double eps, bool round) override {
    if (!fused_ || NeedsGrad({&x, &norm_w}) || !RowMajorF32(x) ||
        x.size(1) != heads * head_dim) {
      return Ops::HeadNormRope(std::move(x), norm_w, positions, heads, head_dim, rope, eps,
                               round);
    }
    auto pos = positions.to(torch::kInt).contiguous();
    auto inv_freq = rope.inv_freq.to(x.device(), torch::kDouble).contiguous();
    TORCH_CHECK(inv_freq.numel() == head_dim / 2, "RoPE table has ", inv_freq.numel(),
                " frequencies for head_dim ", head_dim);
    torch::Tensor wc;
    kernels::HeadNormRopeArgs a;
    a.x = x.data_ptr<float>();
    a.ldx = RowStride(x);
    a.positions = pos.data_ptr<int32_t>();
    a.tokens = x.size(0);
    a.heads = heads;
    a.head_dim = head_dim;
    if (norm_w.defined()) {
      wc = norm_w.detach().contiguous();
      a.norm_weight = wc.data_ptr();
      a.norm_dtype = DTypeOf(wc);
    }
    a.eps = static_cast<float>(eps);
    a.inv_freq = inv_freq.data_ptr<double>();
    a.attention_factor = rope.attention_factor;
    a.round_bf16 = round;
    Check(kernels::HeadNormRope(a, ContextOf(x)));
    return x;
  }

  torch::Tensor SiluMulStore(torch::Tensor gate, torch::Tensor up, bool round) override {
    if (!fused_ || NeedsGrad({&gate, &up}) || !RowMajorF32(gate) || !RowMajorF32(up) ||
        !gate.sizes().equals(up.sizes())) {
      return Ops::SiluMulStore(std::move(gate), std::move(up), round);
    }
    const bool bf16_out = round && LinearInputBF16(gate);
    auto y = torch::empty(gate.sizes(),
                          gate.options().dtype(bf16_out ? torch::kBFloat16 : torch::kFloat));
    kernels::SiluMulRoundArgs a;
    a.gate = gate.data_ptr<float>();
    a.ld_gate = RowStride(gate);
    a.up = up.data_ptr<float>();
    a.ld_up = RowStride(up);
    a.out = y.data_ptr();
    a.out_dtype = bf16_out ? kernels::DType::kBF16 : kernels::DType::kF32;
    a.ld_out = y.size(1);
    a.rows = gate.size(0);
    a.n = gate.size(1);
    a.round_bf16 = round;
    Check(kernels::SiluMulRound(a, ContextOf(y)));
    return y;
  }

  // One GEMM over the stacked weight (packed as a whole on the CPU), the
  // bias added in place, and column views of the output.
  std::vector<torch::Tensor> StackedLinear(const torch::Tensor& x, const LinearWeight& w,
                                           const std::vector<int64_t>& splits) override {
    if (!fused_ || NeedsGrad({&x, &w.w, &w.bias})) return Ops::StackedLinear(x, w, splits);
    auto y = RawMatmul(x, w.w, w.packed.get(), bf16_activations_);
    if (w.bias.defined()) y.add_(w.bias);
    return SplitColumns(y, splits);
  }

  torch::Tensor Linear(const torch::Tensor& x, const LinearWeight& w) override {
    if (NeedsGrad({&x, &w.w})) return LinearFn::apply(x, w.w, false, bf16_activations_);
    return RawMatmul(x, w.w, w.packed.get(), bf16_activations_);
  }

  torch::Tensor RowParallelLinear(const torch::Tensor& x, const LinearWeight& w,
                                  Communicator* comm) override {
    const int tp = comm == nullptr ? 1 : comm->size();
    if (NeedsGrad({&x, &w.w})) {
      TORCH_CHECK(tp == 1, "training forward runs at TP=1");
      return LinearFn::apply(x, w.w, true, bf16_activations_);
    }
    const int rank = comm == nullptr ? 0 : comm->rank();
    auto partial = RawTreePartial(x, w.w, w.packed.get(), rank, tp, bf16_activations_);
    if (tp == 1) return partial;
    auto g = AllGatherTensor(partial, comm).contiguous();
    auto y = torch::empty({partial.size(0), partial.size(1)}, x.options().dtype(torch::kFloat));
    kernels::TreeCombineArgs c;
    c.partials = g.data_ptr<float>();
    c.t = tp;
    c.y = y.data_ptr();
    c.y_dtype = kernels::DType::kF32;
    c.ldy = y.size(1);
    c.m = y.size(0);
    c.n = y.size(1);
    Check(kernels::TreeCombine(c, ContextOf(y)));
    return y;
  }

  torch::Tensor RmsNorm(const torch::Tensor& x_in, const torch::Tensor& w_in,
                        double eps) override {
    auto x = x_in.detach().contiguous();
    auto w = w_in.detach().contiguous();
    auto y = torch::empty_like(x);
    kernels::RmsNormArgs a;
    a.x = x.data_ptr<float>();
    a.ldx = x.size(1);
    a.weight = w.data_ptr();
    a.weight_dtype = DTypeOf(w);
    a.y = y.data_ptr<float>();
    a.ldy = y.size(1);
    a.rows = x.size(0);
    a.n = x.size(1);
    a.eps = static_cast<float>(eps);
    Check(kernels::RmsNorm(a, ContextOf(x)));
    if (NeedsGrad({&x_in, &w_in})) {
      return WithRecomputedBackward(
          std::move(y), {x_in, w_in},
          [eps](const std::vector<torch::Tensor>& in) {
            return std::vector<torch::Tensor>{reference::RmsNorm(in[0], in[1], eps)};
          },
          "InvariantRmsNormBackward");
    }
    return y;
  }

  torch::Tensor Rope(const torch::Tensor& x_in, const torch::Tensor& positions,
                     int64_t heads, int64_t head_dim, const RopeTable& rope) override {
    auto y = x_in.detach().contiguous().clone();
    auto pos = positions.to(torch::kInt).contiguous();
    kernels::RopeArgs a;
    a.x = y.data_ptr<float>();
    a.ldx = y.size(1);
    a.positions = pos.data_ptr<int32_t>();
    a.tokens = y.size(0);
    a.heads = heads;
    a.head_dim = head_dim;
    a.rotary_dim = head_dim;
    auto inv_freq = rope.inv_freq.to(y.device(), torch::kDouble).contiguous();
    TORCH_CHECK(inv_freq.numel() == head_dim / 2, "RoPE table has ", inv_freq.numel(),
                " frequencies for head_dim ", head_dim);
    a.inv_freq = inv_freq.data_ptr<double>();
    a.attention_factor = rope.attention_factor;
    Check(kernels::ApplyRope(a, ContextOf(y)));
    if (NeedsGrad({&x_in})) {
      return WithRecomputedBackward(
          std::move(y), {x_in},
          [positions, heads, head_dim, rope](const std::vector<torch::Tensor>& in) {
            return std::vector<torch::Tensor>{
                reference::Rope(in[0], positions, heads, head_dim, rope)};
          },
          "InvariantRopeBackward");
    }
    return y;
  }

  torch::Tensor SiluMul(const torch::Tensor& gate_in, const torch::Tensor& up_in) override {
    auto gate = gate_in.detach().contiguous();
    auto up = up_in.detach().contiguous();
    auto y = torch::empty_like(gate);
    kernels::SiluMulArgs a;
    a.gate = gate.data_ptr<float>();
    a.up = up.data_ptr<float>();
    a.ld_in = gate.size(1);
    a.out = y.data_ptr<float>();
    a.ld_out = y.size(1);
    a.rows = gate.size(0);
    a.n = gate.size(1);
    Check(kernels::SiluMul(a, ContextOf(y)));
    if (NeedsGrad({&gate_in, &up_in})) {
      return WithRecomputedBackward(
          std::move(y), {gate_in, up_in},
          [](const std::vector<torch::Tensor>& in) {
            return std::vector<torch::Tensor>{reference::SiluMul(in[0], in[1])};
          },
          "InvariantSiluMulBackward");
    }
    return y;
  }

  torch::Tensor PrefillAttention(const torch::Tensor& q_in, const torch::Tensor& k_in,
                                 const torch::Tensor& v_in, int64_t q_heads,
                                 int64_t kv_heads, int64_t head_dim) override {
    auto q = RowMajor(q_in);
    // A bf16 model's K/V hold bf16 values; on the GPU they go in as bf16, as
    // they sit in its paged cache, so prefill takes the same attention path
    // (the tensor-core kernel) as decode. The conversion is exact.
    const bool bf16_kv = bf16_activations_ && q.is_cuda();
    auto k = RowMajor(k_in);
    auto v = RowMajor(v_in);
    if (bf16_kv) {
      k = k.to(torch::kBFloat16).contiguous();
      v = v.to(torch::kBFloat16).contiguous();
    } else if (RowStride(k) != RowStride(v)) {  // one row stride for both
      k = k.contiguous();
      v = v.contiguous();
    }
    auto y = torch::empty({q.size(0), q.size(1)}, q.options());
    kernels::PrefillAttentionArgs a;
    a.q = q.data_ptr<float>();
    a.ldq = RowStride(q);
    a.k = k.data_ptr();
    a.v = v.data_ptr();
    a.ldk = RowStride(k);
    a.kv_dtype = bf16_kv ? kernels::DType::kBF16 : kernels::DType::kF32;
    a.out = y.data_ptr<float>();
    a.ldo = y.size(1);
    a.tokens = q.size(0);
    a.num_q_heads = q_heads;
    a.num_kv_heads = kv_heads;
    a.head_dim = head_dim;
    a.scale = reference::AttentionScale(head_dim);
    Check(kernels::PrefillAttention(a, ContextOf(q)));
    if (NeedsGrad({&q_in, &k_in, &v_in})) {
      // Saves q, k, v only; the backward recomputes the reference attention
      // per block of query rows.
      return WithBlockwiseAttentionBackward(std::move(y), q_in, k_in, v_in, q_heads, kv_heads,
                                            head_dim);
    }
    return y;
  }

  torch::Tensor PagedAttention(const torch::Tensor& q_in, const torch::Tensor& k_in,
                               const torch::Tensor& v_in, LayerKv& kv,
                               const PagedAttentionMeta& meta, int64_t q_heads,
                               int64_t kv_heads, int64_t head_dim) override {
    // q, k, v may be column slices of one QKV GEMM output: taken in place.
    auto q = RowMajor(q_in);
    auto k = RowMajor(k_in);
    auto v = RowMajor(v_in);
    kernels::PagedKvCache cache;
    cache.k = kv.k.data_ptr();
    cache.v = kv.v.data_ptr();
    cache.dtype = DTypeOf(kv.k);
    cache.num_pages = kv.k.size(0);
    cache.page_size = kv.k.size(1);
    cache.num_kv_heads = kv_heads;
    cache.head_dim = head_dim;
    kernels::KvWriteArgs w;
    w.cache = cache;
    w.k = k.data_ptr<float>();
    w.ldk = RowStride(k);
    w.v = v.data_ptr<float>();
    w.ldv = RowStride(v);
    w.slots = meta.slots.data_ptr<int64_t>();
    w.tokens = k.size(0);
    Check(kernels::WriteKv(w, ContextOf(q)));
    auto y = torch::empty({q.size(0), q.size(1)}, q.options());
    kernels::PagedAttentionArgs a;
    a.cache = cache;
    a.q = q.data_ptr<float>();
    a.ldq = RowStride(q);
    a.out = y.data_ptr<float>();
    a.ldo = y.size(1);
    a.tokens = q.size(0);
    a.num_q_heads = q_heads;
    a.scale = reference::AttentionScale(head_dim);
    a.positions = meta.positions.data_ptr<int32_t>();
    a.seq_ids = meta.seq_ids.data_ptr<int32_t>();
    a.block_tables = meta.block_tables.data_ptr<int32_t>();
    a.num_seqs = meta.block_tables.size(0);
    a.max_blocks_per_seq = meta.block_tables.size(1);
    a.batch_dependent_splits = meta.batch_dependent_splits;
    Check(kernels::PagedAttention(a, ContextOf(q)));
    return y;
  }

  torch::Tensor TargetLogprobs(const torch::Tensor& logits_in,
                               const torch::Tensor& targets) override {
    auto logits = logits_in.detach().contiguous();
    auto t32 = targets.to(torch::kInt).contiguous();
    auto out = torch::empty({logits.size(0)}, logits.options());
    kernels::LogSoftmaxArgs a;
    a.logits = logits.data_ptr<float>();
    a.ld = logits.size(1);
    a.rows = logits.size(0);
    a.vocab = logits.size(1);
    a.targets = t32.data_ptr<int32_t>();
    a.target_logprobs = out.data_ptr<float>();
    Check(kernels::LogSoftmax(a, ContextOf(logits)));
    if (NeedsGrad({&logits_in})) {
      return WithRecomputedBackward(
          std::move(out), {logits_in},
          [targets = targets.to(torch::kLong)](const std::vector<torch::Tensor>& in) {
            return std::vector<torch::Tensor>{reference::TargetLogprobs(in[0], targets)};
          },
          "InvariantTargetLogprobsBackward");
    }
    return out;
  }

  torch::Tensor LogSoftmax(const torch::Tensor& logits_in) override {
    auto logits = logits_in.detach().contiguous();
    auto out = torch::empty_like(logits);
    kernels::LogSoftmaxArgs a;
    a.logits = logits.data_ptr<float>();
    a.ld = logits.size(1);
    a.rows = logits.size(0);
    a.vocab = logits.size(1);
    a.logprobs = out.data_ptr<float>();
    a.ld_out = out.size(1);
    Check(kernels::LogSoftmax(a, ContextOf(logits)));
    return out;
  }

  std::pair<torch::Tensor, torch::Tensor> RouteTopK(const torch::Tensor& logits_in, int64_t k,
                                                    bool normalize) override {
    auto logits = logits_in.detach().to(torch::kFloat).contiguous();
    auto weights = torch::empty({logits.size(0), k}, logits.options());
    auto ids = torch::empty({logits.size(0), k}, logits.options().dtype(torch::kInt));
    kernels::RouteTopKArgs a;
    a.logits = logits.data_ptr<float>();
    a.ld = logits.size(1);
    a.rows = logits.size(0);
    a.experts = logits.size(1);
    a.k = k;
    a.normalize = normalize;
    a.weights = weights.data_ptr<float>();
    a.ids = ids.data_ptr<int32_t>();
    Check(kernels::RouteTopK(a, ContextOf(logits)));
    auto ids64 = ids.to(torch::kLong);
    if (NeedsGrad({&logits_in})) {
      weights = WithRecomputedBackward(
          std::move(weights), {logits_in},
          [ids64, normalize](const std::vector<torch::Tensor>& in) {
            return std::vector<torch::Tensor>{reference::RoutingWeights(in[0], ids64, normalize)};
          },
          "InvariantRoutingWeightsBackward");
    }
    return {weights, ids64};
  }

 private:
  // A Linear input on this device may be a bf16 tensor (the GEMM takes bf16
  // activations there; GemmInput widens it again for fp32 weights).
  bool LinearInputBF16(const torch::Tensor& x) const { return bf16_activations_ && x.is_cuda(); }

  const bool bf16_activations_;
  const bool fused_;
};

}  // namespace

bool FusedKernelsEnabled() {
  const char* v = std::getenv("LOCKSTEP_FUSED_KERNELS");
  return v == nullptr || std::strcmp(v, "0") != 0;
}

std::unique_ptr<Ops> CreateOps(KernelMode mode, bool bf16_activations) {
  if (mode == KernelMode::kStandard) return reference::CreateStandardOps();
  return std::make_unique<InvariantOps>(bf16_activations, FusedKernelsEnabled());
}

// The unfused chains: exactly the single ops and casts the forward ran before
// the fused kernels existed, hence also the training graph.

torch::Tensor Ops::StoreBF16(torch::Tensor x) { return RoundToBF16(x); }

torch::Tensor Ops::StoreBF16ForLinear(torch::Tensor x) { return StoreBF16(std::move(x)); }

std::pair<torch::Tensor, torch::Tensor> Ops::AddRmsNorm(torch::Tensor h, torch::Tensor delta,
                                                        const torch::Tensor& w, double eps,
                                                        bool round) {
  auto s = [&](torch::Tensor t) { return round ? StoreBF16(std::move(t)) : t; };
  if (delta.defined()) h = s(h + s(std::move(delta)));
  auto x = s(RmsNorm(h, w, eps));
  return {std::move(h), std::move(x)};
}

torch::Tensor Ops::HeadNormRope(torch::Tensor x, const torch::Tensor& norm_w,
                                const torch::Tensor& positions, int64_t heads, int64_t head_dim,
                                const RopeTable& rope, double eps, bool round) {
  auto s = [&](torch::Tensor t) { return round ? StoreBF16(std::move(t)) : t; };
  x = s(std::move(x));
  if (norm_w.defined()) {
    auto rows = x.reshape({x.size(0) * heads, head_dim});
    x = s(RmsNorm(rows, norm_w, eps).reshape({x.size(0), heads * head_dim}));
  }
  return s(Rope(x, positions, heads, head_dim, rope));
}

torch::Tensor Ops::SiluMulStore(torch::Tensor gate, torch::Tensor up, bool round) {
  auto s = [&](torch::Tensor t) { return round ? StoreBF16(std::move(t)) : t; };
  return s(SiluMul(s(std::move(gate)), s(std::move(up))));
}

std::vector<torch::Tensor> Ops::StackedLinear(const torch::Tensor& x, const LinearWeight& w,
                                              const std::vector<int64_t>& splits) {
  std::vector<torch::Tensor> out;
  int64_t begin = 0;
  for (int64_t n : splits) {
    // A view of the block's rows (dense: the stacked weight is); the CPU
    // packing of the whole weight does not apply to it.
    LinearWeight block;
    block.w = w.w.narrow(0, begin, n);
    auto y = Linear(x, block);
    if (w.bias.defined()) y = y + w.bias.narrow(0, begin, n);
    out.push_back(std::move(y));
    begin += n;
  }
  TORCH_CHECK(begin == w.w.size(0), "StackedLinear: splits sum to ", begin, ", weight has ",
              w.w.size(0), " rows");
  return out;
}

std::vector<torch::Tensor> SplitColumns(const torch::Tensor& y,
                                        const std::vector<int64_t>& splits) {
  std::vector<torch::Tensor> out;
  int64_t begin = 0;
  for (int64_t n : splits) {
    out.push_back(y.narrow(1, begin, n));
    begin += n;
  }
  TORCH_CHECK(begin == y.size(1), "StackedLinear: splits sum to ", begin, ", output has ",
              y.size(1), " columns");
  return out;
}

namespace {

bool SameDevice(const torch::Tensor& x, const Communicator& comm) {
  return x.is_cuda() == (comm.device() == kernels::Device::kCuda);
}

}  // namespace

torch::Tensor AllGatherTensor(const torch::Tensor& x, Communicator* comm) {
  const int t = comm->size();
  auto src = SameDevice(x, *comm) ? x.detach().contiguous() : x.detach().cpu().contiguous();
  auto out = torch::empty({t, src.size(0), src.size(1)}, src.options());
  Check(comm->AllGather(src.data_ptr(), src.numel() * src.element_size(), out.data_ptr()));
  return out.to(x.device());
}

torch::Tensor AllReduceSumTensor(const torch::Tensor& x, Communicator* comm) {
  auto buf = SameDevice(x, *comm) ? x.detach().contiguous().clone()
                                  : x.detach().cpu().contiguous().clone();
  Check(comm->AllReduceSum(buf.data_ptr<float>(), buf.numel()));
  return buf.to(x.device());
}

torch::Tensor RoundToBF16(const torch::Tensor& x) {
  return x.to(torch::kBFloat16).to(torch::kFloat);
}

}  // namespace lockstep::common
