// The op set the functional transformer (transformer_forward.h) is written
// against, over LibTorch tensors. Two implementations:
//  - InvariantOps: every value from the invariant kernels (kernels/); when an
//    input requires grad, an autograd graph whose backward uses LibTorch ops;
//  - StandardOps: ordinary LibTorch ops (BLAS matmul, softmax, ...).
// Activations are float32 tensors, 2-D [rows, features], contiguous (but
// StackedLinear's outputs: column slices of one GEMM output), on the model's
// device. Op failures throw c10::Error (callers at the module
// boundary convert to absl::Status).
#ifndef LOCKSTEP_COMMON_MODEL_TORCH_OPS_H_
#define LOCKSTEP_COMMON_MODEL_TORCH_OPS_H_

#include <memory>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "common/model/communicator.h"
#include "common/model/kernel_mode.h"
#include "kernels/matmul.h"

namespace lockstep::common {

// A linear layer's weight [out, in] (float32 or bfloat16), optionally
// prepacked for the CPU invariant matmul, and its bias [out] (same dtype;
// undefined when the layer has none). Ops::Linear computes x·wᵀ only: the
// forward adds the bias elementwise (AddBias), which every row does alone,
// so the bias never affects invariance.
struct LinearWeight {
  torch::Tensor w;
  std::shared_ptr<const kernels::PackedWeight> packed;  // may be null
  torch::Tensor bias;
};

// The model's RoPE frequencies (RopeParameters::InverseFrequencies, float64
// [head_dim / 2], on the activations' device) and the attention factor that
// scales cos and sin (YaRN; 1 otherwise).
struct RopeTable {
  torch::Tensor inv_freq;
  double attention_factor = 1.0;
};

// Where the attention of a step reads and writes K/V.
struct PagedAttentionMeta {
  torch::Tensor positions;     // int32 [T]
  torch::Tensor seq_ids;       // int32 [T]
  torch::Tensor slots;         // int64 [T]
  torch::Tensor block_tables;  // int32 [num_seqs, max_blocks]
  // kernels::PagedAttentionArgs::batch_dependent_splits (the serving
  // standard set's FlashDecoding splits; never in invariant mode).
  bool batch_dependent_splits = false;
};

// One layer's KV pages on one rank: [num_pages, page_size, kv_heads, head_dim].
struct LayerKv {
  torch::Tensor k;
  torch::Tensor v;
};

class Ops {
 public:
  virtual ~Ops() = default;

  // y = x · wᵀ: x [T, in] → [T, out].
  virtual torch::Tensor Linear(const torch::Tensor& x, const LinearWeight& w) = 0;

  // A rank's share of a row-parallel layer: x [T, in/t] and w [out, in/t]
  // hold this rank's K slice; returns the full [T, out] on every rank.
  virtual torch::Tensor RowParallelLinear(const torch::Tensor& x,
                                          const LinearWeight& w,
                                          Communicator* comm) = 0;

  // RMSNorm over the last dim of x [R, n] with weight [n].
  virtual torch::Tensor RmsNorm(const torch::Tensor& x, const torch::Tensor& w,
                                double eps) = 0;

  // RoPE of x [T, heads*head_dim] at positions (int32 [T]) with `rope`.
  virtual torch::Tensor Rope(const torch::Tensor& x, const torch::Tensor& positions,
                             int64_t heads, int64_t head_dim, const RopeTable& rope) = 0;

  // silu(gate) * up.
  virtual torch::Tensor SiluMul(const torch::Tensor& gate,
                                const torch::Tensor& up) = 0;

  // Causal attention of one whole sequence: q [L, Hq*D], k/v [L, Hkv*D].
  virtual torch::Tensor PrefillAttention(const torch::Tensor& q,
                                         const torch::Tensor& k,
                                         const torch::Tensor& v, int64_t q_heads,
                                         int64_t kv_heads, int64_t head_dim) = 0;

  // Writes k/v [T, Hkv*D] into `kv` at meta.slots, then attends q [T, Hq*D]
  // against the pages.
  virtual torch::Tensor PagedAttention(const torch::Tensor& q,
                                       const torch::Tensor& k,
                                       const torch::Tensor& v, LayerKv& kv,
                                       const PagedAttentionMeta& meta,
                                       int64_t q_heads, int64_t kv_heads,
                                       int64_t head_dim) = 0;

  // Mixture-of-experts routing (kernels/router.h's contract in the invariant
  // set) of router logits [T, E] (float32): {weights float32 [T, k], expert
  // ids int64 [T, k]}, ranks in order. The weights are differentiable in the
  // logits; the ids are not.
  virtual std::pair<torch::Tensor, torch::Tensor> RouteTopK(const torch::Tensor& logits,
                                                            int64_t k, bool normalize) = 0;

  // Log-probabilities of `targets` (int64 [R]) under logits [R, V] → [R].
  virtual torch::Tensor TargetLogprobs(const torch::Tensor& logits,
                                       const torch::Tensor& targets) = 0;

  // Full log-softmax of logits [R, V] (no grad; for top-n alternatives).
  virtual torch::Tensor LogSoftmax(const torch::Tensor& logits) = 0;

