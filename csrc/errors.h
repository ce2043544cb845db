// Errors raised by the core. Every message names the file (and offset) it concerns,
// so the Python layer can attach the tensor name and re-raise as a FlashError.
#pragma once
#include <stdexcept>
#include <string>

namespace flash {

// A read failed or came back short: the data file is truncated, vanished or unreadable.
class IoError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
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
