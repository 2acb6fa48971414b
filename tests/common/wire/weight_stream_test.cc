// common/weight_stream: splitting a TensorMap into an UpdateWeights stream
// and staging it back, with every documented error code.
#include "common/wire/weight_stream.h"

#include <random>

#include "common/wire/crc32c.h"
#include "common/formats/model_generator.h"
#include "gtest/gtest.h"

namespace lockstep::common {
namespace {

TensorMap RandomTensors(const ModelConfig& config, uint64_t seed) {
  TensorMap out;
  std::mt19937_64 rng(seed);
  for (const auto& [name, shape] : ExpectedTensors(config)) {
    HostTensor t;
    t.dtype = config.dtype;
    t.shape = shape;
    t.data.resize(t.numel() * kernels::DTypeSize(config.dtype));
    for (auto& b : t.data) b = static_cast<uint8_t>(rng());
    // Finite values only (the stager refuses inf/NaN): clear the top
    // exponent bit of every element (the high byte, little-endian).
    const size_t width = kernels::DTypeSize(config.dtype);
    for (size_t i = width - 1; i < t.data.size(); i += width) t.data[i] &= 0xbf;
    out.emplace(name, std::move(t));
  }
  return out;
}

absl::Status Feed(WeightStager& stager,
                  const std::vector<v1::WeightUpdate>& msgs) {
  for (const auto& m : msgs) {
    absl::Status s = stager.Add(m);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

class WeightStreamTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = TinyConfig();
    tensors_ = RandomTensors(config_, 7);
    // Small chunks so that every tensor spans several.
    options_.chunk_bytes = 4096;
    auto msgs = SplitWeights(tensors_, 5, options_);
    ASSERT_TRUE(msgs.ok()) << msgs.status();
    msgs_ = *std::move(msgs);
  }

  ModelConfig config_;
  TensorMap tensors_;
  WeightStreamOptions options_;
  std::vector<v1::WeightUpdate> msgs_;
};

TEST_F(WeightStreamTest, RoundTrip) {
  ASSERT_TRUE(msgs_[0].has_header());
  const v1::WeightUpdateHeader& h = msgs_[0].header();
  EXPECT_EQ(h.target_version(), 5u);
  EXPECT_EQ(static_cast<size_t>(h.tensors_size()), tensors_.size());
  size_t chunks = 0;
  for (size_t i = 1; i < msgs_.size(); ++i) {
    ASSERT_TRUE(msgs_[i].has_chunk());
    EXPECT_LE(msgs_[i].chunk().data().size(), options_.chunk_bytes);
    EXPECT_GE(msgs_[i].chunk().data().size(), 1u);
    ++chunks;
  }
  EXPECT_GT(chunks, tensors_.size());
  WeightStager stager(config_);
  ASSERT_TRUE(Feed(stager, msgs_).ok());
  EXPECT_TRUE(stager.has_header());
  EXPECT_EQ(stager.target_version(), 5u);
  EXPECT_EQ(stager.bytes_received(), stager.bytes_expected());
  auto out = stager.Finish();
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->size(), tensors_.size());
  for (const auto& [name, t] : tensors_) {
    const HostTensor& o = out->at(name);
    EXPECT_EQ(o.dtype, t.dtype);
    EXPECT_EQ(o.shape, t.shape);
    EXPECT_EQ(o.data, t.data) << name;
  }
  EXPECT_EQ(stager.Finish().status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(WeightStreamTest, ManifestCarriesWholeTensorCrc) {
  const auto& e = msgs_[0].header().tensors(0);
  const HostTensor& t = tensors_.at(e.name());
  EXPECT_EQ(e.crc32c(), Crc32c(t.data.data(), t.data.size()));
  EXPECT_EQ(e.total_bytes(), t.data.size());
}

TEST_F(WeightStreamTest, DefaultChunksAreOneMiB) {
  auto msgs = SplitWeights(tensors_, 1);
  ASSERT_TRUE(msgs.ok());
  for (const auto& m : *msgs) {
    if (m.has_chunk()) {
      EXPECT_LE(m.chunk().data().size(), kDefaultWeightChunkBytes);
    }
  }
  WeightStreamOptions bad;
  bad.chunk_bytes = kMaxWeightChunkBytes + 1;
  EXPECT_EQ(SplitWeights(tensors_, 1, bad).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(WeightStreamTest, InterleavedTensorsAreAccepted) {
  // Chunks of different tensors interleave; each tensor's stay in order.
  std::vector<v1::WeightUpdate> reordered = {msgs_[0]};
  std::map<std::string, std::vector<v1::WeightUpdate>> per;
  std::vector<std::string> names;
  for (size_t i = 1; i < msgs_.size(); ++i) {
    const auto& n = msgs_[i].chunk().name();
    if (!per.count(n)) names.push_back(n);
    per[n].push_back(msgs_[i]);
  }
  for (size_t k = 0;; ++k) {
    bool any = false;
    for (auto it = names.rbegin(); it != names.rend(); ++it) {
      if (k < per[*it].size()) {
        reordered.push_back(per[*it][k]);
        any = true;
      }
    }
    if (!any) break;
  }
  WeightStager stager(config_);
  ASSERT_TRUE(Feed(stager, reordered).ok());
  EXPECT_TRUE(stager.Finish().ok());
}

// inf or NaN with valid CRCs: ABORTED at Finish (old weights keep serving).
TEST_F(WeightStreamTest, NonFiniteWeightsAreAborted) {
  for (uint8_t high : {uint8_t{0x7f}, uint8_t{0xff}}) {  // +inf/NaN, -inf/NaN
    TensorMap bad = tensors_;
    HostTensor& t = bad.begin()->second;
    const size_t width = kernels::DTypeSize(t.dtype);
    const size_t element = 3;
    for (size_t b = 0; b < width; ++b) t.data[element * width + b] = 0xff;
    t.data[element * width + width - 1] = high;
    auto msgs = SplitWeights(bad, 5, options_);
    ASSERT_TRUE(msgs.ok()) << msgs.status();
    WeightStager stager(config_);
    ASSERT_TRUE(Feed(stager, *msgs).ok());
    auto out = stager.Finish();
    EXPECT_EQ(out.status().code(), absl::StatusCode::kAborted) << out.status();
    EXPECT_NE(out.status().message().find("non-finite"), std::string::npos) << out.status();
    EXPECT_NE(out.status().message().find("element 3"), std::string::npos) << out.status();
  }
}

// A version near 2^64 would wedge every later update: refused at the header.
TEST_F(WeightStreamTest, VersionsAboveTheCeilingAreInvalid) {
  for (uint64_t v : {kMaxWeightVersion + 1, ~uint64_t{0}}) {
    auto msgs = SplitWeights(tensors_, v, options_);
    ASSERT_TRUE(msgs.ok()) << msgs.status();
    WeightStager stager(config_);
    EXPECT_EQ(Feed(stager, *msgs).code(), absl::StatusCode::kInvalidArgument) << v;
  }
  auto msgs = SplitWeights(tensors_, kMaxWeightVersion, options_);
  ASSERT_TRUE(msgs.ok());
  WeightStager stager(config_);
  EXPECT_TRUE(Feed(stager, *msgs).ok());
  EXPECT_TRUE(stager.Finish().ok());
}

TEST_F(WeightStreamTest, CorruptedChunkIsAborted) {
  msgs_[3].mutable_chunk()->mutable_data()->at(10) ^= 1;
  WeightStager stager(config_);
  absl::Status s = Feed(stager, msgs_);
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted);
  EXPECT_NE(s.message().find("CRC-32C"), std::string::npos) << s;
  // Sticky.
  EXPECT_EQ(stager.Finish().status().code(), absl::StatusCode::kAborted);
}

TEST_F(WeightStreamTest, ConsistentlyCorruptedTensorFailsWholeCrc) {
  // A chunk altered together with its own CRC passes the chunk check but not
  // the manifest's whole-tensor CRC.
  auto* c = msgs_[1].mutable_chunk();
  c->mutable_data()->at(0) ^= 0x40;
  c->set_crc32c(Crc32c(c->data().data(), c->data().size()));
  WeightStager stager(config_);
  absl::Status s = Feed(stager, msgs_);
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted);
  EXPECT_NE(s.message().find("whole-tensor"), std::string::npos) << s;
}

TEST_F(WeightStreamTest, UnknownTensorNameIsAborted) {
  TensorMap extra = tensors_;
  extra["model.layers.99.mlp.up_proj.weight"] = tensors_.begin()->second;
  auto msgs = SplitWeights(extra, 5);
  ASSERT_TRUE(msgs.ok());
  WeightStager stager(config_);
  absl::Status s = stager.Add((*msgs)[0]);
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted);
  EXPECT_NE(
      s.message().find("unknown tensors: model.layers.99.mlp.up_proj.weight"),
      std::string::npos)
      << s;
}

TEST_F(WeightStreamTest, MissingTensorIsAborted) {
  TensorMap fewer = tensors_;
  fewer.erase("model.norm.weight");
  auto msgs = SplitWeights(fewer, 5);
  ASSERT_TRUE(msgs.ok());
  WeightStager stager(config_);
  absl::Status s = stager.Add((*msgs)[0]);
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted);
  EXPECT_NE(s.message().find("missing tensors: model.norm.weight"),
            std::string::npos)
      << s;
}

TEST_F(WeightStreamTest, ShapeMismatchIsAborted) {
  TensorMap wrong = tensors_;
  HostTensor& t = wrong.at("model.norm.weight");
  t.shape = {t.shape[0] * 2};
  t.data.resize(t.data.size() * 2);
  auto msgs = SplitWeights(wrong, 5);
  ASSERT_TRUE(msgs.ok());
  WeightStager stager(config_);
  absl::Status s = stager.Add((*msgs)[0]);
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted);
  EXPECT_NE(
      s.message().find("model.norm.weight (expected shape [64], got [128])"),
      std::string::npos)
      << s;
}

