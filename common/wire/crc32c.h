// CRC-32C (Castagnoli), the checksum carried by every weight-update chunk.
#ifndef LOCKSTEP_COMMON_WIRE_CRC32C_H_
#define LOCKSTEP_COMMON_WIRE_CRC32C_H_

#include <cstddef>
#include <cstdint>

namespace lockstep::common {

// CRC-32C (polynomial 0x1EDC6F41, reflected, init and final XOR 0xFFFFFFFF:
// the iSCSI / RFC 3720 / gRPC / Abseil-newer CRC) of `n` bytes at `data`.
// `crc` is the CRC of the bytes that precede `data`, so a buffer can be
// checksummed in pieces:
//   Crc32c(b, nb, Crc32c(a, na)) == Crc32c(ab, na + nb).
// Crc32c("123456789", 9) == 0xE3069283. Uses SSE4.2 when the CPU has it,
// otherwise a table-driven slicing-by-8 loop; both give identical results.
// `data` may be null when `n` is 0.
uint32_t Crc32c(const void* data, size_t n, uint32_t crc = 0);

// The CRC-32C of A followed by B from crc_a = Crc32c(A), crc_b = Crc32c(B)
// and len_b = |B|, without reading either (GF(2) arithmetic modulo the
// polynomial, O(log len_b)):
//   Crc32cCombine(Crc32c(a, na), Crc32c(b, nb), nb) == Crc32c(ab, na + nb).
// What lets a sender checksum each chunk once and derive the whole tensor's
// CRC from the chunks', and a receiver verify both in one pass.
uint32_t Crc32cCombine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b);

namespace internal {

// Portable slicing-by-8 implementation (same contract as Crc32c).
uint32_t Crc32cSoftware(const void* data, size_t n, uint32_t crc);

// True when Crc32cHardware may be called (x86-64 with SSE4.2).
bool Crc32cHardwareAvailable();

// SSE4.2 implementation (same contract as Crc32c). Only call when
// Crc32cHardwareAvailable(); otherwise falls back to Crc32cSoftware.
uint32_t Crc32cHardware(const void* data, size_t n, uint32_t crc);

}  // namespace internal
}  // namespace lockstep::common

#endif  // LOCKSTEP_COMMON_WIRE_CRC32C_H_
