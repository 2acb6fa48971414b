// lockstep.v1.SamplingParams <-> common::SamplingSpec, the one conversion
// (and validation) both services use at their edge.
#ifndef LOCKSTEP_COMMON_SAMPLING_SAMPLING_PROTO_H_
#define LOCKSTEP_COMMON_SAMPLING_SAMPLING_PROTO_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "common/sampling/sampling_spec.h"
#include "lockstep/v1/common.pb.h"

namespace lockstep::common {

// Defaults for unset fields (temperature 1, top_p 1, repetition 1), top_k -1
// read as 0 (off), logit_bias values clamped to [-100, 100] and sorted by id.
// INVALID_ARGUMENT (CheckSamplingSpec) on any out-of-range value for a model
// of `vocab` ids. The seed and n are not part of the spec (callers read
// them from the message).
absl::StatusOr<SamplingSpec> SamplingSpecFromProto(
    const v1::SamplingParams& proto, int64_t vocab);

// The spec as a message (every field explicit), with `seed`.
void SamplingSpecToProto(const SamplingSpec& spec, uint64_t seed,
                         v1::SamplingParams* proto);

}  // namespace lockstep::common

#endif  // LOCKSTEP_COMMON_SAMPLING_SAMPLING_PROTO_H_
