// Errors raised by the core. Every message names the file (and offset) it concerns,
// so the Python layer can attach the tensor name and re-raise as a FlashError.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

namespace flash {

// A read failed or came back short: the data file is truncated, vanished or unreadable.
class IoError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A remote source failed: an HTTP status that retrying cannot fix (403, 404, ...), or
// a server that stopped answering or kept failing until retries ran out. `status` is the
// HTTP status, 0 where there was none (connection refused, reset, timed out); `url` the
// URL as shown (no query string) and `offset` where the failed piece starts.
class RemoteError : public IoError {
 public:
  RemoteError(const std::string& message, int status, std::string url, uint64_t offset)
      : IoError(message), status_(status), url_(std::move(url)), offset_(offset) {}
  int status() const { return status_; }
  const std::string& url() const { return url_; }
  uint64_t offset() const { return offset_; }

 private:
  int status_;
  std::string url_;
  uint64_t offset_;
};

// The CUDA runtime is missing or a CUDA call failed.
class CudaError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// An index or header is invalid: not JSON, a field of the wrong type or out of bounds.
// The message says what is wrong; `tensor` names the tensor concerned, if any.
class FormatError : public std::runtime_error {
 public:
  explicit FormatError(const std::string& message, std::string tensor = "", bool has_tensor = false)
      : std::runtime_error(message), tensor_(std::move(tensor)), has_tensor_(has_tensor) {}
  const std::string& tensor() const { return tensor_; }
  bool has_tensor() const { return has_tensor_; }

 private:
  std::string tensor_;
  bool has_tensor_;
};

// A device map covers no key of this tensor; the message is the tensor's name.
class UncoveredTensor : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

std::string errno_message(int err);

}  // namespace flash
