// DeviceStep over a CUDA LibTorch: pinned staging, persistent device
// buffers, one non-default stream, at::cuda::CUDAGraph per padded decode
// shape. Built only when LibTorch has CUDA (LOCKSTEP_TORCH_CUDA).
#include <cuda_runtime.h>

#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/version.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <list>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/model/device_adjustments.h"
#include "common/model/device_step.h"
#include "common/model/kernel_stream.h"
#include "common/model/op_error.h"
#include "common/model/serving_standard_ops.h"
#include "common/status/status_macros.h"
#include "kernels/sampling.h"
#include "kernels/softmax.h"

namespace lockstep::common {
namespace {

absl::Status CudaStatus(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  (void)cudaGetLastError();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(err)));
}

#define LOCKSTEP_CUDA_OK(expr) LOCKSTEP_RETURN_IF_ERROR(CudaStatus((expr), #expr))

constexpr int64_t kAlign = 16;

int64_t AlignUp(int64_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

int64_t NextPow2(int64_t x) {
  int64_t p = 1;
  while (p < x) p *= 2;
  return p;
}

// Byte offsets of a step's metadata fields in the staging buffers, for T
// token rows, N block-table rows of width W and R logit rows. Every field is
// present whatever the step samples, so one layout serves both kinds.
struct Layout {
  int64_t t = 0, n = 0, w = 0, r = 0;
  int64_t tokens = 0;      // int64 [T]
  int64_t slots = 0;       // int64 [T]
  int64_t rows = 0;        // int64 [R] logit rows
  int64_t sample_pos = 0;  // int64 [R] RNG positions of the sampled tokens
  int64_t params = 0;      // SamplingParams [R]
  int64_t positions = 0;   // int32 [T]
  int64_t seq_ids = 0;     // int32 [T]
  int64_t targets = 0;     // int32 [R]
  int64_t tables = 0;      // int32 [N, W]
  int64_t total = 0;
  // Results: tokens int32 [R] at 0, raw logprobs float [R] at out_logprobs,
  // sampled-distribution logprobs float [R] at out_sampled.
  int64_t out_logprobs = 0;
  int64_t out_sampled = 0;
  int64_t out_total = 0;
};

Layout MakeLayout(int64_t t, int64_t n, int64_t w, int64_t r) {
  Layout l;
  l.t = t;
  l.n = n;
  l.w = w;
  l.r = r;
  int64_t at = 0;
  auto take = [&](int64_t bytes) {
    const int64_t off = at;
    at = AlignUp(at + bytes);
    return off;
  };
  l.tokens = take(t * 8);
  l.slots = take(t * 8);
  l.rows = take(r * 8);
  l.sample_pos = take(r * 8);
  l.params = take(r * static_cast<int64_t>(sizeof(kernels::SamplingParams)));
  l.positions = take(t * 4);
  l.seq_ids = take(t * 4);
  l.targets = take(r * 4);
  l.tables = take(n * w * 4);
  l.total = at;
  l.out_logprobs = AlignUp(r * 4);
  l.out_sampled = l.out_logprobs + AlignUp(r * 4);
  l.out_total = l.out_sampled + AlignUp(r * 4);
  return l;
}

// Writes the batch into `host` at `l`. Rows beyond the batch's (up to l.t,
// l.n, l.r) are padding: token 0 at position 0 of their own block-table row,
// whose every entry is the scratch page, writing K/V into the scratch slot;
// their logit row is their own token row; greedy sampling, target 0. Table
// columns beyond a sequence's row are the scratch page too (never read: a
// row reads only the blocks up to its position).
void Pack(const Layout& l, const ForwardBatch& b, const StepRequest& req, const DeviceKv& kv,
          uint8_t* host) {
  const int64_t t = b.tokens.size(), n = b.num_seqs, r = b.logit_rows.size();
  const int64_t scratch_slot = int64_t{kv.scratch_page} * kv.page_size;
  auto* tokens = reinterpret_cast<int64_t*>(host + l.tokens);
  auto* slots = reinterpret_cast<int64_t*>(host + l.slots);
  auto* positions = reinterpret_cast<int32_t*>(host + l.positions);
  auto* seq_ids = reinterpret_cast<int32_t*>(host + l.seq_ids);
  for (int64_t i = 0; i < l.t; ++i) {
    const bool real = i < t;
    tokens[i] = real ? b.tokens[i] : 0;
    slots[i] = real ? b.slots[i] : scratch_slot;
    positions[i] = real ? b.positions[i] : 0;
    seq_ids[i] = real ? b.seq_ids[i] : static_cast<int32_t>(i);
  }
  auto* tables = reinterpret_cast<int32_t*>(host + l.tables);
  const int64_t copy_w = std::min(l.w, b.max_blocks_per_seq);
  for (int64_t s = 0; s < l.n; ++s) {
    int32_t* row = tables + s * l.w;
    int64_t k = 0;
    if (s < n) {
      std::memcpy(row, b.block_tables.data() + s * b.max_blocks_per_seq, copy_w * 4);
      k = copy_w;
    }
    for (; k < l.w; ++k) row[k] = kv.scratch_page;
  }
  auto* rows = reinterpret_cast<int64_t*>(host + l.rows);
  auto* sample_pos = reinterpret_cast<int64_t*>(host + l.sample_pos);
  auto* params = reinterpret_cast<kernels::SamplingParams*>(host + l.params);
  auto* targets = reinterpret_cast<int32_t*>(host + l.targets);
  const bool sampling = !req.params.empty();
  kernels::SamplingParams greedy;
  greedy.temperature = 0.0f;
  for (int64_t i = 0; i < l.r; ++i) {
    const bool real = i < r;
    rows[i] = real ? b.logit_rows[i] : i;
    sample_pos[i] = real && sampling ? req.positions[i] : 0;
    params[i] = real && sampling ? req.params[i] : greedy;
    targets[i] = real && !sampling ? req.targets[i] : 0;
  }
}

torch::Tensor View(const torch::Tensor& buffer, int64_t offset, at::IntArrayRef sizes,
                   torch::ScalarType type) {
  return torch::from_blob(static_cast<uint8_t*>(buffer.data_ptr()) + offset, sizes,
                          torch::TensorOptions().dtype(type).device(buffer.device()));
}

// Pinned host staging and persistent device buffers for the metadata (in)
// and the results (out).
class IoBuffers {
 public:
  IoBuffers() = default;
  IoBuffers(const IoBuffers&) = delete;
  IoBuffers& operator=(const IoBuffers&) = delete;
  ~IoBuffers() { Free(); }

  // Makes room for in_bytes / out_bytes (contents are not kept).
  absl::Status Reserve(int64_t in_bytes, int64_t out_bytes, const torch::Device& device) {
    in_bytes = std::max<int64_t>(in_bytes, kAlign);
    out_bytes = std::max<int64_t>(out_bytes, kAlign);
    if (in_bytes <= in_cap_ && out_bytes <= out_cap_) return absl::OkStatus();
    Free();
    in_cap_ = std::max(in_bytes, in_cap_);
    out_cap_ = std::max(out_bytes, out_cap_);
    void* h = nullptr;
    LOCKSTEP_CUDA_OK(cudaHostAlloc(&h, in_cap_, cudaHostAllocDefault));
    host_in_ = static_cast<uint8_t*>(h);
    LOCKSTEP_CUDA_OK(cudaHostAlloc(&h, out_cap_, cudaHostAllocDefault));
    host_out_ = static_cast<uint8_t*>(h);
    auto u8 = torch::TensorOptions().dtype(torch::kUInt8).device(device);
    dev_in_ = torch::empty({in_cap_}, u8);
    dev_out_ = torch::empty({out_cap_}, u8);
    return absl::OkStatus();
  }

  uint8_t* host_in() const { return host_in_; }
  uint8_t* host_out() const { return host_out_; }
  const torch::Tensor& dev_in() const { return dev_in_; }
  const torch::Tensor& dev_out() const { return dev_out_; }

  // Frees both buffers; the next Reserve allocates anew.
  void Release() {
    Free();
    in_cap_ = out_cap_ = 0;
  }

 private:
  void Free() {
    if (host_in_ != nullptr) (void)cudaFreeHost(host_in_);
    if (host_out_ != nullptr) (void)cudaFreeHost(host_out_);
    host_in_ = host_out_ = nullptr;
    dev_in_ = torch::Tensor();
    dev_out_ = torch::Tensor();
  }

  int64_t in_cap_ = 0, out_cap_ = 0;
  uint8_t* host_in_ = nullptr;
  uint8_t* host_out_ = nullptr;
  torch::Tensor dev_in_, dev_out_;
};

struct GraphKey {
  int64_t rows = 0;   // padded rows (tokens = sequences = logit rows)
  int64_t width = 0;  // padded block-table width
  bool sampling = false;
  bool logits = false;  // also copies the logits to a static buffer
  bool operator<(const GraphKey& o) const {
    return std::tie(rows, width, sampling, logits) < std::tie(o.rows, o.width, o.sampling, o.logits);
  }
};

struct Graph {
  std::unique_ptr<at::cuda::CUDAGraph> graph;
  Layout layout;
  torch::Tensor logits;  // [rows, vocab] when key.logits (outside the pool)
  std::list<GraphKey>::iterator lru;
};

class CudaDeviceStep : public DeviceStep {
 public:
  explicit CudaDeviceStep(DeviceStepOptions options)
      : options_(std::move(options)),
        device_(torch::kCUDA, 0),
        stream_(c10::cuda::getStreamFromPool(/*isHighPriority=*/false, /*device=*/0)) {}

  ~CudaDeviceStep() override {
    graphs_.clear();
    for (cudaEvent_t e : {legacy_done_, start_, end_}) {
      if (e != nullptr) (void)cudaEventDestroy(e);
    }
  }

  absl::Status Init() {
    LOCKSTEP_CUDA_OK(cudaEventCreateWithFlags(&legacy_done_, cudaEventDisableTiming));
    LOCKSTEP_CUDA_OK(cudaEventCreate(&start_));
    LOCKSTEP_CUDA_OK(cudaEventCreate(&end_));
    return absl::OkStatus();
  }

  absl::StatusOr<StepResult> Run(const ForwardBatch& b, const DeviceKv& kv,
                                 const StepRequest& req, const TopLogprobsFn& top) override {
    std::lock_guard<std::mutex> lock(mu_);
    const auto t0 = std::chrono::steady_clock::now();
    absl::StatusOr<StepResult> out;
    try {
      c10::InferenceMode inference;
      c10::cuda::CUDAStreamGuard stream_guard(stream_);
      ScopedKernelStream kernel_stream(stream_.stream());
      // Work queued on the legacy default stream (weight uploads, the KV
      // cache's zeroing, eager forwards of other callers) precedes the step.
      LOCKSTEP_CUDA_OK(cudaEventRecord(legacy_done_, cudaStreamLegacy));
      LOCKSTEP_CUDA_OK(cudaStreamWaitEvent(stream_.stream(), legacy_done_, 0));
      if (kv.id != kv_id_) {
        LOCKSTEP_RETURN_IF_ERROR(SetCache(kv));
      }
      GraphKey key;
      if (GraphShape(b, req, kv, &key)) {
        Graph* g = nullptr;
        LOCKSTEP_ASSIGN_OR_RETURN(g, FindOrCapture(key, kv));
        if (g != nullptr) {
          out = RunGraph(*g, b, req, kv);
        } else {
          out = RunEager(b, req, kv, top);
        }
      } else {
        out = RunEager(b, req, kv, top);
      }
    } catch (const std::exception& e) {
      return StatusFromException(e, "device step failed");
    }
    last_host_ms_ =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    return out;
  }

  absl::Status Release() override {
    std::lock_guard<std::mutex> lock(mu_);
    LOCKSTEP_CUDA_OK(cudaStreamSynchronize(stream_.stream()));
    const bool had = !graphs_.empty();
    DropAllGraphs();
    graph_io_.Release();
    eager_io_.Release();
    refused_.clear();
    kv_id_ = 0;  // the next step sets its cache up again
    if (!had) c10::cuda::CUDACachingAllocator::emptyCache();
    return absl::OkStatus();
  }

  CudaGraphStats stats() const override {
    std::lock_guard<std::mutex> lock(mu_);
    CudaGraphStats s;
    s.graphs = static_cast<int64_t>(graphs_.size());
    s.captures = captures_;
    s.replays = replays_;
    s.eager_steps = eager_steps_;
    s.capture_bytes = capture_bytes_;
    size_t reserved = 0;
    if (cudaDeviceGetGraphMemAttribute(0, cudaGraphMemAttrReservedMemCurrent, &reserved) ==
        cudaSuccess) {
      s.graph_memory_bytes = static_cast<int64_t>(reserved);
    } else {
      (void)cudaGetLastError();
    }
    s.last_graph_nodes = last_nodes_;
    s.last_graph_kernels = last_kernels_;
    s.last_step_device_ms = last_device_ms_;
    s.last_step_host_ms = last_host_ms_;
    return s;
  }

 private:
  // A new KV cache: graphs of the old one are dropped (they hold its page
  // addresses) and the graph buffers are sized for this cache's widest
  // block table.
  absl::Status SetCache(const DeviceKv& kv) {
    LOCKSTEP_CUDA_OK(cudaStreamSynchronize(stream_.stream()));
    DropAllGraphs();
    refused_.clear();
    kv_id_ = kv.id;
    max_width_ = (options_.config->max_position_embeddings + kv.page_size - 1) / kv.page_size;
    const int64_t rows = NextPow2(std::max(1, options_.max_rows));
    const Layout l = MakeLayout(rows, rows, max_width_, rows);
    if (Capturable()) {
      LOCKSTEP_RETURN_IF_ERROR(graph_io_.Reserve(l.total, l.out_total, device_));
    }
    return absl::OkStatus();
  }

  // Drops every graph. Their private pool is then unused, and LibTorch never
  // lets a pool whose last graph is gone be joined again: the next graphs
  // share a new pool, and the cache releases the old one's memory now, so
  // the capture memory counts from zero again.
  void DropAllGraphs() {
    const bool had = !graphs_.empty();
    graphs_.clear();
    lru_.clear();
    pool_ = at::cuda::graph_pool_handle();
    if (had) c10::cuda::CUDACachingAllocator::emptyCache();
    capture_bytes_ = 0;
  }

  // True when decode steps replay graphs: the invariant set, or the serving
  // standard set (neither reads device data back inside the forward; the
  // reference standard set does).
  bool Capturable() const {
    return options_.step == CudaStep::kGraphs &&
           (options_.mode == KernelMode::kInvariant ||
            UsesServingStandardOps(options_.mode, kernels::Device::kCuda,
                                   options_.config->dtype == kernels::DType::kBF16));
  }

  // True for a decode-only step a graph can run; `key` gets its padded shape.
  bool GraphShape(const ForwardBatch& b, const StepRequest& req, const DeviceKv& kv,
                  GraphKey* key) const {
    if (!Capturable() || req.top_n > 0 || !req.adjust_offsets.empty()) {
      return false;
    }
    const int64_t t = b.tokens.size();
    if (t == 0 || t > options_.max_rows || b.num_seqs != t ||
        static_cast<int64_t>(b.logit_rows.size()) != t) {
      return false;
    }
    int64_t blocks = 1;
    for (int64_t i = 0; i < t; ++i) {
      if (b.seq_ids[i] != i || b.logit_rows[i] != i) return false;
      blocks = std::max<int64_t>(blocks, b.positions[i] / kv.page_size + 1);
    }
    key->rows = NextPow2(t);
    key->width = std::min(NextPow2(blocks), max_width_);
    if (key->width < blocks) return false;
    key->sampling = !req.params.empty();
    key->logits = req.return_logits;
    return true;
  }

  // The forward, then sampling (or the given targets) and the target
  // logprobs of metadata laid out at `l` in `in`, results into `out`.
  // Returns the logits [l.r, vocab]; `keep`, when defined, receives a copy.
  // `adjustments` (eager steps only) points the sampler at the request's
  // logit adjustments on the device.
  absl::StatusOr<torch::Tensor> Body(const Layout& l, const torch::Tensor& in,
                                     const torch::Tensor& out, bool sampling,
                                     const DeviceKv& kv, torch::Tensor* keep,
                                     const DeviceAdjustments* adjustments = nullptr) {
    PagedAttentionMeta meta;
    meta.positions = View(in, l.positions, {l.t}, torch::kInt);
    meta.seq_ids = View(in, l.seq_ids, {l.t}, torch::kInt);
    meta.slots = View(in, l.slots, {l.t}, torch::kLong);
    meta.block_tables = View(in, l.tables, {l.n, l.w}, torch::kInt);
    ForwardInput fin;
    fin.tokens = View(in, l.tokens, {l.t}, torch::kLong);
    fin.positions = meta.positions;
    fin.paged = &meta;
    fin.kv = kv.layers;
    fin.logit_rows = View(in, l.rows, {l.r}, torch::kLong);
    torch::Tensor logits = options_.forward(fin).contiguous();
    auto* base_in = static_cast<uint8_t*>(in.data_ptr());
    auto* out_tokens = static_cast<int32_t*>(out.data_ptr());
    auto* out_logprobs =
        reinterpret_cast<float*>(static_cast<uint8_t*>(out.data_ptr()) + l.out_logprobs);
    kernels::ExecContext ctx;
    ctx.device = kernels::Device::kCuda;
    ctx.cuda_stream = stream_.stream();
    if (l.r == 0) return logits;  // a step that only fills the KV cache
    const int32_t* targets = reinterpret_cast<const int32_t*>(base_in + l.targets);
    if (sampling) {
      kernels::SampleArgs a;
      a.logits = logits.data_ptr<float>();
      a.ld = logits.size(1);
      a.rows = l.r;
      a.vocab = options_.config->vocab_size;
      a.params = reinterpret_cast<const kernels::SamplingParams*>(base_in + l.params);
      a.positions = reinterpret_cast<const int64_t*>(base_in + l.sample_pos);
      if (adjustments != nullptr) adjustments->Fill(&a);
      a.tokens_out = out_tokens;
      a.logprobs_out =
          reinterpret_cast<float*>(static_cast<uint8_t*>(out.data_ptr()) + l.out_sampled);
      LOCKSTEP_RETURN_IF_ERROR(kernels::Sample(a, ctx));
      targets = out_tokens;
    }
    if (options_.mode == KernelMode::kInvariant) {
      // What InvariantOps::TargetLogprobs runs (the learner's kernel).
      kernels::LogSoftmaxArgs a;
      a.logits = logits.data_ptr<float>();
      a.ld = logits.size(1);
      a.rows = l.r;
      a.vocab = logits.size(1);
      a.targets = targets;
      a.target_logprobs = out_logprobs;
      LOCKSTEP_RETURN_IF_ERROR(kernels::LogSoftmax(a, ctx));
    } else {
      auto ops = CreateOps(options_.mode);
      auto t = torch::from_blob(const_cast<int32_t*>(targets), {l.r},
                                torch::TensorOptions().dtype(torch::kInt).device(device_))
                   .to(torch::kLong);
      auto lp = ops->TargetLogprobs(logits, t);
      torch::from_blob(out_logprobs, {l.r},
                       torch::TensorOptions().dtype(torch::kFloat).device(device_))
          .copy_(lp);
    }
    if (keep != nullptr && keep->defined()) keep->copy_(logits);
    return logits;
  }

  // Results of the first `rows` rows from the pinned output buffer.
  static void Unpack(const Layout& l, const uint8_t* host_out, int64_t rows,
                     const StepRequest& req, StepResult* result) {
    const auto* tokens = reinterpret_cast<const int32_t*>(host_out);
    const auto* logprobs = reinterpret_cast<const float*>(host_out + l.out_logprobs);
    if (req.params.empty()) {
      result->tokens = req.targets;
    } else {
      result->tokens.assign(tokens, tokens + rows);
      const auto* sampled = reinterpret_cast<const float*>(host_out + l.out_sampled);
      result->logprobs.sampled.assign(sampled, sampled + rows);
    }
    result->logprobs.target.assign(logprobs, logprobs + rows);
  }

  absl::Status FinishTiming() {
    LOCKSTEP_CUDA_OK(cudaEventRecord(end_, stream_.stream()));
    LOCKSTEP_CUDA_OK(cudaEventSynchronize(end_));
    float ms = 0;
    LOCKSTEP_CUDA_OK(cudaEventElapsedTime(&ms, start_, end_));
    last_device_ms_ = ms;
    return absl::OkStatus();
  }

  absl::StatusOr<StepResult> RunEager(const ForwardBatch& b, const StepRequest& req,
                                      const DeviceKv& kv, const TopLogprobsFn& top) {
    const int64_t rows = b.logit_rows.size();
    const Layout l = MakeLayout(b.tokens.size(), b.num_seqs, b.max_blocks_per_seq, rows);
    LOCKSTEP_RETURN_IF_ERROR(eager_io_.Reserve(l.total, l.out_total, device_));
    Pack(l, b, req, kv, eager_io_.host_in());
    cudaStream_t s = stream_.stream();
    LOCKSTEP_CUDA_OK(cudaEventRecord(start_, s));
    LOCKSTEP_CUDA_OK(cudaMemcpyAsync(eager_io_.dev_in().data_ptr(), eager_io_.host_in(), l.total,
                                     cudaMemcpyHostToDevice, s));
    std::optional<DeviceAdjustments> adjustments;
    if (!req.params.empty() && !req.adjust_offsets.empty()) {
      // Queued on the step's stream (Run's stream guard).
      adjustments.emplace(req, rows, options_.config->vocab_size, device_);
    }
    LOCKSTEP_ASSIGN_OR_RETURN(torch::Tensor logits,
                              Body(l, eager_io_.dev_in(), eager_io_.dev_out(),
                                   !req.params.empty(), kv, nullptr,
                                   adjustments ? &*adjustments : nullptr));
    StepResult result;
    if (rows > 0) {
      LOCKSTEP_CUDA_OK(cudaMemcpyAsync(eager_io_.host_out(), eager_io_.dev_out().data_ptr(),
                                       l.out_total, cudaMemcpyDeviceToHost, s));
    }
    if (rows > 0 && req.return_logits) {
      auto host = logits.cpu();
      result.logits.assign(host.data_ptr<float>(), host.data_ptr<float>() + host.numel());
    }
    if (rows > 0 && req.top_n > 0) {
      LOCKSTEP_ASSIGN_OR_RETURN(result.logprobs.top, top(logits));
    }
    LOCKSTEP_RETURN_IF_ERROR(FinishTiming());
    if (rows > 0) Unpack(l, eager_io_.host_out(), rows, req, &result);
    ++eager_steps_;
    return result;
  }

  absl::StatusOr<StepResult> RunGraph(Graph& g, const ForwardBatch& b, const StepRequest& req,
                                      const DeviceKv& kv) {
    const Layout& l = g.layout;
    const int64_t rows = b.logit_rows.size();
    Pack(l, b, req, kv, graph_io_.host_in());
    cudaStream_t s = stream_.stream();
    LOCKSTEP_CUDA_OK(cudaEventRecord(start_, s));
    LOCKSTEP_CUDA_OK(cudaMemcpyAsync(graph_io_.dev_in().data_ptr(), graph_io_.host_in(), l.total,
                                     cudaMemcpyHostToDevice, s));
    g.graph->replay();
    LOCKSTEP_CUDA_OK(cudaMemcpyAsync(graph_io_.host_out(), graph_io_.dev_out().data_ptr(),
                                     l.out_total, cudaMemcpyDeviceToHost, s));
    StepResult result;
    if (req.return_logits) {
      auto host = g.logits.narrow(0, 0, rows).cpu();
      result.logits.assign(host.data_ptr<float>(), host.data_ptr<float>() + host.numel());
    }
    LOCKSTEP_RETURN_IF_ERROR(FinishTiming());
    Unpack(l, graph_io_.host_out(), rows, req, &result);
    lru_.splice(lru_.begin(), lru_, g.lru);
    ++replays_;
    return result;
  }

  // Nodes and kernel nodes captured so far on `s` (0 when the runtime does
  // not say).
  static void CountNodes(cudaStream_t s, int64_t* nodes, int64_t* kernels) {
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    cudaGraph_t graph = nullptr;
    size_t n = 0;
    if (cudaStreamGetCaptureInfo(s, &status, nullptr, &graph) != cudaSuccess ||
        status != cudaStreamCaptureStatusActive || graph == nullptr ||
        cudaGraphGetNodes(graph, nullptr, &n) != cudaSuccess) {
      (void)cudaGetLastError();
      return;
    }
    std::vector<cudaGraphNode_t> all(n);
    if (n > 0 && cudaGraphGetNodes(graph, all.data(), &n) != cudaSuccess) {
      (void)cudaGetLastError();
      return;
    }
    *nodes = static_cast<int64_t>(n);
    for (cudaGraphNode_t node : all) {
      cudaGraphNodeType type;
      if (cudaGraphNodeGetType(node, &type) == cudaSuccess && type == cudaGraphNodeTypeKernel) {
        ++*kernels;
      }
    }
    (void)cudaGetLastError();
  }

  // The graph of `key`, captured now if need be; nullptr when none may be
  // captured (memory bound reached, or capture failed for this shape: the
  // step then runs op by op).
  absl::StatusOr<Graph*> FindOrCapture(const GraphKey& key, const DeviceKv& kv) {
    auto it = graphs_.find(key);
    if (it != graphs_.end()) return &it->second;
    if (refused_.count(key) != 0 || capture_bytes_ >= options_.max_bytes) return nullptr;
    if (options_.max_graphs <= 1 && !graphs_.empty()) {
      DropAllGraphs();
    } else {
      while (static_cast<int>(graphs_.size()) >= options_.max_graphs) {
        graphs_.erase(lru_.back());
        lru_.pop_back();
      }
    }
    cudaStream_t s = stream_.stream();
    const auto t0 = std::chrono::steady_clock::now();
    const Layout l = MakeLayout(key.rows, key.rows, key.width, key.rows);
    // Warm-up: the same shape op by op on padding rows only (they write
    // the scratch page alone), so that one-time set-up of the kernels
    // (shared-memory opt-ins, pool attributes) happens outside the capture.
    const ForwardBatch none;
    const StepRequest warm_req;
    Pack(l, none, warm_req, kv, graph_io_.host_in());
    LOCKSTEP_CUDA_OK(cudaMemcpyAsync(graph_io_.dev_in().data_ptr(), graph_io_.host_in(), l.total,
                                     cudaMemcpyHostToDevice, s));
    {
      LOCKSTEP_ASSIGN_OR_RETURN(torch::Tensor warm,
                                Body(l, graph_io_.dev_in(), graph_io_.dev_out(), key.sampling, kv,
                                     nullptr));
    }
    LOCKSTEP_CUDA_OK(cudaStreamSynchronize(s));
    Graph g;
    g.layout = l;
    if (key.logits) {
      g.logits = torch::empty({key.rows, options_.config->vocab_size},
                              torch::TensorOptions().dtype(torch::kFloat).device(device_));
    }
    size_t free0 = 0, free1 = 0, total = 0;
    LOCKSTEP_CUDA_OK(cudaMemGetInfo(&free0, &total));
    g.graph = std::make_unique<at::cuda::CUDAGraph>();
    absl::Status st;
#if TORCH_VERSION_MAJOR >= 2
    // Thread-local: other threads (weight staging, scoring) may make
    // capture-unsafe CUDA calls meanwhile.
    g.graph->capture_begin(pool_, cudaStreamCaptureModeThreadLocal);
#else
    g.graph->capture_begin(pool_);
#endif
    int64_t nodes = 0, kernels = 0;
    try {
      // No tensor of the pool outlives the capture: the graphs share it.
      absl::StatusOr<torch::Tensor> logits =
          Body(l, graph_io_.dev_in(), graph_io_.dev_out(), key.sampling, kv,
               key.logits ? &g.logits : nullptr);
      st = logits.status();
      if (st.ok()) CountNodes(s, &nodes, &kernels);
    } catch (const std::exception& e) {
      st = StatusFromException(e, "graph capture failed");
    }
    try {
      g.graph->capture_end();
    } catch (const std::exception& e) {
      if (st.ok()) st = StatusFromException(e, "graph capture failed");
    }
    if (!st.ok()) {
      (void)cudaGetLastError();
      refused_.insert(key);
      std::fprintf(stderr,
                   "lockstep: CUDA graph capture failed (rows=%lld blocks=%lld); such steps "
                   "run op by op: %s\n",
                   static_cast<long long>(key.rows), static_cast<long long>(key.width),
                   st.ToString().c_str());
      return nullptr;
    }
    LOCKSTEP_CUDA_OK(cudaMemGetInfo(&free1, &total));
    const int64_t bytes = free0 > free1 ? static_cast<int64_t>(free0 - free1) : 0;
    capture_bytes_ += bytes;
    ++captures_;
    last_nodes_ = nodes;
    last_kernels_ = kernels;
    lru_.push_front(key);
    g.lru = lru_.begin();
    auto [pos, inserted] = graphs_.emplace(key, std::move(g));
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    std::fprintf(stderr,
                 "lockstep: CUDA graph captured (rows=%lld blocks=%lld %s%s; %lld nodes, %lld "
                 "kernels) in %.1f ms, +%.1f MiB; capture memory %.1f MiB, %zu graphs\n",
                 static_cast<long long>(key.rows), static_cast<long long>(key.width),
                 key.sampling ? "sample" : "score", key.logits ? " +logits" : "",
                 static_cast<long long>(nodes), static_cast<long long>(kernels), ms,
                 bytes / 1048576.0, capture_bytes_ / 1048576.0, graphs_.size());
    return &pos->second;
  }

  const DeviceStepOptions options_;
  const torch::Device device_;
  c10::cuda::CUDAStream stream_;
  mutable std::mutex mu_;
  cudaEvent_t legacy_done_ = nullptr, start_ = nullptr, end_ = nullptr;
  decltype(at::cuda::graph_pool_handle()) pool_{0, 0};
  uint64_t kv_id_ = 0;
  int64_t max_width_ = 1;
  IoBuffers graph_io_;  // fixed once a cache is set: the graphs hold its addresses
  IoBuffers eager_io_;  // grows with the largest eager step
  std::map<GraphKey, Graph> graphs_;
  std::list<GraphKey> lru_;  // most recently used first
  std::set<GraphKey> refused_;
  int64_t captures_ = 0, replays_ = 0, eager_steps_ = 0, capture_bytes_ = 0;
  int64_t last_nodes_ = 0, last_kernels_ = 0;
  double last_device_ms_ = 0, last_host_ms_ = 0;
};

}  // namespace

