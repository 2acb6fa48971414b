#include "learner_service/trainer.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <utility>

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include <nlohmann/json.hpp>
#include <torch/cuda.h>
#include <torch/torch.h>
#include <torch/version.h>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/formats/checkpoint.h"
#include "common/formats/directory_tree.h"
#include "common/model/op_error.h"
#include "common/formats/safetensors.h"
#include "common/status/status_macros.h"
#include "common/model/moe_forward.h"
#include "common/model/sequence_logprobs.h"
#include "kernels/cpu/threading.h"

namespace lockstep::learner {
namespace {

namespace fs = std::filesystem;
using common::TensorMap;
using common::TorchWeights;

constexpr char kMasterFile[] = "master.safetensors";
constexpr char kOptimizerFile[] = "optimizer.pt";
constexpr char kStateFile[] = "trainer_state.json";
constexpr int kStateFormat = 1;

torch::Dtype TorchDType(kernels::DType dtype) {
  return dtype == kernels::DType::kF32 ? torch::kFloat32 : torch::kBFloat16;
}

// A LibTorch exception as a Status: a kernel's own code when an op carried
// one (common/op_error.h), INTERNAL otherwise.
absl::Status TorchError(const char* what, const c10::Error& e) {
  return common::StatusFromException(e, what);
}

// A float vector as a CPU tensor (copied).
torch::Tensor FloatTensor(const std::vector<float>& v) {
  return torch::from_blob(const_cast<float*>(v.data()),
                          {static_cast<int64_t>(v.size())}, torch::kFloat32)
      .clone();
}

absl::Status WriteTextFile(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) {
    return absl::InternalError(absl::StrCat("cannot write ", path.string()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadTextFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("cannot read ", path.string()));
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Writes a TensorMap as a safetensors file (names sorted, as in the map).
absl::Status WriteTensorMap(const fs::path& path, const TensorMap& tensors,
                            const std::map<std::string, std::string>& meta) {
  std::vector<common::TensorInfo> infos;
  infos.reserve(tensors.size());
  for (const auto& [name, t] : tensors) {
    common::TensorInfo info;
    info.name = name;
    info.dtype = t.dtype;
    info.shape = t.shape;
    info.data = t.data.data();
    info.nbytes = t.data.size();
    infos.push_back(std::move(info));
  }
  return common::WriteSafetensors(path.string(), infos, meta);
}

// An errno-derived error: "<what>: <strerror>".
absl::Status ErrnoError(int error_number, const std::string& what) {
  return absl::Status(absl::ErrnoToStatusCode(error_number),
                      absl::StrCat(what, ": ", std::strerror(error_number)));
}

// Flushes `path` (a file, or a directory's entries) to stable storage.
absl::Status Fsync(const std::string& path, bool directory) {
  const int fd =
      ::open(path.c_str(), O_RDONLY | O_CLOEXEC | (directory ? O_DIRECTORY : 0));
  if (fd < 0) {
    const int e = errno;
    return ErrnoError(e, absl::StrCat("cannot open ", path,
                                                   " to fsync it"));
  }
  const int r = ::fsync(fd);
  const int e = errno;
  ::close(fd);
  if (r != 0) return ErrnoError(e, absl::StrCat("fsync ", path));
  return absl::OkStatus();
}

// Every regular file directly in `dir` (a checkpoint has no subdirectories),
// then `dir` itself.
absl::Status FsyncDirectoryAndFiles(const fs::path& dir) {
  std::error_code ec;
  for (const fs::directory_entry& e : fs::directory_iterator(dir, ec)) {
    if (e.is_regular_file(ec)) {
      LOCKSTEP_RETURN_IF_ERROR(Fsync(e.path().string(), false));
    }
  }
  if (ec) {
    return absl::InternalError(
        absl::StrCat("cannot list ", dir.string(), ": ", ec.message()));
  }
  return Fsync(dir.string(), true);
}

// `dir` without trailing slashes ("a/b/" names the entry "b" of "a").
std::string WithoutTrailingSlash(std::string dir) {
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  return dir;
}

fs::path ParentOf(const fs::path& dir) {
  fs::path parent = dir.parent_path();
  return parent.empty() ? fs::path(".") : parent;
}

// Splits "NAME.tmp-PID" / "NAME.old-PID" into (NAME, kind, PID).
bool ParseLeftover(const std::string& entry, std::string* name,
                   std::string* kind, int64_t* pid) {
  for (const char* k : {".tmp-", ".old-"}) {
    const size_t at = entry.rfind(k);
    if (at == std::string::npos || at == 0) continue;
    const std::string digits = entry.substr(at + 5);
    if (digits.empty() ||
        digits.find_first_not_of("0123456789") != std::string::npos ||
        !absl::SimpleAtoi(digits, pid)) {
      continue;
    }
    *name = entry.substr(0, at);
    *kind = std::string(k + 1, 3);
    return true;
  }
  return false;
}

// True when another live process (which may be saving right now) has this
// PID. Our own PID is never "another": a learner restarted in a container
// often gets the PID its previous incarnation had, and this process saves
// one checkpoint at a time.
bool OtherProcessAlive(int64_t pid) {
  if (pid <= 0 || pid == static_cast<int64_t>(::getpid())) return false;
  return ::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM;
}

absl::StatusOr<TensorMap> ReadTensorMap(const fs::path& path) {
  LOCKSTEP_ASSIGN_OR_RETURN(auto file,
                            common::SafetensorsFile::Open(path.string()));
  TensorMap out;
  for (const common::TensorInfo& info : file->tensors()) {
    common::HostTensor t;
    t.dtype = info.dtype;
    t.shape = info.shape;
    t.data.assign(info.data, info.data + info.nbytes);
    out.emplace(info.name, std::move(t));
  }
  return out;
}

// Compares the learner's logprobs `learner` ([C], any device) of one
// trajectory with the rollout's `rollout` into *stats: tokens of another
// weight version than `version` count as stale, not compared.
absl::Status AccountMismatch(const Trajectory& t, const torch::Tensor& learner,
                             const std::vector<float>& rollout, int64_t version,
                             MismatchStats* stats) {
  const int64_t n = static_cast<int64_t>(t.completion_tokens.size());
  if (t.token_weight_versions.empty() && t.weight_version != version) {
    stats->tokens_stale += n;
    return absl::OkStatus();
  }
  torch::Tensor lp = learner.detach().to(torch::kCPU, torch::kFloat32).contiguous();
  if (lp.numel() != n) {
    return absl::InternalError(absl::StrCat("the forward returned ", lp.numel(),
                                            " logprobs for ", n, " completion tokens"));
  }
  const float* learner_lp = lp.data_ptr<float>();
  if (t.token_weight_versions.empty()) {
    CompareLogprobs(learner_lp, rollout.data(), n, stats);
    return absl::OkStatus();
  }
  for (int64_t k = 0; k < n; ++k) {
    if (t.token_weight_versions[k] == version) {
      CompareLogprobs(learner_lp + k, rollout.data() + k, 1, stats);
    } else {
      ++stats->tokens_stale;
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::pair<common::ModelConfig, TensorMap>> LoadModelDir(
    const std::string& dir) {
  LOCKSTEP_ASSIGN_OR_RETURN(common::Checkpoint checkpoint, common::LoadCheckpoint(dir));
  return std::make_pair(std::move(checkpoint.config), std::move(checkpoint.tensors));
}

absl::StatusOr<LossAggregation> ParseLossAggregation(const std::string& name) {
  if (name == "token-mean") return LossAggregation::kTokenMean;
  if (name == "seq-mean-token-mean") return LossAggregation::kSequenceMeanTokenMean;
  if (name == "seq-mean-token-sum") return LossAggregation::kSequenceMeanTokenSum;
  return absl::InvalidArgumentError(absl::StrCat(
      "loss aggregation must be token-mean, seq-mean-token-mean or seq-mean-token-sum, got '",
      name, "'"));
}

absl::StatusOr<KlEstimator> ParseKlEstimator(const std::string& name) {
  if (name == "k1") return KlEstimator::kK1;
  if (name == "k2") return KlEstimator::kK2;
  if (name == "k3") return KlEstimator::kK3;
  return absl::InvalidArgumentError(
      absl::StrCat("KL estimator must be k1, k2 or k3, got '", name, "'"));
}

absl::StatusOr<LrSchedule> ParseLrSchedule(const std::string& name) {
  if (name == "constant") return LrSchedule::kConstant;
  if (name == "linear") return LrSchedule::kLinear;
  if (name == "cosine") return LrSchedule::kCosine;
  return absl::InvalidArgumentError(
      absl::StrCat("learning-rate schedule must be constant, linear or cosine, got '", name, "'"));
}

namespace {

// What ScoreSequences gets for trajectories [begin, end) of a batch.
struct ScoreInputs {
  std::vector<std::vector<int32_t>> seqs;  // prompt + completion
  std::vector<int64_t> prefix;             // prompt lengths
  // One per sequence (null: none), or empty when no trajectory has one.
  std::vector<const common::SamplingSpec*> sampling;

  // Sequence i's policy logprobs in `scores`: under its sampling
  // distribution when it has one, else the raw ones.
  const torch::Tensor& Policy(const common::SequenceScores& scores, size_t i) const {
    return !sampling.empty() && sampling[i] != nullptr ? scores.sampled[i] : scores.raw[i];
  }
};

ScoreInputs InputsOf(const std::vector<Trajectory>& batch, size_t begin, size_t end) {
  ScoreInputs in;
  bool any_sampling = false;
  for (size_t i = begin; i < end; ++i) {
    const Trajectory& t = batch[i];
    std::vector<int32_t> seq = t.prompt_tokens;
    seq.insert(seq.end(), t.completion_tokens.begin(), t.completion_tokens.end());
    in.seqs.push_back(std::move(seq));
    in.prefix.push_back(static_cast<int64_t>(t.prompt_tokens.size()));
    in.sampling.push_back(t.sampling.has_value() ? &*t.sampling : nullptr);
    any_sampling = any_sampling || t.sampling.has_value();
  }
  if (!any_sampling) in.sampling.clear();
  return in;
}

// KL(pi || ref) per token from d = log ref - log pi (clamped like the ratio).
torch::Tensor KlPerToken(KlEstimator estimator, torch::Tensor d) {
  d = torch::clamp(d, -20.0, 20.0);
  switch (estimator) {
    case KlEstimator::kK1:
      return -d;
    case KlEstimator::kK2:
      return 0.5 * d * d;
    case KlEstimator::kK3:
      break;
  }
  return torch::exp(d) - d - 1.0;
}

// The schedule's learning rate of step `s` (0-based).
double ScheduledLearningRate(const TrainerOptions& o, int64_t s) {
  const double base = o.learning_rate;
  if (o.lr_warmup_steps > 0 && s < o.lr_warmup_steps) {
    return base * static_cast<double>(s + 1) / static_cast<double>(o.lr_warmup_steps);
  }
  if (o.lr_schedule == LrSchedule::kConstant) return base;
  const double span = static_cast<double>(o.lr_total_steps - o.lr_warmup_steps);
  const double progress =
      std::min(1.0, static_cast<double>(s - o.lr_warmup_steps) / std::max(1.0, span));
  const double shape = o.lr_schedule == LrSchedule::kLinear
                           ? 1.0 - progress
                           : 0.5 * (1.0 + std::cos(3.14159265358979323846 * progress));
  return base * (o.min_lr_ratio + (1.0 - o.min_lr_ratio) * shape);
}

}  // namespace

struct Trainer::Impl {
  TrainerOptions options;
  common::ModelConfig config;  // dtype = compute dtype
  torch::Device device = torch::kCPU;
  std::vector<std::string> names;     // parameter order (sorted HF names)
  std::vector<torch::Tensor> master;  // fp32, requires grad, per name
  std::unique_ptr<torch::optim::AdamW> optimizer;
  TorchWeights reference;  // compute copy of version 0 (kl_coef > 0 only)
  // The current snapshot (handed out as const) and the one before it,
  // kept for reuse (RefreshSnapshot).
  std::shared_ptr<TensorMap> snapshot;
  std::shared_ptr<TensorMap> spare;
  // Atomic: read without the caller's lock by Validate/Status while a step
  // runs.
  std::atomic<int64_t> step{0};
  std::atomic<int64_t> version{0};

  // The compute copy as autograd sees it: master itself for f32, a
  // differentiable cast for bf16.
  TorchWeights ComputeCopy(bool detached) const {
    TorchWeights w;
    const torch::Dtype dt = TorchDType(config.dtype);
    for (size_t i = 0; i < names.size(); ++i) {
      torch::Tensor t = detached ? master[i].detach() : master[i];
      w.emplace(names[i], t.dtype() == dt ? t : t.to(dt));
    }
    return w;
  }

  // Host copy of the detached compute weights: what a push sends. Written
  // into the previous step's snapshot (`spare`) when no push holds it any
  // more, so a step copies each tensor once, device to host, into memory
  // that is already mapped (a fresh 3.4 GB map costs more in page faults
  // than the copy); otherwise into a new map. The current snapshot is never
  // written: on failure it stays what pushes send. Host memory: two copies
  // of the compute weights.
  absl::Status RefreshSnapshot() {
    std::shared_ptr<TensorMap> target =
        spare != nullptr && spare.use_count() == 1 ? std::move(spare)
                                                   : std::make_shared<TensorMap>();
    spare = nullptr;
    try {
      torch::NoGradGuard no_grad;
      TorchWeights w = ComputeCopy(/*detached=*/true);
      if (target->size() != w.size()) target->clear();
      for (auto& [name, t] : w) {
        torch::Tensor c = t.detach();
        if (c.scalar_type() != torch::kBFloat16 && c.scalar_type() != torch::kFloat) {
          c = c.to(torch::kFloat);
        }
        common::HostTensor& h = (*target)[name];
        h.dtype = c.scalar_type() == torch::kBFloat16 ? kernels::DType::kBF16
                                                      : kernels::DType::kF32;
        h.shape = c.sizes().vec();
        const size_t bytes = static_cast<size_t>(c.numel()) * c.element_size();
        if (h.data.size() != bytes) h.data.resize(bytes);
        torch::from_blob(h.data.data(), c.sizes(), c.options().device(torch::kCPU)).copy_(c);
      }
    } catch (const c10::Error& e) {
      spare = std::move(target);
      return TorchError("snapshot of the compute weights", e);
    }
    spare = std::move(snapshot);
    snapshot = std::move(target);
    return absl::OkStatus();
  }

  // AdamW over `params` (in `names` order). With weight decay and the
  // default exclusions: two groups, the 2-D+ tensors with decay, the 1-D
  // ones (norm weights, biases) without.
  std::unique_ptr<torch::optim::AdamW> MakeOptimizer(
      const std::vector<torch::Tensor>& params) const {
    auto opts = torch::optim::AdamWOptions(options.learning_rate)
                    .betas({options.adam_beta1, options.adam_beta2})
                    .eps(options.adam_eps)
                    .weight_decay(options.weight_decay);
    if (options.weight_decay == 0.0 || options.decay_norms_and_biases) {
      return std::make_unique<torch::optim::AdamW>(params, opts);
    }
    std::vector<torch::Tensor> decay, keep;
    for (const torch::Tensor& p : params) (p.dim() >= 2 ? decay : keep).push_back(p);
    auto no_decay = std::make_unique<torch::optim::AdamWOptions>(opts);
    no_decay->weight_decay(0.0);
    std::vector<torch::optim::OptimizerParamGroup> groups;
    groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(opts));
    groups.emplace_back(keep, std::move(no_decay));
    return std::make_unique<torch::optim::AdamW>(std::move(groups), opts);
  }

  // The reference policy's logprobs of every trajectory of `batch` (no
  // grad), under the distribution each one is trained with.
  absl::StatusOr<std::vector<torch::Tensor>> ReferenceLogprobs(
      const std::vector<Trajectory>& batch) const;
};

absl::StatusOr<std::vector<torch::Tensor>> Trainer::Impl::ReferenceLogprobs(
    const std::vector<Trajectory>& batch) const {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> out;
  out.reserve(batch.size());
  for (size_t begin = 0; begin < batch.size();
       begin += static_cast<size_t>(options.micro_batch_size)) {
    const size_t end =
        std::min(batch.size(), begin + static_cast<size_t>(options.micro_batch_size));
    const ScoreInputs in = InputsOf(batch, begin, end);
    LOCKSTEP_ASSIGN_OR_RETURN(
        common::SequenceScores r,
        common::ScoreSequences(config, reference, options.mode, in.seqs, in.prefix, in.sampling));
    for (size_t i = 0; i < in.seqs.size(); ++i) out.push_back(in.Policy(r, i).to(torch::kFloat32));
  }
  return out;
}

Trainer::Trainer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Trainer::~Trainer() = default;

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(
    const TrainerOptions& options) {
  if (options.learning_rate <= 0 || !std::isfinite(options.learning_rate)) {
    return absl::InvalidArgumentError("learning rate must be > 0");
  }
  if (options.micro_batch_size <= 0) {
    return absl::InvalidArgumentError("micro_batch_size must be > 0");
  }
  if (options.clip_ratio_low < 0 || options.clip_ratio_low >= 1 ||
      options.clip_ratio_high < 0) {
    return absl::InvalidArgumentError(
        "clip ratios must satisfy 0 <= low < 1 and high >= 0");
  }
  if (options.kl_coef < 0 || !std::isfinite(options.kl_coef)) {
    return absl::InvalidArgumentError("kl_coef must be >= 0");
  }
  if (!(options.clip_ratio_c == 0.0 || options.clip_ratio_c > 1.0) ||
      !std::isfinite(options.clip_ratio_c)) {
    return absl::InvalidArgumentError("clip_ratio_c (dual clip) must be 0 (off) or > 1");
  }
  if (options.weight_decay < 0 || !std::isfinite(options.weight_decay)) {
    return absl::InvalidArgumentError("weight_decay must be >= 0");
  }
  if (options.lr_warmup_steps < 0) {
    return absl::InvalidArgumentError("lr_warmup_steps must be >= 0");
  }
  if (options.lr_schedule != LrSchedule::kConstant &&
      options.lr_total_steps <= options.lr_warmup_steps) {
    return absl::InvalidArgumentError(
        "a linear or cosine schedule needs lr_total_steps > lr_warmup_steps");
  }
  if (!(options.min_lr_ratio >= 0.0 && options.min_lr_ratio <= 1.0)) {
    return absl::InvalidArgumentError("min_lr_ratio must be in [0, 1]");
  }
  if (options.entropy_coef < 0 || !std::isfinite(options.entropy_coef)) {
    return absl::InvalidArgumentError("entropy_coef must be >= 0");
  }
  if (options.router_aux_loss_coef < 0 || !std::isfinite(options.router_aux_loss_coef)) {
    return absl::InvalidArgumentError("router_aux_loss_coef must be >= 0");
  }
  if (options.router_aux_loss_coef > 0 && options.checkpoint_layers) {
    return absl::InvalidArgumentError(
        "router_aux_loss_coef > 0 needs the router logits, which checkpoint_layers does not keep");
  }
  if (!options.reference_model_dir.empty() && options.kl_coef == 0.0) {
    return absl::InvalidArgumentError("a reference model needs kl_coef > 0");
  }
  LOCKSTEP_ASSIGN_OR_RETURN(auto loaded, LoadModelDir(options.model_dir));
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->config = std::move(loaded.first);
  if (options.router_aux_loss_coef > 0 && !impl->config.IsMoe()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "router_aux_loss_coef > 0 needs a mixture-of-experts model; ", options.model_dir,
        " is ", impl->config.model_type));
  }
  if (options.compute_dtype.has_value()) {
    impl->config.dtype = *options.compute_dtype;
  }
  if (options.device == kernels::Device::kCuda) {
    // cuBLAS is only deterministic with a fixed workspace configuration;
    // it must be set before the first cuBLAS handle exists.
    setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8", /*overwrite=*/0);
    impl->device = torch::Device(torch::kCUDA, 0);
    at::globalContext().setAllowTF32CuBLAS(options.allow_tf32);
  }
  if (options.num_threads > 0) kernels::SetNumThreads(options.num_threads);
  if (options.torch_threads > 0) torch::set_num_threads(options.torch_threads);
  try {
    at::globalContext().setDeterministicAlgorithms(true, /*warn_only=*/false);
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1)
    // LibTorch >= 2.1 then also fills every new tensor from torch::empty with
    // NaN (a debugging aid): on the GPU that was ~60k fill kernels per
    // training step (one per kernel output and autograd buffer). Every op
    // here writes its outputs before they are read, so the fill buys nothing.
    at::globalContext().setDeterministicFillUninitializedMemory(false);
#endif
    TorchWeights host = common::ToTorch(loaded.second);
    for (auto& [name, t] : host) {
      impl->names.push_back(name);
      impl->master.push_back(t.to(impl->device, torch::kFloat32)
                                 .contiguous()
                                 .clone()
                                 .set_requires_grad(true));
    }
    impl->optimizer = impl->MakeOptimizer(impl->master);
    if (options.kl_coef > 0 && options.reference_model_dir.empty()) {
      for (auto& [name, t] : impl->ComputeCopy(/*detached=*/true)) {
        impl->reference.emplace(name, t.clone());
      }
    }
  } catch (const c10::Error& e) {
    return TorchError("building the master weights", e);
  }
  if (!options.reference_model_dir.empty()) {
    // The frozen reference: its own checkpoint, of the same model.
    LOCKSTEP_ASSIGN_OR_RETURN(auto ref, LoadModelDir(options.reference_model_dir));
    common::ModelConfig ref_config = ref.first;
    ref_config.dtype = impl->config.dtype;
    if (ref_config != impl->config) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the reference model ", options.reference_model_dir,
          " has another config than the trained model"));
    }
    try {
      const torch::Dtype dt = TorchDType(impl->config.dtype);
      for (auto& [name, t] : common::ToTorch(ref.second)) {
        impl->reference.emplace(name, t.to(impl->device, torch::kFloat32).to(dt).contiguous());
      }
    } catch (const c10::Error& e) {
      return TorchError("loading the reference model", e);
    }
    if (impl->reference.size() != impl->names.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the reference model ", options.reference_model_dir, " has ",
          impl->reference.size(), " tensors, the trained model ", impl->names.size()));
    }
  }
  LOCKSTEP_RETURN_IF_ERROR(impl->RefreshSnapshot());
  return std::unique_ptr<Trainer>(new Trainer(std::move(impl)));
}

