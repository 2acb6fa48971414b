// The device-resident generate step of a CUDA Model (TP = 1), and its CUDA
// graphs. Per step: the host packs the step's metadata into one pinned
// staging buffer, ONE host->device copy moves it into persistent device
// buffers, the forward, the sampling (or the targets) and the target
// logprob gather run on one non-default stream, and ONE device->host copy
// brings (tokens, logprobs) back into pinned memory.
//
// Decode-only steps (one token per sequence, every row sampled or scored) of
// the invariant mode replay a CUDA graph captured for their padded shape:
// rows padded to the next power of two up to ModelOptions::cuda_graph_max_rows,
// the block table to the next power of two of the blocks the rows need.
// Padding rows are token 0 at position 0 of their own block-table row, which
// names only the cache's scratch page (DeviceKv::scratch_page): they write
// and read K/V there alone, every op treats rows independently, and their
// outputs are dropped, so a real row's bits are those of the unpadded eager
// step. The attention launch depends on the block-table width only (split-KV
// grid of the table's 128-key splits; a row skips the splits past its
// position), so a replay computes what an eager step of the same padded shape
// would. Graphs are captured lazily (after an eager warm-up of the same shape
// on padding rows only), into one private memory pool shared by all graphs of
// the model, and belong to one KV cache: a step on another cache drops them.
// A Model is immutable, so a weight update (a new Model) starts with none.
//
// Validation stays on the host, before the copy: the caller checks the batch
// and the request (ids, positions, slots, pages, sampling parameters), so no
// step reads its inputs back from the device to check them.
#ifndef LOCKSTEP_COMMON_MODEL_DEVICE_STEP_H_
#define LOCKSTEP_COMMON_MODEL_DEVICE_STEP_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "absl/status/statusor.h"
#include "common/formats/model_config.h"
#include "common/model/kernel_mode.h"
#include "common/model/model.h"
#include "common/model/rank_forward.h"

namespace lockstep::common {

// A paged KV cache as the device step uses it (the only rank of a TP = 1
// model).
struct DeviceKv {
  // [layers]; each K and V [num_pages + 1, page_size, kv_heads, head_dim].
  std::vector<LayerKv>* layers = nullptr;
  int64_t num_pages = 0;     // pages a batch may address
  int64_t page_size = 0;
  int32_t scratch_page = 0;  // the extra page of the padding rows
  uint64_t id = 0;           // unique per cache for the process's lifetime
};

struct DeviceStepOptions {
  const ModelConfig* config = nullptr;  // outlives the DeviceStep
  KernelMode mode = KernelMode::kInvariant;
  CudaStep step = CudaStep::kGraphs;  // kGraphs or kEager
  int max_rows = 256;                 // ModelOptions::cuda_graph_max_rows
  int max_graphs = 64;                // ModelOptions::cuda_graph_max_graphs
  int64_t max_bytes = int64_t{2} << 30;  // ModelOptions::cuda_graph_max_bytes
  // The decoder on one batch: RankForward over the model's weights and op
  // set; returns logits [R, vocab] (fp32, on the device). Throws c10::Error.
  std::function<torch::Tensor(const ForwardInput& input)> forward;
};

// The top_n alternatives of every logit row, from logits [rows, vocab] on the
// device (called on the step's stream; eager steps only).
using TopLogprobsFn =
    std::function<absl::StatusOr<std::vector<std::vector<std::pair<int32_t, float>>>>(
        const torch::Tensor& logits)>;

class DeviceStep {
 public:
  // UNIMPLEMENTED in builds whose LibTorch has no CUDA (the Model then keeps
  // the legacy step); INTERNAL on CUDA errors.
  static absl::StatusOr<std::unique_ptr<DeviceStep>> Create(DeviceStepOptions options);

  virtual ~DeviceStep() = default;

  // One Model::Step of a batch and request that the caller has validated.
  // `top` fills logprobs.top when request.top_n > 0. Thread-safe (steps of
  // one model run one at a time). Errors of the kernels (INVALID_ARGUMENT,
  // INTERNAL) or of LibTorch (INTERNAL).
  virtual absl::StatusOr<StepResult> Run(const ForwardBatch& batch, const DeviceKv& kv,
                                         const StepRequest& request,
                                         const TopLogprobsFn& top) = 0;

  virtual CudaGraphStats stats() const = 0;

  // Drops every graph and the step's device and pinned buffers (Sleep); the
  // next Run sets them up again. INTERNAL on CUDA errors.
  virtual absl::Status Release() = 0;
};


}  // namespace lockstep::common

#endif  // LOCKSTEP_COMMON_MODEL_DEVICE_STEP_H_
