// The op set the functional transformer (transformer_forward.h) is written
// against, over LibTorch tensors. Two implementations:
//  - InvariantOps: every value from the invariant kernels (kernels/); when an
//    input requires grad, an autograd graph whose backward uses LibTorch ops;
//  - StandardOps: ordinary LibTorch ops (BLAS matmul, softmax, ...).
// Activations are float32 tensors, 2-D [rows, features], contiguous, on the
// model's device. Op failures throw c10::Error (callers at the module
// boundary convert to absl::Status).
#ifndef LOCKSTEP_COMMON_TORCH_OPS_H_
#define LOCKSTEP_COMMON_TORCH_OPS_H_

#include <memory>

#include <torch/torch.h>

#include "common/communicator.h"
#include "common/kernel_mode.h"
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

  // Log-probabilities of `targets` (int64 [R]) under logits [R, V] → [R].
  virtual torch::Tensor TargetLogprobs(const torch::Tensor& logits,
                                       const torch::Tensor& targets) = 0;

  // Full log-softmax of logits [R, V] (no grad; for top-n alternatives).
  virtual torch::Tensor LogSoftmax(const torch::Tensor& logits) = 0;
};

// Creates the op set of `mode`. `bf16_activations`: the forward rounds every
// activation to bf16 (model dtype bf16), so GPU matmuls may take them as bf16.
std::unique_ptr<Ops> CreateOps(KernelMode mode, bool bf16_activations = false);

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

#endif  // LOCKSTEP_COMMON_TORCH_OPS_H_
