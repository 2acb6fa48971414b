// What a sparse (mixture-of-experts) layer's router decided for a forward's
// tokens, handed out through ForwardInput::routing (e.g. to the learner's
// load-balancing loss).
#ifndef LOCKSTEP_COMMON_MODEL_MOE_ROUTING_H_
#define LOCKSTEP_COMMON_MODEL_MOE_ROUTING_H_

#include <cstdint>

#include <torch/torch.h>

namespace lockstep::common {

struct MoeRouting {
  int64_t layer = 0;
  torch::Tensor logits;  // float32 [T, E], differentiable when training
  torch::Tensor ids;     // int64 [T, k]: the chosen experts, ranks in order
};

}  // namespace lockstep::common

#endif  // LOCKSTEP_COMMON_MODEL_MOE_ROUTING_H_
