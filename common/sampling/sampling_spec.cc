#include "common/sampling/sampling_spec.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace lockstep::common {

bool SamplingSpec::adjusts() const {
  return repetition_penalty != 1.0f || presence_penalty != 0.0f ||
         frequency_penalty != 0.0f || !logit_bias.empty() || min_tokens > 0;
}

namespace {

absl::Status CheckIds(absl::Span<const int32_t> ids, int64_t vocab,
                      const std::string& what) {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, "[", i, "] = ", ids[i], " is outside [0, ", vocab, ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckSamplingSpec(const SamplingSpec& s, int64_t vocab) {
  const kernels::SamplingParams& p = s.params;
  if (!(std::isfinite(p.temperature) && p.temperature >= 0.0f)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "temperature must be a finite number >= 0, got ", p.temperature));
  }
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_p must be in (0, 1], got ", p.top_p));
  }
  if (!(p.min_p >= 0.0f && p.min_p <= 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("min_p must be in [0, 1], got ", p.min_p));
  }
  if (p.top_k < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_k must be >= 0 (or -1 for off), got ", p.top_k));
  }
  if (!(std::isfinite(s.repetition_penalty) && s.repetition_penalty > 0.0f)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "repetition_penalty must be a finite number > 0, got ",
        s.repetition_penalty));
  }
  for (auto [name, v] : {std::pair<const char*, float>{"presence_penalty", s.presence_penalty},
                         {"frequency_penalty", s.frequency_penalty}}) {
    if (!(v >= -kMaxAbsPenalty && v <= kMaxAbsPenalty)) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, " must be in [-2, 2], got ", v));
    }
  }
  if (s.logit_bias.size() > kMaxLogitBiasEntries) {
    return absl::InvalidArgumentError(absl::StrCat(
        "logit_bias has ", s.logit_bias.size(), " entries; at most ",
        kMaxLogitBiasEntries));
  }
  for (size_t i = 0; i < s.logit_bias.size(); ++i) {
    const auto [id, v] = s.logit_bias[i];
    if (id < 0 || id >= vocab) {
      return absl::InvalidArgumentError(absl::StrCat(
          "logit_bias names token ", id, " outside [0, ", vocab, ")"));
    }
    if (!(v >= -kMaxAbsLogitBias && v <= kMaxAbsLogitBias)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "logit_bias[", id, "] = ", v, " must be finite (clamped to [-100, 100])"));
    }
    if (i > 0 && s.logit_bias[i - 1].first >= id) {
      return absl::InvalidArgumentError(
          "logit_bias ids must be distinct and ascending");
    }
  }
  if (s.max_tokens < 0 || s.min_tokens < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_tokens and min_tokens must be >= 0, got ", s.max_tokens, " and ",
        s.min_tokens));
  }
  if (s.max_tokens > 0 && s.min_tokens > s.max_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "min_tokens ", s.min_tokens, " exceeds max_tokens ", s.max_tokens));
  }
  if (s.top_logprobs < 0 || s.top_logprobs > kMaxTopLogprobs) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_logprobs must be in [0, ", kMaxTopLogprobs, "], got ",
                     s.top_logprobs));
  }
  absl::Status st = CheckIds(s.stop_token_ids, vocab, "stop_token_ids");
  if (!st.ok()) return st;
  if (s.stop_sequences.size() > kMaxStopSequences) {
    return absl::InvalidArgumentError(absl::StrCat(
        "stop_sequences has ", s.stop_sequences.size(), " sequences; at most ",
        kMaxStopSequences));
  }
  for (size_t i = 0; i < s.stop_sequences.size(); ++i) {
    const auto& seq = s.stop_sequences[i];
    if (seq.empty() || seq.size() > kMaxStopSequenceTokens) {
      return absl::InvalidArgumentError(absl::StrCat(
          "stop_sequences[", i, "] has ", seq.size(), " ids; need 1..",
          kMaxStopSequenceTokens));
    }
    st = CheckIds(seq, vocab, absl::StrCat("stop_sequences[", i, "]"));
    if (!st.ok()) return st;
  }
  return absl::OkStatus();
}

