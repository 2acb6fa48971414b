// common/wire/shared_weights: a weight update through /dev/shm stages the
// same tensors as the stream, and the stager refuses every bad buffer with
// its documented code.
#include "common/wire/shared_weights.h"

#include <unistd.h>

#include <functional>
#include <random>

#include "common/formats/model_generator.h"
#include "gtest/gtest.h"

namespace lockstep::common {
namespace {

TensorMap Tensors(const ModelConfig& config) {
  TensorMap out;
  std::mt19937 rng(3);
  for (const auto& [name, shape] : ExpectedTensors(config)) {
    HostTensor t;
    t.dtype = config.dtype;
    t.shape = shape;
    const int64_t n = t.numel();
    t.data.resize(n * kernels::DTypeSize(config.dtype));
    for (int64_t i = 0; i < n; ++i) {
      kernels::StoreFromF32(t.data.data(), config.dtype, i,
                            static_cast<float>(rng() % 1000) / 1000.0f);
    }
    out.emplace(name, std::move(t));
  }
  return out;
}

absl::StatusOr<TensorMap> Stage(const ModelConfig& config, const v1::WeightUpdateHeader& header) {
  WeightStager stager(config);
  v1::WeightUpdate m;
  *m.mutable_header() = header;
  absl::Status st = stager.Add(m);
  if (!st.ok()) return st;
  EXPECT_EQ(stager.path(), v1::WEIGHT_PATH_SHARED_MEMORY);
  return stager.Finish();
}

TEST(SharedWeightsTest, StagesTheSameTensorsAsTheStream) {
  const ModelConfig config = TinyConfig();
  const TensorMap tensors = Tensors(config);
  auto file = SharedWeightsFile::Write(ToWireTensors(tensors), 3, "test");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->header().target_version(), 3u);
  EXPECT_EQ((*file)->header().shared().host_id(), HostId());
  EXPECT_FALSE(HostId().empty());
  auto staged = Stage(config, (*file)->header());
  ASSERT_TRUE(staged.ok()) << staged.status();
  ASSERT_EQ(staged->size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    EXPECT_EQ(staged->at(name).data, t.data) << name;
    EXPECT_EQ(staged->at(name).shape, t.shape) << name;
  }
  const std::string path = (*file)->path();
  EXPECT_EQ(access(path.c_str(), F_OK), 0);
  file->reset();
  EXPECT_NE(access(path.c_str(), F_OK), 0);  // unlinked
}

TEST(SharedWeightsTest, PathsOutsideTheSharedDirectoryAreRefused) {
  EXPECT_TRUE(CheckSharedWeightsPath("/dev/shm/lockstep-weights-1-abc").ok());
  for (const char* bad : {"/etc/passwd", "/dev/shm/other", "/dev/shm/lockstep-weights-",
                          "/dev/shm/lockstep-weights-a/b", "/dev/shm/lockstep-weights-../../x",
                          "dev/shm/lockstep-weights-1", "/dev/shm/lockstep-weights-a b"}) {
    EXPECT_TRUE(absl::IsInvalidArgument(CheckSharedWeightsPath(bad))) << bad;
  }
}

TEST(SharedWeightsTest, BadBuffersAreRefusedWithTheirCodes) {
  const ModelConfig config = TinyConfig();
  auto file = SharedWeightsFile::Write(ToWireTensors(Tensors(config)), 1, "");
  ASSERT_TRUE(file.ok());
  const v1::WeightUpdateHeader good = (*file)->header();
  auto with = [&](const std::function<void(v1::WeightUpdateHeader*)>& edit) {
    v1::WeightUpdateHeader h = good;
    edit(&h);
    return Stage(config, h).status();
  };
  EXPECT_TRUE(absl::IsInvalidArgument(
      with([](v1::WeightUpdateHeader* h) { h->mutable_shared()->set_path("/tmp/x"); })));
  EXPECT_TRUE(absl::IsFailedPrecondition(
      with([](v1::WeightUpdateHeader* h) { h->mutable_shared()->set_host_id("x"); })));
  EXPECT_TRUE(absl::IsFailedPrecondition(with([](v1::WeightUpdateHeader* h) {
    h->mutable_shared()->set_path("/dev/shm/lockstep-weights-missing");
  })));
  EXPECT_TRUE(absl::IsInvalidArgument(with([](v1::WeightUpdateHeader* h) {
    h->mutable_tensors(0)->set_offset(h->shared().size());  // past the end
  })));
  EXPECT_TRUE(absl::IsAborted(with([](v1::WeightUpdateHeader* h) {
    h->mutable_tensors(2)->set_crc32c(h->tensors(2).crc32c() + 1);
  })));
  // A chunk after a shared header.
  WeightStager stager(config);
  v1::WeightUpdate m;
  *m.mutable_header() = good;
  ASSERT_TRUE(stager.Add(m).ok());
  v1::WeightUpdate chunk;
  chunk.mutable_chunk()->set_name(good.tensors(0).name());
  chunk.mutable_chunk()->set_data("abcd");
  EXPECT_TRUE(absl::IsInvalidArgument(stager.Add(chunk)));
  // The file truncated under the receiver: an error, never a signal.
  ASSERT_EQ(truncate((*file)->path().c_str(), 64), 0);
  EXPECT_TRUE(absl::IsFailedPrecondition(Stage(config, good).status()));
}

}  // namespace
}  // namespace lockstep::common
