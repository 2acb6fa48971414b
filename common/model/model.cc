// Model: weights sharded over in-process TP ranks (threads), the paged KV
// cache, and the validation of forward batches. The arithmetic lives in
// transformer_forward.cc over the ops of torch_ops.h.
#include "common/model/model.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <mutex>
#include <string_view>
#include <thread>

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "common/formats/checkpoint.h"
#include "common/model/cuda_check.h"
#include "common/model/device_adjustments.h"
#include "common/model/device_step.h"
#include "common/model/nccl_communicator.h"
#include "common/model/op_error.h"
#include "common/formats/safetensors.h"
#include "common/status/status_macros.h"
#include "common/model/torch_ops.h"
#include "common/model/rank_forward.h"
#include "common/model/serving_standard_ops.h"
#include "kernels/tree_reduce.h"

namespace lockstep::common {
namespace {

// Log-probabilities of `targets` (int64, on the logits' device) under logits
// [rows, vocab] on any device, with `mode`'s kernels there; results on the
// host.
absl::StatusOr<TokenLogprobs> TokenLogprobsOf(KernelMode mode, const torch::Tensor& logits,
                                              const torch::Tensor& targets, int top_n);

// The top_n (id, logprob) pairs of every row of logits [rows, vocab] (any
// device) under `mode`'s full log-softmax, descending (ties: lower id).
absl::StatusOr<std::vector<std::vector<std::pair<int32_t, float>>>> TopLogprobsOf(
    KernelMode mode, const torch::Tensor& logits, int top_n);

// ModelOptions::cuda_step, unless LOCKSTEP_CUDA_STEP names another.
absl::StatusOr<CudaStep> EffectiveCudaStep(CudaStep option) {
  const char* env = std::getenv("LOCKSTEP_CUDA_STEP");
  if (env == nullptr || *env == '\0') return option;
  const std::string_view v(env);
  if (v == "graphs") return CudaStep::kGraphs;
  if (v == "eager") return CudaStep::kEager;
  if (v == "legacy") return CudaStep::kLegacy;
  return absl::InvalidArgumentError(
      absl::StrCat("LOCKSTEP_CUDA_STEP=", env, ": expected graphs, eager or legacy"));
}

// INVALID_ARGUMENT unless `request` has one entry per logit row, targets in
// [0, vocab) and top_n in [0, vocab].
absl::Status CheckStepRequest(const StepRequest& request, int64_t rows, int64_t vocab);

torch::ScalarType TorchType(kernels::DType d) {
  return d == kernels::DType::kF32 ? torch::kFloat : torch::kBFloat16;
}

torch::Device TorchDevice(kernels::Device d) {
  return d == kernels::Device::kCuda ? torch::Device(torch::kCUDA, 0)
                                     : torch::Device(torch::kCPU);
}

// A host tensor converted to `dtype` (f32 <-> bf16 round to nearest even).
HostTensor ConvertTensor(const HostTensor& in, kernels::DType dtype) {
  if (in.dtype == dtype) return in;
  HostTensor out;
  out.dtype = dtype;
  out.shape = in.shape;
  const int64_t n = in.numel();
  out.data.resize(n * kernels::DTypeSize(dtype));
  for (int64_t i = 0; i < n; ++i) {
    kernels::StoreFromF32(out.data.data(), dtype, i,
                          kernels::LoadAsF32(in.data.data(), in.dtype, i));
  }
  return out;
}

torch::Tensor HostToTorch(const HostTensor& t) {
  auto out = torch::empty(t.shape, torch::TensorOptions().dtype(TorchType(t.dtype)));
  std::memcpy(out.data_ptr(), t.data.data(), t.data.size());
  return out;
}

class KvCacheImpl : public KvCache {
 public:
  int64_t num_pages() const override { return num_pages_; }
  int64_t page_size() const override { return page_size_; }

  int64_t num_pages_ = 0;  // pages a batch may address
  int64_t page_size_ = 0;
  // CUDA: page num_pages_ exists too, for the padding rows of graph steps.
  int32_t scratch_page_ = -1;
  uint64_t id_ = 0;  // unique in the process (CUDA graphs are per cache)
  std::vector<std::vector<LayerKv>> ranks_;  // [tp][layers]
};

std::atomic<uint64_t> g_next_cache_id{1};

class ModelImpl : public Model {
 public:
  ModelImpl(ModelConfig config, ModelOptions options)
      : config_(std::move(config)), options_(options) {}

  // Takes the tensors over (those already in the config's dtype are moved,
  // not copied).
  absl::Status Init(TensorMap tensors);

  const ModelConfig& config() const override { return config_; }
  const ModelOptions& options() const override { return options_; }
  const TensorMap& tensors() const override { return tensors_; }

  int64_t KvBytesPerPage(int64_t page_size) const override {
    return 2 * config_.num_hidden_layers * page_size * KvHeadsPerRank() *
           options_.tp_size * config_.head_dim * kernels::DTypeSize(config_.dtype);
  }