TEST_F(WeightStreamTest, DtypeMismatchIsAborted) {
  TensorMap wrong = tensors_;
  HostTensor& t = wrong.at("model.norm.weight");
  t.dtype = kernels::DType::kBF16;  // tiny is float32
  t.data.resize(t.data.size() / 2);
  auto msgs = SplitWeights(wrong, 5);
  ASSERT_TRUE(msgs.ok());
  WeightStager stager(config_);
  absl::Status s = stager.Add((*msgs)[0]);
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted);
  EXPECT_NE(s.message().find("expected dtype f32, got bf16"), std::string::npos)
      << s;
}

TEST_F(WeightStreamTest, MalformedStreamsAreInvalidArgument) {
  auto code_of = [&](std::vector<v1::WeightUpdate> msgs) {
    WeightStager stager(config_);
    absl::Status s = Feed(stager, msgs);
    if (s.ok()) s = stager.Finish().status();
    return s.code();
  };
  using C = absl::StatusCode;
  // Chunk before the header.
  EXPECT_EQ(code_of({msgs_[1]}), C::kInvalidArgument);
  // Two headers.
  EXPECT_EQ(code_of({msgs_[0], msgs_[0]}), C::kInvalidArgument);
  // Empty message.
  EXPECT_EQ(code_of({msgs_[0], v1::WeightUpdate()}), C::kInvalidArgument);
  // No header at all.
  EXPECT_EQ(code_of({}), C::kInvalidArgument);
  // Out of order (skips the first chunk of a tensor).
  {
    auto m = msgs_;
    ASSERT_EQ(m[1].chunk().name(), m[2].chunk().name());
    std::swap(m[1], m[2]);
    EXPECT_EQ(code_of(m), C::kInvalidArgument);
  }
  // Duplicate chunk (overlap).
  {
    auto m = msgs_;
    m.insert(m.begin() + 2, m[1]);
    EXPECT_EQ(code_of(m), C::kInvalidArgument);
  }
  // Chunk of a tensor that is not in the manifest.
  {
    auto m = msgs_;
    m[1].mutable_chunk()->set_name("nope");
    EXPECT_EQ(code_of(m), C::kInvalidArgument);
  }
  // Empty chunk.
  {
    auto m = msgs_;
    m[1].mutable_chunk()->clear_data();
    EXPECT_EQ(code_of(m), C::kInvalidArgument);
  }
  // Oversized chunk.
  {
    auto m = msgs_;
    m[1].mutable_chunk()->mutable_data()->resize(kMaxWeightChunkBytes + 1);
    EXPECT_EQ(code_of(m), C::kInvalidArgument);
  }
  // Manifest whose byte count disagrees with its shape.
  {
    auto m = msgs_;
    m[0].mutable_header()->mutable_tensors(0)->set_total_bytes(3);
    EXPECT_EQ(code_of(m), C::kInvalidArgument);
  }
  // Unknown dtype.
  {
    auto m = msgs_;
    m[0].mutable_header()->mutable_tensors(0)->set_dtype(v1::DTYPE_UNSPECIFIED);
    EXPECT_EQ(code_of(m), C::kInvalidArgument);
  }
  // Duplicate manifest entry.
  {
    auto m = msgs_;
    *m[0].mutable_header()->add_tensors() = m[0].header().tensors(0);
    EXPECT_EQ(code_of(m), C::kInvalidArgument);
  }
}

