#include "common/wire/weight_stream.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/wire/crc32c.h"
#include "common/wire/parallel_tensors.h"
#include "common/wire/shared_weights.h"
#include "common/status/status_macros.h"

namespace lockstep::common {
namespace {

// absl::StrCat in Debian's Abseil does not take std::string_view.
// Index of the first element whose exponent bits are all ones (inf or NaN),
// or -1. Reads the bits, so that scanning a whole model is memory-bound.
int64_t FirstNonFinite(const HostTensor& t) {
  if (t.dtype == kernels::DType::kF32) {
    const int64_t n = static_cast<int64_t>(t.data.size() / 4);
    for (int64_t i = 0; i < n; ++i) {
      uint32_t u;
      std::memcpy(&u, t.data.data() + 4 * i, 4);
      if ((u & 0x7f800000u) == 0x7f800000u) return i;
    }
  } else {  // bf16 (fp16 never reaches a stager: FromProtoDType refuses it)
    const int64_t n = static_cast<int64_t>(t.data.size() / 2);
    for (int64_t i = 0; i < n; ++i) {
      uint16_t u;
      std::memcpy(&u, t.data.data() + 2 * i, 2);
      if ((u & 0x7f80u) == 0x7f80u) return i;
    }
  }
  return -1;
}

std::string DTypeStr(kernels::DType dtype) {
  return std::string(kernels::DTypeName(dtype));
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

template <typename Container>
std::string ShapeString(const Container& shape) {
  return ShapeString(std::vector<int64_t>(shape.begin(), shape.end()));
}

// Lists up to 8 names, then "... (N in all)".
std::string NameList(const std::vector<std::string>& names) {
  constexpr size_t kMax = 8;
  std::vector<std::string> shown(names.begin(),
                                 names.begin() + std::min(names.size(), kMax));
  std::string out = absl::StrJoin(shown, ", ");
  if (names.size() > kMax)
    absl::StrAppend(&out, ", ... (", names.size(), " in all)");
  return out;
}

}  // namespace

v1::DType ToProtoDType(kernels::DType dtype) {
  switch (dtype) {
    case kernels::DType::kF32:
      return v1::DTYPE_F32;
    case kernels::DType::kBF16:
      return v1::DTYPE_BF16;
    default:
      // fp16 has no wire dtype (fp16 checkpoints are widened to fp32 at
      // load); UNSPECIFIED is refused by every receiver.
      return v1::DTYPE_UNSPECIFIED;
  }
}

int WireDTypeSize(v1::DType dtype) {
  switch (dtype) {
    case v1::DTYPE_F32:
      return 4;
    case v1::DTYPE_BF16:
      return 2;
    default:
      return 0;
  }
}

absl::StatusOr<kernels::DType> FromProtoDType(int dtype) {
  switch (dtype) {
    case v1::DTYPE_F32:
      return kernels::DType::kF32;
    case v1::DTYPE_BF16:
      return kernels::DType::kBF16;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("unknown or unspecified dtype ", dtype));
  }
}

v1::ModelConfig ModelConfigToProto(const ModelConfig& config) {
  v1::ModelConfig p;
  p.set_model_type(config.model_type);
  p.set_vocab_size(config.vocab_size);
  p.set_hidden_size(config.hidden_size);
  p.set_intermediate_size(config.intermediate_size);
  p.set_num_hidden_layers(config.num_hidden_layers);
  p.set_num_attention_heads(config.num_attention_heads);
  p.set_num_key_value_heads(config.num_key_value_heads);
  p.set_head_dim(config.head_dim);
  p.set_rms_norm_eps(config.rms_norm_eps);
  p.set_rope_theta(config.rope.rope_theta);
  v1::RopeParameters* rope = p.mutable_rope();
  rope->set_rope_type(config.rope.rope_type);
  rope->set_rope_theta(config.rope.rope_theta);
  rope->set_factor(config.rope.factor);
  if (config.rope.rope_type == "llama3") {
    rope->set_low_freq_factor(config.rope.low_freq_factor);
    rope->set_high_freq_factor(config.rope.high_freq_factor);
  }
  rope->set_original_max_position_embeddings(config.rope.original_max_position_embeddings);
  if (config.rope.rope_type == "yarn") {
    rope->set_beta_fast(config.rope.beta_fast);
    rope->set_beta_slow(config.rope.beta_slow);
    rope->set_truncate(config.rope.truncate);
  }
  rope->set_attention_factor(config.rope.EffectiveAttentionFactor());
  p.set_qkv_bias(config.qkv_bias);
  p.set_checkpoint_dtype(config.checkpoint_dtype);
  for (const std::string& key : config.ignored_keys) p.add_ignored_config_keys(key);
  p.set_tie_word_embeddings(config.tie_word_embeddings);
  p.set_max_position_embeddings(config.max_position_embeddings);
  p.set_qk_norm(config.qk_norm);
  p.set_num_experts(config.num_experts);
  p.set_num_experts_per_tok(config.num_experts_per_tok);
  p.set_moe_intermediate_size(config.moe_intermediate_size);
  p.set_norm_topk_prob(config.norm_topk_prob);
  p.set_decoder_sparse_step(config.IsMoe() ? config.decoder_sparse_step : 0);
  for (int64_t l : config.mlp_only_layers) p.add_mlp_only_layers(l);
  p.set_dtype(ToProtoDType(config.dtype));
  if (config.bos_token_id.has_value()) p.set_bos_token_id(*config.bos_token_id);
  for (int64_t id : config.eos_token_ids) p.add_eos_token_ids(id);
  p.set_config_json(config.ToJson());
  p.set_num_parameters(config.NumParameters());
  return p;
}

absl::Status CheckWireTensor(const WireTensor& t) {
  const int size = WireDTypeSize(t.dtype);
  if (size == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", t.name, "' has no valid dtype (f32 or bf16)"));
  }
  int64_t numel = 1;
  for (int64_t d : t.shape) {
    if (d < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", t.name, "' has a negative dim"));
    }
    numel *= d;
  }
  if (static_cast<uint64_t>(numel) * size != t.nbytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", t.name, "' holds ", t.nbytes, " bytes but its shape ",
        ShapeString(t.shape), " and dtype ", DTypeStr(*FromProtoDType(t.dtype)),
        " need ", numel * size));
  }
  return absl::OkStatus();
}

