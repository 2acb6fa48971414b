// A small command-line parser for the `lockstep` CLI: each subcommand
// declares its flags (with help text), so that `lockstep <command> --help`
// lists exactly the flags that command takes. Accepted forms: --name=value,
// --name value, --flag / --noflag / --no-flag for booleans; '-' and '_' are
// interchangeable in names; a bare "--" ends the flags.
#ifndef LOCKSTEP_SDK_CLI_FLAGS_H_
#define LOCKSTEP_SDK_CLI_FLAGS_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace lockstep::cli {

struct FlagSpec {
  std::string name;           // without dashes, with underscores
  std::string value_name;     // "HOST:PORT", "N", ...; empty for a boolean
  std::string help;           // one line
  std::string default_value;  // shown in --help ("" : none)
  bool repeatable = false;    // may be given several times
};

// The parsed command line of one subcommand.
class Args {
 public:
  bool Has(const std::string& name) const { return values_.count(name) > 0; }
  // The last value given, or `fallback`.
  std::string Get(const std::string& name,
                  const std::string& fallback = "") const;
  // Every value given, in order.
  std::vector<std::string> GetAll(const std::string& name) const;
  bool GetBool(const std::string& name) const;
  absl::StatusOr<int64_t> GetInt(const std::string& name,
                                 int64_t fallback) const;
  absl::StatusOr<double> GetDouble(const std::string& name,
                                   double fallback) const;
  const std::vector<std::string>& positional() const { return positional_; }

 private:
  friend absl::StatusOr<Args> ParseFlags(const std::vector<FlagSpec>& specs,
                                         const std::vector<std::string>& argv);
  std::map<std::string, std::vector<std::string>> values_;
  std::vector<std::string> positional_;
};

// Parses `argv` (the words after the subcommand). INVALID_ARGUMENT naming
// the word for an unknown flag, a missing value, a value given to a boolean
// or a non-repeatable flag given twice.
absl::StatusOr<Args> ParseFlags(const std::vector<FlagSpec>& specs,
                                const std::vector<std::string>& argv);

// The flag table for --help.
std::string FlagHelp(const std::vector<FlagSpec>& specs);

// "1,2, 3" -> {1, 2, 3}. INVALID_ARGUMENT for anything else.
absl::StatusOr<std::vector<int32_t>> ParseIdList(const std::string& text);

}  // namespace lockstep::cli

#endif  // LOCKSTEP_SDK_CLI_FLAGS_H_