TEST_F(WeightStreamTest, IncompleteStreamIsAborted) {
  std::vector<v1::WeightUpdate> m(msgs_.begin(), msgs_.end() - 1);
  WeightStager stager(config_);
  ASSERT_TRUE(Feed(stager, m).ok());
  absl::Status s = stager.Finish().status();
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted);
  EXPECT_NE(s.message().find("ended before every tensor arrived"),
            std::string::npos);
}

TEST(DTypeTest, ProtoRoundTrip) {
  for (auto d : {kernels::DType::kF32, kernels::DType::kBF16}) {
    auto back = FromProtoDType(ToProtoDType(d));
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(*back, d);
  }
  EXPECT_FALSE(FromProtoDType(0).ok());
  EXPECT_FALSE(FromProtoDType(77).ok());
}

TEST(ModelConfigProtoTest, CarriesTheConfig) {
  ModelConfig c = TinyConfig();
  v1::ModelConfig p = ModelConfigToProto(c);
  EXPECT_EQ(p.vocab_size(), c.vocab_size);
  EXPECT_EQ(p.num_hidden_layers(), c.num_hidden_layers);
  EXPECT_EQ(p.qk_norm(), c.qk_norm);
  EXPECT_EQ(p.num_parameters(), c.NumParameters());
  auto back = ModelConfig::FromJson(p.config_json());
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, c);
}

}  // namespace
}  // namespace lockstep::common