absl::Status Trainer::ValidateTrajectory(const Trajectory& t) const {
  const int64_t vocab = impl_->config.vocab_size;
  if (t.prompt_tokens.empty()) {
    return absl::InvalidArgumentError("empty prompt");
  }
  if (t.completion_tokens.empty()) {
    return absl::InvalidArgumentError("empty completion");
  }
  const int64_t len = static_cast<int64_t>(t.prompt_tokens.size() +
                                           t.completion_tokens.size());
  if (len > impl_->config.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prompt + completion is ", len, " tokens, more than the model's ",
        impl_->config.max_position_embeddings, " positions"));
  }
  LOCKSTEP_RETURN_IF_ERROR(common::CheckTokenIds(t.prompt_tokens, vocab, "prompt"));
  LOCKSTEP_RETURN_IF_ERROR(common::CheckTokenIds(t.completion_tokens, vocab, "completion"));
  if (t.rollout_logprobs.size() != t.completion_tokens.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "rollout_logprobs has ", t.rollout_logprobs.size(),
        " entries but the completion has ", t.completion_tokens.size(),
        " tokens"));
  }
  for (float lp : t.rollout_logprobs) {
    if (!std::isfinite(lp) || lp > 0.0f) {
      return absl::InvalidArgumentError(
          absl::StrCat("rollout logprob ", lp, " is not a finite value <= 0"));
    }
  }
  if (t.sampling.has_value()) {
    LOCKSTEP_RETURN_IF_ERROR(common::CheckSamplingSpec(*t.sampling, vocab));
    if (t.rollout_sampled_logprobs.size() != t.completion_tokens.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "rollout_sampled_logprobs has ", t.rollout_sampled_logprobs.size(),
          " entries but the completion has ", t.completion_tokens.size(), " tokens"));
    }
    for (float lp : t.rollout_sampled_logprobs) {
      if (!std::isfinite(lp) || lp > 0.0f) {
        return absl::InvalidArgumentError(absl::StrCat(
            "rollout sampled logprob ", lp, " is not a finite value <= 0"));
      }
    }
  } else if (!t.rollout_sampled_logprobs.empty()) {
    return absl::InvalidArgumentError(
        "rollout_sampled_logprobs given without the sampling parameters");
  }
  if (!std::isfinite(t.reward)) {
    return absl::InvalidArgumentError("reward is not finite");
  }
  if (!t.loss_mask.empty()) {
    if (t.loss_mask.size() != t.completion_tokens.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "loss_mask has ", t.loss_mask.size(), " entries but the completion has ",
          t.completion_tokens.size(), " tokens"));
    }
    bool any = false;
    for (uint8_t m : t.loss_mask) {
      if (m > 1) return absl::InvalidArgumentError("loss_mask entries must be 0 or 1");
      any = any || m == 1;
    }
    if (!any) return absl::InvalidArgumentError("loss_mask trains on no token");
  }
  if (!t.advantages.empty()) {
    if (t.advantages.size() != t.completion_tokens.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "advantages has ", t.advantages.size(), " entries but the completion has ",
          t.completion_tokens.size(), " tokens"));
    }
    for (float a : t.advantages) {
      if (!std::isfinite(a)) return absl::InvalidArgumentError("an advantage is not finite");
    }
  }
  if (t.group_id.empty()) {
    return absl::InvalidArgumentError("empty group id");
  }
  if (t.weight_version < 0 || t.weight_version > impl_->version) {
    return absl::InvalidArgumentError(absl::StrCat(
        "weight version ", t.weight_version,
        " is unknown (the learner is at version ", impl_->version.load(), ")"));
  }
  if (!t.token_weight_versions.empty()) {
    if (t.token_weight_versions.size() != t.completion_tokens.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "token_weight_versions has ", t.token_weight_versions.size(),
          " entries but the completion has ", t.completion_tokens.size(),
          " tokens"));
    }
    for (int64_t v : t.token_weight_versions) {
      if (v < 0 || v > impl_->version) {
        return absl::InvalidArgumentError(absl::StrCat(
            "token weight version ", v, " is unknown (the learner is at "
            "version ", impl_->version.load(), ")"));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<StepResult> Trainer::Step(const std::vector<Trajectory>& batch) {
  const auto start = std::chrono::steady_clock::now();
  if (batch.empty()) return absl::InvalidArgumentError("empty batch");
  for (size_t i = 0; i < batch.size(); ++i) {
    absl::Status s = ValidateTrajectory(batch[i]);
    if (!s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("trajectory ", i, ": ", s.message()));
    }
  }
  Impl& m = *impl_;
  const TrainerOptions& o = m.options;

  StepResult result;
  std::vector<float> rewards;
  std::vector<std::string> group_ids;
  rewards.reserve(batch.size());
  group_ids.reserve(batch.size());
  // Trained tokens (loss_mask 1) per trajectory and in all.
  std::vector<int64_t> trained(batch.size());
  int64_t total_tokens = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    const Trajectory& t = batch[i];
    rewards.push_back(t.reward);
    group_ids.push_back(t.group_id);
    trained[i] = t.loss_mask.empty()
                     ? static_cast<int64_t>(t.completion_tokens.size())
                     : std::count(t.loss_mask.begin(), t.loss_mask.end(), uint8_t{1});
    total_tokens += trained[i];
  }
  const std::vector<int64_t> groups = GroupIndices(group_ids);
  result.num_trajectories = static_cast<int64_t>(batch.size());
  result.num_groups =
      groups.empty() ? 0 : *std::max_element(groups.begin(), groups.end()) + 1;
  result.num_tokens = total_tokens;
  result.reward = ComputeRewardStats(rewards);
  result.learning_rate = ScheduledLearningRate(o, m.step);

  // Each token's weight in the step's loss (the aggregation mode), masked
  // tokens 0: loss = sum over tokens of weight * per-token loss.
  const double num_seqs = static_cast<double>(batch.size());
  auto token_scale = [&](size_t i) {
    switch (o.loss_aggregation) {
      case LossAggregation::kSequenceMeanTokenMean:
        return 1.0 / (static_cast<double>(trained[i]) * num_seqs);
      case LossAggregation::kSequenceMeanTokenSum:
        return 1.0 / num_seqs;
      case LossAggregation::kTokenMean:
        break;
    }
    return 1.0 / static_cast<double>(total_tokens);
  };
  // The behaviour policy of a trajectory: the distribution it was sampled from.
  auto behaviour = [](const Trajectory& t) -> const std::vector<float>& {
    return t.sampling.has_value() ? t.rollout_sampled_logprobs : t.rollout_logprobs;
  };
  auto mask_of = [](const Trajectory& t) {
    std::vector<float> mask(t.completion_tokens.size(), 1.0f);
    for (size_t k = 0; k < t.loss_mask.size(); ++k) mask[k] = t.loss_mask[k];
    return mask;
  };

  // Phase clock: the seconds since the last mark, after the device's queue
  // drained (CUDA), added to *phase.
  const bool on_gpu = m.device.is_cuda();
  auto last = std::chrono::steady_clock::now();
  auto mark = [&](double* phase) {
    if (on_gpu) torch::cuda::synchronize();
    const auto now = std::chrono::steady_clock::now();
    *phase += std::chrono::duration<double>(now - last).count();
    last = now;
  };
  double unattributed = 0.0;

  double policy_sum = 0.0;
  double kl_sum = 0.0;  // sum over trained tokens of the per-token KL
  double entropy_sum = 0.0;
  double aux_sum = 0.0;  // sum over trajectories of the load-balancing loss
  const bool aux = o.router_aux_loss_coef > 0;
  int64_t clipped = 0;
  try {
    std::vector<torch::Tensor> reference;  // [trajectory] logprobs, kl_coef > 0
    mark(&unattributed);
    if (o.kl_coef > 0) {
      LOCKSTEP_ASSIGN_OR_RETURN(reference, m.ReferenceLogprobs(batch));
    }
    mark(&result.reference_seconds);
    if (o.kl_coef > 0 && o.kl_in_reward) {
      // The penalty goes into the rewards (the rollout's logprobs as the
      // policy: the distribution that produced the tokens), then the
      // advantages; the loss then has no KL term.
      torch::NoGradGuard no_grad;
      for (size_t i = 0; i < batch.size(); ++i) {
        const Trajectory& t = batch[i];
        torch::Tensor pi = FloatTensor(behaviour(t)).to(m.device);
        torch::Tensor k = KlPerToken(o.kl_estimator, reference[i] - pi) *
                          FloatTensor(mask_of(t)).to(m.device);
        const double seq_kl = k.sum().item<double>();
        kl_sum += seq_kl;
        rewards[i] = static_cast<float>(rewards[i] - o.kl_coef * seq_kl);
      }
    }
    const std::vector<float> adv = GroupRelativeAdvantages(rewards, groups, o.advantages);

    // One forward and backward per trajectory, its gradient added to
    // grad_sum in batch order: each trajectory's gradient is computed alone
    // (the weight gradients' sums over tokens never mix two trajectories),
    // and the contributions are summed in one fixed order, so the update
    // does not depend on how trajectories would be grouped into micro-
    // batches. The per-token weights (token_scale) and the advantages are
    // batch-global, so each trajectory's loss is the same whatever the
    // grouping. Memory: grad_sum plus one trajectory's gradient.
    m.optimizer->zero_grad();
    for (torch::Tensor& p : m.master) p.mutable_grad() = torch::Tensor();
    std::vector<torch::Tensor> grad_sum(m.master.size());
    auto fail = [&](absl::Status s) {
      m.optimizer->zero_grad();
      return s;
    };
    for (size_t i = 0; i < batch.size(); ++i) {
      const Trajectory& t = batch[i];
      const ScoreInputs in = InputsOf(batch, i, i + 1);
      const std::vector<float> token_adv =
          t.advantages.empty() ? std::vector<float>(t.completion_tokens.size(), adv[i])
                               : t.advantages;
      std::vector<float> token_weight;
      const double scale = token_scale(i);
      for (float mk : mask_of(t)) token_weight.push_back(static_cast<float>(mk * scale));
      mark(&unattributed);
      TorchWeights weights = m.ComputeCopy(/*detached=*/false);
      common::ScoreOptions score_options;
      score_options.entropy = o.entropy_coef > 0;
      score_options.checkpoint_layers = o.checkpoint_layers;
      score_options.routing = aux;
      absl::StatusOr<common::SequenceScores> scores = common::ScoreSequences(
          m.config, weights, o.mode, in.seqs, in.prefix, in.sampling, score_options);
      if (!scores.ok()) return fail(scores.status());
      // Mismatch accounting from this same forward: no extra pass.
      absl::Status s =
          AccountMismatch(t, scores->raw[0], t.rollout_logprobs, m.version, &result.mismatch);
      if (s.ok() && t.sampling.has_value()) {
        s = AccountMismatch(t, scores->sampled[0], t.rollout_sampled_logprobs, m.version,
                            &result.sampled_mismatch);
      }
      if (!s.ok()) return fail(s);
      // The policy logprob of every token: under its sampling distribution
      // when the trajectory has one, else the raw one.
      torch::Tensor lp = in.Policy(*scores, 0).to(torch::kFloat32);
      torch::Tensor old = FloatTensor(behaviour(t)).to(m.device);
      torch::Tensor a = FloatTensor(token_adv).to(m.device);
      torch::Tensor w = FloatTensor(token_weight).to(m.device);
      // Behaviour policy = the rollout's logprobs: in invariant mode they are
      // the learner's own bits, so the ratio is exactly 1 on-policy and the
      // clip only acts on genuinely stale tokens.
      torch::Tensor log_ratio = torch::clamp(lp - old, -20.0, 20.0);
      torch::Tensor ratio = torch::exp(log_ratio);
      torch::Tensor pg1 = -a * ratio;
      torch::Tensor pg2 =
          -a * torch::clamp(ratio, 1.0 - o.clip_ratio_low, 1.0 + o.clip_ratio_high);
      torch::Tensor pg = torch::max(pg1, pg2);
      torch::Tensor active = pg2 > pg1;
      if (o.clip_ratio_c > 0) {
        // Dual clip: a negative advantage's loss is bounded by -A * c.
        torch::Tensor pg3 = -a * o.clip_ratio_c;
        torch::Tensor capped = torch::min(pg, pg3);
        active = active | ((a < 0) & (pg3 < pg));
        pg = torch::where(a < 0, capped, pg);
      }
      // The reported sums: per trajectory, added in batch order (doubles),
      // like the gradients.
      torch::Tensor loss = (pg * w).sum();
      policy_sum += loss.detach().item<double>();
      clipped += (active & (w > 0)).sum().item<int64_t>();
      if (o.kl_coef > 0 && !o.kl_in_reward) {
        torch::Tensor k = KlPerToken(o.kl_estimator, reference[i] - lp);
        kl_sum += (k.detach() * (w > 0).to(torch::kFloat32)).sum().item<double>();
        loss = loss + (k * w).sum() * o.kl_coef;
      }
      if (o.entropy_coef > 0) {
        const torch::Tensor& h = scores->entropy[0];
        entropy_sum += (h.detach() * (w > 0).to(torch::kFloat32)).sum().item<double>();
        loss = loss - (h * w).sum() * o.entropy_coef;
      }
      if (aux && !scores->routing.empty()) {
        torch::Tensor lb = common::LoadBalancingLoss(scores->routing, m.config.num_experts);
        aux_sum += lb.detach().item<double>();
        loss = loss + lb * (o.router_aux_loss_coef / static_cast<double>(batch.size()));
      }
      mark(&result.forward_seconds);
      loss.backward();
      if (scores->checkpoint != nullptr) {
        absl::Status back = scores->checkpoint->Backward();
        if (!back.ok()) return fail(back);
      }
      mark(&result.backward_seconds);
      // p.grad is this trajectory's gradient alone (it was undefined before
      // the backward); move it into the sum.
      for (size_t k = 0; k < m.master.size(); ++k) {
        torch::Tensor& g = m.master[k].mutable_grad();
        if (!g.defined()) continue;
        if (grad_sum[k].defined()) {
          grad_sum[k].add_(g);
        } else {
          grad_sum[k] = g;
        }
        g = torch::Tensor();
      }
    }
    for (size_t k = 0; k < m.master.size(); ++k) {
      m.master[k].mutable_grad() = std::move(grad_sum[k]);
    }
    mark(&unattributed);
    std::vector<torch::Tensor> grads_present;
    for (const torch::Tensor& p : m.master) {
      if (p.grad().defined()) grads_present.push_back(p);
    }
    const double max_norm = o.max_grad_norm > 0
                                ? o.max_grad_norm
                                : std::numeric_limits<double>::infinity();
    const double norm =
        torch::nn::utils::clip_grad_norm_(grads_present, max_norm);
    if (!std::isfinite(norm)) {
      m.optimizer->zero_grad();
      return absl::InternalError(
          "non-finite gradient norm; the update was not applied");
    }
    result.grad_norm = norm;
    for (auto& group : m.optimizer->param_groups()) {
      static_cast<torch::optim::AdamWOptions&>(group.options()).lr(result.learning_rate);
    }
    m.optimizer->step();
    m.optimizer->zero_grad();
    mark(&result.optimizer_seconds);
  } catch (const c10::Error& e) {
    m.optimizer->zero_grad();
    return TorchError("training step", e);
  }
  // From here on the step is committed; nothing below can fail halfway
  // (a snapshot failure keeps the previous snapshot and is reported).
  ++m.step;
  ++m.version;
  absl::Status snap = m.RefreshSnapshot();
  mark(&result.snapshot_seconds);
  result.step = m.step;
  result.weight_version = m.version;
  result.policy_loss = policy_sum;
  result.kl = kl_sum / static_cast<double>(total_tokens);
  result.entropy = entropy_sum / static_cast<double>(total_tokens);
  result.loss = (o.kl_in_reward ? result.policy_loss : result.policy_loss + o.kl_coef * result.kl);
  // The bonus in the loss is aggregated like the policy loss; reported as
  // the mean per token. With token-mean aggregation the two agree.
  if (o.entropy_coef > 0) result.loss -= o.entropy_coef * result.entropy;
  result.router_aux_loss = aux_sum / static_cast<double>(batch.size());
  if (aux) result.loss += o.router_aux_loss_coef * result.router_aux_loss;
  result.clip_fraction =
      static_cast<double>(clipped) / static_cast<double>(total_tokens);
  result.seconds = std::chrono::duration<double>(
                       std::chrono::steady_clock::now() - start)
                       .count();
  if (!snap.ok()) return snap;
  return result;
}

