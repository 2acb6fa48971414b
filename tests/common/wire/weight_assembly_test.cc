// common/wire/weight_assembly and the parts of a parallel weight update
// (PlanWeightStream, StreamWeightPart, WeightStager in part mode): the
// parts' union is the single stream, the header is computed once, and the
// assembly commits once, fails sets on a timeout, a mismatched manifest, a
// duplicate or abandoned part, and takes a fresh set afterwards; ReceivePart
// abandons a broken, bad or cancelled part and stops one whose set failed.
#include "common/wire/weight_assembly.h"

#include <atomic>
#include <memory>
#include <random>
#include <thread>

#include "common/formats/model_generator.h"
#include "common/wire/weight_stream.h"
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
    const size_t width = kernels::DTypeSize(config.dtype);
    for (size_t i = width - 1; i < t.data.size(); i += width) t.data[i] &= 0xbf;
    out.emplace(name, std::move(t));
  }
  return out;
}

std::vector<v1::WeightUpdate> Part(const std::vector<WireTensor>& wire,
                                   const WeightStreamPlan& plan, uint32_t p, uint32_t n) {
  std::vector<v1::WeightUpdate> out;
  absl::Status s = StreamWeightPart(wire, plan, p, n, [&](const v1::WeightUpdate& m) {
    out.push_back(m);
    return absl::OkStatus();
  });
  EXPECT_TRUE(s.ok()) << s;
  return out;
}

absl::StatusOr<TensorMap> Stage(const ModelConfig& config,
                                const std::vector<v1::WeightUpdate>& msgs) {
  WeightStager stager(config);
  for (const auto& m : msgs) {
    absl::Status s = stager.Add(m);
    if (!s.ok()) return s;
  }
  return stager.Finish();
}

class WeightPartsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = TinyConfig();
    tensors_ = RandomTensors(config_, 11);
    wire_ = ToWireTensors(tensors_);
    options_.chunk_bytes = 4096;
    options_.source = "test";
    auto plan = PlanWeightStream(wire_, 9, options_);
    ASSERT_TRUE(plan.ok()) << plan.status();
    plan_ = *std::move(plan);
  }

  ModelConfig config_;
  TensorMap tensors_;
  std::vector<WireTensor> wire_;
  WeightStreamOptions options_;
  WeightStreamPlan plan_;
};

TEST_F(WeightPartsTest, OnePartIsTheSingleStream) {
  auto single = SplitWeights(tensors_, 9, options_);
  ASSERT_TRUE(single.ok());
  const auto part = Part(wire_, plan_, 0, 1);
  ASSERT_EQ(part.size(), single->size());
  for (size_t i = 0; i < part.size(); ++i) {
    EXPECT_EQ(part[i].SerializeAsString(), (*single)[i].SerializeAsString()) << i;
  }
}

TEST_F(WeightPartsTest, PartsUnionIsTheSingleStream) {
  auto single = SplitWeights(tensors_, 9, options_);
  ASSERT_TRUE(single.ok());
  const uint32_t n = 4;
  TensorMap all;
  size_t chunks = 0;
  for (uint32_t p = 0; p < n; ++p) {
    const auto msgs = Part(wire_, plan_, p, n);
    ASSERT_TRUE(msgs[0].has_header());
    // The same header (CRCs computed once, in the plan) but for the part.
    v1::WeightUpdateHeader h = msgs[0].header();
    EXPECT_EQ(h.stream_index(), p);
    EXPECT_EQ(h.stream_count(), n);
    h.clear_stream_index();
    h.clear_stream_count();
    EXPECT_EQ(h.SerializeAsString(), (*single)[0].header().SerializeAsString());
    EXPECT_EQ(WeightSetFingerprint(msgs[0].header()), WeightSetFingerprint((*single)[0].header()));
    for (size_t i = 1; i < msgs.size(); ++i) {
      int index = -1;
      for (int k = 0; k < h.tensors_size(); ++k) {
        if (h.tensors(k).name() == msgs[i].chunk().name()) index = k;
      }
      EXPECT_EQ(index % n, p) << msgs[i].chunk().name();
    }
    chunks += msgs.size() - 1;
    auto staged = Stage(config_, msgs);
    ASSERT_TRUE(staged.ok()) << staged.status();
    for (auto& [name, t] : *staged) EXPECT_TRUE(all.emplace(name, std::move(t)).second) << name;
  }
  EXPECT_EQ(chunks, single->size() - 1);
  ASSERT_EQ(all.size(), tensors_.size());
  for (const auto& [name, t] : tensors_) EXPECT_EQ(all.at(name).data, t.data) << name;
}

