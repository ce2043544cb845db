// CRC-32C (Castagnoli), the checksum the format stores for every tensor.
#pragma once
#include <cstddef>
#include <cstdint>

namespace flash {

// Extends `crc` (0 for a fresh checksum) over `n` bytes. Uses the SSE4.2 crc32
// instruction when the CPU has it, a table otherwise; both give the same value.
uint32_t crc32c_extend(uint32_t crc, const void* data, size_t n);

}  // namespace flash
