// Rotary position embedding parameters as Hugging Face config.json writes
// them, in either form:
//   transformers 5: "rope_parameters": {"rope_type": ..., "rope_theta": ...,
//                   ...} (or one such dict per layer type, e.g.
//                   {"full_attention": {...}});
//   transformers 4: top-level "rope_theta" plus "rope_scaling" (null, or a
//                   dict with "rope_type"/"type" and the type's keys).
// Both forms of the same model parse to the same RopeParameters, and the
// frequency table every process uses is computed from it once, in float64.
#ifndef LOCKSTEP_COMMON_FORMATS_ROPE_PARAMETERS_H_
#define LOCKSTEP_COMMON_FORMATS_ROPE_PARAMETERS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace lockstep::common {

// The RoPE variants lockstep implements (transformers' ROPE_INIT_FUNCTIONS
// names). "dynamic", "longrope" and any other type are refused.
inline constexpr const char* kSupportedRopeTypes[] = {"default", "linear",
                                                      "llama3", "yarn"};

struct RopeParameters {
  // One of kSupportedRopeTypes.
  std::string rope_type = "default";
  double rope_theta = 10000.0;  // base of the frequencies (> 0)
  // linear, llama3, yarn: the context extension factor (> 0; 1 for default).
  double factor = 1.0;
  // llama3: frequency band edges (low < high).
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  // llama3 (required), yarn (defaults to max_position_embeddings): the
  // pre-training context length. 0 for default and linear.
  int64_t original_max_position_embeddings = 0;
  // yarn: ramp bounds in rotations, the explicit attention factor (scales
  // cos and sin; derived from factor/mscale/mscale_all_dim when absent),
  // and whether the ramp bounds are rounded to whole dimensions.
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  std::optional<double> attention_factor;
  std::optional<double> mscale;
  std::optional<double> mscale_all_dim;
  bool truncate = true;

  // The scale applied to cos and sin (YaRN's attention temperature): 1 for
  // every type but yarn, where it is `attention_factor` when given, else
  // get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim) when both
  // are non-zero, else get_mscale(factor), with get_mscale(s, m) =
  // s <= 1 ? 1 : 0.1 * m * ln(s) + 1 (transformers' formulas).
  double EffectiveAttentionFactor() const;

  // Inverse frequencies [rotary_dim / 2] of the pairs (i, i + rotary_dim/2),
  // in float64 (transformers computes the same formulas in float32):
  //   default: theta^(-2i/rotary_dim);  linear: default / factor;
  //   llama3: default scaled per wavelength band (unchanged below
  //     original/high_freq_factor, / factor above original/low_freq_factor,
  //     smoothly interpolated between);
  //   yarn: interpolation (default / factor) and extrapolation (default)
  //     blended by the linear ramp between the beta_fast/beta_slow
  //     correction dimensions.
  // `rotary_dim` must be even and > 0.
  std::vector<double> InverseFrequencies(int64_t rotary_dim) const;

  // InvalidArgument (naming the key) unless rope_type is supported and the
  // type's values are finite and in range.
  absl::Status Validate() const;

  // The transformers-5 "rope_parameters" dict of these parameters (only the
  // keys of rope_type).
  nlohmann::json ToJson() const;

  friend bool operator==(const RopeParameters& a, const RopeParameters& b);
  friend bool operator!=(const RopeParameters& a, const RopeParameters& b) {
    return !(a == b);
  }
};

// What ParseRopeParameters read, and the keys it saw but did not use.
struct ParsedRopeParameters {
  RopeParameters rope;
  // Keys inside the rope dict that the rope type does not use (transformers
  // ignores them as well), as "rope_parameters.<key>" /
  // "rope_scaling.<key>".
  std::vector<std::string> ignored_keys;
};

// Reads the RoPE parameters of a config.json object, from either form.
// `max_position_embeddings` is the config's (yarn's default original
// length). `layer_types` are the config's per-layer attention types
// ("full_attention" for every layer when the config has none): a per-layer-
// type rope_parameters dict must hold an entry for each type used, and all
// of them must be equal. InvalidArgument naming the key and value for: a
// rope dict that is not an object; an unknown or unsupported rope_type; a
// missing required key of the type; a value of the wrong JSON type or out of
// range; "partial_rotary_factor" other than 1 (top level or in the dict);
// both forms present with different values. Without "rope_theta" in either
// form, theta is 10000 (the default of every supported family's config
// class).
absl::StatusOr<ParsedRopeParameters> ParseRopeParameters(
    const nlohmann::json& config, int64_t max_position_embeddings,
    const std::vector<std::string>& layer_types);

}  // namespace lockstep::common

#endif  // LOCKSTEP_COMMON_FORMATS_ROPE_PARAMETERS_H_