std::vector<WireTensor> ToWireTensors(const TensorMap& tensors) {
  std::vector<WireTensor> out;
  out.reserve(tensors.size());
  for (const auto& [name, t] : tensors) {
    out.push_back(WireTensor{name, ToProtoDType(t.dtype), t.shape,
                             t.data.data(), t.data.size()});
  }
  return out;
}

namespace {

// The header of `tensors` with the given whole-tensor CRCs.
v1::WeightUpdateHeader HeaderWithCrcs(absl::Span<const WireTensor> tensors,
                                      const std::vector<uint32_t>& crcs, uint64_t target_version,
                                      const std::string& source) {
  v1::WeightUpdateHeader header;
  header.set_target_version(target_version);
  header.set_source(source);
  for (size_t i = 0; i < tensors.size(); ++i) {
    const WireTensor& t = tensors[i];
    v1::TensorManifestEntry* e = header.add_tensors();
    e->set_name(t.name);
    e->set_dtype(t.dtype);
    for (int64_t d : t.shape) e->add_shape(d);
    e->set_total_bytes(t.nbytes);
    e->set_crc32c(crcs[i]);
  }
  return header;
}

// CRC-32C of every chunk of every tensor ([tensor][chunk]), tensors in
// parallel, and each tensor's CRC combined from its chunks'.
void ChunkCrcs(absl::Span<const WireTensor> tensors, size_t chunk_bytes,
               std::vector<std::vector<uint32_t>>* chunks, std::vector<uint32_t>* whole) {
  chunks->assign(tensors.size(), {});
  whole->assign(tensors.size(), 0);
  (void)ForEachTensorInParallel(tensors.size(), [&](size_t i) {
    const WireTensor& t = tensors[i];
    uint32_t crc = 0;
    for (size_t off = 0; off < t.nbytes; off += chunk_bytes) {
      const size_t n = std::min(chunk_bytes, t.nbytes - off);
      const uint32_t c = Crc32c(t.data + off, n);
      (*chunks)[i].push_back(c);
      crc = Crc32cCombine(crc, c, n);
    }
    (*whole)[i] = crc;
    return absl::OkStatus();
  });
}

}  // namespace

v1::WeightUpdateHeader WeightUpdateHeaderOf(
    absl::Span<const WireTensor> tensors, uint64_t target_version,
    const std::string& source, const std::vector<uint32_t>* crcs) {
  if (crcs != nullptr && crcs->size() == tensors.size()) {
    return HeaderWithCrcs(tensors, *crcs, target_version, source);
  }
  std::vector<uint32_t> computed(tensors.size());
  (void)ForEachTensorInParallel(tensors.size(), [&](size_t i) {
    computed[i] = Crc32c(tensors[i].data, tensors[i].nbytes);
    return absl::OkStatus();
  });
  return HeaderWithCrcs(tensors, computed, target_version, source);
}

