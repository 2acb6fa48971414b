// Reading a Hugging Face model directory (config.json plus safetensors
// weights, single file or sharded) into a config and host tensors: the one
// loader behind Model::Load, the learner's Trainer and the tools.
#ifndef LOCKSTEP_COMMON_FORMATS_CHECKPOINT_H_
#define LOCKSTEP_COMMON_FORMATS_CHECKPOINT_H_

#include <string>

#include "absl/status/statusor.h"
#include "common/formats/host_tensor.h"
#include "common/formats/model_config.h"

namespace lockstep::common {

struct Checkpoint {
  ModelConfig config;
  // Every weight of ExpectedTensors(config), by HF name, in the file's dtype
  // except float16, which is widened (exactly) to float32. Buffers some
  // converters save (".rotary_emb.inv_freq") and a tied model's stored copy
  // of the embedding as lm_head.weight are left out.
  TensorMap tensors;
};

// Loads `dir`/config.json (ModelConfig::FromFile) and the weights of `dir`
// (SafetensorsCheckpoint::Open, CheckTensorShapes). Errors are theirs, each
// naming the file (and key or tensor) at fault: NotFound for a missing
// config.json or weights, InvalidArgument for a malformed or unsupported
// config or a tensor set that does not match it, DataLoss for a truncated
// file.
absl::StatusOr<Checkpoint> LoadCheckpoint(const std::string& dir);

}  // namespace lockstep::common

#endif  // LOCKSTEP_COMMON_FORMATS_CHECKPOINT_H_
