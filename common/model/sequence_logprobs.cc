#include "common/model/sequence_logprobs.h"

#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/model/device_adjustments.h"
#include "common/model/op_error.h"
#include "common/status/status_macros.h"
#include "common/model/rank_forward.h"
#include "kernels/sampling.h"

namespace lockstep::common {
namespace {

absl::StatusOr<RankWeights> SingleRank(const ModelConfig& c, const TorchWeights& w) {
  auto embed = w.find("model.embed_tokens.weight");
  if (embed == w.end()) return absl::InvalidArgumentError("missing weight model.embed_tokens.weight");
  // TP=1: every "slice" is the whole tensor, so the weights (and their
  // autograd identity) are used as they are.
  WeightSource source = [&](const std::string& name, int64_t, int64_t,
                            int64_t) -> absl::StatusOr<torch::Tensor> {
    auto it = w.find(name);
    if (it == w.end()) return absl::InvalidArgumentError("missing weight " + name);
    return it->second;
  };
  LinearMaker linear = [](torch::Tensor t) -> absl::StatusOr<LinearWeight> {
    LinearWeight lw;
    lw.w = std::move(t);
    return lw;
  };
  return BuildRankWeights(c, 0, 1, source, linear, embed->second.device());
}

}  // namespace

absl::StatusOr<std::vector<torch::Tensor>> SequenceLogprobs(
    const ModelConfig& config, const TorchWeights& weights, KernelMode mode,
    const std::vector<std::vector<int32_t>>& sequences,
    const std::vector<int64_t>& prefix_lens) {
  LOCKSTEP_ASSIGN_OR_RETURN(SequenceScores s,
                            ScoreSequences(config, weights, mode, sequences, prefix_lens, {}));
  return std::move(s.raw);
}

absl::StatusOr<torch::Tensor> SampledTargetLogprobs(const torch::Tensor& logits,
                                                    const SamplingSpec& spec,
                                                    absl::Span<const int64_t> eos_ids,
                                                    absl::Span<const int32_t> prompt,
                                                    absl::Span<const int32_t> completion) {
  const int64_t n = static_cast<int64_t>(completion.size());
  if (logits.dim() != 2 || logits.size(0) != n) {
    return absl::InvalidArgumentError("logits are not [completion, vocab]");
  }
  const int64_t vocab = logits.size(1);
  const torch::Device dev = logits.device();
  const auto on = [&](torch::ScalarType t) { return torch::TensorOptions().dtype(t).device(dev); };
  auto x = logits.detach().to(torch::kFloat).contiguous();
  std::vector<kernels::SamplingParams> params(n, spec.params);
  RowAdjustments adj;
  if (spec.adjusts()) adj = CompletionAdjustments(spec, eos_ids, prompt, completion);
  // The value: kernels::Sample in scoring mode on the logits' device, with
  // the kept set's last entry for the mask below.
  auto value = torch::empty({n}, on(torch::kFloat));
  auto last = torch::empty({n}, on(torch::kInt));
  {
    auto param_bytes =
        torch::from_blob(params.data(),
                         {n * static_cast<int64_t>(sizeof(kernels::SamplingParams))}, torch::kUInt8)
            .to(dev);
    auto targets = torch::from_blob(const_cast<int32_t*>(completion.data()), {n}, torch::kInt)
                       .to(dev);
    StepRequest as_step;
    as_step.adjust_offsets = adj.offsets;
    as_step.adjustments = adj.entries;
    DeviceAdjustments device_adj(as_step, n, vocab, dev);
    kernels::SampleArgs a;
    a.logits = x.data_ptr<float>();
    a.ld = vocab;
    a.rows = n;
    a.vocab = vocab;
    a.params = reinterpret_cast<const kernels::SamplingParams*>(param_bytes.data_ptr<uint8_t>());
    if (dev.is_cuda()) {
      device_adj.Fill(&a);
    } else if (spec.adjusts()) {
      a.adjust_offsets = adj.offsets.data();
      a.adjustments = adj.entries.data();
    }
    a.targets = targets.data_ptr<int32_t>();
    a.logprobs_out = value.data_ptr<float>();
    a.last_kept_out = last.data_ptr<int32_t>();
    kernels::ExecContext ctx;
    if (dev.is_cuda()) ctx.device = kernels::Device::kCuda;
    LOCKSTEP_RETURN_IF_ERROR(kernels::Sample(a, ctx));
  }
  if (!logits.requires_grad()) return value;
  // The gradient: the same distribution written with LibTorch ops. The
  // adjusted logits (the same IEEE operations as the kernel's), the kept set
  // as the mask "at or before the last kept entry in the order O", then
  // z_t - logsumexp over the kept set of z = a / T.
  torch::Tensor a = logits.to(torch::kFloat);
  torch::Tensor keep_all = torch::ones({n, vocab}, on(torch::kBool));
  if (spec.adjusts() && !adj.entries.empty()) {
    std::vector<int64_t> rows, cols;
    std::vector<float> bias, rep, sub;
    std::vector<uint8_t> banned;
    for (int64_t r = 0; r < n; ++r) {
      for (int64_t e = adj.offsets[r]; e < adj.offsets[r + 1]; ++e) {
        const kernels::LogitAdjustment& entry = adj.entries[e];
        rows.push_back(r);
        cols.push_back(entry.token);
        bias.push_back(entry.bias);
        rep.push_back(entry.repetition);
        sub.push_back(entry.subtract);
        banned.push_back(entry.banned != 0);
      }
    }
    auto ri = torch::tensor(rows, torch::kLong).to(dev);
    auto ci = torch::tensor(cols, torch::kLong).to(dev);
    auto v = a.index({ri, ci}) + torch::tensor(bias).to(dev);
    auto rp = torch::tensor(rep).to(dev);
    v = torch::where(v > 0, v / rp, v * rp) - torch::tensor(sub).to(dev);
    auto b = torch::tensor(banned, torch::kBool).to(dev);
    keep_all.index_put_({ri.masked_select(b), ci.masked_select(b)}, false);
    a = a.index_put({ri, ci}, v);
  }
  const float t = spec.params.temperature;
  if (t < kernels::kMinSamplingTemperature) {
    // Greedy: log q = 0 for the argmax, no gradient.
    return value;
  }
  auto ad = a.detach();
  auto idx = torch::arange(vocab, on(torch::kLong)).unsqueeze(0);
  auto last_l = last.to(torch::kLong).unsqueeze(1);
  auto a_last = ad.gather(1, last_l);
  auto mask = keep_all & ~torch::isnan(ad) & (ad != -std::numeric_limits<float>::infinity()) &
              ((ad > a_last) | ((ad == a_last) & (idx <= last_l)));
  auto z = a / t;
  auto lse = torch::logsumexp(z.masked_fill(~mask, -std::numeric_limits<float>::infinity()), 1);
  auto tl = torch::from_blob(const_cast<int32_t*>(completion.data()), {n}, torch::kInt)
                .to(dev)
                .to(torch::kLong)
                .unsqueeze(1);
  auto ref = z.gather(1, tl).squeeze(1) - lse;
  {
    torch::NoGradGuard no_grad;
    ref.detach().copy_(value);
  }
  return ref;
}

absl::StatusOr<SequenceScores> ScoreSequences(
    const ModelConfig& config, const TorchWeights& weights, KernelMode mode,
    const std::vector<std::vector<int32_t>>& sequences,
    const std::vector<int64_t>& prefix_lens,
    const std::vector<const SamplingSpec*>& sampling, const ScoreOptions& options) {
  const bool with_entropy = options.entropy;
  if (sequences.empty()) return absl::InvalidArgumentError("no sequences");
  if (prefix_lens.size() != sequences.size()) {
    return absl::InvalidArgumentError("prefix_lens and sequences differ in count");
  }
  if (!sampling.empty() && sampling.size() != sequences.size()) {
    return absl::InvalidArgumentError("sampling must be empty or one per sequence");
  }
  if (options.routing && options.checkpoint_layers) {
    return absl::InvalidArgumentError(
        "the router's logits are not kept by a checkpointed forward (routing with "
        "checkpoint_layers)");
  }
  LOCKSTEP_ASSIGN_OR_RETURN(RankWeights rw, SingleRank(config, weights));
  const torch::Device dev = rw.embed.device();
  std::vector<int64_t> tokens, lens, rows, targets;
  std::vector<int32_t> positions;
  int64_t start = 0;
  for (size_t s = 0; s < sequences.size(); ++s) {
    const auto& seq = sequences[s];
    const int64_t len = seq.size();
    if (len == 0) return absl::InvalidArgumentError("empty sequence");
    if (len > config.max_position_embeddings) {
      return absl::InvalidArgumentError(absl::StrCat("sequence of ", len,
                                                     " tokens exceeds the context length"));
    }
    if (prefix_lens[s] < 1 || prefix_lens[s] > len) {
      return absl::InvalidArgumentError(absl::StrCat("prefix length ", prefix_lens[s],
                                                     " outside [1, ", len, "]"));
    }
    LOCKSTEP_RETURN_IF_ERROR(
        CheckTokenIds(seq, config.vocab_size, absl::StrCat("sequence ", s)));
    for (int64_t i = 0; i < len; ++i) {
      tokens.push_back(seq[i]);
      positions.push_back(static_cast<int32_t>(i));
    }
    for (int64_t i = prefix_lens[s] - 1; i < len - 1; ++i) {
      rows.push_back(start + i);
      targets.push_back(seq[i + 1]);
    }
    lens.push_back(len);
    start += len;
  }
  SequenceScores out;
  try {
    auto ops = CreateOps(mode, config.dtype == kernels::DType::kBF16);
    torch::Tensor lp, logits;
    if (!rows.empty()) {
      ForwardInput in;
      in.tokens = torch::tensor(tokens, torch::kLong).to(dev);
      in.positions = torch::tensor(positions, torch::kInt).to(dev);
      in.seq_lens = lens;
      in.logit_rows = torch::tensor(rows, torch::kLong).to(dev);
      if (options.routing) in.routing = &out.routing;
      if (options.checkpoint_layers && torch::GradMode::is_enabled()) {
        LOCKSTEP_ASSIGN_OR_RETURN(auto forward, LayerCheckpoints::Forward(config, rw, mode, in));
        logits = std::move(forward.first);
        out.checkpoint = std::move(forward.second);
      } else {
        logits = RankForward(config, rw, *ops, in, nullptr);
      }
      lp = ops->TargetLogprobs(logits, torch::tensor(targets, torch::kLong).to(dev));
    }
    int64_t k = 0;
    const auto empty = [&] {
      return torch::empty({0}, torch::TensorOptions().dtype(torch::kFloat).device(dev));
    };
    out.sampled.resize(sequences.size());
    for (size_t s = 0; s < sequences.size(); ++s) {
      const int64_t n = static_cast<int64_t>(sequences[s].size()) - prefix_lens[s];
      out.raw.push_back(n > 0 ? lp.narrow(0, k, n) : empty());
      if (!sampling.empty() && sampling[s] != nullptr) {
        if (n <= 0) {
          out.sampled[s] = empty();
        } else {
          const absl::Span<const int32_t> seq(sequences[s]);
          LOCKSTEP_ASSIGN_OR_RETURN(
              out.sampled[s],
              SampledTargetLogprobs(logits.narrow(0, k, n), *sampling[s], config.eos_token_ids,
                                    seq.subspan(0, prefix_lens[s]),
                                    seq.subspan(prefix_lens[s])));
        }
      }
      if (with_entropy) {
        if (n <= 0) {
          out.entropy.push_back(empty());
        } else {
          const float t = !sampling.empty() && sampling[s] != nullptr &&
                                  sampling[s]->params.temperature > 0.0f
                              ? sampling[s]->params.temperature
                              : 1.0f;
          torch::Tensor z = logits.narrow(0, k, n).to(torch::kFloat) / t;
          torch::Tensor logp = torch::log_softmax(z, /*dim=*/1);
          out.entropy.push_back(-(logp.exp() * logp).sum(1));
        }
      }
      k += std::max<int64_t>(n, 0);
    }
  } catch (const c10::Error& e) {
    return StatusFromException(e, "training forward failed");
  }
  return out;
}

TorchWeights ToTorch(const TensorMap& tensors) {
  TorchWeights out;
  for (const auto& [name, t] : tensors) {
    auto dtype = t.dtype == kernels::DType::kF32 ? torch::kFloat : torch::kBFloat16;
    auto tensor = torch::empty(t.shape, torch::TensorOptions().dtype(dtype));
    std::memcpy(tensor.data_ptr(), t.data.data(), t.data.size());
    out.emplace(name, tensor);
  }
  return out;
}

TensorMap FromTorch(const TorchWeights& weights) {
  TensorMap out;
  for (const auto& [name, t] : weights) {
    auto c = t.detach().cpu().contiguous();
    HostTensor h;
    h.dtype = c.scalar_type() == torch::kBFloat16 ? kernels::DType::kBF16 : kernels::DType::kF32;
    if (c.scalar_type() != torch::kBFloat16 && c.scalar_type() != torch::kFloat) {
      c = c.to(torch::kFloat);
    }
    h.shape = c.sizes().vec();
    const auto* p = static_cast<const uint8_t*>(c.data_ptr());
    h.data.assign(p, p + c.numel() * c.element_size());
    out.emplace(name, std::move(h));
  }
  return out;
}

}  // namespace lockstep::common
