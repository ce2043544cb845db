// One open data file: a buffered descriptor, an O_DIRECT descriptor where the
// filesystem allows one, and a read-only mapping used only to ask the kernel which
// pages are already cached (mincore), so each chunk can pick the faster path.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "source.h"

namespace flash {

class DataFile : public Source {
 public:
  DataFile(std::string path, IoMode mode);
  ~DataFile() override;
  DataFile(const DataFile&) = delete;
  DataFile& operator=(const DataFile&) = delete;

  const std::string& path() const { return path_; }
  uint64_t size() const { return size_; }

  // Reads exactly `length` bytes at `offset` into `dst`; throws IoError on a short read.
  // O_DIRECT is used when allowed, the range is aligned and mostly not cached.
  void read(void* dst, uint64_t offset, uint64_t length) const override;

  // Fraction of the pages in [offset, offset+length) that are in the page cache.
  double resident_fraction(uint64_t offset, uint64_t length) const;

 private:
  bool want_direct(const void* dst, uint64_t offset, uint64_t length) const;
  void read_with(int fd, char* dst, uint64_t offset, uint64_t length) const;

  std::string path_;
  IoMode mode_;
  int fd_ = -1;
  int direct_fd_ = -1;
  void* map_ = nullptr;
  uint64_t size_ = 0;
};

// Fraction of a file's pages in the page cache (sampled; 1.0 where it cannot be told).
double resident_fraction(const std::string& path);

}  // namespace flash
