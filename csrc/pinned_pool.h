// A process-wide set of pinned (page-locked) host blocks, allocated on first use and
// reused by every later load. Pinning costs ~0.4 s per GiB, so it is paid once and
// kept small: the model itself is never pinned.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <vector>

namespace flash {

class PinnedPool {
 public:
  // Every block the pool pins has (at least) this size: one local staging slot (a 16 MiB
  // piece and the 4 KiB block holding its start) or two remote ones (8 MiB pieces), so
  // loads of either kind reuse the same pinned memory rather than freeing and re-pinning.
  static constexpr size_t kBlockBytes = (16ull << 20) + 2 * 4096;

  static PinnedPool& instance();

  // Returns `count` distinct slices of at least `bytes` each (4096-aligned), carved from
  // idle blocks, pinning what is missing with CUDA device `device` current (pinned
  // memory belongs to the context current when it is pinned: a load to cuda:1 alone must
  // not create a context on device 0). The caller holds them until release(); concurrent
  // loads get distinct blocks. Throws CudaError when pinning fails.
  std::vector<void*> acquire(size_t count, size_t bytes, int device);
  void release(const std::vector<void*>& slices);

  // Frees every idle block (e.g. to give the memory back between loads).
  void trim();
  size_t pinned_bytes() const;

 private:
  PinnedPool() = default;
  static void start_afresh_in_child();
  static PinnedPool* current_;

  struct Block {
    size_t size;
    bool busy;
  };
  std::vector<void*> pin_blocks(size_t n, size_t size, int device);
  mutable std::mutex mu_;
  std::map<uintptr_t, Block> blocks_;  // by address: every live block, idle or busy
};

}  // namespace flash
