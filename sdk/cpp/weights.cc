#include "sdk/cpp/weights.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/formats/safetensors.h"
#include "kernels/dtype.h"

namespace lockstep::client {
namespace {

bool IsDirectory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

}  // namespace

absl::StatusOr<WeightSet> WeightSet::FromSafetensors(const std::string& path) {
  // A directory is a checkpoint (one file or an index and its shards) and is
  // opened as the servers open --model_dir; anything else is one file.
  std::shared_ptr<const void> owner;
  const std::vector<common::TensorInfo>* tensors = nullptr;
  if (IsDirectory(path)) {
    absl::StatusOr<std::unique_ptr<common::SafetensorsCheckpoint>> opened =
        common::SafetensorsCheckpoint::Open(path);
    if (!opened.ok()) return opened.status();
    tensors = &(*opened)->tensors();
    owner = std::shared_ptr<const common::SafetensorsCheckpoint>(
        std::move(*opened));
  } else {
    absl::StatusOr<std::unique_ptr<common::SafetensorsFile>> opened =
        common::SafetensorsFile::Open(path);
    if (!opened.ok()) return opened.status();
    tensors = &(*opened)->tensors();
    owner = std::shared_ptr<const common::SafetensorsFile>(std::move(*opened));
  }
  WeightSet set;
  set.owners_.push_back(std::move(owner));
  for (const common::TensorInfo& t : *tensors) {  // sorted by name
    TensorView v;
    v.name = t.name;
    v.shape = t.shape;
    if (t.dtype == kernels::DType::kF16) {
      // fp16 has no wire dtype: widened exactly to fp32, as the servers load
      // fp16 checkpoints (common/checkpoint.h).
      auto widened = std::make_shared<std::vector<uint8_t>>(t.numel() * sizeof(float));
      kernels::WidenF16ToF32(t.data, t.numel(), widened->data());
      v.dtype = v1::DTYPE_F32;
      v.data = widened->data();
      v.nbytes = widened->size();
      set.owners_.push_back(std::move(widened));
    } else {
      v.dtype = common::ToProtoDType(t.dtype);
      v.data = t.data;
      v.nbytes = t.nbytes;
    }
    set.views_.push_back(std::move(v));
  }
  return set;
}

absl::StatusOr<WeightSet> WeightSet::FromTensors(std::vector<Tensor> tensors) {
  std::sort(tensors.begin(), tensors.end(),
            [](const Tensor& a, const Tensor& b) { return a.name < b.name; });
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Tensor& t = tensors[i];
    if (t.name.empty())
      return absl::InvalidArgumentError("a tensor has no name");
    if (i > 0 && tensors[i - 1].name == t.name) {
      return absl::InvalidArgumentError(
          absl::StrCat("duplicate tensor '", t.name, "'"));
    }
  }
  auto owned = std::make_shared<std::vector<Tensor>>(std::move(tensors));
  WeightSet set;
  set.owners_.push_back(owned);
  for (const Tensor& t : *owned) {
    TensorView v{t.name, t.dtype, t.shape, t.data.data(), t.data.size()};
    absl::Status valid = common::CheckWireTensor(v);
    if (!valid.ok()) return valid;
    set.views_.push_back(std::move(v));
  }
  return set;
}

absl::StatusOr<WeightSet> WeightSet::ConvertedTo(v1::DType dtype) const {
  if (common::WireDTypeSize(dtype) == 0) {
    return absl::InvalidArgumentError(
        "ConvertedTo needs DTYPE_F32 or DTYPE_BF16");
  }
  WeightSet out;
  out.owners_ = owners_;
  for (const TensorView& v : views_) {
    if (v.dtype == dtype) {
      out.views_.push_back(v);
      continue;
    }
    const size_t numel = v.nbytes / common::WireDTypeSize(v.dtype);
    auto buffer = std::make_shared<std::vector<uint8_t>>(
        numel * common::WireDTypeSize(dtype));
    // Element loads go through memcpy: a mapped file need not align them.
    if (dtype == v1::DTYPE_BF16) {
      for (size_t i = 0; i < numel; ++i) {
        float f;
        std::memcpy(&f, v.data + 4 * i, 4);
        const uint16_t b = kernels::F32ToBF16(f);
        std::memcpy(buffer->data() + 2 * i, &b, 2);
      }
    } else {
      for (size_t i = 0; i < numel; ++i) {
        uint16_t b;
        std::memcpy(&b, v.data + 2 * i, 2);
        const float f = kernels::BF16ToF32(b);
        std::memcpy(buffer->data() + 4 * i, &f, 4);
      }
    }
    out.owners_.push_back(buffer);
    out.views_.push_back(
        TensorView{v.name, dtype, v.shape, buffer->data(), buffer->size()});
  }
  return out;
}

uint64_t WeightSet::total_bytes() const {
  uint64_t total = 0;
  for (const TensorView& v : views_) total += v.nbytes;
  return total;
}

v1::DType WeightSet::dtype() const {
  if (views_.empty()) return v1::DTYPE_UNSPECIFIED;
  for (const TensorView& v : views_) {
    if (v.dtype != views_.front().dtype) return v1::DTYPE_UNSPECIFIED;
  }
  return views_.front().dtype;
}

v1::WeightUpdateHeader MakeWeightUpdateHeader(const WeightSet& weights,
                                              uint64_t target_version,
                                              const std::string& source) {
  // Every factory of a WeightSet checks its tensors (CheckWireTensor).
  return common::WeightUpdateHeaderOf(weights.tensors(), target_version,
                                      source);
}

absl::Status StreamWeightUpdate(
    const WeightSet& weights, const WeightUploadOptions& options,
    const std::function<absl::Status(const v1::WeightUpdate&)>& sink) {
  if (weights.tensors().empty()) {
    return absl::InvalidArgumentError("the weight set holds no tensors");
  }
  common::WeightStreamOptions stream;
  stream.chunk_bytes = options.chunk_bytes;
  stream.source = options.source;
  return common::StreamWeights(weights.tensors(), options.target_version, sink,
                               stream);
}

}  // namespace lockstep::client