TEST_F(WeightPartsTest, BadPartsAreInvalidArgument) {
  auto code = [&](uint32_t index, uint32_t count, bool shared) {
    v1::WeightUpdate m;
    *m.mutable_header() = plan_.header;
    m.mutable_header()->set_stream_index(index);
    m.mutable_header()->set_stream_count(count);
    if (shared) m.mutable_header()->mutable_shared()->set_path("/dev/shm/lockstep-weights-x");
    WeightStager stager(config_);
    return stager.Add(m).code();
  };
  EXPECT_EQ(code(0, 17, false), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(4, 4, false), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(1, 0, false), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(0, 2, true), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(3, 16, false), absl::StatusCode::kOk);
  EXPECT_EQ(code(0, 0, false), absl::StatusCode::kOk);
  EXPECT_EQ(StreamWeightPart(wire_, plan_, 0, 17, [](const v1::WeightUpdate&) {
              return absl::OkStatus();
            }).code(),
            absl::StatusCode::kInvalidArgument);
  // A chunk of another part's tensor.
  auto p0 = Part(wire_, plan_, 0, 2);
  auto p1 = Part(wire_, plan_, 1, 2);
  p0.push_back(p1[1]);
  EXPECT_EQ(Stage(config_, p0).status().code(), absl::StatusCode::kInvalidArgument);
}

// A commit that records what it got.
struct Recorder {
  std::atomic<int> commits{0};
  size_t tensors = 0;
  AssemblyBegin Begin() {
    return [this](const v1::WeightUpdateHeader& h) -> absl::StatusOr<AssemblyCommit> {
      return AssemblyCommit([this, h](TensorMap t, const AssembledWeights& info) {
        ++commits;
        tensors = t.size();
        v1::UpdateWeightsResponse r;
        r.set_weight_version(h.target_version());
        r.set_bytes(info.bytes);
        r.set_tensors(t.size());
        return absl::StatusOr<v1::UpdateWeightsResponse>(r);
      });
    };
  }
};

const auto kNever = [] { return false; };

// Reads `msgs` after their first (the header, ReceivePart's `first`), then
// ends the stream, or breaks it with `broken` when that is not OK.
WeightAssembly::PartReader Reader(const std::vector<v1::WeightUpdate>& msgs,
                                  absl::Status broken = absl::OkStatus()) {
  auto next = std::make_shared<size_t>(1);
  return [&msgs, next, broken](v1::WeightUpdate* m) -> absl::StatusOr<bool> {
    if (*next == msgs.size()) {
      if (!broken.ok()) return broken;
      return false;
    }
    *m = msgs[(*next)++];
    return true;
  };
}

// Joins every part of `h`'s set (h.stream_count() of them) and deposits
// each (no tensors) on its own thread; every part's call must succeed.
void DepositEveryPart(WeightAssembly& assembly, Recorder& rec, v1::WeightUpdateHeader h) {
  std::vector<WeightAssembly::Part> parts;
  for (uint32_t p = 0; p < h.stream_count(); ++p) {
    h.set_stream_index(p);
    auto q = assembly.Join(h, rec.Begin());
    EXPECT_TRUE(q.ok()) << q.status();
    if (q.ok()) parts.push_back(*q);
  }
  std::vector<std::thread> threads;
  for (const WeightAssembly::Part& q : parts) {
    threads.emplace_back([&assembly, q] {
      auto done = assembly.Deposit(q, {}, 0, 0, kNever, absl::InfiniteFuture());
      EXPECT_TRUE(done.ok()) << done.status();
    });
  }
  for (auto& t : threads) t.join();
}

