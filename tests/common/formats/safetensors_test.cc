#include "common/formats/safetensors.h"

#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/dtype.h"
#include "tests/testing/random.h"

namespace lockstep::common {
namespace {

namespace fs = std::filesystem;
using kernels::DType;
using ::testing::HasSubstr;

// A fresh directory per test, removed afterwards.
class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::path(::testing::TempDir()) /
           (std::string("lockstep_st_") + info->name() + "_" +
            std::to_string(getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string Path(const std::string& name) const {
    return (dir_ / name).string();
  }

  // Writes raw bytes.
  std::string WriteBytes(const std::string& name, const std::string& bytes) {
    const std::string p = Path(name);
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    return p;
  }

  // [len][header][data_size zero bytes]; `len` defaults to header.size().
  std::string WriteFile(const std::string& name, const std::string& header,
                        size_t data_size,
                        std::optional<uint64_t> len = std::nullopt) {
    const uint64_t n = len.value_or(header.size());
    std::string bytes(8, '\0');
    for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>(n >> (8 * i));
    bytes += header;
    bytes.append(data_size, '\0');
    return WriteBytes(name, bytes);
  }

  // Opens `header` (with `data_size` data bytes) and expects `code`, with
  // the path and every string of `needles` in the message.
  void ExpectOpenError(const std::string& header, size_t data_size,
                       absl::StatusCode code,
                       const std::vector<std::string>& needles) {
    const std::string p = WriteFile("bad.safetensors", header, data_size);
    auto file = SafetensorsFile::Open(p);
    ASSERT_FALSE(file.ok()) << header;
    EXPECT_EQ(file.status().code(), code) << file.status();
    EXPECT_THAT(std::string(file.status().message()), HasSubstr(p));
    for (const auto& n : needles) {
      EXPECT_THAT(std::string(file.status().message()), HasSubstr(n)) << header;
    }
  }

  fs::path dir_;
};

TEST_F(SafetensorsTest, RoundTrip) {
  const std::vector<float> w = testing::RandomFloats(6 * 5, 1);
  std::vector<uint16_t> h(7);
  for (size_t i = 0; i < h.size(); ++i) h[i] = kernels::F32ToBF16(0.5f * i);
  const float scalar = 3.25f;
  const std::vector<TensorInfo> tensors = {
      {"zeta.weight",
       DType::kF32,
       {6, 5},
       reinterpret_cast<const uint8_t*>(w.data()),
       w.size() * 4},
      {"alpha.bias",
       DType::kBF16,
       {7},
       reinterpret_cast<const uint8_t*>(h.data()),
       h.size() * 2},
      {"scalar", DType::kF32, {}, reinterpret_cast<const uint8_t*>(&scalar), 4},
      {"empty", DType::kF32, {0, 3}, nullptr, 0},
  };
  const std::map<std::string, std::string> meta = {{"format", "pt"},
                                                   {"note", "héllo"}};
  const std::string p = Path("m.safetensors");
  ASSERT_TRUE(WriteSafetensors(p, tensors, meta).ok());

  auto file_or = SafetensorsFile::Open(p);
  ASSERT_TRUE(file_or.ok()) << file_or.status();
  const SafetensorsFile& file = **file_or;
  EXPECT_EQ(file.metadata(), meta);
  ASSERT_EQ(file.tensors().size(), 4u);
  // Sorted by name.
  EXPECT_EQ(file.tensors()[0].name, "alpha.bias");
  EXPECT_EQ(file.tensors()[1].name, "empty");
  EXPECT_EQ(file.tensors()[2].name, "scalar");
  EXPECT_EQ(file.tensors()[3].name, "zeta.weight");

  auto z = file.Get("zeta.weight");
  ASSERT_TRUE(z.ok());
  EXPECT_EQ((*z)->dtype, DType::kF32);
  EXPECT_EQ((*z)->shape, (std::vector<int64_t>{6, 5}));
  EXPECT_EQ((*z)->numel(), 30);
  ASSERT_EQ((*z)->nbytes, 120u);
  EXPECT_EQ(0, std::memcmp((*z)->data, w.data(), 120));

  auto a = file.Get("alpha.bias");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ((*a)->dtype, DType::kBF16);
  ASSERT_EQ((*a)->nbytes, 14u);
  EXPECT_EQ(0, std::memcmp((*a)->data, h.data(), 14));

  auto s = file.Get("scalar");
  ASSERT_TRUE(s.ok());
  EXPECT_TRUE((*s)->shape.empty());
  EXPECT_EQ((*s)->numel(), 1);
  float got;
  std::memcpy(&got, (*s)->data, 4);
  EXPECT_EQ(got, scalar);

  auto e = file.Get("empty");
  ASSERT_TRUE(e.ok());
  EXPECT_EQ((*e)->numel(), 0);
  EXPECT_EQ((*e)->nbytes, 0u);

  // The writer pads the header so the data starts 8-byte aligned, and lays
  // tensors out in the given order.
  uint64_t header_len = 0;
  {
    std::ifstream in(p, std::ios::binary);
    uint8_t len[8];
    in.read(reinterpret_cast<char*>(len), 8);
    for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | len[i];
  }
  EXPECT_EQ((8 + header_len) % 8, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>((*z)->data) % 8, 0u);
  EXPECT_LT((*z)->data, (*a)->data);
  EXPECT_EQ(file.file_size(), 8 + header_len + 120 + 14 + 4);

  // No temporary files are left behind.
  int entries = 0;
  for (const auto& ent : fs::directory_iterator(dir_)) {
    (void)ent;
    ++entries;
  }
  EXPECT_EQ(entries, 1);
}

TEST_F(SafetensorsTest, WritingTwiceReplacesAtomically) {
  const float one = 1.0f, two = 2.0f;
  const std::string p = Path("m.safetensors");
  ASSERT_TRUE(
      WriteSafetensors(
          p,
          {{"x", DType::kF32, {1}, reinterpret_cast<const uint8_t*>(&one), 4}},
          {})
          .ok());
  ASSERT_TRUE(
      WriteSafetensors(
          p,
          {{"y", DType::kF32, {1}, reinterpret_cast<const uint8_t*>(&two), 4}},
          {})
          .ok());
  auto file = SafetensorsFile::Open(p);
  ASSERT_TRUE(file.ok());
  EXPECT_TRUE((*file)->metadata().empty());
  ASSERT_EQ((*file)->tensors().size(), 1u);
  EXPECT_EQ((*file)->tensors()[0].name, "y");
}

TEST_F(SafetensorsTest, GetUnknownNameIsNotFound) {
  const float one = 1.0f;
  const std::string p = Path("m.safetensors");
  ASSERT_TRUE(
      WriteSafetensors(
          p,
          {{"x", DType::kF32, {1}, reinterpret_cast<const uint8_t*>(&one), 4}},
          {})
          .ok());
  auto file = SafetensorsFile::Open(p);
  ASSERT_TRUE(file.ok());
  auto t = (*file)->Get("nope");
  EXPECT_EQ(t.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("nope"));
  EXPECT_THAT(std::string(t.status().message()), HasSubstr(p));
}

TEST_F(SafetensorsTest, ReadsHeaderPaddedWithSpacesAndGaps) {
  // Hand-written, as another writer could produce it: spaces and a gap
  // between tensors (but no trailing bytes: see the next test).
  const std::string header =
      R"({"b":{"dtype":"BF16","shape":[2],"data_offsets":[8,12]},)"
      R"("a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}    )";
  const std::string p = WriteFile("ok.safetensors", header, 12);
  auto file = SafetensorsFile::Open(p);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->tensors().size(), 2u);
}