absl::StatusOr<std::vector<std::vector<float>>> Trainer::ComputeLogprobs(
    const std::vector<std::vector<int32_t>>& sequences,
    const std::vector<int64_t>& prefix_lens,
    const std::vector<const common::SamplingSpec*>& sampling,
    std::vector<std::vector<float>>* sampled) {
  if (sequences.size() != prefix_lens.size()) {
    return absl::InvalidArgumentError(
        "sequences and prefix_lens differ in length");
  }
  if (!sampling.empty() && (sampling.size() != sequences.size() || sampled == nullptr)) {
    return absl::InvalidArgumentError("sampling must be empty or one per sequence");
  }
  for (size_t s = 0; s < sampling.size(); ++s) {
    if (sampling[s] == nullptr) continue;
    absl::Status st = common::CheckSamplingSpec(*sampling[s], impl_->config.vocab_size);
    if (!st.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", s, ": ", st.message()));
    }
  }
  for (size_t s = 0; s < sequences.size(); ++s) {
    const int64_t len = static_cast<int64_t>(sequences[s].size());
    if (prefix_lens[s] < 1 || prefix_lens[s] >= len) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sequence ", s, ": prefix length ", prefix_lens[s],
          " must be in [1, ", len, ")"));
    }
    if (len > impl_->config.max_position_embeddings) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence ", s, " is longer than the model's context"));
    }
    LOCKSTEP_RETURN_IF_ERROR(common::CheckTokenIds(sequences[s], impl_->config.vocab_size,
                                                   absl::StrCat("sequence ", s)));
  }
  std::vector<std::vector<float>> out;
  try {
    torch::NoGradGuard no_grad;
    TorchWeights w = impl_->ComputeCopy(/*detached=*/true);
    LOCKSTEP_ASSIGN_OR_RETURN(
        common::SequenceScores scores,
        common::ScoreSequences(impl_->config, w, impl_->options.mode, sequences, prefix_lens,
                               sampling));
    const auto host = [](const torch::Tensor& t) {
      torch::Tensor c = t.to(torch::kCPU, torch::kFloat32).contiguous();
      return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
    };
    for (const torch::Tensor& t : scores.raw) out.push_back(host(t));
    if (!sampling.empty()) {
      sampled->assign(sequences.size(), {});
      for (size_t s = 0; s < sampling.size(); ++s) {
        if (sampling[s] != nullptr) (*sampled)[s] = host(scores.sampled[s]);
      }
    }
  } catch (const c10::Error& e) {
    return TorchError("ComputeLogprobs", e);
  }
  return out;
}

