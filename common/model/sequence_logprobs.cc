#include "common/model/sequence_logprobs.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/model/device_adjustments.h"
#include "common/model/op_error.h"
#include "common/status/status_macros.h"
#include "common/model/rank_forward.h"
#include "common/model/recomputed_backward.h"
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

namespace {

// kernels::Sample in scoring mode of rows `x` (float32 [n, V], contiguous,
// on any device) with the rows' adjustments `adj` (empty: none): {the
// sampled-distribution logprobs of `targets` (float32 [n]), the kept set's
// last entry in the order O (int32 [n])}.
absl::StatusOr<std::pair<torch::Tensor, torch::Tensor>> SampleScores(
    const torch::Tensor& x, const SamplingSpec& spec, const RowAdjustments& adj,
    absl::Span<const int32_t> targets) {
  const int64_t n = x.size(0), vocab = x.size(1);
  const torch::Device dev = x.device();
  const auto on = [&](torch::ScalarType t) { return torch::TensorOptions().dtype(t).device(dev); };
  std::vector<kernels::SamplingParams> params(n, spec.params);
  auto value = torch::empty({n}, on(torch::kFloat));
  auto last = torch::empty({n}, on(torch::kInt));
  auto param_bytes =
      torch::from_blob(params.data(),
                       {n * static_cast<int64_t>(sizeof(kernels::SamplingParams))}, torch::kUInt8)
          .to(dev);
  auto target_ids =
      torch::from_blob(const_cast<int32_t*>(targets.data()), {n}, torch::kInt).to(dev);
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
  a.targets = target_ids.data_ptr<int32_t>();
  a.logprobs_out = value.data_ptr<float>();
  a.last_kept_out = last.data_ptr<int32_t>();
  kernels::ExecContext ctx;
  if (dev.is_cuda()) ctx.device = kernels::Device::kCuda;
  LOCKSTEP_RETURN_IF_ERROR(kernels::Sample(a, ctx));
  return std::make_pair(std::move(value), std::move(last));
}

// The sampled-distribution logprobs of `targets` under logits [n, V]
// written with LibTorch ops (differentiable; the backward of SampledRows):
// the adjusted logits (the same IEEE operations as the kernel's), the kept
// set as the mask "at or before the last kept entry `last` in the order O",
// then z_t - logsumexp over the kept set of z = a / temperature.
torch::Tensor SampledReference(const torch::Tensor& logits, const RowAdjustments& adj,
                               float temperature, const torch::Tensor& last,
                               const std::vector<int32_t>& targets) {
  const int64_t n = logits.size(0), vocab = logits.size(1);
  const torch::Device dev = logits.device();
  const auto on = [&](torch::ScalarType t) { return torch::TensorOptions().dtype(t).device(dev); };
  torch::Tensor a = logits.to(torch::kFloat);
  torch::Tensor keep_all = torch::ones({n, vocab}, on(torch::kBool));
  if (!adj.entries.empty()) {
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
  auto ad = a.detach();
  auto idx = torch::arange(vocab, on(torch::kLong)).unsqueeze(0);
  auto last_l = last.to(torch::kLong).unsqueeze(1);
  auto a_last = ad.gather(1, last_l);
  auto mask = keep_all & ~torch::isnan(ad) & (ad != -std::numeric_limits<float>::infinity()) &
              ((ad > a_last) | ((ad == a_last) & (idx <= last_l)));
  auto z = a / temperature;
  auto lse = torch::logsumexp(z.masked_fill(~mask, -std::numeric_limits<float>::infinity()), 1);
  auto tl = torch::tensor(std::vector<int64_t>(targets.begin(), targets.end()), torch::kLong)
                .to(dev)
                .unsqueeze(1);
  return z.gather(1, tl).squeeze(1) - lse;
}

// The sampled-distribution logprobs of rows `logits` [n, V] (possibly
// requiring grad) predicting `targets`, the rows' adjustments `adj`: the
// kernel's value, differentiable (but at T = 0) through SampledReference
// recomputed in the backward (recomputed_backward.h).
absl::StatusOr<torch::Tensor> SampledRows(const torch::Tensor& logits, const SamplingSpec& spec,
                                          const RowAdjustments& adj,
                                          absl::Span<const int32_t> targets) {
  auto x = logits.detach().to(torch::kFloat).contiguous();
  LOCKSTEP_ASSIGN_OR_RETURN(auto scored, SampleScores(x, spec, adj, targets));
  auto [value, last] = std::move(scored);
  const float t = spec.params.temperature;
  // Greedy: log q = 0 for the argmax, no gradient.
  if (!logits.requires_grad() || t < kernels::kMinSamplingTemperature) return value;
  ReferenceForward reference = [adj, t, last = last,
                                ids = std::vector<int32_t>(targets.begin(), targets.end())](
                                   const std::vector<torch::Tensor>& in) {
    return std::vector<torch::Tensor>{SampledReference(in[0], adj, t, last, ids)};
  };
  return WithRecomputedBackward(std::move(value), {logits}, std::move(reference),
                                "SampledTargetLogprobsBackward");
}

// Rows [begin, end) of `adj` (offsets rebased to 0).
RowAdjustments SliceRows(const RowAdjustments& adj, int64_t begin, int64_t end) {
  RowAdjustments out;
  if (adj.offsets.empty()) return out;
  const int64_t first = adj.offsets[begin];
  for (int64_t r = begin; r <= end; ++r) out.offsets.push_back(adj.offsets[r] - first);
  out.entries.assign(adj.entries.begin() + first, adj.entries.begin() + adj.offsets[end]);
  return out;
}

}  // namespace

absl::StatusOr<torch::Tensor> SampledTargetLogprobs(const torch::Tensor& logits,
                                                    const SamplingSpec& spec,
                                                    absl::Span<const int64_t> eos_ids,
                                                    absl::Span<const int32_t> prompt,
                                                    absl::Span<const int32_t> completion) {
  const int64_t n = static_cast<int64_t>(completion.size());
  if (logits.dim() != 2 || logits.size(0) != n) {
    return absl::InvalidArgumentError("logits are not [completion, vocab]");
  }
  RowAdjustments adj;
  if (spec.adjusts()) adj = CompletionAdjustments(spec, eos_ids, prompt, completion);
  return SampledRows(logits, spec, adj, completion);
}

namespace {

// What the learner's head computes for the rows of one sequence beyond the
// raw logprobs.
struct HeadRows {
  std::vector<int32_t> target_ids;     // the scored tokens
  // Null: no sampled logprobs. A copy: the backward may run after the
  // caller's spec is gone.
  std::shared_ptr<const SamplingSpec> spec;
  RowAdjustments adj;                  // the rows' adjustments (spec->adjusts())
  bool entropy = false;
  float temperature = 1.0f;  // the entropy's
};

// One scored sequence: rows [first, first + n) of the head's rows.
struct HeadSequence {
  int64_t first = 0;
  int64_t n = 0;
  HeadRows rows;
};

// The outputs of the head per sequence.
enum HeadOutput { kRaw = 0, kSampled = 1, kEntropy = 2, kHeadOutputs = 3 };

// The part of sequence `seq` in a chunk of rows: its rows [begin, end).
struct Segment {
  size_t seq;
  int64_t begin, end;
};

std::vector<Segment> SegmentsOf(const std::vector<HeadSequence>& seqs, int64_t r0, int64_t r1) {
  std::vector<Segment> out;
  for (size_t s = 0; s < seqs.size(); ++s) {
    const int64_t b = std::max(r0, seqs[s].first), e = std::min(r1, seqs[s].first + seqs[s].n);
    if (b < e) out.push_back({s, b - seqs[s].first, e - seqs[s].first});
  }
  return out;
}

// The head's outputs on the logits [r1 - r0, V] of rows [r0, r1): the raw
// logprobs of the chunk's `targets` (one call over the chunk), then per
// segment its sampled logprobs and its entropy (undefined where not asked).
std::vector<torch::Tensor> ChunkOutputs(Ops& ops, const torch::Tensor& logits, int64_t r0,
                                        const torch::Tensor& targets,
                                        const std::vector<HeadSequence>& seqs,
                                        const std::vector<Segment>& segments) {
  std::vector<torch::Tensor> out;
  out.push_back(ops.TargetLogprobs(logits, targets));
  for (const Segment& g : segments) {
    const HeadSequence& q = seqs[g.seq];
    const torch::Tensor l = logits.narrow(0, q.first + g.begin - r0, g.end - g.begin);
    torch::Tensor sampled, entropy;
    if (q.rows.spec != nullptr) {
      absl::StatusOr<torch::Tensor> r =
          SampledRows(l, *q.rows.spec, SliceRows(q.rows.adj, g.begin, g.end),
                      absl::MakeConstSpan(q.rows.target_ids).subspan(g.begin, g.end - g.begin));
      if (!r.ok()) ThrowStatus(r.status());
      sampled = *std::move(r);
    }
    if (q.rows.entropy) {
      torch::Tensor z = l.to(torch::kFloat) / q.rows.temperature;
      torch::Tensor logp = torch::log_softmax(z, /*dim=*/1);
      entropy = -(logp.exp() * logp).sum(1);
    }
    out.push_back(std::move(sampled));
    out.push_back(std::move(entropy));
  }
  return out;
}

// The head on `hidden` [R, H] (the final-normed scored rows of all
// sequences, laid end to end) in chunks of `chunk` rows (> 0; chunks may span
// sequences). Returns per sequence {raw, sampled, entropy} [n] (the latter
// two undefined where not asked). `recompute`: no chunk's logits are kept —
// one node over hidden and the lm_head weight saves those two tensors, and
// its backward recomputes each chunk's logits (the forward's ops on the same
// rows: the same bits), back-propagates the chunk's outputs to them and
// applies lm_head's gradient formulas (LinearFn's in invariant_ops.cc): dX
// of the chunk, and dW summed over the chunks in fp32 and cast to the
// weight's dtype once, as one unchunked matmul's gradient is. Otherwise the
// chunks' graphs (their logits) stay for the backward.
std::vector<std::vector<torch::Tensor>> RunHead(std::shared_ptr<Ops> ops,
                                                const RankWeights& weights,
                                                const torch::Tensor& hidden,
                                                const torch::Tensor& targets,
                                                std::vector<HeadSequence> seqs, int64_t chunk,
                                                bool recompute) {
  const int64_t rows = hidden.size(0);
  std::vector<std::vector<torch::Tensor>> pieces[kHeadOutputs];
  for (auto& p : pieces) p.resize(seqs.size());
  {
    std::optional<torch::NoGradGuard> no_grad;
    if (recompute) no_grad.emplace();
    for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
      const int64_t r1 = std::min(rows, r0 + chunk);
      const std::vector<Segment> segments = SegmentsOf(seqs, r0, r1);
      auto logits = LmHead(weights, *ops, nullptr, hidden.narrow(0, r0, r1 - r0));
      std::vector<torch::Tensor> o =
          ChunkOutputs(*ops, logits, r0, targets.narrow(0, r0, r1 - r0), seqs, segments);
      for (size_t j = 0; j < segments.size(); ++j) {
        const Segment& g = segments[j];
        const int64_t at = seqs[g.seq].first + g.begin - r0;
        pieces[kRaw][g.seq].push_back(o[0].narrow(0, at, g.end - g.begin));
        pieces[kSampled][g.seq].push_back(o[1 + 2 * j]);
        pieces[kEntropy][g.seq].push_back(o[2 + 2 * j]);
      }
    }
  }
  std::vector<std::vector<torch::Tensor>> result(seqs.size(),
                                                 std::vector<torch::Tensor>(kHeadOutputs));
  for (size_t s = 0; s < seqs.size(); ++s) {
    for (int i = 0; i < kHeadOutputs; ++i) {
      const auto& p = pieces[i][s];
      if (p.empty() || !p[0].defined()) continue;
      result[s][i] = p.size() == 1 ? p[0] : torch::cat(p, 0);
    }
  }
  if (!recompute) return result;
  // The node's outputs: the defined ones, sequence by sequence.
  std::vector<torch::Tensor> values;
  std::vector<std::pair<size_t, int>> slot;  // (sequence, output) of each value
  for (size_t s = 0; s < seqs.size(); ++s) {
    for (int i = 0; i < kHeadOutputs; ++i) {
      if (result[s][i].defined()) {
        values.push_back(result[s][i]);
        slot.emplace_back(s, i);
      }
    }
  }
  RecomputedGradient gradient = [ops, seqs = std::move(seqs), slot, chunk, targets,
                                 lm_head = weights.lm_head](
                                    const std::vector<torch::Tensor>& in,
                                    const std::vector<bool>& wanted,
                                    const std::vector<torch::Tensor>& grads) {
    const torch::Tensor& x_all = in[0];
    const torch::Tensor& w = in[1];
    RankWeights head;  // LmHead reads lm_head only
    head.lm_head = lm_head;
    head.lm_head.w = w;
    torch::Tensor dx = wanted[0] ? torch::zeros(x_all.sizes(), x_all.options().dtype(torch::kFloat))
                                 : torch::Tensor();
    torch::Tensor dw = wanted[1] ? torch::zeros(w.sizes(), w.options().dtype(torch::kFloat))
                                 : torch::Tensor();
    torch::Tensor w32 = wanted[0] ? w.to(torch::kFloat) : torch::Tensor();
    // The output gradients of each sequence, by output.
    std::vector<std::vector<torch::Tensor>> g(seqs.size(),
                                              std::vector<torch::Tensor>(kHeadOutputs));
    for (size_t j = 0; j < slot.size(); ++j) g[slot[j].first][slot[j].second] = grads[j];
    const int64_t rows = x_all.size(0);
    for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
      const int64_t r1 = std::min(rows, r0 + chunk);
      const std::vector<Segment> segments = SegmentsOf(seqs, r0, r1);
      // The chunk's output gradients, in ChunkOutputs' order; the raw one
      // over the whole chunk (zeros for a sequence the loss does not reach).
      std::vector<torch::Tensor> gc;
      torch::Tensor g_raw;
      bool any = false;
      for (const Segment& s : segments) {
        const torch::Tensor& gr = g[s.seq][kRaw];
        if (!gr.defined()) continue;
        if (!g_raw.defined()) g_raw = torch::zeros({r1 - r0}, gr.options());
        g_raw.narrow(0, seqs[s.seq].first + s.begin - r0, s.end - s.begin)
            .copy_(gr.narrow(0, s.begin, s.end - s.begin));
      }
      gc.push_back(g_raw);
      any = g_raw.defined();
      for (const Segment& s : segments) {
        for (int i : {kSampled, kEntropy}) {
          const torch::Tensor& gi = g[s.seq][i];
          gc.push_back(gi.defined() ? gi.narrow(0, s.begin, s.end - s.begin) : torch::Tensor());
          any = any || gi.defined();
        }
      }
      if (!any) continue;
      const torch::Tensor x = x_all.narrow(0, r0, r1 - r0);
      torch::Tensor logits;
      {
        torch::NoGradGuard no_grad;
        logits = LmHead(head, *ops, nullptr, x);
      }
      const torch::Tensor chunk_targets = targets.narrow(0, r0, r1 - r0);
      const ReferenceForward outputs = [&](const std::vector<torch::Tensor>& l) {
        return ChunkOutputs(*ops, l[0], r0, chunk_targets, seqs, segments);
      };
      torch::Tensor dlogits = RecomputeGradient(outputs, {logits}, {true}, gc)[0];
      if (!dlogits.defined()) continue;
      if (wanted[0]) dx.narrow(0, r0, r1 - r0).copy_(dlogits.mm(w32));
      if (wanted[1]) dw.add_(dlogits.t().mm(x.to(torch::kFloat)));
    }
    return std::vector<torch::Tensor>{dx.defined() ? dx.to(x_all.scalar_type()) : dx,
                                      dw.defined() ? dw.to(w.scalar_type()) : dw};
  };
  values = WithCustomBackward(std::move(values), {hidden, weights.lm_head.w}, std::move(gradient),
                              "ChunkedHeadBackward");
  for (size_t j = 0; j < slot.size(); ++j) result[slot[j].first][slot[j].second] = values[j];
  return result;
}

}  // namespace

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
    std::shared_ptr<Ops> ops = CreateOps(mode, config.dtype == kernels::DType::kBF16);
    torch::Tensor hidden;  // [R, H]: the final-normed scored rows
    if (!rows.empty()) {
      ForwardInput in;
      in.tokens = torch::tensor(tokens, torch::kLong).to(dev);
      in.positions = torch::tensor(positions, torch::kInt).to(dev);
      in.seq_lens = lens;
      in.logit_rows = torch::tensor(rows, torch::kLong).to(dev);
      if (options.routing) in.routing = &out.routing;
      if (options.checkpoint_layers && torch::GradMode::is_enabled()) {
        LOCKSTEP_ASSIGN_OR_RETURN(auto forward, LayerCheckpoints::Forward(config, rw, mode, in));
        hidden = std::move(forward.first);
        out.checkpoint = std::move(forward.second);
      } else {
        hidden = RankForwardToFinalNorm(config, rw, *ops, in, nullptr);
      }
    }
    const auto target_tensor = torch::tensor(targets, torch::kLong).to(dev);
    const auto empty = [&] {
      return torch::empty({0}, torch::TensorOptions().dtype(torch::kFloat).device(dev));
    };
    // Each scored sequence's rows of `hidden` and what its head computes.
    std::vector<HeadSequence> heads;
    std::vector<size_t> head_of;  // sequence -> its entry in `heads`
    int64_t k = 0;
    for (size_t s = 0; s < sequences.size(); ++s) {
      const int64_t n = static_cast<int64_t>(sequences[s].size()) - prefix_lens[s];
      head_of.push_back(heads.size());
      if (n <= 0) continue;
      const SamplingSpec* spec = sampling.empty() ? nullptr : sampling[s];
      const absl::Span<const int32_t> seq(sequences[s]);
      const absl::Span<const int32_t> completion = seq.subspan(prefix_lens[s]);
      HeadSequence h;
      h.first = k;
      h.n = n;
      h.rows.target_ids.assign(completion.begin(), completion.end());
      if (spec != nullptr) h.rows.spec = std::make_shared<const SamplingSpec>(*spec);
      if (spec != nullptr && spec->adjusts()) {
        h.rows.adj = CompletionAdjustments(*spec, config.eos_token_ids,
                                           seq.subspan(0, prefix_lens[s]), completion);
      }
      h.rows.entropy = with_entropy;
      h.rows.temperature =
          spec != nullptr && spec->params.temperature > 0.0f ? spec->params.temperature : 1.0f;
      heads.push_back(std::move(h));
      k += n;
    }
    // Per scored sequence its {raw, sampled, entropy}: the head on chunks of
    // head_chunk_rows rows, each's logits recomputed in the backward; or,
    // with head_chunk_rows 0, on all rows at once, the logits kept for the
    // backward.
    std::vector<std::vector<torch::Tensor>> head_out;
    if (!heads.empty()) {
      const bool chunked = options.head_chunk_rows > 0;
      head_out = RunHead(ops, rw, hidden, target_tensor, heads,
                         chunked ? options.head_chunk_rows : hidden.size(0), chunked);
    }
    out.sampled.resize(sequences.size());
    for (size_t s = 0; s < sequences.size(); ++s) {
      const int64_t n = static_cast<int64_t>(sequences[s].size()) - prefix_lens[s];
      const bool with_spec = !sampling.empty() && sampling[s] != nullptr;
      if (n <= 0) {
        out.raw.push_back(empty());
        if (with_spec) out.sampled[s] = empty();
        if (with_entropy) out.entropy.push_back(empty());
        continue;
      }
      std::vector<torch::Tensor>& o = head_out[head_of[s]];
      out.raw.push_back(std::move(o[kRaw]));
      if (with_spec) out.sampled[s] = std::move(o[kSampled]);
      if (with_entropy) out.entropy.push_back(std::move(o[kEntropy]));
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
