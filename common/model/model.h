// The inference Model: the shared decoder (Llama/Qwen2/Qwen3 family: RMSNorm,
// RoPE, GQA, optional QK-norm and q/k/v biases, SwiGLU, tied or untied
// embeddings). Entry points, one per use:
//  - Step: one generate step of the rollout, a flat batch of new tokens from
//    many sequences against a paged KV cache (decode, prefill and chunked
//    prefill mixed), then sampling and logprobs (StepLogits: its logits);
//  - Score: full-sequence forward of whole sequences and the logprobs of their
//    tokens (ComputeLogprobs; SequenceLogits: its logits). The learner runs
//    the same forward differentiably (sequence_logprobs.h).
// In KernelMode::kInvariant both run the invariant kernels and give the same
// bits for a token whatever the batch, chunking, page layout or TP size. In
// kStandard the matmuls, norms, attention and log-softmax go through ordinary
// LibTorch ops (and the TP sum through AllReduceSum), which do not.
//
// A Model is immutable: weight updates build a new Model (same config) and
// swap the shared_ptr at a step boundary; a KvCache works with every Model
// of the same config and TP size.
#ifndef LOCKSTEP_COMMON_MODEL_MODEL_H_
#define LOCKSTEP_COMMON_MODEL_MODEL_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/formats/host_tensor.h"
#include "common/model/kernel_mode.h"
#include "common/formats/model_config.h"
#include "kernels/device.h"
#include "kernels/sampling.h"

