#include "sdk/cli/flags.h"

#include <algorithm>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace lockstep::cli {
namespace {

std::string Normalize(std::string name) {
  std::replace(name.begin(), name.end(), '-', '_');
  return name;
}

const FlagSpec* Find(const std::vector<FlagSpec>& specs,
                     const std::string& name) {
  for (const FlagSpec& s : specs) {
    if (s.name == name) return &s;
  }
  return nullptr;
}

}  // namespace

std::string Args::Get(const std::string& name,
                      const std::string& fallback) const {
  auto it = values_.find(name);
  return it == values_.end() ? fallback : it->second.back();
}

std::vector<std::string> Args::GetAll(const std::string& name) const {
  auto it = values_.find(name);
  return it == values_.end() ? std::vector<std::string>{} : it->second;
}

bool Args::GetBool(const std::string& name) const {
  return Get(name, "false") == "true";
}

absl::StatusOr<int64_t> Args::GetInt(const std::string& name,
                                     int64_t fallback) const {
  if (!Has(name)) return fallback;
  int64_t v;
  if (!absl::SimpleAtoi(Get(name), &v)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, "=", Get(name), " is not an integer"));
  }
  return v;
}

absl::StatusOr<double> Args::GetDouble(const std::string& name,
                                       double fallback) const {
  if (!Has(name)) return fallback;
  double v;
  if (!absl::SimpleAtod(Get(name), &v)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, "=", Get(name), " is not a number"));
  }
  return v;
}

absl::StatusOr<Args> ParseFlags(const std::vector<FlagSpec>& specs,
                                const std::vector<std::string>& argv) {
  Args args;
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& word = argv[i];
    if (word == "--") {
      args.positional_.insert(args.positional_.end(), argv.begin() + i + 1,
                              argv.end());
      break;
    }
    if (word.size() < 2 || word[0] != '-' || word == "-") {
      args.positional_.push_back(word);
      continue;
    }
    if (word == "-h") {
      args.values_["help"].push_back("true");
      continue;
    }
    std::string body = word.substr(word[1] == '-' ? 2 : 1);
    std::string value;
    bool has_value = false;
    if (size_t eq = body.find('='); eq != std::string::npos) {
      value = body.substr(eq + 1);
      body = body.substr(0, eq);
      has_value = true;
    }
    std::string name = Normalize(body);
    const FlagSpec* spec = Find(specs, name);
    bool negated = false;
    if (spec == nullptr && !has_value) {
      for (const char* prefix : {"no_", "no"}) {
        const std::string p = prefix;
        if (name.rfind(p, 0) == 0) {
          const FlagSpec* s = Find(specs, name.substr(p.size()));
          if (s != nullptr && s->value_name.empty()) {
            spec = s;
            negated = true;
            break;
          }
        }
      }
    }
    if (spec == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag ", word));
    }
    if (spec->value_name.empty()) {  // boolean
      if (has_value) {
        if (value != "true" && value != "false" && value != "1" &&
            value != "0") {
          return absl::InvalidArgumentError(absl::StrCat(
              word, ": --", spec->name, " takes no value (or true/false)"));
        }
        value = (value == "true" || value == "1") ? "true" : "false";
      } else {
        value = negated ? "false" : "true";
      }
    } else if (!has_value) {
      if (i + 1 >= argv.size()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "--", spec->name, " needs a value (", spec->value_name, ")"));
      }
      value = argv[++i];
    }
    std::vector<std::string>& slot = args.values_[spec->name];
    if (!slot.empty() && !spec->repeatable && !spec->value_name.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", spec->name, " given more than once"));
    }
    slot.push_back(value);
  }
  return args;
}

std::string FlagHelp(const std::vector<FlagSpec>& specs) {
  std::string out;
  for (const FlagSpec& s : specs) {
    std::string left = absl::StrCat("  --", s.name);
    if (!s.value_name.empty()) absl::StrAppend(&left, "=", s.value_name);
    std::string right = s.help;
    if (!s.default_value.empty())
      absl::StrAppend(&right, " (default ", s.default_value, ")");
    if (s.repeatable) absl::StrAppend(&right, " [repeatable]");
    if (left.size() < 28) {
      left.resize(28, ' ');
      absl::StrAppend(&out, left, right, "\n");
    } else {
      absl::StrAppend(&out, left, "\n", std::string(28, ' '), right, "\n");
    }
  }
  return out;
}

absl::StatusOr<std::vector<int32_t>> ParseIdList(const std::string& text) {
  std::vector<int32_t> out;
  for (absl::string_view part :
       absl::StrSplit(text, absl::ByAnyChar(", "), absl::SkipEmpty())) {
    int32_t v;
    if (!absl::SimpleAtoi(part, &v)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "'", text, "' is not a comma-separated list of token ids"));
    }
    out.push_back(v);
  }
  if (out.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", text, "' holds no token ids"));
  }
  return out;
}

}  // namespace lockstep::cli
