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

std::string errno_message(int err);

}  // namespace flash
