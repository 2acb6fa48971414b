#include "common/formats/checkpoint.h"

#include "absl/strings/match.h"
#include "common/formats/safetensors.h"
#include "common/status/status_macros.h"

namespace lockstep::common {

absl::StatusOr<Checkpoint> LoadCheckpoint(const std::string& dir) {
  Checkpoint out;
  LOCKSTEP_ASSIGN_OR_RETURN(out.config, ModelConfig::FromFile(dir + "/config.json"));
  LOCKSTEP_ASSIGN_OR_RETURN(auto checkpoint, SafetensorsCheckpoint::Open(dir));
  LOCKSTEP_RETURN_IF_ERROR(CheckTensorShapes(out.config, *checkpoint));
  for (const TensorInfo& info : checkpoint->tensors()) {
    if (absl::EndsWith(info.name, ".rotary_emb.inv_freq")) continue;
    if (out.config.tie_word_embeddings && info.name == "lm_head.weight") continue;
    HostTensor t;
    t.shape = info.shape;
    if (info.dtype == kernels::DType::kF16) {
      // fp16 -> fp32 is exact; the model then runs in fp32 (ModelConfig).
      t.dtype = kernels::DType::kF32;
      t.data.resize(info.numel() * sizeof(float));
      kernels::WidenF16ToF32(info.data, info.numel(), t.data.data());
    } else {
      t.dtype = info.dtype;
      t.data.assign(info.data, info.data + info.nbytes);
    }
    out.tensors.emplace(info.name, std::move(t));
  }
  return out;
}

}  // namespace lockstep::common