absl::Status StreamWeights(
    absl::Span<const WireTensor> tensors, uint64_t target_version,
    const std::function<absl::Status(const v1::WeightUpdate&)>& sink,
    const WeightStreamOptions& options) {
  // The single stream is the one part of a one-part plan (every byte
  // checksummed once: the chunks' CRCs, and the tensors' CRCs in the header
  // combined from them).
  LOCKSTEP_ASSIGN_OR_RETURN(WeightStreamPlan plan,
                            PlanWeightStream(tensors, target_version, options));
  return StreamWeightPart(tensors, plan, 0, 1, sink);
}

absl::StatusOr<WeightStreamPlan> PlanWeightStream(absl::Span<const WireTensor> tensors,
                                                  uint64_t target_version,
                                                  const WeightStreamOptions& options) {
  if (options.chunk_bytes < 1 || options.chunk_bytes > kMaxWeightChunkBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("chunk_bytes ", options.chunk_bytes, " outside [1, ",
                     kMaxWeightChunkBytes, "]"));
  }
  for (const WireTensor& t : tensors) {
    LOCKSTEP_RETURN_IF_ERROR(CheckWireTensor(t));
  }
  WeightStreamPlan plan;
  plan.chunk_bytes = options.chunk_bytes;
  std::vector<uint32_t> tensor_crcs;
  ChunkCrcs(tensors, options.chunk_bytes, &plan.chunk_crcs, &tensor_crcs);
  plan.header = HeaderWithCrcs(tensors, tensor_crcs, target_version, options.source);
  return plan;
}

