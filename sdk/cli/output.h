// How `lockstep` commands print results: messages as JSON (the proto3 JSON
// mapping, for --json), logprob lists, and the names of wire enums.
#ifndef LOCKSTEP_SDK_CLI_OUTPUT_H_
#define LOCKSTEP_SDK_CLI_OUTPUT_H_

#include <google/protobuf/message.h>
#include <google/protobuf/repeated_field.h>

#include <string>

#include "lockstep/v1/common.pb.h"
#include "lockstep/v1/rollout.pb.h"

namespace lockstep::cli {

// `m` in the proto3 JSON mapping with the proto field names and every
// primitive field printed; indented over several lines, or on one line
// (JSON Lines) when !multiline. "{}" if it cannot be printed.
std::string ToJson(const google::protobuf::Message& m, bool multiline = true);

// "v0 v1 ..." with each value as %.6g.
std::string Floats(const google::protobuf::RepeatedField<float>& v);

// "stop" / "length" / "running" (no finish reason yet).
const char* FinishName(v1::FinishReason r);

// "invariant" / "standard" / "unspecified".
const char* KernelName(v1::KernelMode m);

}  // namespace lockstep::cli

#endif  // LOCKSTEP_SDK_CLI_OUTPUT_H_
