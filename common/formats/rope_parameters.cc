#include "common/formats/rope_parameters.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/formats/config_json.h"
#include "common/status/status_macros.h"

namespace lockstep::common {
namespace {

using json = nlohmann::json;

constexpr double kPi = 3.14159265358979323846;

bool SupportedRopeType(const std::string& t) {
  return std::find_if(std::begin(kSupportedRopeTypes), std::end(kSupportedRopeTypes),
                      [&](const char* s) { return t == s; }) != std::end(kSupportedRopeTypes);
}

// transformers' get_mscale.
double MScale(double scale, double m) {
  return scale <= 1.0 ? 1.0 : 0.1 * m * std::log(scale) + 1.0;
}

// The keys each type reads besides rope_type/type, rope_theta and
// partial_rotary_factor.
std::set<std::string> KeysOfType(const std::string& type) {
  if (type == "linear") return {"factor"};
  if (type == "llama3") {
    return {"factor", "low_freq_factor", "high_freq_factor",
            "original_max_position_embeddings"};
  }
  if (type == "yarn") {
    return {"factor",    "original_max_position_embeddings", "beta_fast", "beta_slow",
            "attention_factor", "mscale", "mscale_all_dim", "truncate"};
  }
  return {};
}

absl::Status CheckPartialRotary(const json& j, absl::string_view where) {
  LOCKSTEP_ASSIGN_OR_RETURN(std::optional<double> p,
                            OptionalConfigDouble(j, "partial_rotary_factor", where));
  if (p.has_value() && *p != 1.0) {
    return ConfigError(absl::StrCat("\"", where, "partial_rotary_factor\": ", *p,
                                    " is unsupported (RoPE on the whole head only)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<double> Required(const json& d, const char* key, absl::string_view where,
                                const std::string& type) {
  LOCKSTEP_ASSIGN_OR_RETURN(std::optional<double> v, OptionalConfigDouble(d, key, where));
  if (!v.has_value()) {
    return ConfigError(absl::StrCat("\"", where, key, "\" is required for rope_type '",
                                    type, "'"));
  }
  return *v;
}

// One rope dict (a transformers-5 rope_parameters entry or a transformers-4
// rope_scaling) with `theta` read from it or given by the caller.
absl::StatusOr<ParsedRopeParameters> ParseRopeDict(const json& d, absl::string_view where,
                                                   std::optional<double> theta,
                                                   int64_t max_position_embeddings) {
  if (!d.is_object()) {
    return ConfigError(absl::StrCat("\"", where.substr(0, where.size() - 1),
                                    "\" must be null or an object, got ", d.dump()));
  }
  ParsedRopeParameters out;
  RopeParameters& r = out.rope;
  LOCKSTEP_ASSIGN_OR_RETURN(std::optional<std::string> type,
                            OptionalConfigString(d, "rope_type", where));
  if (!type.has_value()) {
    LOCKSTEP_ASSIGN_OR_RETURN(type, OptionalConfigString(d, "type", where));
  }
  if (!type.has_value()) {
    for (const auto& [key, value] : d.items()) {
      if (key != "rope_theta" && key != "partial_rotary_factor" && !value.is_null()) {
        return ConfigError(absl::StrCat("\"", where, "rope_type\" is missing: ", d.dump()));
      }
    }
    type = "default";
  }
  if (!SupportedRopeType(*type)) {
    return ConfigError(absl::StrCat("unsupported \"", where, "rope_type\" '", *type,
                                    "' (supported: ", absl::StrJoin(kSupportedRopeTypes, ", "),
                                    "): ", d.dump()));
  }
  r.rope_type = *type;
  LOCKSTEP_RETURN_IF_ERROR(CheckPartialRotary(d, where));
  LOCKSTEP_ASSIGN_OR_RETURN(std::optional<double> own_theta,
                            OptionalConfigDouble(d, "rope_theta", where));
  r.rope_theta = own_theta.value_or(theta.value_or(10000.0));

  if (r.rope_type == "linear") {
    LOCKSTEP_ASSIGN_OR_RETURN(r.factor, Required(d, "factor", where, r.rope_type));
  } else if (r.rope_type == "llama3") {
    LOCKSTEP_ASSIGN_OR_RETURN(r.factor, Required(d, "factor", where, r.rope_type));
    LOCKSTEP_ASSIGN_OR_RETURN(r.low_freq_factor,
                              Required(d, "low_freq_factor", where, r.rope_type));
    LOCKSTEP_ASSIGN_OR_RETURN(r.high_freq_factor,
                              Required(d, "high_freq_factor", where, r.rope_type));
    LOCKSTEP_ASSIGN_OR_RETURN(std::optional<int64_t> orig,
                              OptionalConfigInt(d, "original_max_position_embeddings", where));
    if (!orig.has_value()) {
      return ConfigError(absl::StrCat("\"", where,
                                      "original_max_position_embeddings\" is required for "
                                      "rope_type 'llama3'"));
    }
    r.original_max_position_embeddings = *orig;
  } else if (r.rope_type == "yarn") {
    LOCKSTEP_ASSIGN_OR_RETURN(std::optional<int64_t> orig,
                              OptionalConfigInt(d, "original_max_position_embeddings", where));
    r.original_max_position_embeddings = orig.value_or(max_position_embeddings);
    LOCKSTEP_ASSIGN_OR_RETURN(std::optional<double> factor,
                              OptionalConfigDouble(d, "factor", where));
    if (!factor.has_value()) {
      if (!orig.has_value() || *orig <= 0) {
        return ConfigError(absl::StrCat("\"", where,
                                        "factor\" is required for rope_type 'yarn' (or "
                                        "original_max_position_embeddings to derive it)"));
      }
      // transformers 5: the ratio of the extended to the original context.
      factor = static_cast<double>(max_position_embeddings) / static_cast<double>(*orig);
    }
    r.factor = *factor;
    LOCKSTEP_ASSIGN_OR_RETURN(std::optional<double> v,
                              OptionalConfigDouble(d, "beta_fast", where));
    // transformers: `get("beta_fast") or 32`, so 0 means the default too.
    if (v.has_value() && *v != 0.0) r.beta_fast = *v;
    LOCKSTEP_ASSIGN_OR_RETURN(v, OptionalConfigDouble(d, "beta_slow", where));
    if (v.has_value() && *v != 0.0) r.beta_slow = *v;
    LOCKSTEP_ASSIGN_OR_RETURN(r.attention_factor,
                              OptionalConfigDouble(d, "attention_factor", where));
    LOCKSTEP_ASSIGN_OR_RETURN(r.mscale, OptionalConfigDouble(d, "mscale", where));
    LOCKSTEP_ASSIGN_OR_RETURN(r.mscale_all_dim,
                              OptionalConfigDouble(d, "mscale_all_dim", where));
    LOCKSTEP_ASSIGN_OR_RETURN(std::optional<bool> truncate,
                              OptionalConfigBool(d, "truncate", where));
    r.truncate = truncate.value_or(true);
  }
  const std::set<std::string> used = KeysOfType(r.rope_type);
  for (const auto& [key, value] : d.items()) {
    if (key == "rope_type" || key == "type" || key == "rope_theta" ||
        key == "partial_rotary_factor" || used.count(key) != 0) {
      continue;
    }
    out.ignored_keys.push_back(absl::StrCat(where, key));
  }
  absl::Status valid = r.Validate();
  if (!valid.ok()) {
    return ConfigError(absl::StrCat(where, ": ", valid.message()));
  }
  return out;
}

}  // namespace

double RopeParameters::EffectiveAttentionFactor() const {
  if (rope_type != "yarn") return 1.0;
  if (attention_factor.has_value()) return *attention_factor;
  if (mscale.value_or(0.0) != 0.0 && mscale_all_dim.value_or(0.0) != 0.0) {
    return MScale(factor, *mscale) / MScale(factor, *mscale_all_dim);
  }
  return MScale(factor, 1.0);
}

std::vector<double> RopeParameters::InverseFrequencies(int64_t rotary_dim) const {
  const int64_t half = rotary_dim / 2;
  const double dim = static_cast<double>(rotary_dim);
  std::vector<double> inv(half);
  for (int64_t i = 0; i < half; ++i) {
    inv[i] = std::pow(rope_theta, -2.0 * static_cast<double>(i) / dim);
  }
  if (rope_type == "linear") {
    for (double& f : inv) f /= factor;
  } else if (rope_type == "llama3") {
    const double old_len = static_cast<double>(original_max_position_embeddings);
    const double low_wavelen = old_len / low_freq_factor;
    const double high_wavelen = old_len / high_freq_factor;
    for (double& f : inv) {
      const double wavelen = 2.0 * kPi / f;
      if (wavelen > low_wavelen) {
        f /= factor;
      } else if (!(wavelen < high_wavelen)) {
        const double smooth =
            (old_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
        f = (1.0 - smooth) * f / factor + smooth * f;
      }
    }
  } else if (rope_type == "yarn") {
    const double orig = static_cast<double>(original_max_position_embeddings);
    auto correction_dim = [&](double rotations) {
      return (dim * std::log(orig / (rotations * 2.0 * kPi))) / (2.0 * std::log(rope_theta));
    };
    double low = correction_dim(beta_fast);
    double high = correction_dim(beta_slow);
    if (truncate) {
      low = std::floor(low);
      high = std::ceil(high);
    }
    low = std::max(low, 0.0);
    high = std::min(high, dim - 1.0);
    if (low == high) high += 0.001;  // transformers' guard against 0/0
    for (int64_t i = 0; i < half; ++i) {
      const double ramp =
          std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
      const double extrapolation = 1.0 - ramp;
      const double f = inv[i];
      inv[i] = (f / factor) * (1.0 - extrapolation) + f * extrapolation;
    }
  }
  return inv;
}

absl::Status RopeParameters::Validate() const {
  auto bad = [](const char* key, double v, const char* want) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", key, "\" must be ", want, ", got ", v));
  };
  auto positive = [](double v) { return v > 0.0 && std::isfinite(v); };
  if (!SupportedRopeType(rope_type)) {
    return absl::InvalidArgumentError(
        absl::StrCat("unsupported rope_type '", rope_type,
                     "' (supported: ", absl::StrJoin(kSupportedRopeTypes, ", "), ")"));
  }
  if (!positive(rope_theta)) return bad("rope_theta", rope_theta, "finite and > 0");
  if (rope_type == "default") {
    if (factor != 1.0) return bad("factor", factor, "1 for rope_type 'default'");
    return absl::OkStatus();
  }
  if (!positive(factor)) return bad("factor", factor, "finite and > 0");
  if (rope_type == "llama3") {
    if (!positive(low_freq_factor)) return bad("low_freq_factor", low_freq_factor, "> 0");
    if (!positive(high_freq_factor) || !(high_freq_factor > low_freq_factor)) {
      return bad("high_freq_factor", high_freq_factor, "finite and > low_freq_factor");
    }
  }
  if (rope_type == "llama3" || rope_type == "yarn") {
    if (original_max_position_embeddings <= 0) {
      return bad("original_max_position_embeddings",
                 static_cast<double>(original_max_position_embeddings), "> 0");
    }
  }
  if (rope_type == "yarn") {
    if (!positive(beta_fast)) return bad("beta_fast", beta_fast, "finite and > 0");
    if (!positive(beta_slow)) return bad("beta_slow", beta_slow, "finite and > 0");
    if (attention_factor.has_value() && !positive(*attention_factor)) {
      return bad("attention_factor", *attention_factor, "finite and > 0");
    }
    if (mscale.has_value() && !std::isfinite(*mscale)) return bad("mscale", *mscale, "finite");
    if (mscale_all_dim.has_value() && !std::isfinite(*mscale_all_dim)) {
      return bad("mscale_all_dim", *mscale_all_dim, "finite");
    }
    if (!positive(EffectiveAttentionFactor())) {
      return bad("attention factor (derived)", EffectiveAttentionFactor(), "finite and > 0");
    }
  }
  return absl::OkStatus();
}

json RopeParameters::ToJson() const {
  json j = json::object();
  j["rope_type"] = rope_type;
  j["rope_theta"] = rope_theta;
  if (rope_type == "default") return j;
  j["factor"] = factor;
  if (rope_type == "llama3") {
    j["low_freq_factor"] = low_freq_factor;
    j["high_freq_factor"] = high_freq_factor;
  }
  if (rope_type == "llama3" || rope_type == "yarn") {
    j["original_max_position_embeddings"] = original_max_position_embeddings;
  }
  if (rope_type == "yarn") {
    j["beta_fast"] = beta_fast;
    j["beta_slow"] = beta_slow;
    if (attention_factor.has_value()) j["attention_factor"] = *attention_factor;
    if (mscale.has_value()) j["mscale"] = *mscale;
    if (mscale_all_dim.has_value()) j["mscale_all_dim"] = *mscale_all_dim;
    j["truncate"] = truncate;
  }
  return j;
}

bool operator==(const RopeParameters& a, const RopeParameters& b) {
  return a.rope_type == b.rope_type && a.rope_theta == b.rope_theta && a.factor == b.factor &&
         a.low_freq_factor == b.low_freq_factor && a.high_freq_factor == b.high_freq_factor &&
         a.original_max_position_embeddings == b.original_max_position_embeddings &&
         a.beta_fast == b.beta_fast && a.beta_slow == b.beta_slow &&
         a.attention_factor == b.attention_factor && a.mscale == b.mscale &&
         a.mscale_all_dim == b.mscale_all_dim && a.truncate == b.truncate;
}

absl::StatusOr<ParsedRopeParameters> ParseRopeParameters(
    const json& config, int64_t max_position_embeddings,
    const std::vector<std::string>& layer_types) {
  LOCKSTEP_RETURN_IF_ERROR(CheckPartialRotary(config, ""));
  LOCKSTEP_ASSIGN_OR_RETURN(std::optional<double> top_theta,
                            OptionalConfigDouble(config, "rope_theta"));
  const json* rs = FindConfigKey(config, "rope_scaling");

  std::optional<ParsedRopeParameters> v5;
  if (const json* rp = FindConfigKey(config, "rope_parameters"); rp != nullptr) {
    if (!rp->is_object()) {
      return ConfigError(
          absl::StrCat("\"rope_parameters\" must be null or an object, got ", rp->dump()));
    }
    bool per_layer_type = !rp->empty() && !rp->contains("rope_type") &&
                          !rp->contains("type") && !rp->contains("rope_theta");
    for (const auto& [key, value] : rp->items()) {
      if (!value.is_object()) per_layer_type = false;
    }
    if (!per_layer_type) {
      LOCKSTEP_ASSIGN_OR_RETURN(
          v5, ParseRopeDict(*rp, "rope_parameters.", top_theta, max_position_embeddings));
    } else {
      // One dict per attention type (transformers writes this for hybrid
      // models): every type a layer uses must be there, and lockstep runs
      // one RoPE for all layers, so they must agree.
      std::set<std::string> used(layer_types.begin(), layer_types.end());
      if (used.empty()) used.insert("full_attention");
      for (const std::string& type : used) {
        auto it = rp->find(type);
        if (it == rp->end()) {
          return ConfigError(absl::StrCat("\"rope_parameters\" has no entry for layer type '",
                                          type, "': ", rp->dump()));
        }
        LOCKSTEP_ASSIGN_OR_RETURN(
            ParsedRopeParameters p,
            ParseRopeDict(*it, absl::StrCat("rope_parameters.", type, "."), top_theta,
                          max_position_embeddings));
        if (v5.has_value() && p.rope != v5->rope) {
          return ConfigError(absl::StrCat(
              "\"rope_parameters\" differ between layer types (unsupported): ", rp->dump()));
        }
        if (!v5.has_value()) v5 = std::move(p);
      }
    }
  }

  std::optional<ParsedRopeParameters> v4;
  if (rs != nullptr) {
    LOCKSTEP_ASSIGN_OR_RETURN(
        v4, ParseRopeDict(*rs, "rope_scaling.", top_theta, max_position_embeddings));
  } else if (!v5.has_value()) {
    ParsedRopeParameters p;
    p.rope.rope_theta = top_theta.value_or(10000.0);
    if (!p.rope.Validate().ok()) {
      return ConfigError(
          absl::StrCat("\"rope_theta\" must be finite and > 0, got ", p.rope.rope_theta));
    }
    v4 = std::move(p);
  }
  if (v5.has_value()) {
    // Both forms may be present (a hand-edited or converted file): they must
    // describe the same RoPE.
    const bool theta_disagrees =
        top_theta.has_value() && *top_theta != v5->rope.rope_theta;
    if (theta_disagrees || (v4.has_value() && v5->rope != v4->rope)) {
      return ConfigError(absl::StrCat(
          "\"rope_parameters\" ", v5->rope.ToJson().dump(),
          " and \"rope_theta\"/\"rope_scaling\" ",
          v4.has_value() ? v4->rope.ToJson().dump() : absl::StrCat(*top_theta),
          " disagree"));
    }
    return std::move(*v5);
  }
  return std::move(*v4);
}

}  // namespace lockstep::common