LogitAdjuster::LogitAdjuster(const SamplingSpec& spec,
                             absl::Span<const int64_t> eos_ids,
                             absl::Span<const int32_t> prompt)
    : spec_(spec) {
  if (spec.min_tokens > 0) {
    banned_.assign(spec.stop_token_ids.begin(), spec.stop_token_ids.end());
    if (!spec.ignore_eos) {
      for (int64_t e : eos_ids) banned_.push_back(static_cast<int32_t>(e));
    }
    std::sort(banned_.begin(), banned_.end());
    banned_.erase(std::unique(banned_.begin(), banned_.end()), banned_.end());
  }
  if (spec.repetition_penalty != 1.0f) seen_.insert(prompt.begin(), prompt.end());
}

void LogitAdjuster::Append(int32_t token) {
  ++output_len_;
  if (spec_.repetition_penalty != 1.0f) seen_.insert(token);
  if (spec_.presence_penalty != 0.0f || spec_.frequency_penalty != 0.0f) {
    ++counts_[token];
  }
}

void LogitAdjuster::AppendAdjustments(
    std::vector<kernels::LogitAdjustment>* out) const {
  std::vector<int32_t> ids;
  ids.reserve(spec_.logit_bias.size() + seen_.size() + counts_.size() + banned_.size());
  for (const auto& [id, v] : spec_.logit_bias) ids.push_back(id);
  ids.insert(ids.end(), seen_.begin(), seen_.end());
  for (const auto& [id, c] : counts_) ids.push_back(id);
  const bool ban = output_len_ < spec_.min_tokens;
  if (ban) ids.insert(ids.end(), banned_.begin(), banned_.end());
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  for (int32_t id : ids) {
    kernels::LogitAdjustment e;
    e.token = id;
    auto b = std::lower_bound(
        spec_.logit_bias.begin(), spec_.logit_bias.end(), id,
        [](const std::pair<int32_t, float>& p, int32_t v) { return p.first < v; });
    if (b != spec_.logit_bias.end() && b->first == id) e.bias = b->second;
    if (seen_.count(id) != 0) e.repetition = spec_.repetition_penalty;
    auto c = counts_.find(id);
    if (c != counts_.end()) {
      const float freq = spec_.frequency_penalty * static_cast<float>(c->second);
      e.subtract = freq + spec_.presence_penalty;
    }
    e.banned = ban && std::binary_search(banned_.begin(), banned_.end(), id);
    out->push_back(e);
  }
}

RowAdjustments CompletionAdjustments(const SamplingSpec& spec,
                                     absl::Span<const int64_t> eos_ids,
                                     absl::Span<const int32_t> prompt,
                                     absl::Span<const int32_t> completion) {
  RowAdjustments r;
  r.offsets.reserve(completion.size() + 1);
  r.offsets.push_back(0);
  LogitAdjuster adjuster(spec, eos_ids, prompt);
  for (int32_t token : completion) {
    adjuster.AppendAdjustments(&r.entries);
    r.offsets.push_back(static_cast<int64_t>(r.entries.size()));
    adjuster.Append(token);
  }
  return r;
}

absl::StatusOr<std::vector<float>> SampledLogprobs(
    const float* logits, int64_t vocab, const SamplingSpec& spec,
    absl::Span<const int64_t> eos_ids, absl::Span<const int32_t> prompt,
    absl::Span<const int32_t> completion) {
  const int64_t n = static_cast<int64_t>(completion.size());
  std::vector<float> out(n);
  if (n == 0) return out;
  std::vector<kernels::SamplingParams> params(n, spec.params);
  RowAdjustments adj;
  if (spec.adjusts()) adj = CompletionAdjustments(spec, eos_ids, prompt, completion);
  kernels::SampleArgs a;
  a.logits = logits;
  a.ld = vocab;
  a.rows = n;
  a.vocab = vocab;
  a.params = params.data();
  if (spec.adjusts()) {
    a.adjust_offsets = adj.offsets.data();
    a.adjustments = adj.entries.data();
  }
  a.targets = completion.data();
  a.logprobs_out = out.data();
  absl::Status s = kernels::Sample(a);
  if (!s.ok()) return s;
  return out;
}

bool EndsWithStopSequence(const SamplingSpec& spec,
                          absl::Span<const int32_t> output) {
  for (const auto& seq : spec.stop_sequences) {
    if (seq.size() <= output.size() &&
        std::equal(seq.begin(), seq.end(), output.end() - seq.size())) {
      return true;
    }
  }
  return false;
}

}  // namespace lockstep::common