std::shared_ptr<const TensorMap> Trainer::compute_weights() const {
  return impl_->snapshot;
}

TensorMap Trainer::MasterWeights() const {
  TorchWeights w;
  for (size_t i = 0; i < impl_->names.size(); ++i) {
    w.emplace(impl_->names[i],
              impl_->master[i].detach().to(torch::kCPU).contiguous().clone());
  }
  return common::FromTorch(w);
}

absl::Status Trainer::SaveCheckpoint(
    const std::string& dir_arg,
    const std::map<std::string, std::string>& extra) const {
  const Impl& m = *impl_;
  const std::string dir = WithoutTrailingSlash(dir_arg);
  const fs::path final_dir(dir);
  const fs::path tmp = fs::path(dir + ".tmp-" + std::to_string(::getpid()));
  std::error_code ec;
  // Not fs::remove_all: see common/directory_tree.h (PyTorch's libtorch
  // interposes it on the GPU build).
  (void)common::RemoveDirectoryTree(tmp.string());
  fs::create_directories(tmp, ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("cannot create ", tmp.string(), ": ", ec.message()));
  }
  auto fail = [&](absl::Status s) {
    (void)common::RemoveDirectoryTree(tmp.string());
    return s;
  };
  try {
    const std::map<std::string, std::string> meta = {
        {"step", std::to_string(m.step.load())},
        {"weight_version", std::to_string(m.version.load())}};
    absl::Status s = WriteTensorMap(tmp / kMasterFile, MasterWeights(), meta);
    if (!s.ok()) return fail(s);
    s = WriteTensorMap(tmp / "model.safetensors", *m.snapshot, meta);
    if (!s.ok()) return fail(s);
    s = WriteTextFile(tmp / "config.json", m.config.ToJson());
    if (!s.ok()) return fail(s);
    torch::serialize::OutputArchive archive;
    m.optimizer->save(archive);
    archive.save_to((tmp / kOptimizerFile).string());
  } catch (const c10::Error& e) {
    return fail(TorchError("saving the optimizer state", e));
  }
  nlohmann::json state;
  state["format"] = kStateFormat;
  state["step"] = m.step.load();
  state["weight_version"] = m.version.load();
  state["kernels"] = std::string(common::KernelModeName(m.options.mode));
  state["compute_dtype"] = std::string(kernels::DTypeName(m.config.dtype));
  state["learning_rate"] = m.options.learning_rate;
  state["parameters"] = m.names;
  state["extra"] = extra;
  absl::Status s = WriteTextFile(tmp / kStateFile, state.dump(2));
  if (!s.ok()) return fail(s);
  // Durable before it is published: every file and the directory itself.
  s = FsyncDirectoryAndFiles(tmp);
  if (!s.ok()) return fail(s);
  LOCKSTEP_RETURN_IF_ERROR(PublishCheckpointDir(tmp.string(), dir));
  // Leftovers of earlier crashed saves of this name (never another live
  // process's save in progress).
  if (!final_dir.filename().empty()) {
    (void)CleanCheckpointLeftovers(ParentOf(final_dir).string(),
                                   final_dir.filename().string());
  }
  return absl::OkStatus();
}