TEST_F(SafetensorsTest, TrailingBytesAfterTheDataAreInvalid) {
  const std::string header =
      R"({"b":{"dtype":"BF16","shape":[2],"data_offsets":[8,12]},)"
      R"("a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  // 4 and 1 bytes past the end of tensor b, in a name that is not the last
  // in the header.
  ExpectOpenError(header, 16, absl::StatusCode::kInvalidArgument,
                  {"4 trailing bytes", "tensors end at byte 12"});
  ExpectOpenError(header, 13, absl::StatusCode::kInvalidArgument,
                  {"1 trailing bytes"});
  // No tensors at all: every data byte is trailing.
  ExpectOpenError("{}", 3, absl::StatusCode::kInvalidArgument,
                  {"3 trailing bytes"});
  ExpectOpenError(R"({"e":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}})",
                  2, absl::StatusCode::kInvalidArgument, {"2 trailing bytes"});
  // Exactly the data: accepted.
  ASSERT_TRUE(SafetensorsFile::Open(WriteFile("ok.safetensors", header, 12)).ok());
  ASSERT_TRUE(SafetensorsFile::Open(WriteFile("empty.safetensors", "{}", 0)).ok());

  // A file written by WriteSafetensors with bytes appended.
  const std::vector<float> w = {1.0f, 2.0f};
  const std::string p = Path("appended.safetensors");
  ASSERT_TRUE(WriteSafetensors(p, {{"w", DType::kF32, {2},
                                    reinterpret_cast<const uint8_t*>(w.data()), 8}},
                               {})
                  .ok());
  ASSERT_TRUE(SafetensorsFile::Open(p).ok());
  {
    std::ofstream out(p, std::ios::binary | std::ios::app);
    out << "garbage";
  }
  auto file = SafetensorsFile::Open(p);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(file.status().message()), HasSubstr(p));
  EXPECT_THAT(std::string(file.status().message()), HasSubstr("7 trailing bytes"));
}

TEST_F(SafetensorsTest, MissingFileIsNotFound) {
  auto file = SafetensorsFile::Open(Path("absent.safetensors"));
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(file.status().message()), HasSubstr("absent"));
}

TEST_F(SafetensorsTest, DirectoryIsRejected) {
  auto file = SafetensorsFile::Open(dir_.string());
  EXPECT_FALSE(file.ok());
}

TEST_F(SafetensorsTest, TruncatedFilesAreDataLoss) {
  for (size_t n : {0, 1, 7}) {
    const std::string p =
        WriteBytes("short.safetensors", std::string(n, '\x02'));
    auto file = SafetensorsFile::Open(p);
    EXPECT_EQ(file.status().code(), absl::StatusCode::kDataLoss) << n;
    EXPECT_THAT(std::string(file.status().message()), HasSubstr(p));
  }
}

