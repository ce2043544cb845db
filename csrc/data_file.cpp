#include "data_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <algorithm>

#include "errors.h"

namespace flash {

std::string errno_message(int err) { return std::strerror(err); }

namespace {

// Residency of [offset, offset+length) of a file mapped at map (size bytes long).
double sampled_residency(void* map, uint64_t size, uint64_t offset, uint64_t length) {
  if (!map || length == 0 || offset >= size) return 1.0;
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  const uint64_t begin = offset / page * page;
  const uint64_t end = std::min(size, offset + length);
  const uint64_t pages = (end - begin + page - 1) / page;
  // Large ranges are sampled: windows spread evenly tell residency well enough, and
  // asking about every page of a many-GB file would cost milliseconds per load.
  constexpr uint64_t kWindowPages = 16, kMaxWindows = 256;
  const uint64_t windows = std::min<uint64_t>(kMaxWindows, (pages + kWindowPages - 1) / kWindowPages);
  const uint64_t stride = pages / windows;
  unsigned char vec[kWindowPages];
  uint64_t asked = 0, resident = 0;
  for (uint64_t w = 0; w < windows; ++w) {
    const uint64_t first = begin + w * stride * page;
    const uint64_t n = std::min<uint64_t>(kWindowPages, (end - first + page - 1) / page);
    if (mincore(static_cast<char*>(map) + first, n * page, vec) != 0) return 1.0;
    for (uint64_t i = 0; i < n; ++i) resident += vec[i] & 1;
    asked += n;
  }
  return static_cast<double>(resident) / static_cast<double>(asked);
}

}  // namespace

DataFile::DataFile(std::string path, IoMode mode) : path_(std::move(path)), mode_(mode) {
  fd_ = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) throw IoError(path_ + ": cannot open: " + errno_message(errno));
  struct stat st {};
  if (fstat(fd_, &st) != 0) {
    int err = errno;
    ::close(fd_);
    throw IoError(path_ + ": cannot stat: " + errno_message(err));
  }
  size_ = static_cast<uint64_t>(st.st_size);
  if (mode_ != IoMode::Buffered) {
    // tmpfs and some other filesystems refuse O_DIRECT: then every read is buffered.
    direct_fd_ = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT);
  }
  if (mode_ == IoMode::Auto && direct_fd_ >= 0 && size_ > 0) {
    void* m = mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd_, 0);
    map_ = (m == MAP_FAILED) ? nullptr : m;
  }
}

DataFile::~DataFile() {
  if (map_) munmap(map_, size_);
  if (direct_fd_ >= 0) ::close(direct_fd_);
  if (fd_ >= 0) ::close(fd_);
}

double DataFile::resident_fraction(uint64_t offset, uint64_t length) const {
  return sampled_residency(map_, size_, offset, length);
}

double resident_fraction(const std::string& path) {
  // Just a descriptor and a mapping: no O_DIRECT descriptor as a DataFile would open.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw IoError(path + ": cannot open: " + errno_message(errno));
  struct stat st {};
  double fraction = 1.0;
  if (fstat(fd, &st) == 0 && st.st_size > 0) {
    void* m = mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_SHARED, fd, 0);
    if (m != MAP_FAILED) {
      fraction = sampled_residency(m, static_cast<uint64_t>(st.st_size), 0, static_cast<uint64_t>(st.st_size));
      munmap(m, static_cast<size_t>(st.st_size));
    }
  }
  ::close(fd);
  return fraction;
}


bool DataFile::want_direct(const void* dst, uint64_t offset, uint64_t length) const {
  if (direct_fd_ < 0) return false;
  const bool aligned = offset % kDirectAlign == 0 && length % kDirectAlign == 0 &&
                       reinterpret_cast<uintptr_t>(dst) % kDirectAlign == 0;
  if (!aligned) return false;
  if (mode_ == IoMode::Direct) return true;
  // Auto: copying out of the page cache beats the disk whenever the data is cached.
  return resident_fraction(offset, length) < 0.5;
}

void DataFile::read_with(int fd, char* dst, uint64_t offset, uint64_t length) const {
  uint64_t done = 0;
  while (done < length) {
    ssize_t n = pread(fd, dst + done, length - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw IoError(path_ + ": read of " + std::to_string(length) + " bytes at offset " +
                    std::to_string(offset) + " failed: " + errno_message(errno));
    }
    if (n == 0) {
      throw IoError(path_ + ": file ends at " + std::to_string(offset + done) + " bytes, but " +
                    std::to_string(offset + length) + " are needed (truncated?)");
    }
    done += static_cast<uint64_t>(n);
  }
}

void DataFile::read(void* dst, uint64_t offset, uint64_t length) const {
  char* out = static_cast<char*>(dst);
  // O_DIRECT takes whole blocks: a partial last block (a safetensors tensor ends
  // anywhere) is read through the page cache after the aligned head.
  const uint64_t head = length / kDirectAlign * kDirectAlign;
  if (head && want_direct(dst, offset, head)) {
    try {
      read_with(direct_fd_, out, offset, head);
      if (head < length) read_with(fd_, out + head, offset + head, length - head);
      return;
    } catch (const IoError&) {
      // Some filesystems accept O_DIRECT at open and refuse it at read (EINVAL):
      // the buffered descriptor below gives the same bytes or the real error.
    }
  }
  read_with(fd_, out, offset, length);
}

}  // namespace flash