  absl::StatusOr<std::unique_ptr<KvCache>> CreateKvCache(int64_t num_pages,
                                                         int64_t page_size) const override;
  absl::StatusOr<std::vector<float>> StepLogits(const ForwardBatch& batch,
                                             KvCache* cache) const override;
  absl::StatusOr<std::vector<std::vector<float>>> SequenceLogits(
      const std::vector<std::vector<int32_t>>& sequences) const override;
  absl::StatusOr<std::vector<std::vector<float>>> Score(
      const std::vector<std::vector<int32_t>>& sequences,
      const std::vector<int64_t>& prefix_lens) const override;
  absl::StatusOr<StepResult> Step(const ForwardBatch& batch, KvCache* cache,
                                         const StepRequest& request) const override;
  CudaGraphStats cuda_graph_stats() const override {
    return device_step_ != nullptr ? device_step_->stats() : CudaGraphStats();
  }
  absl::Status ReleaseCaches() const override {
    return device_step_ != nullptr ? device_step_->Release() : absl::OkStatus();
  }

 private:
  // INVALID_ARGUMENT unless `batch` is consistent and addresses only
  // `cache`'s pages (sizes, token ids, positions, seq ids, slots, pages).
  absl::Status ValidateBatch(const ForwardBatch& batch, const KvCacheImpl& cache) const;

  // The step of before the device-resident one (TP > 1, or kLegacy).
  absl::StatusOr<StepResult> LegacyCudaStep(const ForwardBatch& batch, KvCache* cache,
                                            const StepRequest& request) const;

  // StepLogits' logits [logit_rows, vocab], left on the model's device.
  absl::StatusOr<torch::Tensor> StepLogitsTensor(const ForwardBatch& batch, KvCache* cache) const;

  int64_t KvHeadsPerRank() const {
    const int64_t t = options_.tp_size, kv = config_.num_key_value_heads;
    return kv >= t ? kv / t : 1;
  }

  // Runs fn(rank) on every rank (threads when tp > 1) and returns rank 0's
  // logits; c10 errors become INTERNAL.
  absl::StatusOr<torch::Tensor> RunRanks(
      const std::function<torch::Tensor(int, Communicator*)>& fn) const;

  absl::StatusOr<torch::Tensor> SequenceLogitsTensor(const std::vector<std::vector<int32_t>>& seqs,
                                           const std::vector<int64_t>& rows) const;

  // Device of rank r's weights, KV pages and activations.
  torch::Device RankDevice(int r) const {
    if (options_.tp_backend == TpBackend::kNccl) return torch::Device(torch::kCUDA, r);
    return TorchDevice(options_.device);
  }
  bool nccl() const { return options_.tp_backend == TpBackend::kNccl; }