TEST_F(SafetensorsTest, HeaderLengthPastEndOfFileIsDataLoss) {
  const std::string header =
      R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  // One byte more than the file holds, and far more.
  for (uint64_t len : {uint64_t{header.size() + 5}, uint64_t{1} << 20}) {
    const std::string p = WriteFile("len.safetensors", header, 4, len);
    auto file = SafetensorsFile::Open(p);
    EXPECT_EQ(file.status().code(), absl::StatusCode::kDataLoss) << len;
    EXPECT_THAT(std::string(file.status().message()),
                HasSubstr("header length"));
  }
  // Truncating a good file inside its header.
  const std::string good = WriteFile("good.safetensors", header, 4);
  fs::resize_file(good, 8 + header.size() - 3);
  auto file = SafetensorsFile::Open(good);
  EXPECT_EQ(file.status().code(), absl::StatusCode::kDataLoss);
}

TEST_F(SafetensorsTest, AbsurdHeaderLengthIsInvalid) {
  for (uint64_t len :
       {~uint64_t{0}, uint64_t{1} << 63, kMaxSafetensorsHeaderBytes + 1}) {
    const std::string p = WriteFile("huge.safetensors", "{}", 0, len);
    auto file = SafetensorsFile::Open(p);
    EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << len;
    EXPECT_THAT(std::string(file.status().message()), HasSubstr("exceeds"));
  }
  // Also when the file really is that large (sparse).
  const std::string p =
      WriteFile("sparse.safetensors", "{}", 0, kMaxSafetensorsHeaderBytes + 1);
  fs::resize_file(p, kMaxSafetensorsHeaderBytes + 64);
  auto file = SafetensorsFile::Open(p);
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(SafetensorsTest, InvalidJson) {
  ExpectOpenError("{not json", 0, absl::StatusCode::kInvalidArgument,
                  {"not valid JSON"});
  ExpectOpenError("", 0, absl::StatusCode::kInvalidArgument, {"JSON"});
  ExpectOpenError("{\"a\":\"\xff\xfe\"}", 0, absl::StatusCode::kInvalidArgument,
                  {"JSON"});
  ExpectOpenError(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]})", 4,
                  absl::StatusCode::kInvalidArgument, {"JSON"});
  std::string with_nul = R"({"a": 1})";
  with_nul[2] = '\0';
  ExpectOpenError(with_nul, 0, absl::StatusCode::kInvalidArgument, {"JSON"});
}

TEST_F(SafetensorsTest, HeaderNotAnObject) {
  ExpectOpenError("[]", 0, absl::StatusCode::kInvalidArgument,
                  {"not a JSON object"});
  ExpectOpenError("42", 0, absl::StatusCode::kInvalidArgument,
                  {"not a JSON object"});
}

TEST_F(SafetensorsTest, EntryNotAnObject) {
  ExpectOpenError(R"({"w": 5})", 0, absl::StatusCode::kInvalidArgument,
                  {"'w'", "not a JSON object"});
  ExpectOpenError(R"({"w": [1, 2]})", 0, absl::StatusCode::kInvalidArgument,
                  {"'w'", "not a JSON object"});
}

TEST_F(SafetensorsTest, MissingFields) {
  ExpectOpenError(R"({"w":{"shape":[1],"data_offsets":[0,4]}})", 4,
                  absl::StatusCode::kInvalidArgument, {"'w'", "\"dtype\""});
  ExpectOpenError(R"({"w":{"dtype":"F32","data_offsets":[0,4]}})", 4,
                  absl::StatusCode::kInvalidArgument, {"'w'", "\"shape\""});
  ExpectOpenError(R"({"w":{"dtype":"F32","shape":[1]}})", 4,
                  absl::StatusCode::kInvalidArgument,
                  {"'w'", "\"data_offsets\""});
}

TEST_F(SafetensorsTest, WrongFieldTypes) {
  ExpectOpenError(R"({"w":{"dtype":32,"shape":[1],"data_offsets":[0,4]}})", 4,
                  absl::StatusCode::kInvalidArgument, {"'w'", "dtype"});
  ExpectOpenError(R"({"w":{"dtype":"F32","shape":4,"data_offsets":[0,4]}})", 4,
                  absl::StatusCode::kInvalidArgument, {"'w'", "shape"});
  ExpectOpenError(R"({"w":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})",
                  4, absl::StatusCode::kInvalidArgument, {"'w'", "shape"});
  ExpectOpenError(R"({"w":{"dtype":"F32","shape":["1"],"data_offsets":[0,4]}})",
                  4, absl::StatusCode::kInvalidArgument, {"'w'", "shape"});
  ExpectOpenError(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", 4,
                  absl::StatusCode::kInvalidArgument, {"'w'", "data_offsets"});
  ExpectOpenError(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}})",
                  8, absl::StatusCode::kInvalidArgument,
                  {"'w'", "data_offsets"});
  ExpectOpenError(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})",
                  4, absl::StatusCode::kInvalidArgument,
                  {"'w'", "data_offsets"});
  ExpectOpenError(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4.0]}})",
                  4, absl::StatusCode::kInvalidArgument,
                  {"'w'", "data_offsets"});
  ExpectOpenError(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":"0,4"}})",
                  4, absl::StatusCode::kInvalidArgument,
                  {"'w'", "data_offsets"});
  ExpectOpenError(R"({"w":{"dtype":"F32","shape":[1],)"
                  R"("data_offsets":[0,99999999999999999999999]}})",
                  4, absl::StatusCode::kInvalidArgument,
                  {"'w'", "data_offsets"});
}