  // The forward's fused steps (kernels/fused.h). Each has the value of the
  // chain of single ops written in its comment, where S is the bf16 storage
  // cast (StoreBF16) when `round` is set and the identity otherwise; the
  // defaults below run exactly that chain (the unfused forward, and the
  // training graph), and InvariantOps replaces them, outside autograd, by one
  // kernel with the same bits. Inputs are float32 [rows, features] tensors
  // (rows possibly strided, as StackedLinear returns them) that the forward
  // does not use again: an implementation may overwrite them in place.
  // Outputs documented as "Linear input" may be bf16 tensors holding the
  // same values, to be consumed by Linear / RowParallelLinear only. The
  // attention ops take q, k, v with strided rows too.

  // S(x) = RoundToBF16(x).
  virtual torch::Tensor StoreBF16(torch::Tensor x);
  // S(x) as a Linear input.
  virtual torch::Tensor StoreBF16ForLinear(torch::Tensor x);
  // Residual add + RMSNorm over the last dim of h [R, n]:
  // h' = S(h + S(delta)) (h' = h when delta is undefined), x = S(RmsNorm(h',
  // w, eps)); returns {h', x}, x a Linear input.
  virtual std::pair<torch::Tensor, torch::Tensor> AddRmsNorm(torch::Tensor h,
                                                             torch::Tensor delta,
                                                             const torch::Tensor& w,
                                                             double eps, bool round);
  // QK-norm + RoPE of x [T, heads*head_dim] at positions (int32 [T]):
  // S(Rope(S(RmsNorm per head(S(x), norm_w, eps)))); norm_w [head_dim]
  // undefined: S(Rope(S(x))).
  virtual torch::Tensor HeadNormRope(torch::Tensor x, const torch::Tensor& norm_w,
                                     const torch::Tensor& positions, int64_t heads,
                                     int64_t head_dim, const RopeTable& rope, double eps,
                                     bool round);
  // S(SiluMul(S(gate), S(up))) of gate/up [T, n], a Linear input.
  virtual torch::Tensor SiluMulStore(torch::Tensor gate, torch::Tensor up, bool round);
  // The projections that read one input, held as one weight: w.w
  // [n_0 + ... + n_{b-1}, in] stacks the row blocks w_i [n_i, in]
  // (`splits` = {n_0, ..., n_{b-1}}), w.bias [sum n_i] (when defined) their
  // biases. Returns y_i = x·w_iᵀ (+ bias_i, the fp32 add of Linear's
  // callers) for x [T, in]: float32 [T, n_i] each, possibly column slices of
  // one [T, sum n_i] tensor (stride(1) == 1, stride(0) == sum n_i) that the
  // consumers may overwrite in place. The default runs one Linear per block
  // on a view of w's rows (the unfused chain); InvariantOps runs one GEMM on
  // the whole weight, which gives every block the bits of its own GEMM
  // (kernels/matmul.h: an output element depends on its input row and
  // weight row alone, in a fixed k order).
  virtual std::vector<torch::Tensor> StackedLinear(const torch::Tensor& x,
                                                   const LinearWeight& w,
                                                   const std::vector<int64_t>& splits);
};

// Creates the op set of `mode`. `bf16_activations`: the forward rounds every
// activation to bf16 (model dtype bf16), so GPU matmuls may take them as bf16.
// The invariant set uses the fused kernels (kernels/fused.h) and one GEMM
// per StackedLinear unless FusedKernelsEnabled() is false: then every fused
// step runs as its chain of single ops, which tests compare bitwise with the
// fused forward (the switch is read at each call).
std::unique_ptr<Ops> CreateOps(KernelMode mode, bool bf16_activations = false);

// False when the environment variable LOCKSTEP_FUSED_KERNELS is "0" (read at
// each call): op sets then run every fused step, StackedLinear included, as
// its chain of single ops.
bool FusedKernelsEnabled();

// The column slices y[:, b_i : b_i + n_i] of y [T, sum n_i] for `splits` =
// {n_i} (b_i the sum of the n before): views, row stride y.stride(0), as a
// StackedLinear of one GEMM returns them.
std::vector<torch::Tensor> SplitColumns(const torch::Tensor& y,
                                        const std::vector<int64_t>& splits);

// Gathers x [m, n] (float32) from every rank of `comm` into [t, m, n] on x's
// device, in rank order. Moves bytes only. Stages through host memory when
// the communicator's buffers live elsewhere than x.
torch::Tensor AllGatherTensor(const torch::Tensor& x, Communicator* comm);

// Standard mode's TP sum: the element-wise sum over ranks of x (float32).
torch::Tensor AllReduceSumTensor(const torch::Tensor& x, Communicator* comm);

// Rounds float32 values to the nearest bfloat16 (kept as float32): the
// storage cast between ops when the model's dtype is bf16. Differentiable.
torch::Tensor RoundToBF16(const torch::Tensor& x);

}  // namespace lockstep::common

#endif  // LOCKSTEP_COMMON_MODEL_TORCH_OPS_H_
