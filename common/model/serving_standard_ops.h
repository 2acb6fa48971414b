// The standard mode of a bf16 model on CUDA: what a user would otherwise run
// (vLLM/SGLang-style serving arithmetic), so that invariant / standard is
// the cost of invariance and not of a slow baseline (issue 15 item 5).
//  - GEMMs: cuBLAS on bf16 activations and bf16 weights (fp32 accumulate,
//    bf16 out, which the forward's storage cast would round to anyway), one
//    GEMM for q/k/v and one for gate/up (Ops::StackedLinear) like the
//    invariant set;
//    cuBLAS picks its kernel, split-K included, by the shape, so a row's bits
//    depend on the batch. TP sums are plain all-reduces.
//  - Paged decode attention: the tensor-core kernel with FlashDecoding's
//    split count chosen from the batch and the context bound
//    (PagedAttentionArgs::batch_dependent_splits).
//  - Norms, RoPE, SiLU-and-mul and the bf16 casts: the fused kernels of the
//    invariant set (per-row arithmetic, nothing to gain by replacing them).
//  - Log-softmax and routing: LibTorch's.
// It never reads device data back, so the device step captures it in CUDA
// graphs exactly like the invariant set. Training keeps the reference set
// (reference_ops.h): this set is for the rollout's forward only.
#ifndef LOCKSTEP_COMMON_MODEL_SERVING_STANDARD_OPS_H_
#define LOCKSTEP_COMMON_MODEL_SERVING_STANDARD_OPS_H_

#include <memory>

#include "common/model/kernel_mode.h"
#include "common/model/torch_ops.h"
#include "kernels/device.h"

namespace lockstep::common {

// True when `mode` on `device` with this activation dtype runs the serving
// standard set (standard mode, CUDA, bf16): its weights then stay bf16.
bool UsesServingStandardOps(KernelMode mode, kernels::Device device, bool bf16_activations);

// The op set of the model's forward (rollout side): the serving standard set
// when UsesServingStandardOps, else CreateOps(mode, bf16_activations).
std::unique_ptr<Ops> CreateForwardOps(KernelMode mode, kernels::Device device,
                                      bool bf16_activations);

}  // namespace lockstep::common

#endif  // LOCKSTEP_COMMON_MODEL_SERVING_STANDARD_OPS_H_