TEST_F(SafetensorsTest, UnknownAndUnsupportedDTypes) {
  ExpectOpenError(R"({"w":{"dtype":"Q7","shape":[1],"data_offsets":[0,4]}})", 4,
                  absl::StatusCode::kInvalidArgument,
                  {"'w'", "unknown dtype 'Q7'"});
  for (const char* dt : {"F64", "I16", "I32", "U8", "BOOL", "F8_E4M3"}) {
    ExpectOpenError(std::string(R"({"w":{"dtype":")") + dt +
                        R"(","shape":[2],"data_offsets":[0,4]}})",
                    4, absl::StatusCode::kInvalidArgument,
                    {"'w'", std::string("unsupported dtype '") + dt + "'"});
  }
}

// fp16 checkpoints open; their tensors keep dtype F16 (the loader widens
// them to fp32, exactly).
TEST_F(SafetensorsTest, Float16Opens) {
  const std::string p = WriteFile(
      "f16.safetensors", R"({"w":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}})", 4);
  auto file = SafetensorsFile::Open(p);
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ((*file)->tensors().size(), 1u);
  EXPECT_EQ((*file)->tensors()[0].dtype, kernels::DType::kF16);
  EXPECT_EQ((*file)->tensors()[0].nbytes, 4u);
  EXPECT_EQ(SafetensorsDTypeName(kernels::DType::kF16), "F16");
}

TEST_F(SafetensorsTest, NegativeAndOverflowingDims) {
  ExpectOpenError(
      R"({"w":{"dtype":"F32","shape":[-1,4],"data_offsets":[0,4]}})", 4,
      absl::StatusCode::kInvalidArgument, {"'w'", "shape"});
  ExpectOpenError(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],)"
                  R"("data_offsets":[0,4]}})",
                  4, absl::StatusCode::kInvalidArgument, {"'w'", "overflows"});
  ExpectOpenError(R"({"w":{"dtype":"F32","shape":[18446744073709551615],)"
                  R"("data_offsets":[0,4]}})",
                  4, absl::StatusCode::kInvalidArgument, {"'w'", "shape"});
}

TEST_F(SafetensorsTest, ShapeSizeMismatchesOffsetSpan) {
  ExpectOpenError(
      R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}})", 24,
      absl::StatusCode::kInvalidArgument, {"'w'", "needs 24 bytes", "span 20"});
  // Same span is right for BF16 [2,5] but not F32.
  ExpectOpenError(
      R"({"w":{"dtype":"F32","shape":[2,5],"data_offsets":[0,20]}})", 40,
      absl::StatusCode::kInvalidArgument, {"'w'", "needs 40"});
}

TEST_F(SafetensorsTest, OffsetsOutOfRange) {
  ExpectOpenError(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})",
                  12, absl::StatusCode::kDataLoss, {"'w'", "past the end"});
  ExpectOpenError(R"({"w":{"dtype":"F32","shape":[1],)"
                  R"("data_offsets":[1000000,1000004]}})",
                  12, absl::StatusCode::kDataLoss, {"'w'", "past the end"});
  ExpectOpenError(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})",
                  12, absl::StatusCode::kInvalidArgument, {"'w'", "< begin"});
}

TEST_F(SafetensorsTest, OverlappingTensors) {
  ExpectOpenError(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                  R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                  12, absl::StatusCode::kInvalidArgument,
                  {"'b'", "overlaps tensor 'a'"});
  // Same range twice, and one nested in another.
  ExpectOpenError(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                  R"("b":{"dtype":"BF16","shape":[4],"data_offsets":[0,8]}})",
                  8, absl::StatusCode::kInvalidArgument, {"overlaps"});
  ExpectOpenError(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                  R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                  16, absl::StatusCode::kInvalidArgument, {"overlaps"});
}

TEST_F(SafetensorsTest, EmptyTensorsNeverOverlap) {
  const std::string p =
      WriteFile("ok.safetensors",
                R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                R"("b":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}})",
                8);
  EXPECT_TRUE(SafetensorsFile::Open(p).ok());
}

TEST_F(SafetensorsTest, DuplicateNames) {
  ExpectOpenError(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                  R"("w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                  8, absl::StatusCode::kInvalidArgument,
                  {"'w'", "duplicate tensor name"});
  ExpectOpenError(
      R"({"w":{"dtype":"F32","dtype":"BF16","shape":[1],"data_offsets":[0,4]}})",
      4, absl::StatusCode::kInvalidArgument, {"duplicate JSON key 'dtype'"});
}

TEST_F(SafetensorsTest, EmptyTensorName) {
  ExpectOpenError(R"({"":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4,
                  absl::StatusCode::kInvalidArgument, {"empty name"});
}

TEST_F(SafetensorsTest, BadMetadata) {
  ExpectOpenError(R"({"__metadata__":[1]})", 0,
                  absl::StatusCode::kInvalidArgument, {"__metadata__"});
  ExpectOpenError(R"({"__metadata__":{"k":1}})", 0,
                  absl::StatusCode::kInvalidArgument, {"__metadata__", "'k'"});
}

