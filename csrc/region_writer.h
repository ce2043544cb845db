// Writing a checkpoint's stored regions: many small tensors in one call, with the
// alignment padding, and the checksums of the tensors inside them.
#pragma once
#include <cstdint>
#include <vector>

namespace flash {

struct MemoryRegion {
  uint64_t address;
  uint64_t length;
};

struct ChecksumRange {
  uint32_t region;  // index into the regions
  uint64_t offset;  // within the region
  uint64_t length;
};

// Appends each region to `fd` (at its current position) followed by zeros up to the
// next multiple of `alignment`, with as few system calls as the kernel allows; returns
// the CRC-32C of each range. Throws IoError on a failed or short write.
std::vector<uint32_t> write_regions(int fd, const std::vector<MemoryRegion>& regions,
                                    const std::vector<ChecksumRange>& ranges, uint64_t alignment);

}  // namespace flash
