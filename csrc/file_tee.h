// A local copy of a remote data file, written as its bytes arrive: every piece a source
// reads is also written at its offset into a file (the local tier of remote checkpoints
// writes a `.part` file and renames it once every byte is in). The pieces are written
// by the worker thread that received them, from the buffer they were received into (the
// destination, or the pinned staging buffer of a GPU load): no extra pass, no Python.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "source.h"

namespace flash {

class FileTee {
 public:
  // Creates `path`, which must not exist, sized `size` bytes; IoError if it cannot.
  FileTee(std::string path, uint64_t size);
  ~FileTee();
  FileTee(const FileTee&) = delete;
  FileTee& operator=(const FileTee&) = delete;

  // Writes bytes read at `offset` (clipped to the file's size). Never throws: the first
  // failure (a full disk) is kept in error() and later writes are skipped, so the load
  // goes on and the copy is simply not kept. Safe to call from many threads at once.
  void write(const void* src, uint64_t offset, uint64_t length) noexcept;
  // The ranges not written yet, as (offset, length), in order.
  std::vector<std::pair<uint64_t, uint64_t>> missing() const;
  // Bytes written so far (each byte counted once).
  uint64_t written() const;
  // The first write error, or "".
  std::string error() const;
  // Flushes the data to the disk (fdatasync, when `sync`) and closes the file; IoError
  // if that fails. Later writes are skipped.
  void close(bool sync);

  const std::string& path() const { return path_; }
  uint64_t size() const { return size_; }

 private:
  std::string path_;
  uint64_t size_;
  int fd_ = -1;
  mutable std::mutex mu_;
  std::map<uint64_t, uint64_t> done_;  // start -> end of the written ranges, disjoint and merged
  std::string error_;
};

// A source whose reads are also written to a FileTee.
class TeeSource : public Source {
 public:
  TeeSource(std::unique_ptr<Source> inner, std::shared_ptr<FileTee> tee)
      : inner_(std::move(inner)), tee_(std::move(tee)) {}
  void read(void* dst, uint64_t offset, uint64_t length) const override {
    inner_->read(dst, offset, length);
    tee_->write(dst, offset, length);
  }
  void read_fresh(void* dst, uint64_t offset, uint64_t length) const override {
    inner_->read_fresh(dst, offset, length);
    tee_->write(dst, offset, length);
  }

 private:
  std::unique_ptr<Source> inner_;
  std::shared_ptr<FileTee> tee_;
};

}  // namespace flash