// Every prefix of a valid file, and every single-byte corruption of its
// header, must produce an error or a valid file: never a crash (run under
// ASan by `make test-asan`).
TEST_F(SafetensorsTest, TruncationsAndCorruptionsNeverCrash) {
  const std::vector<float> w = testing::RandomFloats(12, 5);
  std::vector<uint16_t> h(6, 0x3f80);
  const std::string p = Path("good.safetensors");
  ASSERT_TRUE(WriteSafetensors(p,
                               {{"a",
                                 DType::kF32,
                                 {3, 4},
                                 reinterpret_cast<const uint8_t*>(w.data()),
                                 48},
                                {"b",
                                 DType::kBF16,
                                 {6},
                                 reinterpret_cast<const uint8_t*>(h.data()),
                                 12}},
                               {{"format", "pt"}})
                  .ok());
  std::string bytes;
  {
    std::ifstream in(p, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  for (size_t n = 0; n < bytes.size(); ++n) {
    const std::string q = WriteBytes("cut.safetensors", bytes.substr(0, n));
    auto file = SafetensorsFile::Open(q);
    EXPECT_FALSE(file.ok()) << "prefix " << n;
  }
  const size_t header_end = bytes.size() - 60;
  const char replacements[] = {'\0', '"', '{', '}', '9', '-', ',', '\xff', ' '};
  for (size_t i = 0; i < header_end; ++i) {
    for (char c : replacements) {
      std::string corrupt = bytes;
      corrupt[i] = c;
      const std::string q = WriteBytes("corrupt.safetensors", corrupt);
      auto file = SafetensorsFile::Open(q);
      if (file.ok()) {
        // Whatever was accepted must be self-consistent.
        for (const TensorInfo& t : (*file)->tensors()) {
          ASSERT_EQ(static_cast<int64_t>(t.nbytes),
                    t.numel() * kernels::DTypeSize(t.dtype));
          if (t.nbytes > 0) {
            volatile uint8_t sink = t.data[t.nbytes - 1];
            (void)sink;
          }
        }
      }
    }
  }
}

TEST_F(SafetensorsTest, WriterRejectsBadInput) {
  const float x[4] = {1, 2, 3, 4};
  const auto* d = reinterpret_cast<const uint8_t*>(x);
  const std::string p = Path("w.safetensors");

  absl::Status s = WriteSafetensors(
      p, {{"a", DType::kF32, {1}, d, 4}, {"a", DType::kF32, {1}, d, 4}}, {});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("duplicate"));

  s = WriteSafetensors(p, {{"a", DType::kF32, {2}, d, 4}}, {});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("nbytes"));

  s = WriteSafetensors(p, {{"a", DType::kF32, {-1}, d, 4}}, {});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);

  s = WriteSafetensors(p, {{"a", DType::kF32, {1}, nullptr, 4}}, {});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);

  s = WriteSafetensors(p, {{"", DType::kF32, {1}, d, 4}}, {});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);

  s = WriteSafetensors(p, {{"__metadata__", DType::kF32, {1}, d, 4}}, {});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);

  s = WriteSafetensors(Path("no/such/dir/w.safetensors"),
                       {{"a", DType::kF32, {1}, d, 4}}, {});
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);

  // Nothing was published and no temporary file is left.
  EXPECT_TRUE(fs::is_empty(dir_));
}

TEST_F(SafetensorsTest, StreamingWriter) {
  const std::vector<float> w = testing::RandomFloats(10, 9);
  const std::string p = Path("s.safetensors");
  auto writer = SafetensorsWriter::Create(
      p, {{"a", DType::kF32, {2, 3}}, {"b", DType::kF32, {4}}}, {});
  ASSERT_TRUE(writer.ok()) << writer.status();
  EXPECT_EQ((*writer)->total_data_bytes(), 40u);
  EXPECT_EQ((*writer)->data_start() % 8, 0u);
  // In odd pieces that straddle the tensor boundary.
  const auto* bytes = reinterpret_cast<const uint8_t*>(w.data());
  ASSERT_TRUE((*writer)->Append(bytes, 3).ok());
  ASSERT_TRUE((*writer)->Append(bytes + 3, 30).ok());
  EXPECT_FALSE(fs::exists(p));  // not published before Finish
  EXPECT_EQ((*writer)->Append(bytes + 33, 8).code(),
            absl::StatusCode::kFailedPrecondition);  // one byte too many
  ASSERT_TRUE((*writer)->Append(bytes + 33, 7).ok());
  ASSERT_TRUE((*writer)->Finish().ok());
  EXPECT_EQ((*writer)->Finish().code(), absl::StatusCode::kFailedPrecondition);

  auto file = SafetensorsFile::Open(p);
  ASSERT_TRUE(file.ok()) << file.status();
  auto b = (*file)->Get("b");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(0, std::memcmp((*b)->data, w.data() + 6, 16));
}

