#include "common/wire/crc32c.h"

#include <array>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <nmmintrin.h>
#define LOCKSTEP_CRC32C_X86 1
#else
#define LOCKSTEP_CRC32C_X86 0
#endif

namespace lockstep::common {
namespace {

constexpr uint32_t kPolyReflected = 0x82F63B78u;

// kTables[k][b]: CRC of byte b followed by k zero bytes, for slicing-by-8.
struct Tables {
  std::array<std::array<uint32_t, 256>, 8> t;
  constexpr Tables() : t() {
    for (uint32_t b = 0; b < 256; ++b) {
      uint32_t c = b;
      for (int i = 0; i < 8; ++i)
        c = (c >> 1) ^ ((c & 1u) ? kPolyReflected : 0u);
      t[0][b] = c;
    }
    for (uint32_t b = 0; b < 256; ++b) {
      for (int k = 1; k < 8; ++k) {
        t[k][b] = (t[k - 1][b] >> 8) ^ t[0][t[k - 1][b] & 0xFFu];
      }
    }
  }
};

constexpr Tables kTables;

// Little-endian load regardless of host order, via memcpy so that unaligned
// input is fine (and UBSan-clean).
inline uint64_t LoadLE64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

#if LOCKSTEP_CRC32C_X86
__attribute__((target("sse4.2"))) uint32_t HardwareImpl(const uint8_t* p,
                                                        size_t n,
                                                        uint32_t state) {
  // Byte steps up to 8-byte alignment, then 8 bytes per instruction.
  while (n > 0 && (reinterpret_cast<uintptr_t>(p) & 7u) != 0) {
    state = _mm_crc32_u8(state, *p++);
    --n;
  }
  uint64_t s64 = state;
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    s64 = _mm_crc32_u64(s64, v);
    p += 8;
    n -= 8;
  }
  state = static_cast<uint32_t>(s64);
  while (n > 0) {
    state = _mm_crc32_u8(state, *p++);
    --n;
  }
  return state;
}
#endif

}  // namespace

namespace internal {

uint32_t Crc32cSoftware(const void* data, size_t n, uint32_t crc) {
  const auto& t = kTables.t;
  const uint8_t* p = static_cast<const uint8_t*>(data);
  uint32_t state = ~crc;
  while (n >= 8) {
    const uint64_t v = LoadLE64(p) ^ state;
    state = t[7][v & 0xFF] ^ t[6][(v >> 8) & 0xFF] ^ t[5][(v >> 16) & 0xFF] ^
            t[4][(v >> 24) & 0xFF] ^ t[3][(v >> 32) & 0xFF] ^
            t[2][(v >> 40) & 0xFF] ^ t[1][(v >> 48) & 0xFF] ^ t[0][v >> 56];
    p += 8;
    n -= 8;
  }
  while (n > 0) {
    state = (state >> 8) ^ t[0][(state ^ *p++) & 0xFF];
    --n;
  }
  return ~state;
}

bool Crc32cHardwareAvailable() {
#if LOCKSTEP_CRC32C_X86
  static const bool available = __builtin_cpu_supports("sse4.2");
  return available;
#else
  return false;
#endif
}

uint32_t Crc32cHardware(const void* data, size_t n, uint32_t crc) {
#if LOCKSTEP_CRC32C_X86
  if (Crc32cHardwareAvailable()) {
    if (n == 0) return crc;
    return ~HardwareImpl(static_cast<const uint8_t*>(data), n, ~crc);
  }
#endif
  return Crc32cSoftware(data, n, crc);
}

}  // namespace internal

uint32_t Crc32c(const void* data, size_t n, uint32_t crc) {
  if (n == 0) return crc;
  return internal::Crc32cHardwareAvailable()
             ? internal::Crc32cHardware(data, n, crc)
             : internal::Crc32cSoftware(data, n, crc);
}

namespace {

// a * b modulo the (reflected) polynomial: bit 31 is x^0.
uint32_t MultModP(uint32_t a, uint32_t b) {
  uint32_t m = 1u << 31;
  uint32_t p = 0;
  for (;;) {
    if (a & m) {
      p ^= b;
      if ((a & (m - 1)) == 0) break;
    }
    m >>= 1;
    b = (b & 1u) ? (b >> 1) ^ kPolyReflected : b >> 1;
  }
  return p;
}

// kX2n[k] = x^(2^k) modulo the polynomial.
struct X2nTable {
  std::array<uint32_t, 32> t{};
  X2nTable() {
    uint32_t p = 1u << 30;  // x^1
    t[0] = p;
    for (int k = 1; k < 32; ++k) t[k] = p = MultModP(p, p);
  }
};

// x^(n * 2^k) modulo the polynomial.
uint32_t X2nModP(uint64_t n, unsigned k) {
  static const X2nTable table;
  uint32_t p = 1u << 31;  // x^0
  while (n != 0) {
    if (n & 1) p = MultModP(table.t[k & 31], p);
    n >>= 1;
    ++k;
  }
  return p;
}

}  // namespace

uint32_t Crc32cCombine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b) {
  // Appending len_b bytes multiplies A's remainder by x^(8 len_b).
  return MultModP(X2nModP(len_b, 3), crc_a) ^ crc_b;
}

}  // namespace lockstep::common
