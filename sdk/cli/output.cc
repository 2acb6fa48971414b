#include "sdk/cli/output.h"

#include <google/protobuf/util/json_util.h>

#include <vector>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace lockstep::cli {

std::string ToJson(const google::protobuf::Message& m, bool multiline) {
  google::protobuf::util::JsonPrintOptions o;
  o.add_whitespace = multiline;
  o.preserve_proto_field_names = true;
  o.always_print_primitive_fields = true;
  std::string out;
  if (!google::protobuf::util::MessageToJsonString(m, &out, o).ok())
    return "{}";
  if (multiline && !out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

std::string Floats(const google::protobuf::RepeatedField<float>& v) {
  std::vector<std::string> parts;
  for (float f : v) parts.push_back(absl::StrFormat("%.6g", f));
  return absl::StrJoin(parts, " ");
}

const char* FinishName(v1::FinishReason r) {
  switch (r) {
    case v1::FINISH_REASON_STOP:
      return "stop";
    case v1::FINISH_REASON_LENGTH:
      return "length";
    default:
      return "running";
  }
}

const char* KernelName(v1::KernelMode m) {
  switch (m) {
    case v1::KERNEL_MODE_INVARIANT:
      return "invariant";
    case v1::KERNEL_MODE_STANDARD:
      return "standard";
    default:
      return "unspecified";
  }
}

}  // namespace lockstep::cli
