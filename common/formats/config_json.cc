#include "common/formats/config_json.h"

#include <limits>

#include "absl/strings/str_cat.h"

namespace lockstep::common {

using json = nlohmann::json;

absl::Status ConfigError(absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("model config: ", what));
}

const json* FindConfigKey(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return nullptr;
  return &*it;
}

absl::StatusOr<std::optional<int64_t>> OptionalConfigInt(const json& j,
                                                         const char* key,
                                                         absl::string_view where) {
  const json* v = FindConfigKey(j, key);
  if (v == nullptr) return std::optional<int64_t>();
  if (v->is_number_unsigned()) {
    const uint64_t u = v->get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return ConfigError(absl::StrCat("\"", where, key, "\" is out of range"));
    }
    return std::optional<int64_t>(static_cast<int64_t>(u));
  }
  if (v->is_number_integer()) return std::optional<int64_t>(v->get<int64_t>());
  return ConfigError(absl::StrCat("\"", where, key,
                                  "\" must be an integer, got ", v->dump()));
}

absl::StatusOr<std::optional<double>> OptionalConfigDouble(const json& j,
                                                           const char* key,
                                                           absl::string_view where) {
  const json* v = FindConfigKey(j, key);
  if (v == nullptr) return std::optional<double>();
  if (!v->is_number()) {
    return ConfigError(absl::StrCat("\"", where, key,
                                    "\" must be a number, got ", v->dump()));
  }
  return std::optional<double>(v->get<double>());
}

absl::StatusOr<std::optional<bool>> OptionalConfigBool(const json& j,
                                                       const char* key,
                                                       absl::string_view where) {
  const json* v = FindConfigKey(j, key);
  if (v == nullptr) return std::optional<bool>();
  if (!v->is_boolean()) {
    return ConfigError(absl::StrCat("\"", where, key,
                                    "\" must be true or false, got ", v->dump()));
  }
  return std::optional<bool>(v->get<bool>());
}

absl::StatusOr<std::optional<std::string>> OptionalConfigString(
    const json& j, const char* key, absl::string_view where) {
  const json* v = FindConfigKey(j, key);
  if (v == nullptr) return std::optional<std::string>();
  if (!v->is_string()) {
    return ConfigError(absl::StrCat("\"", where, key,
                                    "\" must be a string, got ", v->dump()));
  }
  return std::optional<std::string>(v->get<std::string>());
}

}  // namespace lockstep::common