absl::Status PublishCheckpointDir(const std::string& tmp,
                                  const std::string& dir) {
  const fs::path final_dir(dir);
  const std::string parent = ParentOf(final_dir).string();
  auto fail = [&](absl::Status s) {
    (void)common::RemoveDirectoryTree(tmp);
    return s;
  };
  std::error_code ec;
  if (!fs::exists(final_dir, ec)) {
    if (::rename(tmp.c_str(), dir.c_str()) != 0) {
      const int e = errno;
      return fail(
          ErrnoError(e, absl::StrCat("cannot publish checkpoint ", dir)));
    }
    return Fsync(parent, true);
  }
  // Swap the finished directory with the old one in one step: at every
  // moment `dir` is a complete checkpoint (the old, then the new one).
  if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, dir.c_str(),
                  RENAME_EXCHANGE) == 0) {
    LOCKSTEP_RETURN_IF_ERROR(Fsync(parent, true));
    // `tmp` now holds the old checkpoint.
    (void)common::RemoveDirectoryTree(tmp);
    return absl::OkStatus();
  }
  if (const int e = errno; e != EINVAL && e != ENOSYS && e != EOPNOTSUPP) {
    return fail(ErrnoError(
        e, absl::StrCat("cannot publish checkpoint ", dir)));
  }
  // A file system without RENAME_EXCHANGE: move the old one aside to
  // DIR.old-PID first. Until the second rename lands `dir` is absent, and
  // LoadCheckpoint / CleanCheckpointLeftovers fall back to that complete old
  // copy.
  const std::string old = dir + ".old-" + std::to_string(::getpid());
  (void)common::RemoveDirectoryTree(old);
  if (::rename(dir.c_str(), old.c_str()) != 0) {
    const int e = errno;
    return fail(ErrnoError(
        e, absl::StrCat("cannot move the old checkpoint ", dir, " aside")));
  }
  LOCKSTEP_RETURN_IF_ERROR(Fsync(parent, true));
  if (::rename(tmp.c_str(), dir.c_str()) != 0) {
    const int e = errno;
    (void)::rename(old.c_str(), dir.c_str());  // put the old one back
    return fail(ErrnoError(
        e, absl::StrCat("cannot publish checkpoint ", dir)));
  }
  LOCKSTEP_RETURN_IF_ERROR(Fsync(parent, true));
  (void)common::RemoveDirectoryTree(old);
  return absl::OkStatus();
}