namespace lockstep::common {

// How TP ranks talk: kInProcess runs every rank as a thread on `device`
// (CPU, or one GPU simulating the group); kNccl puts rank r on GPU r and
// all-gathers through NCCL (device must be kCuda).
enum class TpBackend : int { kInProcess = 0, kNccl = 1 };

// How a CUDA model (device kCuda, tp_size 1) runs Model::Step:
//  - kGraphs: device-resident step (below); decode-only steps of the
//    invariant mode replay a CUDA graph captured per padded batch bucket;
//  - kEager: the same device-resident step, always op by op;
//  - kLegacy: the step of before (metadata tensors built from host vectors,
//    several small copies, sampling inputs copied separately).
// The device-resident step validates on the host, copies the step's
// metadata (token ids, positions, slots, seq ids, block tables, logit rows,
// sampling params or targets, sample positions) once from pinned memory
// into persistent device buffers, runs forward + sampling + logprob on one
// stream and copies (tokens, logprobs) back once. Every mode gives the same
// bits. The environment variable LOCKSTEP_CUDA_STEP=graphs|eager|legacy,
// when set, overrides the option (A/B benchmarks of a service binary).
enum class CudaStep : int { kGraphs = 0, kEager = 1, kLegacy = 2 };

struct ModelOptions {
  KernelMode mode = KernelMode::kInvariant;
  int tp_size = 1;  // ranks (threads); 1, 2, 4 or 8
  kernels::Device device = kernels::Device::kCpu;
  TpBackend tp_backend = TpBackend::kInProcess;
  CudaStep cuda_step = CudaStep::kGraphs;
  // CUDA graphs (cuda_step kGraphs): decode steps of up to this many rows
  // are padded to the next power of two (1, 2, 4, ..., 256) and replayed.
  int cuda_graph_max_rows = 256;
  // At most this many captured graphs are kept (least recently used ones
  // are dropped); no new graph is captured once the device memory taken by
  // captures (CudaGraphStats::capture_bytes) exceeds cuda_graph_max_bytes:
  // such steps run op by op.
  int cuda_graph_max_graphs = 64;
  int64_t cuda_graph_max_bytes = int64_t{2} << 30;
};

// What the CUDA graphs of a model hold and did (all zero on other models).
struct CudaGraphStats {
  int64_t graphs = 0;          // captured graphs held now
  int64_t captures = 0;        // graphs captured so far
  int64_t replays = 0;         // steps run by replaying a graph
  int64_t eager_steps = 0;     // device-resident steps run op by op
  // Device memory the held graphs' captures took (their shared private pool
  // of the LibTorch allocator and the instantiated graphs), measured as the
  // drop of free device memory across each capture since the graphs were
  // last all dropped (a step on another KV cache drops them and releases the
  // pool). Evicting some graphs returns nothing: the pool is shared.
  int64_t capture_bytes = 0;
  // CUDA's graph memory-node reservation on the device now (all graphs of
  // the process).
  int64_t graph_memory_bytes = 0;
  // Nodes, and kernel nodes among them, of the last graph captured (what
  // one replay launches).
  int64_t last_graph_nodes = 0;
  int64_t last_graph_kernels = 0;
  // GPU time of the last device-resident step, metadata copy to results
  // copy (CUDA events), and its host wall time inside Model::Step.
  double last_step_device_ms = 0;
  double last_step_host_ms = 0;
};

// Paged KV cache of one model: per TP rank and layer a kernels::PagedKvCache
// over the same page ids. Page ids are allocated by the caller (the rollout's
// block manager). On a CUDA model it holds one page more than num_pages(),
// which no batch may address: the padding rows of CUDA-graph steps write and
// read their K/V there, never in a sequence's pages.
class KvCache {
 public:
  virtual ~KvCache() = default;
  virtual int64_t num_pages() const = 0;
  virtual int64_t page_size() const = 0;
};

// One forward step over a flat batch of T new tokens.
// Log-probabilities of a step's tokens, and when top_n > 0 the top_n
// (id, logprob) pairs per row in descending order (ties: lower id).
struct TokenLogprobs {
  std::vector<float> target;                     // [rows] raw (temperature 1)
  // [rows] when sampling: the sampled token's logprob under the distribution
  // it was drawn from (kernels::SampleArgs::logprobs_out).
  std::vector<float> sampled;
  std::vector<std::vector<std::pair<int32_t, float>>> top;  // [rows][top_n]
};

// What Model::Step does with each logit row: sample (params and
// positions, one per row: the RNG counter of the token being sampled), or,
// when params is empty, score targets (one per row).
struct StepRequest {
  std::vector<kernels::SamplingParams> params;
  std::vector<int64_t> positions;
  // Optional, when sampling: per-row logit adjustments in kernels::SampleArgs
  // layout (offsets [rows + 1] into `adjustments`). A CUDA step with
  // adjustments runs eagerly (no graph).
  std::vector<int64_t> adjust_offsets;
  std::vector<kernels::LogitAdjustment> adjustments;
  std::vector<int32_t> targets;
  int top_n = 0;
  // Also copy the step's logits to StepResult::logits (tests; costs a
  // [rows, vocab] fp32 copy).
  bool return_logits = false;
};

struct StepResult {
  std::vector<int32_t> tokens;  // [rows]: sampled, or the targets
  TokenLogprobs logprobs;
  std::vector<float> logits;    // [rows, vocab] when request.return_logits
};

struct ForwardBatch {
  std::vector<int32_t> tokens;     // [T] token ids, grouped by sequence
  std::vector<int32_t> positions;  // [T] absolute position of each token
  std::vector<int32_t> seq_ids;    // [T] row of block_tables for each token
  std::vector<int64_t> slots;      // [T] page * page_size + offset receiving
                                   // the token's K/V
  std::vector<int32_t> block_tables;  // [num_seqs, max_blocks_per_seq]
  int64_t num_seqs = 0;
  int64_t max_blocks_per_seq = 0;
  std::vector<int32_t> logit_rows;  // rows of T whose logits are wanted
};

class Model {
 public:
  // Builds a model from HF-named tensors (any of f32/bf16; converted to the
  // config's dtype). INVALID_ARGUMENT when tensors are missing, unknown or
  // mis-shaped, or when tp_size does not divide the heads/intermediate/vocab.
  static absl::StatusOr<std::shared_ptr<const Model>> Create(
      const ModelConfig& config, const TensorMap& tensors,
      const ModelOptions& options);
  // The same, taking the tensors over: those already in the config's dtype
  // become the model's host copy without a copy (a weight update's path).
  static absl::StatusOr<std::shared_ptr<const Model>> Create(
      const ModelConfig& config, TensorMap&& tensors, const ModelOptions& options);

  // Loads dir/config.json and the weights of `dir` through
  // SafetensorsCheckpoint: dir/model.safetensors, or
  // dir/model.safetensors.index.json and its shards. Errors of
  // ModelConfig::FromFile, SafetensorsCheckpoint::Open, CheckTensorShapes
  // and Create.
  static absl::StatusOr<std::shared_ptr<const Model>> Load(
      const std::string& dir, const ModelOptions& options);

