// A StepRequest's logit adjustments copied to the logits' device, as
// kernels::Sample reads them there, plus the [rows, vocab] fp32 workspace the
// CUDA sampler writes adjusted rows into. Used by the eager CUDA steps.
#ifndef LOCKSTEP_COMMON_MODEL_DEVICE_ADJUSTMENTS_H_
#define LOCKSTEP_COMMON_MODEL_DEVICE_ADJUSTMENTS_H_

#include <algorithm>
#include <cstdint>

#include <torch/torch.h>

#include "common/model/model.h"
#include "kernels/sampling.h"

namespace lockstep::common {

class DeviceAdjustments {
 public:
  // Nothing is allocated when the request has no adjustments.
  DeviceAdjustments(const StepRequest& request, int64_t rows, int64_t vocab,
                    torch::Device device) {
    if (request.adjust_offsets.empty()) return;
    offsets_ = torch::from_blob(const_cast<int64_t*>(request.adjust_offsets.data()),
                                {rows + 1}, torch::kLong)
                   .to(device);
    const int64_t bytes = static_cast<int64_t>(request.adjustments.size() *
                                               sizeof(kernels::LogitAdjustment));
    // At least one byte, so the pointer is never null (rows may have none).
    entries_ = torch::empty({std::max<int64_t>(bytes, 1)},
                            torch::TensorOptions().dtype(torch::kUInt8).device(device));
    if (bytes > 0) {
      entries_.copy_(torch::from_blob(
          const_cast<kernels::LogitAdjustment*>(request.adjustments.data()), {bytes},
          torch::kUInt8));
    }
    workspace_ = torch::empty({rows, vocab},
                              torch::TensorOptions().dtype(torch::kFloat).device(device));
  }

  // Points `a` at the adjustments (leaves it untouched without them).
  void Fill(kernels::SampleArgs* a) const {
    if (!offsets_.defined()) return;
    a->adjust_offsets = offsets_.data_ptr<int64_t>();
    a->adjustments = reinterpret_cast<const kernels::LogitAdjustment*>(entries_.data_ptr<uint8_t>());
    a->workspace = workspace_.data_ptr<float>();
  }

 private:
  torch::Tensor offsets_, entries_, workspace_;
};

}  // namespace lockstep::common

#endif  // LOCKSTEP_COMMON_MODEL_DEVICE_ADJUSTMENTS_H_