absl::Status ReleaseCachedDeviceMemory(kernels::Device device) {
  if (device != kernels::Device::kCuda) return absl::OkStatus();
  try {
    LOCKSTEP_CUDA_OK(cudaDeviceSynchronize());
    c10::cuda::CUDACachingAllocator::emptyCache();
  } catch (const std::exception& e) {
    return StatusFromException(e, "releasing cached device memory failed");
  }
  return absl::OkStatus();
}

absl::StatusOr<DeviceMemory> DeviceMemoryInfo(kernels::Device device) {
  if (device != kernels::Device::kCuda) return DeviceMemory();
  size_t free_bytes = 0, total_bytes = 0;
  LOCKSTEP_CUDA_OK(cudaMemGetInfo(&free_bytes, &total_bytes));
  DeviceMemory m;
  m.free_bytes = static_cast<int64_t>(free_bytes);
  m.total_bytes = static_cast<int64_t>(total_bytes);
  return m;
}

absl::StatusOr<std::unique_ptr<DeviceStep>> DeviceStep::Create(DeviceStepOptions options) {
  if (options.config == nullptr || !options.forward) {
    return absl::InvalidArgumentError("DeviceStep needs a config and a forward");
  }
  try {
    auto step = std::make_unique<CudaDeviceStep>(std::move(options));
    LOCKSTEP_RETURN_IF_ERROR(step->Init());
    return std::unique_ptr<DeviceStep>(std::move(step));
  } catch (const std::exception& e) {
    return StatusFromException(e, "creating the device step failed");
  }
}

}  // namespace lockstep::common
