#include "common/model/moe_forward.h"

#include <atomic>
#include <utility>
#include <vector>

namespace lockstep::common {
namespace {

std::atomic<int64_t> g_layer_calls{0}, g_experts_touched{0}, g_routed_rows{0};

torch::Tensor LongTensor(const std::vector<int64_t>& v, const torch::Device& device) {
  return torch::tensor(v, torch::TensorOptions().dtype(torch::kLong)).to(device);
}

}  // namespace

torch::Tensor SwiGluMlp(const ModelConfig& config, const MlpWeights& mlp, Ops& ops,
                        const torch::Tensor& x, Communicator* comm) {
  const bool bf16 = config.dtype == kernels::DType::kBF16;
  torch::Tensor gate, up;
  if (mlp.gate_up.w.defined()) {
    // The two halves of one [T, 2n] output where the op set fuses.
    const int64_t n = mlp.gate_up.w.size(0) / 2;
    std::vector<torch::Tensor> gu = ops.StackedLinear(x, mlp.gate_up, {n, n});
    gate = std::move(gu[0]);
    up = std::move(gu[1]);
  } else {
    gate = ops.Linear(x, mlp.gate);
    up = ops.Linear(x, mlp.up);
  }
  auto act = ops.SiluMulStore(std::move(gate), std::move(up), bf16);
  return ops.RowParallelLinear(act, mlp.down, comm);
}

MoeCounters ReadMoeCounters() {
  return {g_layer_calls.load(), g_experts_touched.load(), g_routed_rows.load()};
}

torch::Tensor LoadBalancingLoss(const std::vector<MoeRouting>& routing, int64_t num_experts) {
  TORCH_CHECK(!routing.empty(), "LoadBalancingLoss of no sparse layer");
  std::vector<torch::Tensor> logits, ids;
  for (const MoeRouting& r : routing) {
    logits.push_back(r.logits);
    ids.push_back(r.ids);
  }
  auto probs = torch::softmax(torch::cat(logits, 0).to(torch::kFloat), -1);  // [N, E]
  auto mask = torch::one_hot(torch::cat(ids, 0), num_experts).to(torch::kFloat);  // [N, k, E]
  auto tokens_per_expert = mask.mean(0);                                         // [k, E]
  auto prob_per_expert = probs.mean(0);                                          // [E]
  return (tokens_per_expert * prob_per_expert.unsqueeze(0)).sum() *
         static_cast<double>(num_experts);
}

std::vector<std::vector<int64_t>> PositionsByExpert(const torch::Tensor& ids,
                                                    int64_t num_experts) {
  auto host = ids.to(torch::kCPU, torch::kLong).contiguous();
  const int64_t* p = host.data_ptr<int64_t>();
  std::vector<std::vector<int64_t>> out(num_experts);
  for (int64_t i = 0; i < host.numel(); ++i) {
    TORCH_CHECK(p[i] >= 0 && p[i] < num_experts, "router chose expert ", p[i], " of ",
                num_experts);
    out[p[i]].push_back(i);
  }
  return out;
}

torch::Tensor SparseMlp(const ModelConfig& config, const LayerWeights& lw, Ops& ops,
                        const torch::Tensor& x, Communicator* comm,
                        std::vector<MoeRouting>* routing) {
  const int64_t T = x.size(0), H = config.hidden_size, k = config.num_experts_per_tok;
  const int64_t E = static_cast<int64_t>(lw.experts.size());
  auto opts = torch::TensorOptions().dtype(torch::kFloat).device(x.device());
  if (T == 0) return torch::zeros({0, H}, opts);
  torch::Tensor logits = StoreActivation(config, ops, ops.Linear(x, lw.router));  // [T, E]
  auto [weights, ids] = ops.RouteTopK(logits, k, config.norm_topk_prob);
  if (routing != nullptr) {
    routing->push_back({static_cast<int64_t>(routing->size()), logits, ids});
  }
  const std::vector<std::vector<int64_t>> by_expert = PositionsByExpert(ids, E);
  // Expert outputs in expert order, then put back in (token, rank) order by
  // one gather: rows of `sorted` are the positions of `order`.
  std::vector<torch::Tensor> outputs;
  std::vector<int64_t> order;
  order.reserve(T * k);
  for (int64_t e = 0; e < E; ++e) {
    const std::vector<int64_t>& pos = by_expert[e];
    if (pos.empty()) continue;
    std::vector<int64_t> tokens(pos.size());
    for (size_t i = 0; i < pos.size(); ++i) tokens[i] = pos[i] / k;
    auto xe = x.index_select(0, LongTensor(tokens, x.device()));
    outputs.push_back(StoreActivation(config, ops, SwiGluMlp(config, lw.experts[e], ops, xe, comm)));
    order.insert(order.end(), pos.begin(), pos.end());
  }
  g_layer_calls.fetch_add(1, std::memory_order_relaxed);
  g_experts_touched.fetch_add(static_cast<int64_t>(outputs.size()), std::memory_order_relaxed);
  g_routed_rows.fetch_add(T * k, std::memory_order_relaxed);
  std::vector<int64_t> inverse(order.size());
  for (size_t i = 0; i < order.size(); ++i) inverse[order[i]] = static_cast<int64_t>(i);
  auto sorted = outputs.size() == 1 ? outputs[0] : torch::cat(outputs, 0);
  auto y = sorted.index_select(0, LongTensor(inverse, x.device())).view({T, k, H});
  auto w = weights.to(torch::kFloat);
  torch::Tensor out;
  for (int64_t r = 0; r < k; ++r) {
    auto c = StoreActivation(config, ops, y.select(1, r) * w.select(1, r).unsqueeze(1));
    out = r == 0 ? c : out + c;
  }
  return out.contiguous();
}

}  // namespace lockstep::common
