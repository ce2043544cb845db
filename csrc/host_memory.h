// Host memory that reads land in, made ready before the bytes arrive. Receiving into
// fresh memory otherwise takes one page fault per 4 KiB page in the middle of each
// recv()/read() (about 260k for 1 GiB, ~0.3-0.45 s of CPU here): faulting the pages in
// with madvise calls just ahead of the bytes (Source::read_fresh) costs about a third
// less, and huge pages (where they are cheap, see flashtensors/memory.py) far less again.
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

namespace flash {

constexpr uint64_t kHugePageBytes = 2ull << 20;

// Faults in, writable, the pages holding [address, address + length) with one
// madvise(MADV_POPULATE_WRITE); contents never change. A no-op on kernels without it
// (before 5.14) and for memory it does not apply to (it never fails a load).
void populate_for_write(uint64_t address, uint64_t length);

// Marks the whole 2 MiB pages inside [address, address + length) MADV_HUGEPAGE, so the
// first touch of each maps a transparent huge page. Returns the bytes advised (0 where
// the kernel refused).
uint64_t advise_huge_pages(uint64_t address, uint64_t length);

// Reads one byte of every page of the (address, length) ranges that this process cannot
// read yet without a fault (not present in its page tables, per /proc/self/pagemap; every
// page where that cannot be read), so a lazily mapped range is really loaded and a
// loaded one costs nothing more. Returns the pages touched (benchmarks).
uint64_t touch_missing_pages(const std::vector<std::pair<uint64_t, uint64_t>>& ranges);

}  // namespace flash
