// An owned, host-resident tensor and a name -> tensor map: the unit in which
// weights are loaded, shipped over the wire and handed to Model::Create.
#ifndef LOCKSTEP_COMMON_FORMATS_HOST_TENSOR_H_
#define LOCKSTEP_COMMON_FORMATS_HOST_TENSOR_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "kernels/dtype.h"

namespace lockstep::common {

struct HostTensor {
  kernels::DType dtype = kernels::DType::kF32;
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;  // numel() * DTypeSize(dtype) bytes, row-major

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  const float* f32() const { return reinterpret_cast<const float*>(data.data()); }
};

// HF tensor name (e.g. "model.layers.0.mlp.up_proj.weight") -> tensor.
using TensorMap = std::map<std::string, HostTensor>;

}  // namespace lockstep::common

#endif  // LOCKSTEP_COMMON_FORMATS_HOST_TENSOR_H_
