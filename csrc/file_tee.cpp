#include "file_tee.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "errors.h"

namespace flash {

FileTee::FileTee(std::string path, uint64_t size) : path_(std::move(path)), size_(size) {
  fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd_ < 0) throw IoError(path_ + ": cannot create the local copy: " + errno_message(errno));
  if (::ftruncate(fd_, static_cast<off_t>(size_)) != 0) {
    const int err = errno;
    ::close(fd_);
    fd_ = -1;
    throw IoError(path_ + ": cannot size the local copy: " + errno_message(err));
  }
}

FileTee::~FileTee() {
  if (fd_ >= 0) ::close(fd_);
}

void FileTee::write(const void* src, uint64_t offset, uint64_t length) noexcept {
  if (offset >= size_) return;
  length = std::min(length, size_ - offset);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (fd_ < 0 || !error_.empty()) return;
  }
  const char* p = static_cast<const char*>(src);
  uint64_t done = 0;
  while (done < length) {
    const ssize_t n = ::pwrite(fd_, p + done, length - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      std::lock_guard<std::mutex> lock(mu_);
      if (error_.empty()) error_ = path_ + ": writing the local copy failed: " + errno_message(n < 0 ? errno : EIO);
      return;
    }
    done += static_cast<uint64_t>(n);
  }
  // Start writing the piece back now, so that the final fdatasync has little left to wait for.
  ::sync_file_range(fd_, static_cast<off_t>(offset), static_cast<off_t>(length), SYNC_FILE_RANGE_WRITE);
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t start = offset, end = offset + length;
  auto it = done_.upper_bound(start);
  if (it != done_.begin()) {
    auto before = std::prev(it);
    if (before->second >= start) {
      start = before->first;
      end = std::max(end, before->second);
      it = done_.erase(before);
    }
  }
  while (it != done_.end() && it->first <= end) {
    end = std::max(end, it->second);
    it = done_.erase(it);
  }
  done_.emplace(start, end);
}

std::vector<std::pair<uint64_t, uint64_t>> FileTee::missing() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::pair<uint64_t, uint64_t>> out;
  uint64_t at = 0;
  for (const auto& [start, end] : done_) {
    if (start > at) out.emplace_back(at, start - at);
    at = std::max(at, end);
  }
  if (at < size_) out.emplace_back(at, size_ - at);
  return out;
}

uint64_t FileTee::written() const {
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t n = 0;
  for (const auto& [start, end] : done_) n += end - start;
  return n;
}

std::string FileTee::error() const {
  std::lock_guard<std::mutex> lock(mu_);
  return error_;
}

void FileTee::close(bool sync) {
  std::lock_guard<std::mutex> lock(mu_);
  if (fd_ < 0) return;
  const bool synced = !sync || ::fdatasync(fd_) == 0;
  const int err = errno;
  ::close(fd_);
  fd_ = -1;
  if (!synced) throw IoError(path_ + ": flushing the local copy failed: " + errno_message(err));
}

}  // namespace flash
