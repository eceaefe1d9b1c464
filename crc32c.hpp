// CRC-32C (Castagnoli), the checksum the journal stores with each record
// (journal.hpp), computed here so that no library is linked for it: with
// SSE4.2's crc32 instruction where the CPU has it, else from tables, eight
// bytes a step ("slicing-by-8"). Pure functions, safe from any thread.

#ifndef PMMAP_CRC32C_HPP_
#define PMMAP_CRC32C_HPP_

#include <cstddef>
#include <cstdint>

namespace crc32c {

// Returns the CRC-32C of the concatenation of A and data[0, n), where crc
// is the CRC-32C of A (0 for an empty A).
uint32_t Extend(uint32_t crc, const char* data, size_t n);

// Extend, always from the tables: the fallback, apart for tests.
uint32_t ExtendTable(uint32_t crc, const char* data, size_t n);

// Returns the CRC-32C of data[0, n).
inline uint32_t Value(const char* data, size_t n) { return Extend(0, data, n); }

}  // namespace crc32c

#endif  // PMMAP_CRC32C_HPP_
