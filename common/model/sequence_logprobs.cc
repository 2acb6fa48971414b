#include "common/model/sequence_logprobs.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/model/op_error.h"
#include "common/status/status_macros.h"
#include "common/model/rank_forward.h"

namespace lockstep::common {
namespace {

absl::StatusOr<RankWeights> SingleRank(const ModelConfig& c, const TorchWeights& w) {
  auto embed = w.find("model.embed_tokens.weight");
  if (embed == w.end()) return absl::InvalidArgumentError("missing weight model.embed_tokens.weight");
  // TP=1: every "slice" is the whole tensor, so the weights (and their
  // autograd identity) are used as they are.
  WeightSource source = [&](const std::string& name, int64_t, int64_t,
                            int64_t) -> absl::StatusOr<torch::Tensor> {
    auto it = w.find(name);
    if (it == w.end()) return absl::InvalidArgumentError("missing weight " + name);
    return it->second;
  };
  LinearMaker linear = [](torch::Tensor t) -> absl::StatusOr<LinearWeight> {
    LinearWeight lw;
    lw.w = std::move(t);
    return lw;
  };
  return BuildRankWeights(c, 0, 1, source, linear, embed->second.device());
}

}  // namespace

absl::StatusOr<std::vector<torch::Tensor>> SequenceLogprobs(
    const ModelConfig& config, const TorchWeights& weights, KernelMode mode,
    const std::vector<std::vector<int32_t>>& sequences,
    const std::vector<int64_t>& prefix_lens) {
  if (sequences.empty()) return absl::InvalidArgumentError("no sequences");
  if (prefix_lens.size() != sequences.size()) {
    return absl::InvalidArgumentError("prefix_lens and sequences differ in count");
  }
  LOCKSTEP_ASSIGN_OR_RETURN(RankWeights rw, SingleRank(config, weights));
  const torch::Device dev = rw.embed.device();
  std::vector<int64_t> tokens, lens, rows, targets;
  std::vector<int32_t> positions;
  int64_t start = 0;
  for (size_t s = 0; s < sequences.size(); ++s) {
    const auto& seq = sequences[s];
    const int64_t len = seq.size();
    if (len == 0) return absl::InvalidArgumentError("empty sequence");
    if (len > config.max_position_embeddings) {
      return absl::InvalidArgumentError(absl::StrCat("sequence of ", len,
                                                     " tokens exceeds the context length"));
    }
    if (prefix_lens[s] < 1 || prefix_lens[s] > len) {
      return absl::InvalidArgumentError(absl::StrCat("prefix length ", prefix_lens[s],
                                                     " outside [1, ", len, "]"));
    }
    LOCKSTEP_RETURN_IF_ERROR(
        CheckTokenIds(seq, config.vocab_size, absl::StrCat("sequence ", s)));
    for (int64_t i = 0; i < len; ++i) {
      tokens.push_back(seq[i]);
      positions.push_back(static_cast<int32_t>(i));
    }
    for (int64_t i = prefix_lens[s] - 1; i < len - 1; ++i) {
      rows.push_back(start + i);
      targets.push_back(seq[i + 1]);
    }
    lens.push_back(len);
    start += len;
  }
  std::vector<torch::Tensor> out;
  try {
    auto ops = CreateOps(mode, config.dtype == kernels::DType::kBF16);
    torch::Tensor lp;
    if (!rows.empty()) {
      ForwardInput in;
      in.tokens = torch::tensor(tokens, torch::kLong).to(dev);
      in.positions = torch::tensor(positions, torch::kInt).to(dev);
      in.seq_lens = lens;
      in.logit_rows = torch::tensor(rows, torch::kLong).to(dev);
      auto logits = RankForward(config, rw, *ops, in, nullptr);
      lp = ops->TargetLogprobs(logits, torch::tensor(targets, torch::kLong).to(dev));
    }
    int64_t k = 0;
    for (size_t s = 0; s < sequences.size(); ++s) {
      const int64_t n = static_cast<int64_t>(sequences[s].size()) - prefix_lens[s];
      out.push_back(n > 0 ? lp.narrow(0, k, n)
                          : torch::empty({0}, torch::TensorOptions().dtype(torch::kFloat).device(dev)));
      k += std::max<int64_t>(n, 0);
    }
  } catch (const c10::Error& e) {
    return StatusFromException(e, "training forward failed");
  }
  return out;
}

TorchWeights ToTorch(const TensorMap& tensors) {
  TorchWeights out;
  for (const auto& [name, t] : tensors) {
    auto dtype = t.dtype == kernels::DType::kF32 ? torch::kFloat : torch::kBFloat16;
    auto tensor = torch::empty(t.shape, torch::TensorOptions().dtype(dtype));
    std::memcpy(tensor.data_ptr(), t.data.data(), t.data.size());
    out.emplace(name, tensor);
  }
  return out;
}

TensorMap FromTorch(const TorchWeights& weights) {
  TensorMap out;
  for (const auto& [name, t] : weights) {
    auto c = t.detach().cpu().contiguous();
    HostTensor h;
    h.dtype = c.scalar_type() == torch::kBFloat16 ? kernels::DType::kBF16 : kernels::DType::kF32;
    if (c.scalar_type() != torch::kBFloat16 && c.scalar_type() != torch::kFloat) {
      c = c.to(torch::kFloat);
    }
    h.shape = c.sizes().vec();
    const auto* p = static_cast<const uint8_t*>(c.data_ptr());
    h.data.assign(p, p + c.numel() * c.element_size());
    out.emplace(name, std::move(h));
  }
  return out;
}

}  // namespace lockstep::common
