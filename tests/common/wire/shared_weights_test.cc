// common/wire/shared_weights: a weight update through /dev/shm stages the
// same tensors as the stream, and the stager refuses every bad buffer with
// its documented code.
#include "common/wire/shared_weights.h"

#include <sys/time.h>
#include <unistd.h>

#include <cstdio>
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

TEST(SharedWeightsTest, FilesOfDeadWritersAreRemovedLiveOnesKept) {
  auto backdate = [](const std::string& path) {
    struct timeval old[2];
    gettimeofday(&old[0], nullptr);
    old[0].tv_sec -= 120;
    old[1] = old[0];
    ASSERT_EQ(utimes(path.c_str(), old), 0);
  };
  const ModelConfig config = TinyConfig();
  auto live = SharedWeightsFile::Write(ToWireTensors(Tensors(config)), 1, "");
  ASSERT_TRUE(live.ok());
  // A crashed writer's file: nobody holds its lock.
  const std::string stale = std::string(kSharedWeightsDir) + kSharedWeightsPrefix + "stale-test";
  {
    std::FILE* f = std::fopen(stale.c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fputs("x", f);
    std::fclose(f);
  }
  const std::string young = std::string(kSharedWeightsDir) + kSharedWeightsPrefix + "young-test";
  {
    std::FILE* f = std::fopen(young.c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fclose(f);
  }
  backdate(stale);
  backdate((*live)->path());
  EXPECT_GE(RemoveStaleSharedWeights(), 1);
  EXPECT_NE(access(stale.c_str(), F_OK), 0);           // removed
  EXPECT_EQ(access((*live)->path().c_str(), F_OK), 0);  // locked by its writer
  EXPECT_EQ(access(young.c_str(), F_OK), 0);            // too young to judge
  unlink(young.c_str());
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
