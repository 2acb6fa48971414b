// Typed reads of Hugging Face config.json keys. Every error is
// InvalidArgument "model config: ..." naming the key as `<where><key>` (e.g.
// "rope_parameters.factor") and the offending value. A key whose value is
// null counts as absent, as transformers treats it.
#ifndef LOCKSTEP_COMMON_FORMATS_CONFIG_JSON_H_
#define LOCKSTEP_COMMON_FORMATS_CONFIG_JSON_H_

#include <cstdint>
#include <optional>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace lockstep::common {

// InvalidArgument "model config: <what>".
absl::Status ConfigError(absl::string_view what);

// The value of `key` in object `j`, or null when absent or JSON null.
const nlohmann::json* FindConfigKey(const nlohmann::json& j, const char* key);

// Integers must be JSON integers (in int64 range); numbers may be integers
// or floating point; booleans and strings must be exactly that.
absl::StatusOr<std::optional<int64_t>> OptionalConfigInt(
    const nlohmann::json& j, const char* key, absl::string_view where = "");
absl::StatusOr<std::optional<double>> OptionalConfigDouble(
    const nlohmann::json& j, const char* key, absl::string_view where = "");
absl::StatusOr<std::optional<bool>> OptionalConfigBool(
    const nlohmann::json& j, const char* key, absl::string_view where = "");
absl::StatusOr<std::optional<std::string>> OptionalConfigString(
    const nlohmann::json& j, const char* key, absl::string_view where = "");

}  // namespace lockstep::common

#endif  // LOCKSTEP_COMMON_FORMATS_CONFIG_JSON_H_
