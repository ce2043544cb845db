#include "region_writer.h"

#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <string>

#include "crc32c.h"
#include "errors.h"

namespace flash {
namespace {

constexpr uint64_t kMaxPad = 1 << 16;
const char kZeros[kMaxPad] = {};

void write_all(int fd, std::vector<iovec>& iov) {
  size_t first = 0;
  while (first < iov.size()) {
    const int count = static_cast<int>(std::min<size_t>(iov.size() - first, IOV_MAX));
    ssize_t n = ::writev(fd, iov.data() + first, count);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw IoError("writing the data file failed: " + errno_message(errno));
    }
    if (n == 0) throw IoError("writing the data file failed: nothing written");
    // Skip what was written, trimming a partly written entry.
    while (n > 0 && first < iov.size()) {
      if (static_cast<size_t>(n) >= iov[first].iov_len) {
        n -= static_cast<ssize_t>(iov[first].iov_len);
        ++first;
      } else {
        iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + n;
        iov[first].iov_len -= static_cast<size_t>(n);
        n = 0;
      }
    }
  }
}

}  // namespace

std::vector<uint32_t> write_regions(int fd, const std::vector<MemoryRegion>& regions,
                                    const std::vector<ChecksumRange>& ranges, uint64_t alignment) {
  if (alignment == 0 || alignment > kMaxPad) throw IoError("unsupported alignment " + std::to_string(alignment));
  std::vector<uint32_t> crcs(ranges.size());
  for (size_t i = 0; i < ranges.size(); ++i) {
    const ChecksumRange& r = ranges[i];
    if (r.region >= regions.size() || r.offset + r.length > regions[r.region].length)
      throw IoError("checksum range outside its region");
    crcs[i] = crc32c_extend(0, reinterpret_cast<const void*>(regions[r.region].address + r.offset), r.length);
  }
  std::vector<iovec> iov;
  iov.reserve(2 * regions.size());
  for (const MemoryRegion& r : regions) {
    if (r.length) iov.push_back({reinterpret_cast<void*>(r.address), static_cast<size_t>(r.length)});
    const uint64_t pad = (alignment - r.length % alignment) % alignment;
    if (pad) iov.push_back({const_cast<char*>(kZeros), static_cast<size_t>(pad)});
  }
  write_all(fd, iov);
  return crcs;
}

}  // namespace flash