TEST_F(WeightPartsTest, AssemblyCommitsOnceAndAnswersEveryPart) {
  WeightAssembly assembly({absl::Seconds(10)});
  Recorder rec;
  const uint32_t n = 4;
  std::vector<std::vector<v1::WeightUpdate>> msgs;
  for (uint32_t p = 0; p < n; ++p) msgs.push_back(Part(wire_, plan_, p, n));
  std::vector<absl::StatusOr<v1::UpdateWeightsResponse>> out(n);
  std::vector<std::thread> threads;
  for (uint32_t p = 0; p < n; ++p) {
    threads.emplace_back([&, p] {
      out[p] = assembly.ReceivePart(config_, msgs[p][0], Reader(msgs[p]), rec.Begin(), kNever,
                                    absl::InfiniteFuture());
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(rec.commits.load(), 1);
  EXPECT_EQ(rec.tensors, tensors_.size());
  for (const auto& r : out) {
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->SerializeAsString(), out[0]->SerializeAsString());
    EXPECT_EQ(r->weight_version(), 9u);
    EXPECT_EQ(r->tensors(), tensors_.size());
  }
  EXPECT_FALSE(assembly.assembling());
}

TEST_F(WeightPartsTest, ReceivePartAbandonsABrokenOrBadPart) {
  WeightAssembly assembly({absl::Seconds(10)});
  Recorder rec;
  auto p0 = Part(wire_, plan_, 0, 2);
  auto p1 = Part(wire_, plan_, 1, 2);
  // A broken stream: its error, the set fails.
  auto r = assembly.ReceivePart(config_, p0[0], Reader(p0, absl::UnavailableError("broke")),
                                rec.Begin(), kNever, absl::InfiniteFuture());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  EXPECT_FALSE(assembly.assembling());
  // A bad message (another part's chunk): the stager's error, the set fails.
  std::vector<v1::WeightUpdate> bad = p0;
  bad.push_back(p1[1]);
  r = assembly.ReceivePart(config_, bad[0], Reader(bad), rec.Begin(), kNever,
                           absl::InfiniteFuture());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  EXPECT_FALSE(assembly.assembling());
  // Cancelled at the stream's end: CANCELLED, the set fails.
  r = assembly.ReceivePart(config_, p0[0], Reader(p0), rec.Begin(), [] { return true; },
                           absl::InfiniteFuture());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled) << r.status();
  EXPECT_FALSE(assembly.assembling());
  // A part of a set that failed meanwhile stops reading: ABORTED.
  size_t read = 0;
  r = assembly.ReceivePart(
      config_, p0[0],
      [&](v1::WeightUpdate* m) -> absl::StatusOr<bool> {
        if (read == 0) {
          // The other part joins with another manifest: the set fails.
          v1::WeightUpdateHeader other = p1[0].header();
          other.mutable_tensors(0)->set_crc32c(other.tensors(0).crc32c() ^ 1);
          EXPECT_FALSE(assembly.Join(other, rec.Begin()).ok());
        }
        if (++read == p0.size()) return false;
        *m = p0[read];
        return true;
      },
      rec.Begin(), kNever, absl::InfiniteFuture());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kAborted) << r.status();
  EXPECT_EQ(read, 1u);
  // A bad header: the stager's error, no set joined.
  v1::WeightUpdate bad_header = p0[0];
  bad_header.mutable_header()->set_stream_index(2);
  r = assembly.ReceivePart(config_, bad_header, Reader(p0), rec.Begin(), kNever,
                           absl::InfiniteFuture());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  EXPECT_FALSE(assembly.assembling());
  EXPECT_EQ(rec.commits.load(), 0);
}

TEST_F(WeightPartsTest, MissingPartTimesOutThenAFreshSetWorks) {
  WeightAssembly assembly({absl::Milliseconds(200)});
  Recorder rec;
  v1::WeightUpdateHeader h = plan_.header;
  h.set_stream_count(2);
  auto part = assembly.Join(h, rec.Begin());
  ASSERT_TRUE(part.ok());
  const absl::Time t0 = absl::Now();
  auto r = assembly.Deposit(*part, {}, 0, 0, kNever, absl::InfiniteFuture());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kAborted) << r.status();
  EXPECT_LT(absl::Now() - t0, absl::Seconds(2));
  EXPECT_FALSE(assembly.assembling());
  // The retry: both parts.
  DepositEveryPart(assembly, rec, h);
  EXPECT_EQ(rec.commits.load(), 1);
}

