#include "common/checkpoint.h"

#include <cstring>

#include "common/safetensors.h"
#include "common/status_macros.h"

namespace lockstep::common {
namespace {

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

absl::StatusOr<Checkpoint> LoadCheckpoint(const std::string& dir) {
  Checkpoint out;
  LOCKSTEP_ASSIGN_OR_RETURN(out.config, ModelConfig::FromFile(dir + "/config.json"));
  LOCKSTEP_ASSIGN_OR_RETURN(auto checkpoint, SafetensorsCheckpoint::Open(dir));
  LOCKSTEP_RETURN_IF_ERROR(CheckTensorShapes(out.config, *checkpoint));
  for (const TensorInfo& info : checkpoint->tensors()) {
    if (EndsWith(info.name, ".rotary_emb.inv_freq")) continue;
    if (out.config.tie_word_embeddings && info.name == "lm_head.weight") continue;
    HostTensor t;
    t.shape = info.shape;
    if (info.dtype == kernels::DType::kF16) {
      // fp16 -> fp32 is exact; the model then runs in fp32 (ModelConfig).
      t.dtype = kernels::DType::kF32;
      const int64_t n = info.numel();
      t.data.resize(n * sizeof(float));
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;  // the mapping may place the tensor at an odd offset
        std::memcpy(&h, info.data + 2 * i, sizeof(h));
        const float f = kernels::F16ToF32(h);
        std::memcpy(t.data.data() + 4 * i, &f, sizeof(f));
      }
    } else {
      t.dtype = info.dtype;
      t.data.assign(info.data, info.data + info.nbytes);
    }
    out.tensors.emplace(info.name, std::move(t));
  }
  return out;
}

}  // namespace lockstep::common