absl::StatusOr<int> CleanCheckpointLeftovers(const std::string& root,
                                             const std::string& only_name) {
  DIR* d = ::opendir(root.c_str());
  if (d == nullptr) {
    const int e = errno;
    if (e == ENOENT) return 0;
    return ErrnoError(e, absl::StrCat("cannot list ", root));
  }
  std::vector<std::string> entries;
  while (const struct dirent* e = ::readdir(d)) entries.emplace_back(e->d_name);
  ::closedir(d);
  // .old copies first: one may be the only complete copy of its name.
  std::sort(entries.begin(), entries.end(),
            [](const std::string& a, const std::string& b) {
              const bool ao = a.find(".old-") != std::string::npos;
              const bool bo = b.find(".old-") != std::string::npos;
              return ao != bo ? ao : a < b;
            });
  absl::Status first_error;
  int cleaned = 0;
  for (const std::string& entry : entries) {
    std::string name, kind;
    int64_t pid = 0;
    if (!ParseLeftover(entry, &name, &kind, &pid)) continue;
    if (!only_name.empty() && name != only_name) continue;
    if (OtherProcessAlive(pid)) continue;
    const fs::path path = fs::path(root) / entry;
    const fs::path published = fs::path(root) / name;
    std::error_code ec;
    if (kind == "old" && !fs::exists(published, ec) &&
        fs::exists(path / kStateFile, ec)) {
      // A save crashed between its two renames: the old copy is the
      // checkpoint.
      if (::rename(path.c_str(), published.c_str()) == 0) {
        (void)Fsync(root, true);
        ++cleaned;
        continue;
      }
    }
    absl::Status s = common::RemoveDirectoryTree(path.string());
    if (s.ok()) {
      ++cleaned;
    } else if (first_error.ok()) {
      first_error = s;
    }
  }
  if (cleaned > 0) (void)Fsync(root, true);
  if (!first_error.ok()) return first_error;
  return cleaned;
}