TEST_F(SafetensorsTest, StreamingWriterShortWriteIsNotPublished) {
  const std::string p = Path("s.safetensors");
  auto writer = SafetensorsWriter::Create(p, {{"a", DType::kF32, {4}}}, {});
  ASSERT_TRUE(writer.ok());
  const float x[2] = {1, 2};
  ASSERT_TRUE((*writer)->Append(x, 8).ok());
  EXPECT_EQ((*writer)->Finish().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(fs::is_empty(dir_));

  // Dropped without Finish: nothing left either.
  {
    auto w2 = SafetensorsWriter::Create(p, {{"a", DType::kF32, {1}}}, {});
    ASSERT_TRUE(w2.ok());
  }
  EXPECT_TRUE(fs::is_empty(dir_));
}

// ---------------------------------------------------------------------------
// Checkpoint directories: model.safetensors, or an index and its shards.

class SafetensorsCheckpointTest : public SafetensorsTest {
 protected:
  void SetUp() override {
    SafetensorsTest::SetUp();
    ckpt_ = dir_ / "ckpt";
    fs::create_directories(ckpt_);
  }

  // Writes `file` (relative to the checkpoint directory) holding one F32 [2]
  // tensor per name, valued {k, k + 0.5} for the k-th name in the whole
  // test (so every tensor's bytes are distinct).
  std::string WriteTensors(const std::string& file,
                           const std::vector<std::string>& names) {
    std::vector<std::vector<float>> values;
    std::vector<TensorInfo> infos;
    values.reserve(names.size());
    for (const std::string& name : names) {
      values.push_back({static_cast<float>(next_value_),
                        static_cast<float>(next_value_) + 0.5f});
      ++next_value_;
      infos.push_back({name,
                       DType::kF32,
                       {2},
                       reinterpret_cast<const uint8_t*>(values.back().data()),
                       8});
    }
    const std::string p = (ckpt_ / file).string();
    const absl::Status s = WriteSafetensors(p, infos, {{"format", "pt"}});
    EXPECT_TRUE(s.ok()) << s;
    return p;
  }

  std::string WriteIndex(const std::string& text) {
    const std::string p = (ckpt_ / kSafetensorsIndexFileName).string();
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out << text;
    return p;
  }

  // A valid two-shard checkpoint: a, c in shard 1; b in shard 2.
  void WriteTwoShards() {
    WriteTensors("model-00001-of-00002.safetensors", {"a", "c"});
    WriteTensors("model-00002-of-00002.safetensors", {"b"});
    WriteIndex(R"({"metadata": {"total_size": 24}, "weight_map": {
        "a": "model-00001-of-00002.safetensors",
        "b": "model-00002-of-00002.safetensors",
        "c": "model-00001-of-00002.safetensors"}})");
  }

  // Opens the checkpoint and expects `code` with every needle in the
  // message.
  void ExpectCheckpointError(absl::StatusCode code,
                             const std::vector<std::string>& needles,
                             const std::string& context = "") {
    auto c = SafetensorsCheckpoint::Open(ckpt_.string());
    ASSERT_FALSE(c.ok()) << context;
    EXPECT_EQ(c.status().code(), code) << context << ": " << c.status();
    for (const std::string& n : needles) {
      EXPECT_THAT(std::string(c.status().message()), HasSubstr(n)) << context;
    }
  }

  float FirstValue(const TensorInfo& t) {
    float v;
    std::memcpy(&v, t.data, 4);
    return v;
  }

  fs::path ckpt_;
  int next_value_ = 0;
};

TEST_F(SafetensorsCheckpointTest, SingleFileIsThatFile) {
  const std::string p = WriteTensors(kSafetensorsFileName, {"z", "a"});
  auto c = SafetensorsCheckpoint::Open(ckpt_.string());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE((*c)->sharded());
  EXPECT_EQ((*c)->path(), p);
  ASSERT_EQ((*c)->files().size(), 1u);
  EXPECT_EQ((*c)->files()[0]->path(), p);
  const auto& file_tensors = (*c)->files()[0]->tensors();
  ASSERT_EQ((*c)->tensors().size(), file_tensors.size());
  for (size_t i = 0; i < file_tensors.size(); ++i) {
    EXPECT_EQ((*c)->tensors()[i].name, file_tensors[i].name);
    EXPECT_EQ((*c)->tensors()[i].shape, file_tensors[i].shape);
    EXPECT_EQ((*c)->tensors()[i].data, file_tensors[i].data);
    EXPECT_EQ((*c)->tensors()[i].nbytes, file_tensors[i].nbytes);
  }
  EXPECT_EQ((*c)->tensors()[0].name, "a");
  // A trailing slash on the directory does not change the path.
  auto slash = SafetensorsCheckpoint::Open(ckpt_.string() + "/");
  ASSERT_TRUE(slash.ok());
  EXPECT_EQ((*slash)->path(), p);
}

