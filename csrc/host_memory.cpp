#include "host_memory.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <algorithm>
#include <cerrno>
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

// Cleared at the first EINVAL: the kernel has no MADV_POPULATE_WRITE, stop asking.
std::atomic<bool> populate_supported{true};

}  // namespace

void populate_for_write(uint64_t address, uint64_t length) {
  if (length == 0 || !populate_supported.load(std::memory_order_relaxed)) return;
  const uint64_t page = page_bytes();
  const uint64_t start = address / page * page;
  const uint64_t end = (address + length + page - 1) / page * page;
  if (madvise(reinterpret_cast<void*>(start), end - start, MADV_POPULATE_WRITE) != 0 && errno == EINVAL)
    populate_supported.store(false, std::memory_order_relaxed);
  // Other failures (ENOMEM, EFAULT on odd mappings) leave the faults to the read itself.
}

uint64_t advise_huge_pages(uint64_t address, uint64_t length) {
  const uint64_t start = (address + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes;
  const uint64_t end = (address + length) / kHugePageBytes * kHugePageBytes;
  if (end <= start) return 0;
  if (madvise(reinterpret_cast<void*>(start), end - start, MADV_HUGEPAGE) != 0) return 0;
  return end - start;
}

uint64_t touch_missing_pages(uint64_t address, uint64_t length) {
  if (length == 0) return 0;
  const uint64_t page = page_bytes();
  const uint64_t first = address / page, last = (address + length - 1) / page;
  const int fd = ::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  constexpr uint64_t kBatch = 1 << 16;  // pagemap entries (8 bytes each) read per call
  constexpr uint64_t kPresent = 1ull << 63;
  std::vector<uint64_t> entries(kBatch);
  uint64_t touched = 0;
  for (uint64_t at = first; at <= last; at += kBatch) {
    const uint64_t n = std::min(kBatch, last - at + 1);
    const ssize_t got = fd < 0 ? -1 : ::pread(fd, entries.data(), n * 8, static_cast<off_t>(at * 8));
    for (uint64_t i = 0; i < n; ++i) {
      if (got == static_cast<ssize_t>(n * 8) && (entries[i] & kPresent)) continue;
      static_cast<void>(*reinterpret_cast<volatile const uint8_t*>(std::max(address, (at + i) * page)));
      ++touched;
    }
  }
  if (fd >= 0) ::close(fd);
  return touched;
}

}  // namespace flash