  virtual ~Model() = default;

  virtual const ModelConfig& config() const = 0;
  virtual const ModelOptions& options() const = 0;

  // Bytes of KV storage one page of `page_size` tokens takes (all layers and
  // ranks).
  virtual int64_t KvBytesPerPage(int64_t page_size) const = 0;

  virtual absl::StatusOr<std::unique_ptr<KvCache>> CreateKvCache(
      int64_t num_pages, int64_t page_size) const = 0;

  // Incremental forward: writes K/V of every token to its slot, then attends
  // each token to positions [0, position] of its sequence; returns logits
  // [logit_rows.size(), vocab] (fp32). INVALID_ARGUMENT on inconsistent
  // batches (sizes, token ids, slots, positions beyond the block table).
  virtual absl::StatusOr<std::vector<float>> StepLogits(
      const ForwardBatch& batch, KvCache* cache) const = 0;

  // Full-sequence forward of several sequences (one batch): returns, per
  // sequence, logits [len, vocab] for every position.
  virtual absl::StatusOr<std::vector<std::vector<float>>> SequenceLogits(
      const std::vector<std::vector<int32_t>>& sequences) const = 0;

  // Log-probability of sequence[i+1] given sequence[0..i], for i in
  // [prefix_len-1, len-1): the scores of the tokens after the first
  // prefix_len (full-sequence forward, then the fixed-tree log-softmax).
  virtual absl::StatusOr<std::vector<std::vector<float>>> Score(
      const std::vector<std::vector<int32_t>>& sequences,
      const std::vector<int64_t>& prefix_lens) const = 0;

  // The weights as HF-named tensors in the model's storage dtype (what a
  // weight push sends).
  virtual const TensorMap& tensors() const = 0;

  // One generate step: StepLogits, then for every logit row either a sampled
  // token (params/positions given, kernels::Sample) or the given target,
  // and its log-probability (plus top_n) under the model's kernel mode.
  // Computed where the logits live: on a GPU model only tokens and
  // logprobs come back to the host, and the logprobs come from the same
  // device kernels as the learner's SequenceLogprobs on that device. The
  // default runs StepLogits and then the host path.
  virtual absl::StatusOr<StepResult> Step(const ForwardBatch& batch, KvCache* cache,
                                                 const StepRequest& request) const;

  // The CUDA graphs of this model (ModelOptions::cuda_step); zeros elsewhere.
  virtual CudaGraphStats cuda_graph_stats() const { return {}; }

  // Drops what the model keeps besides its weights for faster steps (CUDA
  // graphs, their memory pool, the device step's staging buffers), e.g.
  // before the rollout sleeps; later steps rebuild them. Not concurrent with
  // Step. INTERNAL on CUDA errors.
  virtual absl::Status ReleaseCaches() const { return absl::OkStatus(); }
};

// Free and total memory of the current CUDA device (cudaMemGetInfo); zeros
// for kernels::Device::kCpu. FAILED_PRECONDITION for kCuda in builds
// without CUDA; INTERNAL on CUDA errors.
struct DeviceMemory {
  int64_t free_bytes = 0;
  int64_t total_bytes = 0;
};
absl::StatusOr<DeviceMemory> DeviceMemoryInfo(kernels::Device device);

// Hands the memory LibTorch's caching allocator holds but does not use back
// to the driver (after tensors were freed). No-op for kCpu.
absl::Status ReleaseCachedDeviceMemory(kernels::Device device);

// Log-probabilities of `targets` under logits [rows, vocab] with the model's
// kernel mode (the fixed segment tree in invariant mode, at::log_softmax in
// standard mode). Also returns, when top_n > 0, the top_n (id, logprob) pairs
// per row in descending order (ties: lower id).
absl::StatusOr<TokenLogprobs> ComputeTokenLogprobs(
    KernelMode mode, const std::vector<float>& logits, int64_t vocab,
    const std::vector<int32_t>& targets, int top_n);

}  // namespace lockstep::common

#endif  // LOCKSTEP_COMMON_MODEL_MODEL_H_