TEST_F(SafetensorsCheckpointTest, ShardsAreMergedInNameOrder) {
  WriteTwoShards();
  // Files the index does not name are not opened.
  WriteBytes("ckpt/model-00009-of-00009.safetensors", "garbage");
  auto c = SafetensorsCheckpoint::Open(ckpt_.string());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE((*c)->sharded());
  EXPECT_EQ((*c)->path(), (ckpt_ / kSafetensorsIndexFileName).string());
  ASSERT_EQ((*c)->files().size(), 2u);
  EXPECT_THAT((*c)->files()[0]->path(),
              HasSubstr("model-00001-of-00002.safetensors"));
  ASSERT_EQ((*c)->tensors().size(), 3u);
  EXPECT_EQ((*c)->tensors()[0].name, "a");
  EXPECT_EQ((*c)->tensors()[1].name, "b");
  EXPECT_EQ((*c)->tensors()[2].name, "c");
  EXPECT_EQ(FirstValue((*c)->tensors()[0]), 0.0f);
  EXPECT_EQ(FirstValue((*c)->tensors()[1]), 2.0f);
  EXPECT_EQ(FirstValue((*c)->tensors()[2]), 1.0f);
  auto b = (*c)->Get("b");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ((*b)->shape, (std::vector<int64_t>{2}));
  EXPECT_EQ((*c)->Get("nope").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(SafetensorsCheckpointTest, SingleFileWinsOverIndex) {
  // As in transformers: model.safetensors is used, the index is not read.
  WriteTensors(kSafetensorsFileName, {"only"});
  WriteIndex("{not json");
  auto c = SafetensorsCheckpoint::Open(ckpt_.string());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE((*c)->sharded());
  ASSERT_EQ((*c)->tensors().size(), 1u);
  EXPECT_EQ((*c)->tensors()[0].name, "only");
}

TEST_F(SafetensorsCheckpointTest, NoWeightsIsNotFound) {
  ExpectCheckpointError(
      absl::StatusCode::kNotFound,
      {ckpt_.string(), "model.safetensors", "model.safetensors.index.json"});
  auto missing = SafetensorsCheckpoint::Open(Path("absent"));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("absent"));
  const std::string file = WriteBytes("plain_file", "x");
  EXPECT_EQ(SafetensorsCheckpoint::Open(file).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SafetensorsCheckpoint::Open("").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(SafetensorsCheckpointTest, MalformedIndexIsInvalid) {
  WriteTensors("s.safetensors", {"a"});
  const std::string index = (ckpt_ / kSafetensorsIndexFileName).string();
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{not json", "not valid JSON"},
      {"", "not valid JSON"},
      {"{\"weight_map\": {\"a\": \"\xff\"}}", "not valid JSON"},
      {R"(["a"])", "not a JSON object"},
      {R"({"metadata": {}})", "missing \"weight_map\""},
      {R"({"weight_map": ["s.safetensors"]})", "not an object"},
      {R"({"weight_map": "s.safetensors"})", "not an object"},
      {R"({"weight_map": {}})", "lists no tensors"},
      {R"({"weight_map": {"a": 1}})", "not a string"},
      {R"({"weight_map": {"a": null}})", "not a string"},
      {R"({"weight_map": {"a": ["s.safetensors"]}})", "not a string"},
      {R"({"weight_map": {"": "s.safetensors"}})", "empty tensor name"},
      {R"({"metadata": 5, "weight_map": {"a": "s.safetensors"}})",
       "\"metadata\" is not an object"},
      {R"({"weight_map": {"a": "s.safetensors", "a": "s.safetensors"}})",
       "duplicate JSON key 'a'"},
      {R"({"weight_map": {"a": "s.safetensors"}, "weight_map": {}})",
       "duplicate JSON key 'weight_map'"},
  };
  for (const auto& [text, needle] : cases) {
    WriteIndex(text);
    ExpectCheckpointError(absl::StatusCode::kInvalidArgument, {index, needle},
                          text);
  }
  // Absurdly large (sparse), and a directory.
  WriteIndex("{");
  fs::resize_file(index, kMaxSafetensorsIndexBytes + 1);
  ExpectCheckpointError(absl::StatusCode::kInvalidArgument, {index, "limit"});
  fs::remove(index);
  fs::create_directories(index);
  ExpectCheckpointError(absl::StatusCode::kInvalidArgument,
                        {index, "not a regular file"});
  fs::remove(index);
  // The same index, well formed, opens.
  WriteIndex(R"({"weight_map": {"a": "s.safetensors"}})");
  EXPECT_TRUE(SafetensorsCheckpoint::Open(ckpt_.string()).ok());
}

TEST_F(SafetensorsCheckpointTest, ShardNamesCannotLeaveTheDirectory) {
  // Valid safetensors files outside the checkpoint directory that an
  // unchecked path would reach.
  WriteTensors("../outside.safetensors", {"a"});
  fs::create_directories(ckpt_ / "sub");
  WriteTensors("sub/inside.safetensors", {"a"});
  for (const std::string& shard :
       {std::string("../outside.safetensors"),
        std::string("sub/inside.safetensors"),
        (dir_ / "outside.safetensors").string(), std::string(".."),
        std::string("."), std::string(""), std::string("x\\u0000y")}) {
    WriteIndex(R"({"weight_map": {"a": ")" + shard + R"("}})");
    ExpectCheckpointError(absl::StatusCode::kInvalidArgument,
                          {kSafetensorsIndexFileName, "not a plain file name"},
                          shard);
  }
}

TEST_F(SafetensorsCheckpointTest, MissingShardIsNotFound) {
  WriteTensors("model-00001-of-00002.safetensors", {"a"});
  WriteIndex(R"({"weight_map": {"a": "model-00001-of-00002.safetensors",
                                "b": "model-00002-of-00002.safetensors"}})");
  ExpectCheckpointError(
      absl::StatusCode::kNotFound,
      {kSafetensorsIndexFileName, "model-00002-of-00002.safetensors"});
}

TEST_F(SafetensorsCheckpointTest, CorruptShardKeepsItsCode) {
  WriteTwoShards();
  const fs::path shard = ckpt_ / "model-00002-of-00002.safetensors";
  fs::resize_file(shard, fs::file_size(shard) - 1);
  ExpectCheckpointError(absl::StatusCode::kDataLoss,
                        {kSafetensorsIndexFileName, shard.string()});
  WriteBytes("ckpt/model-00002-of-00002.safetensors", "{}");
  ExpectCheckpointError(absl::StatusCode::kDataLoss,
                        {"model-00002-of-00002.safetensors"});
}

TEST_F(SafetensorsCheckpointTest, ShardsThatDisagreeWithTheIndexAreInvalid) {
  const std::string index = (ckpt_ / kSafetensorsIndexFileName).string();
  WriteTensors("s1.safetensors", {"a", "b"});
  WriteTensors("s2.safetensors", {"c"});
  // Listed but absent from its shard.
  WriteIndex(R"({"weight_map": {"a": "s1.safetensors", "b": "s1.safetensors",
                 "c": "s2.safetensors", "d": "s2.safetensors"}})");
  ExpectCheckpointError(absl::StatusCode::kInvalidArgument,
                        {index, "'d'", "s2.safetensors", "does not hold it"});
  // Mapped to a shard other than the one holding it.
  WriteIndex(R"({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors",
                 "c": "s2.safetensors"}})");
  ExpectCheckpointError(
      absl::StatusCode::kInvalidArgument,
      {index, "'b'", "does not hold it", "shard 's1.safetensors' does"});
  // In a shard but not in the map.
  WriteIndex(R"({"weight_map": {"a": "s1.safetensors",
                 "c": "s2.safetensors"}})");
  ExpectCheckpointError(absl::StatusCode::kInvalidArgument,
                        {index, "'b'", "s1.safetensors", "does not list"});
  // In two shards.
  WriteTensors("s3.safetensors", {"c"});
  WriteIndex(R"({"weight_map": {"a": "s1.safetensors", "b": "s1.safetensors",
                 "c": "s2.safetensors", "x": "s3.safetensors"}})");
  ExpectCheckpointError(
      absl::StatusCode::kInvalidArgument,
      {index, "'c'", "s2.safetensors", "s3.safetensors", "and in shard"});
  // Consistent: opens.
  WriteIndex(R"({"weight_map": {"a": "s1.safetensors", "b": "s1.safetensors",
                 "c": "s2.safetensors"}})");
  EXPECT_TRUE(SafetensorsCheckpoint::Open(ckpt_.string()).ok());
}