  ModelConfig config_;
  ModelOptions options_;
  TensorMap tensors_;
  std::vector<RankWeights> ranks_;
  // NCCL groups are created once; their collectives serialize forwards.
  std::vector<std::unique_ptr<Communicator>> nccl_comms_;
  mutable std::mutex nccl_mu_;
  // The device-resident step (CUDA, TP = 1, cuda_step not kLegacy).
  std::unique_ptr<DeviceStep> device_step_;
};

absl::Status ModelImpl::Init(TensorMap tensors) {
  const ModelConfig& c = config_;
  const int t = options_.tp_size;
  if (!kernels::IsValidTreeSplit(t)) {
    return absl::InvalidArgumentError(absl::StrCat("tp_size must be 1, 2, 4 or 8, got ", t));
  }
  if (c.num_attention_heads % t != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tp_size ", t, " does not divide num_attention_heads ", c.num_attention_heads));
  }
  if (c.num_key_value_heads % t != 0 && t % c.num_key_value_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tp_size ", t, " and num_key_value_heads ", c.num_key_value_heads,
        " must divide one another"));
  }
  if (c.intermediate_size % (kernels::kTreeLeaves * t) != 0 ||
      (c.num_attention_heads * c.head_dim) % kernels::kTreeLeaves != 0) {
    return absl::InvalidArgumentError(
        "intermediate_size and num_attention_heads*head_dim must be multiples of 8 "
        "(and intermediate_size of 8*tp_size) for the TP-invariant reduction tree");
  }
  if (c.IsMoe() && c.moe_intermediate_size % (kernels::kTreeLeaves * t) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "moe_intermediate_size ", c.moe_intermediate_size,
        " must be a multiple of 8*tp_size for the TP-invariant reduction tree"));
  }
  if (c.vocab_size % t != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tp_size ", t, " does not divide vocab_size ", c.vocab_size));
  }
  if (options_.device == kernels::Device::kCuda && !torch::cuda::is_available()) {
    return absl::FailedPreconditionError("--device=cuda but no CUDA device is available");
  }
  if (nccl()) {
    if (options_.device != kernels::Device::kCuda) {
      return absl::InvalidArgumentError("the NCCL TP backend needs --device=cuda");
    }
    LOCKSTEP_ASSIGN_OR_RETURN(nccl_comms_, CreateNcclGroup(t));
  }
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& [name, tensor] : tensors) {
    if (static_cast<int64_t>(tensor.data.size()) !=
        tensor.numel() * kernels::DTypeSize(tensor.dtype)) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", name, " has ",
                                                     tensor.data.size(), " bytes for its shape"));
    }
    shapes[name] = tensor.shape;
  }
  LOCKSTEP_RETURN_IF_ERROR(CheckTensorShapes(c, shapes));
  for (auto& [name, tensor] : tensors) {
    if (name.find("rotary_emb.inv_freq") != std::string::npos) continue;
    // A tied model's stored copy of the embedding is not kept twice.
    if (c.tie_word_embeddings && name == "lm_head.weight") continue;
    tensors_[name] = tensor.dtype == c.dtype ? std::move(tensor) : ConvertTensor(tensor, c.dtype);
  }
  tensors.clear();

  // The reference standard set multiplies in fp32 through LibTorch: keep
  // fp32 copies of the (bf16-valued) matrices so no per-call conversion
  // happens. The serving standard set (CUDA, bf16) multiplies bf16 by cuBLAS.
  const bool standard = options_.mode == KernelMode::kStandard &&
                        !UsesServingStandardOps(options_.mode, options_.device,
                                                c.dtype == kernels::DType::kBF16);
  torch::Device dev = RankDevice(0);
  auto linear = [&](torch::Tensor w) -> absl::StatusOr<LinearWeight> {
    LinearWeight lw;
    w = w.contiguous();
    if (standard) w = w.to(torch::kFloat);
    lw.w = w.to(dev);
    if (options_.mode == KernelMode::kInvariant && options_.device == kernels::Device::kCpu) {
      LOCKSTEP_ASSIGN_OR_RETURN(
          lw.packed, kernels::PackedWeight::Pack(w.data_ptr(), w.scalar_type() == torch::kFloat
                                                                   ? kernels::DType::kF32
                                                                   : kernels::DType::kBF16,
                                                 w.size(1), w.size(0), w.size(1)));
    }
    return lw;
  };
  for (int r = 0; r < t; ++r) {
    dev = RankDevice(r);
    WeightSource source = [&](const std::string& name, int64_t dim, int64_t begin,
                              int64_t count) -> absl::StatusOr<torch::Tensor> {
      auto it = tensors_.find(name);
      if (it == tensors_.end()) return absl::InvalidArgumentError("missing weight " + name);
      // A view of the host copy (kept in tensors_ for the model's lifetime):
      // the device upload or a narrowed shard's copy is the only copy made,
      // besides the stacked q/k/v and gate/up matrices (which replace their
      // parts: on a GPU the parts' uploads are dropped; on the CPU the stack
      // is one host copy more, beside the CPU kernels' packing below).
      const HostTensor& h = it->second;
      torch::Tensor w = torch::from_blob(const_cast<uint8_t*>(h.data.data()), h.shape,
                                         torch::TensorOptions().dtype(TorchType(h.dtype)));
      if (dim >= 0) w = w.narrow(dim, begin, count);
      return w.contiguous().to(dev);
    };
    // q/k/v and gate/up stacked (one GEMM each where the op set fuses),
    // packed as a whole on the CPU.
    LOCKSTEP_ASSIGN_OR_RETURN(RankWeights rw,
                              BuildRankWeights(c, r, t, source, linear, dev,
                                               /*stack_projections=*/true));
    ranks_.push_back(std::move(rw));
  }
  LOCKSTEP_ASSIGN_OR_RETURN(const CudaStep step, EffectiveCudaStep(options_.cuda_step));
  if (options_.device == kernels::Device::kCuda && t == 1 && step != CudaStep::kLegacy) {
    DeviceStepOptions so;
    so.config = &config_;
    so.mode = options_.mode;
    // A mixture-of-experts layer groups the tokens by expert on the host
    // (the routing is read back each layer), which a CUDA graph cannot
    // capture: MoE models run the device-resident step op by op.
    so.step = c.IsMoe() && step == CudaStep::kGraphs ? CudaStep::kEager : step;
    so.max_rows = std::max(1, std::min(options_.cuda_graph_max_rows, 4096));
    so.max_graphs = std::max(1, options_.cuda_graph_max_graphs);
    so.max_bytes = options_.cuda_graph_max_bytes;
    so.forward = [this](const ForwardInput& in) {
      auto ops = CreateForwardOps(options_.mode, options_.device,
                                config_.dtype == kernels::DType::kBF16);
      return RankForward(config_, ranks_[0], *ops, in, nullptr);
    };
    absl::StatusOr<std::unique_ptr<DeviceStep>> ds = DeviceStep::Create(std::move(so));
    if (ds.ok()) {
      device_step_ = std::move(*ds);
    } else if (!absl::IsUnimplemented(ds.status())) {
      return ds.status();
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<KvCache>> ModelImpl::CreateKvCache(int64_t num_pages,
                                                                  int64_t page_size) const {
  if (num_pages <= 0 || page_size <= 0) {
    return absl::InvalidArgumentError("KV cache needs num_pages > 0 and page_size > 0");
  }
  auto cache = std::make_unique<KvCacheImpl>();
  cache->num_pages_ = num_pages;
  cache->page_size_ = page_size;
  cache->id_ = g_next_cache_id.fetch_add(1);
  if (options_.device == kernels::Device::kCuda) {
    if (num_pages >= std::numeric_limits<int32_t>::max()) {
      return absl::InvalidArgumentError("KV cache has too many pages");
    }
    cache->scratch_page_ = static_cast<int32_t>(num_pages);
  }
  const int64_t allocated = num_pages + (cache->scratch_page_ >= 0 ? 1 : 0);
  try {
    for (int r = 0; r < options_.tp_size; ++r) {
      auto opts = torch::TensorOptions().dtype(TorchType(config_.dtype)).device(RankDevice(r));
      std::vector<LayerKv> layers;
      for (int64_t l = 0; l < config_.num_hidden_layers; ++l) {
        layers.push_back({torch::zeros({allocated, page_size, KvHeadsPerRank(), config_.head_dim}, opts),
                          torch::zeros({allocated, page_size, KvHeadsPerRank(), config_.head_dim}, opts)});
      }
      cache->ranks_.push_back(std::move(layers));
    }
  } catch (const c10::Error& e) {
    return absl::ResourceExhaustedError(absl::StrCat("KV cache allocation failed: ", e.what()));
  }
  return cache;
}

absl::StatusOr<torch::Tensor> ModelImpl::RunRanks(
    const std::function<torch::Tensor(int, Communicator*)>& fn) const {
  const int t = options_.tp_size;
  std::vector<torch::Tensor> results(t);
  std::vector<absl::Status> errors(t);
  auto run = [&](int r, Communicator* comm) {
    try {
      if (nccl()) {
        absl::Status st = SetCudaDevice(r);
        if (!st.ok()) {
          errors[r] = st;
          return;
        }
      }
      c10::InferenceMode guard;
      results[r] = fn(r, comm);
    } catch (const std::exception& e) {
      errors[r] = StatusFromException(e, "forward failed");
    }
  };
  if (t == 1) {
    run(0, nullptr);
  } else {
    std::unique_lock<std::mutex> lock(nccl_mu_, std::defer_lock);
    std::vector<std::unique_ptr<Communicator>> local;
    std::vector<Communicator*> comms;
    if (nccl()) {
      lock.lock();
      for (auto& c : nccl_comms_) comms.push_back(c.get());
    } else {
      local = CreateInProcessGroup(t);
      for (auto& c : local) comms.push_back(c.get());
    }
    std::vector<std::thread> threads;
    for (int r = 0; r < t; ++r) threads.emplace_back(run, r, comms[r]);
    for (auto& th : threads) th.join();
  }
  for (const absl::Status& e : errors) {
    if (!e.ok()) return e;
  }
  return results[0];
}

absl::StatusOr<std::vector<float>> ModelImpl::StepLogits(const ForwardBatch& b,
                                                      KvCache* cache_base) const {
  LOCKSTEP_ASSIGN_OR_RETURN(auto logits, StepLogitsTensor(b, cache_base));
  auto host = logits.cpu().contiguous();
  return std::vector<float>(host.data_ptr<float>(), host.data_ptr<float>() + host.numel());
}

absl::StatusOr<StepResult> ModelImpl::Step(const ForwardBatch& b, KvCache* cache_base,
                                                  const StepRequest& request) const {
  if (options_.device != kernels::Device::kCuda) return Model::Step(b, cache_base, request);
  if (device_step_ == nullptr) return LegacyCudaStep(b, cache_base, request);
  auto* cache = dynamic_cast<KvCacheImpl*>(cache_base);
  if (cache == nullptr || static_cast<int>(cache->ranks_.size()) != options_.tp_size ||
      cache->scratch_page_ < 0) {
    return absl::InvalidArgumentError("KV cache was not created by a model of this shape");
  }
  LOCKSTEP_RETURN_IF_ERROR(ValidateBatch(b, *cache));
  LOCKSTEP_RETURN_IF_ERROR(CheckStepRequest(request, b.logit_rows.size(), config_.vocab_size));
  DeviceKv kv;
  kv.layers = &cache->ranks_[0];
  kv.num_pages = cache->num_pages_;
  kv.page_size = cache->page_size_;
  kv.scratch_page = cache->scratch_page_;
  kv.id = cache->id_;
  const KernelMode mode = options_.mode;
  const int top_n = request.top_n;
  return device_step_->Run(b, kv, request, [mode, top_n](const torch::Tensor& logits) {
    return TopLogprobsOf(mode, logits, top_n);
  });
}

absl::StatusOr<StepResult> ModelImpl::LegacyCudaStep(const ForwardBatch& b, KvCache* cache,
                                                     const StepRequest& request) const {
  const int64_t rows = b.logit_rows.size();
  LOCKSTEP_RETURN_IF_ERROR(CheckStepRequest(request, rows, config_.vocab_size));
  LOCKSTEP_ASSIGN_OR_RETURN(auto logits, StepLogitsTensor(b, cache));
  StepResult out;
  if (rows == 0) return out;
  try {
    c10::InferenceMode guard;
    const torch::Device dev = logits.device();
    torch::Tensor targets, sampled;
    if (!request.params.empty()) {
      // Parameters as raw bytes on the device, as kernels::Sample reads them.
      const int64_t pbytes = rows * static_cast<int64_t>(sizeof(kernels::SamplingParams));
      auto params = torch::from_blob(const_cast<kernels::SamplingParams*>(request.params.data()),
                                     {pbytes}, torch::kUInt8)
                        .to(dev);
      auto positions = torch::from_blob(const_cast<int64_t*>(request.positions.data()), {rows},
                                        torch::kLong)
                           .to(dev);
      auto tokens = torch::empty({rows}, torch::TensorOptions().dtype(torch::kInt).device(dev));
      sampled = torch::empty({rows}, torch::TensorOptions().dtype(torch::kFloat).device(dev));
      DeviceAdjustments adj(request, rows, config_.vocab_size, dev);
      kernels::SampleArgs a;
      a.logits = logits.data_ptr<float>();
      a.ld = logits.size(1);
      a.rows = rows;
      a.vocab = config_.vocab_size;
      a.params = reinterpret_cast<const kernels::SamplingParams*>(params.data_ptr<uint8_t>());
      a.positions = positions.data_ptr<int64_t>();
      adj.Fill(&a);
      a.tokens_out = tokens.data_ptr<int32_t>();
      a.logprobs_out = sampled.data_ptr<float>();
      kernels::ExecContext ctx;
      ctx.device = kernels::Device::kCuda;
      LOCKSTEP_RETURN_IF_ERROR(kernels::Sample(a, ctx));
      targets = tokens.to(torch::kLong);
    } else {
      targets = torch::from_blob(const_cast<int32_t*>(request.targets.data()), {rows}, torch::kInt)
                    .to(dev)
                    .to(torch::kLong);
    }
    LOCKSTEP_ASSIGN_OR_RETURN(out.logprobs,
                              TokenLogprobsOf(options_.mode, logits, targets, request.top_n));
    if (sampled.defined()) {
      auto host = sampled.cpu().contiguous();
      out.logprobs.sampled.assign(host.data_ptr<float>(), host.data_ptr<float>() + rows);
    }
    if (request.return_logits) {
      auto host = logits.cpu().contiguous();
      out.logits.assign(host.data_ptr<float>(), host.data_ptr<float>() + host.numel());
    }
    auto host_tokens = targets.to(torch::kInt).cpu().contiguous();
    out.tokens.assign(host_tokens.data_ptr<int32_t>(), host_tokens.data_ptr<int32_t>() + rows);
  } catch (const c10::Error& e) {
    return StatusFromException(e, "sampling failed");
  }
  return out;
}

absl::Status ModelImpl::ValidateBatch(const ForwardBatch& b, const KvCacheImpl& cache) const {
  const int64_t T = b.tokens.size();
  if (T == 0) return absl::InvalidArgumentError("empty forward batch");
  if (b.positions.size() != static_cast<size_t>(T) || b.seq_ids.size() != static_cast<size_t>(T) ||
      b.slots.size() != static_cast<size_t>(T)) {
    return absl::InvalidArgumentError("tokens, positions, seq_ids and slots differ in length");
  }
  if (b.num_seqs <= 0 || b.max_blocks_per_seq <= 0 ||
      b.block_tables.size() != static_cast<size_t>(b.num_seqs * b.max_blocks_per_seq)) {
    return absl::InvalidArgumentError("block_tables is not [num_seqs, max_blocks_per_seq]");
  }
  const int64_t ps = cache.page_size_;
  LOCKSTEP_RETURN_IF_ERROR(CheckTokenIds(b.tokens, config_.vocab_size, "step"));
  for (int64_t i = 0; i < T; ++i) {
    const int64_t p = b.positions[i];
    if (p < 0 || p >= config_.max_position_embeddings) {
      return absl::InvalidArgumentError(absl::StrCat("position ", p, " outside [0, ",
                                                     config_.max_position_embeddings, ")"));
    }
    if (b.seq_ids[i] < 0 || b.seq_ids[i] >= b.num_seqs) {
      return absl::InvalidArgumentError(absl::StrCat("seq id ", b.seq_ids[i], " out of range"));
    }
    if (p / ps >= b.max_blocks_per_seq) {
      return absl::InvalidArgumentError(absl::StrCat("position ", p, " beyond the block table"));
    }
    for (int64_t blk = 0; blk <= p / ps; ++blk) {
      const int32_t page = b.block_tables[b.seq_ids[i] * b.max_blocks_per_seq + blk];
      if (page < 0 || page >= cache.num_pages_) {
        return absl::InvalidArgumentError(absl::StrCat("page id ", page, " out of range"));
      }
    }
    const int64_t expect =
        int64_t{b.block_tables[b.seq_ids[i] * b.max_blocks_per_seq + p / ps]} * ps + p % ps;
    if (b.slots[i] != expect) {
      return absl::InvalidArgumentError(absl::StrCat(
          "slot of token ", i, " (", b.slots[i], ") is not its position's page slot (", expect, ")"));
    }
  }
  for (int32_t row : b.logit_rows) {
    if (row < 0 || row >= T) return absl::InvalidArgumentError("logit row out of range");
  }
  return absl::OkStatus();
}

absl::StatusOr<torch::Tensor> ModelImpl::StepLogitsTensor(const ForwardBatch& b,
                                                       KvCache* cache_base) const {
  auto* cache = dynamic_cast<KvCacheImpl*>(cache_base);
  if (cache == nullptr || static_cast<int>(cache->ranks_.size()) != options_.tp_size) {
    return absl::InvalidArgumentError("KV cache was not created by a model of this shape");
  }
  LOCKSTEP_RETURN_IF_ERROR(ValidateBatch(b, *cache));
  const int64_t T = b.tokens.size();
  auto i32 = torch::TensorOptions().dtype(torch::kInt);
  auto i64 = torch::TensorOptions().dtype(torch::kLong);
  PagedAttentionMeta host_meta;
  host_meta.positions = torch::from_blob(const_cast<int32_t*>(b.positions.data()), {T}, i32);
  host_meta.seq_ids = torch::from_blob(const_cast<int32_t*>(b.seq_ids.data()), {T}, i32);
  host_meta.slots = torch::from_blob(const_cast<int64_t*>(b.slots.data()), {T}, i64);
  host_meta.block_tables = torch::from_blob(const_cast<int32_t*>(b.block_tables.data()),
                                            {b.num_seqs, b.max_blocks_per_seq}, i32);
  auto host_tokens = torch::from_blob(const_cast<int32_t*>(b.tokens.data()), {T}, i32).to(torch::kLong);
  auto host_rows = torch::from_blob(const_cast<int32_t*>(b.logit_rows.data()),
                                    {static_cast<int64_t>(b.logit_rows.size())}, i32)
                       .to(torch::kLong);
  LOCKSTEP_ASSIGN_OR_RETURN(auto logits, RunRanks([&](int r, Communicator* comm) {
    const torch::Device dev = RankDevice(r);
    PagedAttentionMeta meta;
    meta.positions = host_meta.positions.to(dev, false, true);
    meta.seq_ids = host_meta.seq_ids.to(dev, false, true);
    meta.slots = host_meta.slots.to(dev, false, true);
    meta.block_tables = host_meta.block_tables.to(dev, false, true);
    ForwardInput in;
    in.tokens = host_tokens.to(dev);
    in.positions = meta.positions;
    in.paged = &meta;
    in.kv = &cache->ranks_[r];
    in.logit_rows = host_rows.to(dev);
    auto ops = CreateForwardOps(options_.mode, options_.device,
                                config_.dtype == kernels::DType::kBF16);
    return RankForward(config_, ranks_[r], *ops, in, comm);
  }));
  return logits;
}

absl::StatusOr<torch::Tensor> ModelImpl::SequenceLogitsTensor(const std::vector<std::vector<int32_t>>& seqs,
                                                    const std::vector<int64_t>& rows) const {
  std::vector<int64_t> tokens, lens;
  std::vector<int32_t> positions;
  for (const auto& s : seqs) {
    if (s.empty()) return absl::InvalidArgumentError("empty sequence");
    if (static_cast<int64_t>(s.size()) > config_.max_position_embeddings) {
      return absl::InvalidArgumentError(absl::StrCat("sequence of ", s.size(),
                                                     " tokens exceeds the context length ",
                                                     config_.max_position_embeddings));
    }
    LOCKSTEP_RETURN_IF_ERROR(CheckTokenIds(s, config_.vocab_size, "sequence"));
    for (size_t i = 0; i < s.size(); ++i) {
      tokens.push_back(s[i]);
      positions.push_back(static_cast<int32_t>(i));
    }
    lens.push_back(s.size());
  }
  if (tokens.empty()) return absl::InvalidArgumentError("no sequences");
  auto tok = torch::tensor(tokens, torch::kLong);
  auto pos = torch::tensor(positions, torch::kInt);
  auto row_t = torch::tensor(rows, torch::kLong);
  return RunRanks([&](int r, Communicator* comm) {
    const torch::Device dev = RankDevice(r);
    ForwardInput in;
    in.tokens = tok.to(dev);
    in.positions = pos.to(dev);
    in.seq_lens = lens;
    in.logit_rows = row_t.to(dev);
    auto ops = CreateForwardOps(options_.mode, options_.device,
                                config_.dtype == kernels::DType::kBF16);
    return RankForward(config_, ranks_[r], *ops, in, comm);
  });
}

absl::StatusOr<std::vector<std::vector<float>>> ModelImpl::SequenceLogits(
    const std::vector<std::vector<int32_t>>& seqs) const {
  std::vector<int64_t> rows;
  int64_t total = 0;
  for (const auto& s : seqs) total += s.size();
  for (int64_t i = 0; i < total; ++i) rows.push_back(i);
  LOCKSTEP_ASSIGN_OR_RETURN(auto logits, SequenceLogitsTensor(seqs, rows));
  auto host = logits.cpu().contiguous();
  std::vector<std::vector<float>> out;
  const int64_t V = config_.vocab_size;
  int64_t start = 0;
  for (const auto& s : seqs) {
    const float* p = host.data_ptr<float>() + start * V;
    out.emplace_back(p, p + s.size() * V);
    start += s.size();
  }
  return out;
}

absl::StatusOr<std::vector<std::vector<float>>> ModelImpl::Score(
    const std::vector<std::vector<int32_t>>& seqs, const std::vector<int64_t>& prefix_lens) const {
  if (prefix_lens.size() != seqs.size()) {
    return absl::InvalidArgumentError("prefix_lens and sequences differ in count");
  }
  std::vector<int64_t> rows;
  std::vector<int32_t> targets;
  int64_t start = 0;
  for (size_t s = 0; s < seqs.size(); ++s) {
    const int64_t len = seqs[s].size();
    if (prefix_lens[s] < 1 || prefix_lens[s] > len) {
      return absl::InvalidArgumentError(absl::StrCat("prefix length ", prefix_lens[s],
                                                     " outside [1, ", len, "]"));
    }
    for (int64_t i = prefix_lens[s] - 1; i < len - 1; ++i) {
      rows.push_back(start + i);
      targets.push_back(seqs[s][i + 1]);
    }
    start += len;
  }
  std::vector<std::vector<float>> out(seqs.size());
  if (rows.empty()) {
    for (const auto& s : seqs) {
      if (s.empty()) return absl::InvalidArgumentError("empty sequence");
    }
    return out;
  }
  LOCKSTEP_ASSIGN_OR_RETURN(auto logits, SequenceLogitsTensor(seqs, rows));
  // Scored where the logits live, with the learner's kernels on that device.
  TokenLogprobs lp;
  try {
    c10::InferenceMode guard;
    auto tt = torch::tensor(targets, torch::kInt).to(logits.device()).to(torch::kLong);
    LOCKSTEP_ASSIGN_OR_RETURN(lp, TokenLogprobsOf(options_.mode, logits, tt, 0));
  } catch (const c10::Error& e) {
    return StatusFromException(e, "log-softmax failed");
  }
  size_t k = 0;
  for (size_t s = 0; s < seqs.size(); ++s) {
    for (int64_t i = prefix_lens[s] - 1; i < static_cast<int64_t>(seqs[s].size()) - 1; ++i) {
      out[s].push_back(lp.target[k++]);
    }
  }
  return out;
}

}  // namespace

absl::StatusOr<std::shared_ptr<const Model>> Model::Create(const ModelConfig& config,
                                                           const TensorMap& tensors,
                                                           const ModelOptions& options) {
  return Create(config, TensorMap(tensors), options);
}

absl::StatusOr<std::shared_ptr<const Model>> Model::Create(const ModelConfig& config,
                                                           TensorMap&& tensors,
                                                           const ModelOptions& options) {
  auto model = std::make_shared<ModelImpl>(config, options);
  try {
    LOCKSTEP_RETURN_IF_ERROR(model->Init(std::move(tensors)));
  } catch (const c10::Error& e) {
    return StatusFromException(e, "building the model failed");
  }
  return std::shared_ptr<const Model>(std::move(model));
}

absl::StatusOr<std::shared_ptr<const Model>> Model::Load(const std::string& dir,
                                                         const ModelOptions& options) {
  LOCKSTEP_ASSIGN_OR_RETURN(Checkpoint checkpoint, LoadCheckpoint(dir));
  return Create(checkpoint.config, std::move(checkpoint.tensors), options);
}

namespace {

absl::StatusOr<TokenLogprobs> TokenLogprobsOf(KernelMode mode, const torch::Tensor& logits,
                                              const torch::Tensor& targets, int top_n) {
  const int64_t rows = logits.size(0);
  TokenLogprobs out;
  if (rows == 0) return out;
  try {
    c10::InferenceMode guard;
    auto ops = CreateOps(mode);
    auto lp = ops->TargetLogprobs(logits, targets).cpu().contiguous();
    out.target.assign(lp.data_ptr<float>(), lp.data_ptr<float>() + rows);
  } catch (const c10::Error& e) {
    return StatusFromException(e, "log-softmax failed");
  }
  if (top_n > 0) {
    LOCKSTEP_ASSIGN_OR_RETURN(out.top, TopLogprobsOf(mode, logits, top_n));
  }
  return out;
}

absl::StatusOr<std::vector<std::vector<std::pair<int32_t, float>>>> TopLogprobsOf(
    KernelMode mode, const torch::Tensor& logits, int top_n) {
  const int64_t rows = logits.size(0);
  const int64_t vocab = logits.size(1);
  std::vector<std::vector<std::pair<int32_t, float>>> top(rows);
  try {
    c10::InferenceMode guard;
    auto ops = CreateOps(mode);
    auto full = ops->LogSoftmax(logits).cpu().contiguous();
    const float* base = full.data_ptr<float>();
    std::vector<int32_t> idx(vocab);
    for (int64_t r = 0; r < rows; ++r) {
      const float* row = base + r * vocab;
      for (int32_t j = 0; j < vocab; ++j) idx[j] = j;
      std::partial_sort(idx.begin(), idx.begin() + top_n, idx.end(), [&](int32_t a, int32_t b) {
        return row[a] > row[b] || (row[a] == row[b] && a < b);
      });
      for (int i = 0; i < top_n; ++i) top[r].emplace_back(idx[i], row[idx[i]]);
    }
  } catch (const c10::Error& e) {
    return StatusFromException(e, "log-softmax failed");
  }
  return top;
}

absl::Status CheckStepRequest(const StepRequest& request, int64_t rows, int64_t vocab) {
  if (!request.params.empty()) {
    if (static_cast<int64_t>(request.params.size()) != rows ||
        static_cast<int64_t>(request.positions.size()) != rows) {
      return absl::InvalidArgumentError("sampling params/positions are not one per logit row");
    }
    for (int64_t r = 0; r < rows; ++r) {
      LOCKSTEP_RETURN_IF_ERROR(kernels::CheckSamplingParams(request.params[r], r));
    }
    if (!request.adjust_offsets.empty()) {
      if (static_cast<int64_t>(request.adjust_offsets.size()) != rows + 1 ||
          request.adjust_offsets.front() != 0 ||
          request.adjust_offsets.back() != static_cast<int64_t>(request.adjustments.size())) {
        return absl::InvalidArgumentError(
            "adjust_offsets must be [rows + 1] from 0 to adjustments.size()");
      }
      for (int64_t r = 0; r < rows; ++r) {
        if (request.adjust_offsets[r + 1] < request.adjust_offsets[r]) {
          return absl::InvalidArgumentError("adjust_offsets decrease");
        }
        for (int64_t e = request.adjust_offsets[r]; e < request.adjust_offsets[r + 1]; ++e) {
          LOCKSTEP_RETURN_IF_ERROR(
              kernels::CheckLogitAdjustment(request.adjustments[e], vocab, r));
        }
      }
    } else if (!request.adjustments.empty()) {
      return absl::InvalidArgumentError("adjustments without adjust_offsets");
    }
  } else {
    if (static_cast<int64_t>(request.targets.size()) != rows) {
      return absl::InvalidArgumentError("targets are not one per logit row");
    }
    for (int32_t t : request.targets) {
      if (t < 0 || t >= vocab) {
        return absl::InvalidArgumentError(
            absl::StrCat("target id ", t, " outside [0, ", vocab, ")"));
      }
    }
  }
  if (request.top_n < 0 || request.top_n > vocab) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_n ", request.top_n, " outside [0, ", vocab, "]"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<TokenLogprobs> ComputeTokenLogprobs(KernelMode mode,
                                                   const std::vector<float>& logits,
                                                   int64_t vocab,
                                                   const std::vector<int32_t>& targets,
                                                   int top_n) {
  const int64_t rows = targets.size();
  if (vocab <= 0 || static_cast<int64_t>(logits.size()) != rows * vocab) {
    return absl::InvalidArgumentError("logits are not [targets, vocab]");
  }
  StepRequest check;
  check.targets = targets;
  check.top_n = top_n;
  LOCKSTEP_RETURN_IF_ERROR(CheckStepRequest(check, rows, vocab));
  if (rows == 0) return TokenLogprobs();
  try {
    c10::InferenceMode guard;
    auto lt = torch::from_blob(const_cast<float*>(logits.data()), {rows, vocab});
    auto tt = torch::from_blob(const_cast<int32_t*>(targets.data()), {rows}, torch::kInt)
                  .to(torch::kLong);
    return TokenLogprobsOf(mode, lt, tt, top_n);
  } catch (const c10::Error& e) {
    return StatusFromException(e, "log-softmax failed");
  }
}

absl::StatusOr<StepResult> Model::Step(const ForwardBatch& batch, KvCache* cache,
                                              const StepRequest& request) const {
  const int64_t rows = batch.logit_rows.size();
  const int64_t vocab = config().vocab_size;
  LOCKSTEP_RETURN_IF_ERROR(CheckStepRequest(request, rows, vocab));
  LOCKSTEP_ASSIGN_OR_RETURN(std::vector<float> logits, StepLogits(batch, cache));
  StepResult out;
  if (rows == 0) return out;
  std::vector<float> sampled;
  if (!request.params.empty()) {
    out.tokens.assign(rows, 0);
    sampled.assign(rows, 0.0f);
    kernels::SampleArgs a;
    a.logits = logits.data();
    a.ld = vocab;
    a.rows = rows;
    a.vocab = vocab;
    a.params = request.params.data();
    a.positions = request.positions.data();
    if (!request.adjust_offsets.empty()) {
      a.adjust_offsets = request.adjust_offsets.data();
      a.adjustments = request.adjustments.data();
    }
    a.tokens_out = out.tokens.data();
    a.logprobs_out = sampled.data();
    LOCKSTEP_RETURN_IF_ERROR(kernels::Sample(a));
  } else {
    out.tokens = request.targets;
  }
  LOCKSTEP_ASSIGN_OR_RETURN(out.logprobs, ComputeTokenLogprobs(options().mode, logits, vocab,
                                                               out.tokens, request.top_n));
  out.logprobs.sampled = std::move(sampled);
  if (request.return_logits) out.logits = std::move(logits);
  return out;
}

}  // namespace lockstep::common
