#include "host_memory.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <vector>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14; older headers lack the name
#endif

namespace flash {
namespace {

uint64_t page_bytes() {
  static const uint64_t size = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  return size;
}

// Whether the kernel has MADV_POPULATE_WRITE (Linux 5.14), asked once on a page of our
// own: an EINVAL for a load's memory may only mean that one mapping cannot be populated
// (VM_PFNMAP, VM_IO), which must not turn it off for every other load.
bool populate_supported() {
  static const bool supported = [] {
    const size_t page = static_cast<size_t>(page_bytes());
    void* probe = mmap(nullptr, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (probe == MAP_FAILED) return false;
    const bool ok = madvise(probe, page, MADV_POPULATE_WRITE) == 0;
    munmap(probe, page);
    return ok;
  }();
  return supported;
}

}  // namespace

void populate_for_write(uint64_t address, uint64_t length) {
  if (length == 0 || !populate_supported()) return;
  const uint64_t page = page_bytes();
  const uint64_t start = address / page * page;
  const uint64_t end = (address + length + page - 1) / page * page;
  // A failure (EINVAL or EFAULT on odd mappings, ENOMEM) leaves the faults to the read itself.
  static_cast<void>(madvise(reinterpret_cast<void*>(start), end - start, MADV_POPULATE_WRITE));
}

uint64_t advise_huge_pages(uint64_t address, uint64_t length) {
  const uint64_t start = (address + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes;
  const uint64_t end = (address + length) / kHugePageBytes * kHugePageBytes;
  if (end <= start) return 0;
  if (madvise(reinterpret_cast<void*>(start), end - start, MADV_HUGEPAGE) != 0) return 0;
  return end - start;
}

uint64_t touch_missing_pages(const std::vector<std::pair<uint64_t, uint64_t>>& ranges) {
  const uint64_t page = page_bytes();
  constexpr uint64_t kBatch = 1 << 16;  // pagemap entries (8 bytes each) read per call
  constexpr uint64_t kPresent = 1ull << 63;
  const int fd = ::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  std::vector<uint64_t> entries;
  uint64_t touched = 0;
  for (const auto& [address, length] : ranges) {
    if (length == 0) continue;
    const uint64_t first = address / page, last = (address + length - 1) / page;
    for (uint64_t at = first; at <= last; at += kBatch) {
      const uint64_t n = std::min(kBatch, last - at + 1);
      if (entries.size() < n) entries.resize(n);
      const ssize_t got = fd < 0 ? -1 : ::pread(fd, entries.data(), n * 8, static_cast<off_t>(at * 8));
      for (uint64_t i = 0; i < n; ++i) {
        if (got == static_cast<ssize_t>(n * 8) && (entries[i] & kPresent)) continue;
        static_cast<void>(*reinterpret_cast<volatile const uint8_t*>(std::max(address, (at + i) * page)));
        ++touched;
      }
    }
  }
  if (fd >= 0) ::close(fd);
  return touched;
}

}  // namespace flash
