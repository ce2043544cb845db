// Where a data file's bytes come from. The executor hands every piece of a plan to the
// source of its file; the plan, the pieces and the pinned ring do not know which kind of
// source it is. One implementation per kind of storage: local files (data_file.h) and
// HTTP(S) range GETs (http_source.h; S3 reaches it as presigned URLs made in Python).
#pragma once
#include <cstdint>
#include <memory>
#include <string>

namespace flash {

enum class IoMode { Auto, Buffered, Direct };

// O_DIRECT needs offsets, lengths and buffers aligned to the device's logical block.
constexpr uint64_t kDirectAlign = 4096;

class Source {
 public:
  virtual ~Source() = default;
  // Reads exactly `length` bytes at `offset` into `dst`, or throws IoError (RemoteError
  // for remote sources) naming the file or URL. Safe to call from many threads at once.
  virtual void read(void* dst, uint64_t offset, uint64_t length) const = 0;
  // read() into fresh host memory, whose pages are faulted in writable first
  // (host_memory.h): all at once before a local read. Remote sources do it a window at a
  // time as the body arrives, after the request has gone out, so the server sends while
  // the pages are made and each window is still in cache when the bytes land in it.
  virtual void read_fresh(void* dst, uint64_t offset, uint64_t length) const;
};

struct SourceOptions {
  IoMode io = IoMode::Auto;  // local files only
  // Remote sources: the longest a piece may go without receiving a byte, retries
  // included, before the load fails (a server that stops answering never hangs a load).
  double timeout_s = 30.0;
};

// Whether `location` names a remote object (http:// or https://) rather than a local path.
bool is_remote(const std::string& location);

// The source for a local path or an http(s) URL.
std::unique_ptr<Source> open_source(const std::string& location, const SourceOptions& options);

}  // namespace flash