absl::Status StreamWeightPart(absl::Span<const WireTensor> tensors, const WeightStreamPlan& plan,
                              uint32_t stream_index, uint32_t stream_count,
                              const std::function<absl::Status(const v1::WeightUpdate&)>& sink) {
  if (stream_count > kMaxWeightStreams || stream_index >= std::max<uint32_t>(stream_count, 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight stream part ", stream_index, " of ", stream_count,
                     ": parts are 0..count-1, count <= ", kMaxWeightStreams));
  }
  if (tensors.size() != plan.chunk_crcs.size() ||
      static_cast<int>(tensors.size()) != plan.header.tensors_size()) {
    return absl::InvalidArgumentError("weight stream part: the tensors are not the plan's");
  }
  v1::WeightUpdate message;
  *message.mutable_header() = plan.header;
  if (stream_count > 1) {
    message.mutable_header()->set_stream_index(stream_index);
    message.mutable_header()->set_stream_count(stream_count);
  }
  LOCKSTEP_RETURN_IF_ERROR(sink(message));
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (!TensorInPart(i, stream_index, stream_count)) continue;
    const WireTensor& t = tensors[i];
    size_t k = 0;
    for (size_t off = 0; off < t.nbytes; off += plan.chunk_bytes, ++k) {
      const size_t n = std::min(plan.chunk_bytes, t.nbytes - off);
      message.Clear();
      v1::TensorChunk* chunk = message.mutable_chunk();
      chunk->set_name(t.name);
      chunk->set_offset(off);
      chunk->set_data(t.data + off, n);
      chunk->set_crc32c(plan.chunk_crcs[i][k]);
      LOCKSTEP_RETURN_IF_ERROR(sink(message));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::WeightUpdateHeader> MakeWeightUpdateHeader(
    const TensorMap& tensors, uint64_t target_version,
    const std::string& source) {
  const std::vector<WireTensor> views = ToWireTensors(tensors);
  for (const WireTensor& t : views) {
    LOCKSTEP_RETURN_IF_ERROR(CheckWireTensor(t));
  }
  return WeightUpdateHeaderOf(views, target_version, source);
}

absl::Status StreamWeights(
    const TensorMap& tensors, uint64_t target_version,
    const std::function<absl::Status(const v1::WeightUpdate&)>& sink,
    const WeightStreamOptions& options) {
  return StreamWeights(ToWireTensors(tensors), target_version, sink, options);
}

absl::StatusOr<std::vector<v1::WeightUpdate>> SplitWeights(
    const TensorMap& tensors, uint64_t target_version,
    const WeightStreamOptions& options) {
  std::vector<v1::WeightUpdate> out;
  LOCKSTEP_RETURN_IF_ERROR(StreamWeights(
      tensors, target_version,
      [&out](const v1::WeightUpdate& m) {
        out.push_back(m);
        return absl::OkStatus();
      },
      options));
  return out;
}

WeightStager::WeightStager(ModelConfig config) : config_(std::move(config)) {}

absl::Status WeightStager::Fail(absl::Status status) {
  error_ = status;
  staged_.clear();  // release the shadow copy early
  return status;
}

absl::Status WeightStager::Add(const v1::WeightUpdate& message) {
  if (!error_.ok()) return error_;
  if (finished_) {
    return absl::FailedPreconditionError("weight stream already finished");
  }
  switch (message.kind_case()) {
    case v1::WeightUpdate::kHeader:
      return AddHeader(message.header());
    case v1::WeightUpdate::kChunk:
      return AddChunk(message.chunk());
    default:
      return Fail(absl::InvalidArgumentError(
          "weight update message has neither a header nor a chunk"));
  }
}

absl::Status WeightStager::AddHeader(const v1::WeightUpdateHeader& header) {
  if (has_header_) {
    return Fail(
        absl::InvalidArgumentError("weight stream carries a second header"));
  }
  // Structural checks first (INVALID_ARGUMENT), then the match with the
  // model (ABORTED).
  if (header.target_version() > kMaxWeightVersion) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(
        "weight update target_version ", header.target_version(), " is above the largest version ",
        kMaxWeightVersion, " (it would leave no room for later updates)")));
  }
  if (header.stream_count() > kMaxWeightStreams) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(
        "weight update stream_count ", header.stream_count(), " is above the limit of ",
        kMaxWeightStreams, " parallel streams")));
  }
  if (header.stream_index() >= std::max<uint32_t>(header.stream_count(), 1)) {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("weight update stream_index ", header.stream_index(),
                     " is not below its stream_count ", header.stream_count())));
  }
  if (header.has_shared() && header.stream_count() > 1) {
    return Fail(absl::InvalidArgumentError(
        "a shared-memory weight update travels as one stream (stream_count must be 0 or 1)"));
  }
  std::map<std::string, const v1::TensorManifestEntry*> manifest;
  for (const v1::TensorManifestEntry& e : header.tensors()) {
    if (e.name().empty()) {
      return Fail(absl::InvalidArgumentError(
          "weight manifest has a tensor with an empty name"));
    }
    if (!manifest.emplace(e.name(), &e).second) {
      return Fail(absl::InvalidArgumentError(
          absl::StrCat("weight manifest lists tensor '", e.name(), "' twice")));
    }
    absl::StatusOr<kernels::DType> dtype = FromProtoDType(e.dtype());
    if (!dtype.ok()) {
      return Fail(absl::InvalidArgumentError(
          absl::StrCat("weight manifest: tensor '", e.name(),
                       "': ", dtype.status().message())));
    }
    uint64_t numel = 1;
    for (int64_t d : e.shape()) {
      if (d < 0 ||
          (d > 0 && numel > (uint64_t{1} << 48) / static_cast<uint64_t>(d))) {
        return Fail(absl::InvalidArgumentError(
            absl::StrCat("weight manifest: tensor '", e.name(),
                         "' has an invalid shape ", ShapeString(e.shape()))));
      }
      numel *= static_cast<uint64_t>(d);
    }
    if (numel * kernels::DTypeSize(*dtype) != e.total_bytes()) {
      return Fail(absl::InvalidArgumentError(absl::StrCat(
          "weight manifest: tensor '", e.name(), "' announces ",
          e.total_bytes(), " bytes but shape ", ShapeString(e.shape()), " of ",
          DTypeStr(*dtype), " takes ", numel * kernels::DTypeSize(*dtype))));
    }
  }

  const auto expected = ExpectedTensors(config_);
  std::map<std::string, std::vector<int64_t>> expected_map(expected.begin(),
                                                           expected.end());
  std::vector<std::string> unknown, missing, mismatched;
  for (const auto& [name, e] : manifest) {
    auto it = expected_map.find(name);
    if (it == expected_map.end()) {
      unknown.push_back(name);
      continue;
    }
    std::vector<int64_t> shape(e->shape().begin(), e->shape().end());
    if (shape != it->second) {
      mismatched.push_back(absl::StrCat(name, " (expected shape ",
                                        ShapeString(it->second), ", got ",
                                        ShapeString(shape), ")"));
    } else if (e->dtype() != ToProtoDType(config_.dtype)) {
      mismatched.push_back(
          absl::StrCat(name, " (expected dtype ", DTypeStr(config_.dtype),
                       ", got ", DTypeStr(*FromProtoDType(e->dtype())), ")"));
    }
  }
  for (const auto& [name, shape] : expected) {
    if (!manifest.count(name)) missing.push_back(name);
  }
  if (!unknown.empty() || !missing.empty() || !mismatched.empty()) {
    std::string msg = "weight manifest does not match the model:";
    if (!unknown.empty())
      absl::StrAppend(&msg, " unknown tensors: ", NameList(unknown), ";");
    if (!missing.empty())
      absl::StrAppend(&msg, " missing tensors: ", NameList(missing), ";");
    if (!mismatched.empty())
      absl::StrAppend(&msg, " mismatched tensors: ", NameList(mismatched), ";");
    msg.pop_back();
    return Fail(absl::AbortedError(msg));
  }

  if (header.has_shared()) {
    // One buffer holds every tensor: each must lie inside it, none overlap.
    absl::Status st = CheckSharedWeightsPath(header.shared().path());
    if (!st.ok()) return Fail(st);
    std::vector<std::pair<uint64_t, const v1::TensorManifestEntry*>> by_offset;
    for (const auto& [name, e] : manifest) by_offset.emplace_back(e->offset(), e);
    std::sort(by_offset.begin(), by_offset.end(),
              [](const auto& a, const auto& b) { return a.first < b.first; });
    uint64_t end = 0;
    for (const auto& [offset, e] : by_offset) {
      if (offset < end || offset > header.shared().size() ||
          e->total_bytes() > header.shared().size() - offset) {
        return Fail(absl::InvalidArgumentError(absl::StrCat(
            "shared weights: tensor '", e->name(), "' at [", offset, ", ",
            offset + e->total_bytes(), ") overlaps another or lies outside the ",
            header.shared().size(), "-byte buffer")));
      }
      end = offset + e->total_bytes();
    }
  }
  // A part stages only its tensors (by manifest index); chunks of the others
  // are refused in AddChunk.
  for (int i = 0; i < header.tensors_size(); ++i) {
    if (!TensorInPart(i, header.stream_index(), header.stream_count())) {
      other_parts_.insert(header.tensors(i).name());
    }
  }
  for (const auto& [name, e] : manifest) {
    if (other_parts_.count(name)) continue;
    Staged& s = staged_[name];
    s.tensor.dtype = *FromProtoDType(e->dtype());
    s.tensor.shape.assign(e->shape().begin(), e->shape().end());
    s.tensor.data.resize(e->total_bytes());
    s.expected_crc = e->crc32c();
    s.offset = e->offset();
    bytes_expected_ += e->total_bytes();
  }
  header_ = header;
  has_header_ = true;
  return absl::OkStatus();
}