absl::StatusOr<std::string> ResolveCheckpointDir(const std::string& dir_arg) {
  const std::string dir = WithoutTrailingSlash(dir_arg);
  const fs::path final_dir(dir);
  std::error_code ec;
  if (fs::is_directory(final_dir, ec)) return dir;
  // A save interrupted between the two renames of the fallback publish:
  // the complete old copy DIR.old-PID.
  const fs::path parent = ParentOf(final_dir);
  const std::string base = final_dir.filename().string();
  std::string found;
  for (const fs::directory_entry& e : fs::directory_iterator(parent, ec)) {
    std::string name, kind;
    int64_t pid = 0;
    const std::string entry = e.path().filename().string();
    if (!ParseLeftover(entry, &name, &kind, &pid) || name != base ||
        kind != "old") {
      continue;
    }
    if (fs::exists(e.path() / kStateFile, ec)) found = e.path().string();
  }
  if (!found.empty()) return found;
  return absl::NotFoundError(absl::StrCat("no checkpoint ", dir));
}

absl::StatusOr<std::map<std::string, std::string>> Trainer::LoadCheckpoint(
    const std::string& dir) {
  Impl& m = *impl_;
  LOCKSTEP_ASSIGN_OR_RETURN(const std::string resolved, ResolveCheckpointDir(dir));
  const fs::path root(resolved);
  // The directory exists: whatever is missing or unreadable in it is a
  // damaged checkpoint (DATA_LOSS), not an absent one.
  absl::StatusOr<std::string> text_or = ReadTextFile(root / kStateFile);
  if (!text_or.ok()) {
    return absl::DataLossError(absl::StrCat(
        dir, ": checkpoint incomplete: ", text_or.status().message()));
  }
  const std::string& text = *text_or;
  nlohmann::json state = nlohmann::json::parse(text, nullptr, false);
  if (state.is_discarded() || !state.is_object() ||
      state.value("format", 0) != kStateFormat) {
    return absl::DataLossError(
        absl::StrCat(dir, ": trainer_state.json is corrupt or of another "
                          "format"));
  }
  int64_t step = 0;
  int64_t version = 0;
  std::vector<std::string> names;
  std::map<std::string, std::string> extra;
  try {
    step = state.at("step").get<int64_t>();
    version = state.at("weight_version").get<int64_t>();
    names = state.at("parameters").get<std::vector<std::string>>();
    extra = state.at("extra").get<std::map<std::string, std::string>>();
  } catch (const nlohmann::json::exception& e) {
    return absl::DataLossError(
        absl::StrCat(dir, ": trainer_state.json: ", e.what()));
  }
  if (names != m.names) {
    return absl::InvalidArgumentError(
        absl::StrCat(dir, ": checkpoint of a model with other parameters"));
  }
  const std::string dtype(kernels::DTypeName(m.config.dtype));
  if (state.value("compute_dtype", "") != dtype) {
    return absl::InvalidArgumentError(absl::StrCat(
        dir, ": checkpoint compute dtype ", state.value("compute_dtype", ""),
        " differs from the learner's ", dtype));
  }
  absl::StatusOr<TensorMap> master_or = ReadTensorMap(root / kMasterFile);
  if (!master_or.ok()) {
    return absl::DataLossError(
        absl::StrCat(dir, ": ", master_or.status().message()));
  }
  TensorMap master = *std::move(master_or);
  if (master.size() != m.names.size()) {
    return absl::DataLossError(
        absl::StrCat(dir, ": master.safetensors has the wrong tensors"));
  }
  std::vector<torch::Tensor> params;
  std::unique_ptr<torch::optim::AdamW> optimizer;
  try {
    TorchWeights host = common::ToTorch(master);
    for (size_t i = 0; i < m.names.size(); ++i) {
      auto it = host.find(m.names[i]);
      if (it == host.end() || it->second.scalar_type() != torch::kFloat32 ||
          !it->second.sizes().equals(m.master[i].sizes())) {
        return absl::DataLossError(absl::StrCat(
            dir, ": master tensor ", m.names[i], " missing or mis-shaped"));
      }
      params.push_back(
          it->second.to(m.device).contiguous().clone().set_requires_grad(true));
    }
    optimizer = m.MakeOptimizer(params);
    torch::serialize::InputArchive archive;
    archive.load_from((root / kOptimizerFile).string());
    optimizer->load(archive);
  } catch (const c10::Error& e) {
    return absl::DataLossError(absl::StrCat(
        dir, ": cannot restore the optimizer: ", e.what_without_backtrace()));
  }
  // Everything loaded: commit.
  m.master = std::move(params);
  m.optimizer = std::move(optimizer);
  m.step = step;
  m.version = version;
  LOCKSTEP_RETURN_IF_ERROR(m.RefreshSnapshot());
  return extra;
}

int64_t Trainer::step() const { return impl_->step; }
void Trainer::AdvanceVersion(int64_t at_least) {
  if (at_least > impl_->version) impl_->version = at_least;
}
int64_t Trainer::version() const { return impl_->version; }
const common::ModelConfig& Trainer::config() const { return impl_->config; }
const TrainerOptions& Trainer::options() const { return impl_->options; }

void Trainer::set_learning_rate(double lr) {
  impl_->options.learning_rate = lr;
  for (auto& group : impl_->optimizer->param_groups()) {
    static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
  }
}

}  // namespace lockstep::learner
