// A process-wide set of pinned (page-locked) host buffers, allocated on first use and
// reused by every later load. Pinning costs ~0.4 s per GiB, so it is paid once and
// kept small: the model itself is never pinned.
#pragma once
#include <cstddef>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace flash {

class PinnedPool {
 public:
  static PinnedPool& instance();

  // Returns `count` buffers of at least `bytes` each, allocating what is missing.
  // The caller holds them until release(); concurrent loads get distinct buffers.
  std::vector<void*> acquire(size_t count, size_t bytes);
  void release(const std::vector<void*>& buffers);

  // Frees every idle buffer (e.g. to give the memory back between loads).
  void trim();
  size_t pinned_bytes() const;

 private:
  PinnedPool() = default;
  mutable std::mutex mu_;
  std::unordered_map<void*, size_t> size_of_;  // every live buffer, idle or in use
  std::vector<void*> idle_;
};

}  // namespace flash
