#include "common/sampling/sampling_proto.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace lockstep::common {

absl::StatusOr<SamplingSpec> SamplingSpecFromProto(
    const v1::SamplingParams& p, int64_t vocab) {
  SamplingSpec s;
  s.params.temperature = p.has_temperature() ? p.temperature() : 1.0f;
  if (p.top_k() < -1) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_k must be >= 0 (or -1 for off), got ", p.top_k()));
  }
  s.params.top_k = std::max(p.top_k(), 0);
  s.params.top_p = p.has_top_p() ? p.top_p() : 1.0f;
  s.params.min_p = p.min_p();
  s.repetition_penalty = p.has_repetition_penalty() ? p.repetition_penalty() : 1.0f;
  s.presence_penalty = p.presence_penalty();
  s.frequency_penalty = p.frequency_penalty();
  for (const auto& [id, v] : p.logit_bias()) {
    if (!std::isfinite(v)) {
      return absl::InvalidArgumentError(
          absl::StrCat("logit_bias[", id, "] = ", v, " is not finite"));
    }
    s.logit_bias.emplace_back(id, std::clamp(v, -kMaxAbsLogitBias, kMaxAbsLogitBias));
  }
  std::sort(s.logit_bias.begin(), s.logit_bias.end());
  s.min_tokens = p.min_tokens();
  s.max_tokens = p.max_tokens();
  s.stop_token_ids.assign(p.stop_token_ids().begin(), p.stop_token_ids().end());
  for (const v1::TokenSequence& seq : p.stop_sequences()) {
    s.stop_sequences.emplace_back(seq.token_ids().begin(), seq.token_ids().end());
  }
  s.ignore_eos = p.ignore_eos();
  if (p.top_logprobs() > static_cast<uint32_t>(kMaxTopLogprobs)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "top_logprobs must be in [0, ", kMaxTopLogprobs, "], got ", p.top_logprobs()));
  }
  s.top_logprobs = static_cast<int>(p.top_logprobs());
  absl::Status st = CheckSamplingSpec(s, vocab);
  if (!st.ok()) return st;
  return s;
}

void SamplingSpecToProto(const SamplingSpec& s, uint64_t seed,
                         v1::SamplingParams* p) {
  p->Clear();
  p->set_temperature(s.params.temperature);
  p->set_top_k(s.params.top_k);
  p->set_top_p(s.params.top_p);
  p->set_min_p(s.params.min_p);
  p->set_seed(seed);
  p->set_max_tokens(static_cast<uint32_t>(s.max_tokens));
  for (int32_t id : s.stop_token_ids) p->add_stop_token_ids(id);
  p->set_ignore_eos(s.ignore_eos);
  p->set_top_logprobs(static_cast<uint32_t>(s.top_logprobs));
  p->set_repetition_penalty(s.repetition_penalty);
  p->set_presence_penalty(s.presence_penalty);
  p->set_frequency_penalty(s.frequency_penalty);
  for (const auto& [id, v] : s.logit_bias) (*p->mutable_logit_bias())[id] = v;
  p->set_min_tokens(static_cast<uint32_t>(s.min_tokens));
  for (const auto& seq : s.stop_sequences) {
    v1::TokenSequence* t = p->add_stop_sequences();
    for (int32_t id : seq) t->add_token_ids(id);
  }
}

}  // namespace lockstep::common