TEST_F(WeightPartsTest, LatePartOfAFailedTryIsRefusedAndTheNextTryWorks) {
  WeightAssembly assembly({absl::Seconds(10)});
  Recorder rec;
  v1::WeightUpdateHeader h = plan_.header;
  h.set_stream_count(2);
  h.set_set_id(41);
  auto p0 = assembly.Join(h, rec.Begin());
  ASSERT_TRUE(p0.ok());
  assembly.Abandon(*p0, absl::UnavailableError("stream broke"));
  // The try's other part arrives after its set failed: refused at once
  // (no new set waits for a part that will never come).
  h.set_stream_index(1);
  EXPECT_EQ(assembly.Join(h, rec.Begin()).status().code(), absl::StatusCode::kAborted);
  EXPECT_FALSE(assembly.assembling());
  // The next try (another set_id) assembles and commits.
  h.set_set_id(42);
  DepositEveryPart(assembly, rec, h);
  EXPECT_EQ(rec.commits.load(), 1);
  // Without a set_id (an older sender) a late part still opens a set.
  h.set_set_id(0);
  h.set_target_version(10);
  h.set_stream_index(0);
  auto old0 = assembly.Join(h, rec.Begin());
  ASSERT_TRUE(old0.ok());
  assembly.Abandon(*old0, absl::UnavailableError("stream broke"));
  h.set_stream_index(1);
  auto old1 = assembly.Join(h, rec.Begin());
  EXPECT_TRUE(old1.ok()) << old1.status();
  EXPECT_TRUE(assembly.assembling());
}

TEST_F(WeightPartsTest, MismatchDuplicateCancelAndDeadline) {
  WeightAssembly assembly({absl::Seconds(10)});
  Recorder rec;
  v1::WeightUpdateHeader h = plan_.header;
  h.set_stream_count(3);
  auto p0 = assembly.Join(h, rec.Begin());
  ASSERT_TRUE(p0.ok());
  EXPECT_EQ(assembly.Join(h, rec.Begin()).status().code(), absl::StatusCode::kInvalidArgument);
  // Another manifest, same version: INVALID_ARGUMENT, the set ABORTED.
  v1::WeightUpdateHeader other = h;
  other.set_stream_index(1);
  other.mutable_tensors(0)->set_crc32c(other.tensors(0).crc32c() ^ 1);
  EXPECT_EQ(assembly.Join(other, rec.Begin()).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(p0->set_failed());
  EXPECT_EQ(assembly.Deposit(*p0, {}, 0, 0, kNever, absl::InfiniteFuture()).status().code(),
            absl::StatusCode::kAborted);
  // Cancelled waiting part: CANCELLED, the set fails.
  auto p1 = assembly.Join(h, rec.Begin());
  ASSERT_TRUE(p1.ok());
  EXPECT_EQ(assembly.Deposit(*p1, {}, 0, 0, [] { return true; }, absl::InfiniteFuture())
                .status()
                .code(),
            absl::StatusCode::kCancelled);
  EXPECT_TRUE(p1->set_failed());
  // The call's deadline first: DEADLINE_EXCEEDED.
  auto p2 = assembly.Join(h, rec.Begin());
  ASSERT_TRUE(p2.ok());
  EXPECT_EQ(assembly.Deposit(*p2, {}, 0, 0, kNever, absl::Now() + absl::Milliseconds(50))
                .status()
                .code(),
            absl::StatusCode::kDeadlineExceeded);
  // An abandoned part fails the set.
  auto p3 = assembly.Join(h, rec.Begin());
  ASSERT_TRUE(p3.ok());
  assembly.Abandon(*p3, absl::AbortedError("CRC"));
  EXPECT_TRUE(p3->set_failed());
  EXPECT_FALSE(assembly.assembling());
  EXPECT_EQ(rec.commits.load(), 0);
}

}  // namespace
}  // namespace lockstep::common