absl::Status WeightStager::AddChunk(const v1::TensorChunk& chunk) {
  if (!has_header_) {
    return Fail(absl::InvalidArgumentError(
        "weight stream sent a chunk before its header"));
  }
  if (header_.has_shared()) {
    return Fail(absl::InvalidArgumentError(
        "a shared-memory weight update carries no chunks (its header names the buffer)"));
  }
  auto it = staged_.find(chunk.name());
  if (it == staged_.end() && other_parts_.count(chunk.name())) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(
        "weight chunk names tensor '", chunk.name(), "' of another part than this stream's ",
        header_.stream_index(), " of ", header_.stream_count())));
  }
  if (it == staged_.end()) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(
        "weight chunk names tensor '", chunk.name(), "' not in the manifest")));
  }
  Staged& s = it->second;
  const std::string& data = chunk.data();
  if (data.empty() || data.size() > kMaxWeightChunkBytes) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(
        "weight chunk of '", chunk.name(), "' carries ", data.size(),
        " bytes; chunks carry 1 to ", kMaxWeightChunkBytes)));
  }
  if (chunk.offset() != s.received) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(
        "weight chunk of '", chunk.name(), "' at offset ", chunk.offset(),
        " but the next expected byte is ", s.received,
        " (chunks of a tensor must arrive in order without gaps or "
        "overlaps)")));
  }
  if (data.size() > s.tensor.data.size() - s.received) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(
        "weight chunk of '", chunk.name(), "' [", chunk.offset(), ", ",
        chunk.offset() + data.size(), ") runs past the tensor's ",
        s.tensor.data.size(), " bytes")));
  }
  const uint32_t crc = Crc32c(data.data(), data.size());
  if (crc != chunk.crc32c()) {
    return Fail(absl::AbortedError(
        absl::StrCat("weight chunk of '", chunk.name(), "' at offset ",
                     chunk.offset(), " failed its CRC-32C check (sent ",
                     chunk.crc32c(), ", computed ", crc, ")")));
  }
  std::memcpy(s.tensor.data.data() + s.received, data.data(), data.size());
  // The tensor's running CRC from the chunk's (no second pass over the data).
  s.crc = Crc32cCombine(s.crc, crc, data.size());
  s.received += data.size();
  bytes_received_ += data.size();
  if (s.received == s.tensor.data.size() && s.crc != s.expected_crc) {
    return Fail(absl::AbortedError(
        absl::StrCat("tensor '", chunk.name(),
                     "' failed its whole-tensor CRC-32C check "
                     "(manifest ",
                     s.expected_crc, ", computed ", s.crc, ")")));
  }
  return absl::OkStatus();
}

