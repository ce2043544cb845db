#include "host_memory.h"

#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>

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

}  // namespace flash
