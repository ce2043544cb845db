#include "data_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "errors.h"

namespace flash {

std::string errno_message(int err) { return std::strerror(err); }

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
  if (!map_ || length == 0 || offset >= size_) return 1.0;
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  const uint64_t begin = offset / page * page;
  const uint64_t end = std::min(size_, offset + length);
  const size_t pages = (end - begin + page - 1) / page;
  std::vector<unsigned char> vec(pages);
  if (mincore(static_cast<char*>(map_) + begin, end - begin, vec.data()) != 0) return 1.0;
  size_t resident = 0;
  for (unsigned char v : vec) resident += v & 1;
  return static_cast<double>(resident) / static_cast<double>(pages);
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
  if (want_direct(dst, offset, length)) {
    try {
      read_with(direct_fd_, out, offset, length);
      return;
    } catch (const IoError&) {
      // Some filesystems accept O_DIRECT at open and refuse it at read (EINVAL):
      // the buffered descriptor below gives the same bytes or the real error.
    }
  }
  read_with(fd_, out, offset, length);
}

}  // namespace flash