absl::Status WeightStager::ReadShared() {
  LOCKSTEP_ASSIGN_OR_RETURN(std::unique_ptr<SharedWeightsSource> source,
                            SharedWeightsSource::Open(header_.shared()));
  std::vector<std::pair<const std::string*, Staged*>> work;
  for (auto& [name, s] : staged_) work.emplace_back(&name, &s);
  // Tensors in parallel: read (a kernel copy out of the page cache) and CRC.
  LOCKSTEP_RETURN_IF_ERROR(ForEachTensorInParallel(work.size(), [&](size_t i) {
    Staged& s = *work[i].second;
    const uint64_t n = s.tensor.data.size();
    LOCKSTEP_RETURN_IF_ERROR(source->ReadAt(s.offset, s.tensor.data.data(), n));
    s.crc = Crc32c(s.tensor.data.data(), n);
    s.received = n;
    if (s.crc != s.expected_crc) {
      return absl::AbortedError(absl::StrCat("tensor '", *work[i].first,
                                             "' failed its CRC-32C check in shared memory "
                                             "(manifest ", s.expected_crc, ", computed ", s.crc,
                                             ")"));
    }
    return absl::OkStatus();
  }));
  bytes_received_ = bytes_expected_;
  return absl::OkStatus();
}

absl::StatusOr<TensorMap> WeightStager::Finish() {
  if (!error_.ok()) return error_;
  if (finished_) {
    return absl::FailedPreconditionError("weight stream already finished");
  }
  if (!has_header_) {
    return Fail(
        absl::InvalidArgumentError("weight stream ended without a header"));
  }
  if (header_.has_shared()) {
    absl::Status st = ReadShared();
    if (!st.ok()) return Fail(st);
  }
  std::vector<std::string> incomplete;
  for (const auto& [name, s] : staged_) {
    if (s.received != s.tensor.data.size()) {
      incomplete.push_back(absl::StrCat(name, " (", s.received, " of ",
                                        s.tensor.data.size(), " bytes)"));
    }
  }
  if (!incomplete.empty()) {
    return Fail(absl::AbortedError(
        absl::StrCat("weight stream ended before every tensor arrived: ",
                     NameList(incomplete))));
  }
  // Zero-byte tensors never see a chunk: check their CRC here.
  for (const auto& [name, s] : staged_) {
    if (s.tensor.data.empty() && s.expected_crc != 0) {
      return Fail(absl::AbortedError(absl::StrCat(
          "empty tensor '", name, "' has a non-zero CRC-32C in the manifest")));
    }
  }
  // Weights that are not finite would be served (and pass every CRC): refuse.
  {
    std::vector<std::pair<const std::string*, const Staged*>> all;
    for (const auto& [name, s] : staged_) all.emplace_back(&name, &s);
    absl::Status finite = ForEachTensorInParallel(all.size(), [&](size_t k) {
      const HostTensor& t = all[k].second->tensor;
      const int64_t i = FirstNonFinite(t);
      if (i < 0) return absl::OkStatus();
      return absl::AbortedError(absl::StrCat("tensor '", *all[k].first,
                                             "' holds a non-finite value (",
                                             kernels::LoadAsF32(t.data.data(), t.dtype, i),
                                             ") at element ", i));
    });
    if (!finite.ok()) return Fail(finite);
  }
  finished_ = true;
  TensorMap out;
  for (auto& [name, s] : staged_) out.emplace(name, std::move(s.tensor));
  staged_.clear();
  return out;
}

}  // namespace lockstep::common
