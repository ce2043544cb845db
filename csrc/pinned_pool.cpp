#include "pinned_pool.h"

#include <pthread.h>

#include <system_error>
#include <thread>

#include "cuda_api.h"
#include "errors.h"

namespace flash {
namespace {

constexpr size_t kSliceAlign = 4096;  // O_DIRECT reads land in the slices

// The pool's calls run on the caller's thread, which torch shares. A failed runtime call
// also leaves its error as the thread's "last error", which torch's next
// cudaGetLastError (after every kernel launch) would report as its own failure: take it back.
int on_callers_thread(const CudaApi& cuda, int status) {
  if (status != 0) cuda.GetLastError();
  return status;
}

}  // namespace

// Never destroyed: freeing pinned memory after the CUDA runtime has shut down at process
// exit would crash; the OS reclaims it.
PinnedPool* PinnedPool::current_ = [] {
  pthread_atfork(nullptr, nullptr, &PinnedPool::start_afresh_in_child);
  return new PinnedPool();
}();

// A forked child inherits the parent's blocks as plain copy-on-write memory (pinning is
// not inherited), and maybe the pool's mutex held by a thread that does not exist in it:
// it starts a pool of its own and leaves the inherited one alone (freeing those blocks
// would be cudaFreeHost of memory this process never pinned).
void PinnedPool::start_afresh_in_child() { current_ = new PinnedPool(); }

PinnedPool& PinnedPool::instance() { return *current_; }

std::vector<void*> PinnedPool::pin_blocks(size_t n, size_t size, int device) {
  // On a thread of our own: the caller's current device and last error stay as they were
  // (setting device 0 back on a thread that never chose one would itself create device
  // 0's context).
  const CudaApi& cuda = cuda_api();
  std::vector<void*> pinned;
  int status = 0;
  const char* what = "cudaSetDevice before pinning the staging ring";
  try {
    std::thread([&] {
      status = cuda.SetDevice(device);
      what = "cudaHostAlloc of the pinned staging ring";
      while (status == 0 && pinned.size() < n) {
        void* p = nullptr;
        status = cuda.HostAlloc(&p, size, kHostAllocPortable);
        if (status == 0) pinned.push_back(p);
      }
    }).join();
  } catch (const std::system_error& e) {
    throw CudaError(std::string("cannot start the thread that pins the staging ring: ") + e.what());
  }
  for (void* p : pinned) blocks_[reinterpret_cast<uintptr_t>(p)] = Block{size, false};
  cuda_check(status, what);  // what was pinned before a failure stays in the pool, idle
  return pinned;
}

std::vector<void*> PinnedPool::acquire(size_t count, size_t bytes, int device) {
  std::lock_guard<std::mutex> lock(mu_);
  const CudaApi& cuda = cuda_api();
  const size_t stride = (bytes + kSliceAlign - 1) / kSliceAlign * kSliceAlign;
  std::vector<void*> out;
  std::vector<Block*> taken;
  auto carve = [&](uintptr_t address, Block& block) {
    block.busy = true;
    taken.push_back(&block);
    for (size_t at = 0; at + stride <= block.size && out.size() < count; at += stride)
      out.push_back(reinterpret_cast<void*>(address + at));
  };
  for (auto it = blocks_.begin(); it != blocks_.end() && out.size() < count;) {
    if (it->second.busy) {
      ++it;
    } else if (it->second.size < stride) {  // only after loads asked for pieces above kBlockBytes
      on_callers_thread(cuda, cuda.FreeHost(reinterpret_cast<void*>(it->first)));
      it = blocks_.erase(it);
    } else {
      carve(it->first, it->second);
      ++it;
    }
  }
  if (out.size() < count) {
    const size_t size = std::max(kBlockBytes, stride);
    const size_t per_block = size / stride;
    try {
      for (void* p : pin_blocks((count - out.size() + per_block - 1) / per_block, size, device))
        carve(reinterpret_cast<uintptr_t>(p), blocks_[reinterpret_cast<uintptr_t>(p)]);
    } catch (...) {
      for (Block* b : taken) b->busy = false;
      throw;
    }
  }
  return out;
}

void PinnedPool::release(const std::vector<void*>& slices) {
  std::lock_guard<std::mutex> lock(mu_);
  for (void* p : slices) {
    auto it = blocks_.upper_bound(reinterpret_cast<uintptr_t>(p));
    if (it != blocks_.begin()) (--it)->second.busy = false;
  }
}

void PinnedPool::trim() {
  std::lock_guard<std::mutex> lock(mu_);
  const CudaApi* cuda = nullptr;
  for (auto it = blocks_.begin(); it != blocks_.end();) {
    if (it->second.busy) {
      ++it;
      continue;
    }
    if (!cuda) cuda = &cuda_api();
    on_callers_thread(*cuda, cuda->FreeHost(reinterpret_cast<void*>(it->first)));
    it = blocks_.erase(it);
  }
}

size_t PinnedPool::pinned_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  size_t total = 0;
  for (const auto& kv : blocks_) total += kv.second.size;
  return total;
}

}  // namespace flash
