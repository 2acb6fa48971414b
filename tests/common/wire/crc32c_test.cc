#include "common/wire/crc32c.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace lockstep::common {
namespace {

using internal::Crc32cHardware;
using internal::Crc32cHardwareAvailable;
using internal::Crc32cSoftware;

std::vector<uint8_t> Bytes(size_t n, uint64_t seed) {
  std::vector<uint8_t> v(n);
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (auto& b : v) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    b = static_cast<uint8_t>(x >> 32);
  }
  return v;
}

TEST(Crc32cTest, StandardCheckValue) {
  const char* s = "123456789";
  EXPECT_EQ(Crc32c(s, 9), 0xE3069283u);
  EXPECT_EQ(Crc32cSoftware(s, 9, 0), 0xE3069283u);
  EXPECT_EQ(Crc32cHardware(s, 9, 0), 0xE3069283u);
}

TEST(Crc32cTest, Rfc3720Vectors) {
  std::vector<uint8_t> zeros(32, 0), ones(32, 0xFF), inc(32), dec(32);
  for (int i = 0; i < 32; ++i) {
    inc[i] = static_cast<uint8_t>(i);
    dec[i] = static_cast<uint8_t>(31 - i);
  }
  EXPECT_EQ(Crc32c(zeros.data(), 32), 0x8A9136AAu);
  EXPECT_EQ(Crc32c(ones.data(), 32), 0x62A8AB43u);
  EXPECT_EQ(Crc32c(inc.data(), 32), 0x46DD794Eu);
  EXPECT_EQ(Crc32c(dec.data(), 32), 0x113FDB5Cu);
}

TEST(Crc32cTest, EmptyInputKeepsCrc) {
  EXPECT_EQ(Crc32c(nullptr, 0), 0u);
  EXPECT_EQ(Crc32c(nullptr, 0, 0x12345678u), 0x12345678u);
  EXPECT_EQ(Crc32cSoftware(nullptr, 0, 0xDEADBEEFu), 0xDEADBEEFu);
  EXPECT_EQ(Crc32cHardware(nullptr, 0, 0xDEADBEEFu), 0xDEADBEEFu);
}

TEST(Crc32cTest, ExtendsInPiecesAtEverySplit) {
  const std::string s = "123456789";
  for (size_t split = 0; split <= s.size(); ++split) {
    const uint32_t first = Crc32c(s.data(), split);
    EXPECT_EQ(Crc32c(s.data() + split, s.size() - split, first), 0xE3069283u)
        << "split " << split;
  }
  const std::vector<uint8_t> data = Bytes(1000, 7);
  const uint32_t whole = Crc32c(data.data(), data.size());
  uint32_t crc = 0;
  size_t pos = 0;
  for (size_t piece = 1; pos < data.size(); piece = piece * 3 + 1) {
    const size_t n = std::min(piece, data.size() - pos);
    crc = Crc32c(data.data() + pos, n, crc);
    pos += n;
  }
  EXPECT_EQ(crc, whole);
}

TEST(Crc32cTest, HardwareAndSoftwareAgreeOnEveryLengthAndAlignment) {
  if (!Crc32cHardwareAvailable()) {
    GTEST_LOG_(INFO) << "no SSE4.2: Crc32cHardware falls back to software";
  }
  const std::vector<uint8_t> data = Bytes(600, 3);
  for (size_t offset = 0; offset < 9; ++offset) {
    for (size_t n = 0; n + offset <= 520; ++n) {
      const uint32_t init = static_cast<uint32_t>(n * 2654435761u);
      ASSERT_EQ(Crc32cSoftware(data.data() + offset, n, init),
                Crc32cHardware(data.data() + offset, n, init))
          << "offset " << offset << " n " << n;
    }
  }
}

TEST(Crc32cTest, DetectsSingleBitFlips) {
  std::vector<uint8_t> data = Bytes(256, 11);
  const uint32_t base = Crc32c(data.data(), data.size());
  for (size_t i = 0; i < data.size(); ++i) {
    for (int bit = 0; bit < 8; ++bit) {
      data[i] ^= static_cast<uint8_t>(1u << bit);
      ASSERT_NE(Crc32c(data.data(), data.size()), base);
      data[i] ^= static_cast<uint8_t>(1u << bit);
    }
  }
}

TEST(Crc32cTest, CombineEqualsTheCrcOfTheConcatenation) {
  const std::vector<uint8_t> data = Bytes(70000, 11);
  for (size_t split : {size_t{0}, size_t{1}, size_t{7}, size_t{4096}, size_t{65536},
                       size_t{69999}, size_t{70000}}) {
    const uint32_t a = Crc32c(data.data(), split);
    const uint32_t b = Crc32c(data.data() + split, data.size() - split);
    EXPECT_EQ(Crc32cCombine(a, b, data.size() - split), Crc32c(data.data(), data.size()))
        << split;
  }
  // Folding chunk CRCs gives the whole buffer's (what the stream does).
  uint32_t folded = 0;
  for (size_t off = 0; off < data.size(); off += 1000) {
    const size_t n = std::min<size_t>(1000, data.size() - off);
    folded = Crc32cCombine(folded, Crc32c(data.data() + off, n), n);
  }
  EXPECT_EQ(folded, Crc32c(data.data(), data.size()));
  // A different length gives a different (wrong) answer.
  const uint32_t a = Crc32c(data.data(), 100);
  const uint32_t b = Crc32c(data.data() + 100, 200);
  EXPECT_NE(Crc32cCombine(a, b, 199), Crc32c(data.data(), 300));
}

}  // namespace
}  // namespace lockstep::common