TEST_F(SafetensorsCheckpointTest, SymlinkedShardsLoad) {
  // The Hugging Face cache: snapshots/<rev>/<file> -> ../../blobs/<hash>.
  fs::create_directories(dir_ / "blobs");
  WriteTensors("../blobs/1111", {"a"});
  WriteTensors("../blobs/2222", {"b"});
  fs::create_symlink("../blobs/1111",
                     ckpt_ / "model-00001-of-00002.safetensors");
  fs::create_symlink("../blobs/2222",
                     ckpt_ / "model-00002-of-00002.safetensors");
  WriteIndex(R"({"weight_map": {"a": "model-00001-of-00002.safetensors",
                                "b": "model-00002-of-00002.safetensors"}})");
  auto c = SafetensorsCheckpoint::Open(ckpt_.string());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)->tensors().size(), 2u);
}

TEST_F(SafetensorsCheckpointTest, WritesIndexAsTransformersDoes) {
  EXPECT_EQ(SafetensorsShardName(1, 4), "model-00001-of-00004.safetensors");
  EXPECT_EQ(SafetensorsShardName(12, 123), "model-00012-of-00123.safetensors");
  WriteTwoShards();
  const std::string index = (ckpt_ / kSafetensorsIndexFileName).string();
  ASSERT_TRUE(WriteSafetensorsIndex(index,
                                    {{"c", "model-00001-of-00002.safetensors"},
                                     {"a", "model-00001-of-00002.safetensors"},
                                     {"b", "model-00002-of-00002.safetensors"}},
                                    24)
                  .ok());
  std::ifstream in(index, std::ios::binary);
  const std::string text((std::istreambuf_iterator<char>(in)),
                         std::istreambuf_iterator<char>());
  EXPECT_EQ(text,
            "{\n"
            "  \"metadata\": {\n"
            "    \"total_size\": 24\n"
            "  },\n"
            "  \"weight_map\": {\n"
            "    \"a\": \"model-00001-of-00002.safetensors\",\n"
            "    \"b\": \"model-00002-of-00002.safetensors\",\n"
            "    \"c\": \"model-00001-of-00002.safetensors\"\n"
            "  }\n"
            "}\n");
  EXPECT_TRUE(SafetensorsCheckpoint::Open(ckpt_.string()).ok());
  EXPECT_EQ(WriteSafetensorsIndex(index, {}, 0).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(WriteSafetensorsIndex(index, {{"a", "../x.safetensors"}}, 0).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(WriteSafetensorsIndex(index, {{"", "x.safetensors"}}, 0).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      WriteSafetensorsIndex(Path("no/such/dir/i.json"), {{"a", "x"}}, 0).code(),
      absl::StatusCode::kNotFound);
  // Failed writes left the good index and no temporary file.
  EXPECT_TRUE(SafetensorsCheckpoint::Open(ckpt_.string()).ok());
  int entries = 0;
  for (const auto& ent : fs::directory_iterator(ckpt_)) {
    (void)ent;
    ++entries;
  }
  EXPECT_EQ(entries, 3);
}

}  // namespace
}  // namespace lockstep::common
