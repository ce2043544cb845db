#include "pinned_pool.h"

#include "cuda_api.h"

namespace flash {
namespace {

// The pool runs on the caller's thread, which torch shares. A failed runtime call also
// leaves its error as the thread's "last error", which torch's next cudaGetLastError
// (after every kernel launch) would report as its own failure: take it back.
int on_callers_thread(const CudaApi& cuda, int status) {
  if (status != 0) cuda.GetLastError();
  return status;
}

}  // namespace

PinnedPool& PinnedPool::instance() {
  // Never destroyed: freeing pinned memory after the CUDA runtime has shut down
  // at process exit would crash; the OS reclaims it.
  static PinnedPool* pool = new PinnedPool();
  return *pool;
}

std::vector<void*> PinnedPool::acquire(size_t count, size_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  const CudaApi& cuda = cuda_api();
  std::vector<void*> out;
  std::vector<void*> keep;
  for (void* p : idle_) {
    if (out.size() < count && size_of_[p] >= bytes) {
      out.push_back(p);
    } else if (size_of_[p] < bytes) {
      on_callers_thread(cuda, cuda.FreeHost(p));  // too small for loads of this chunk size
      size_of_.erase(p);
    } else {
      keep.push_back(p);
    }
  }
  idle_.swap(keep);
  while (out.size() < count) {
    void* p = nullptr;
    int status = on_callers_thread(cuda, cuda.HostAlloc(&p, bytes, kHostAllocPortable));
    if (status != 0) {
      for (void* q : out) idle_.push_back(q);
      cuda_check(status, "cudaHostAlloc of the pinned staging ring");
    }
    size_of_[p] = bytes;
    out.push_back(p);
  }
  return out;
}

void PinnedPool::release(const std::vector<void*>& buffers) {
  std::lock_guard<std::mutex> lock(mu_);
  for (void* p : buffers) idle_.push_back(p);
}

void PinnedPool::trim() {
  std::lock_guard<std::mutex> lock(mu_);
  if (idle_.empty()) return;
  const CudaApi& cuda = cuda_api();
  for (void* p : idle_) {
    on_callers_thread(cuda, cuda.FreeHost(p));
    size_of_.erase(p);
  }
  idle_.clear();
}

size_t PinnedPool::pinned_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  size_t total = 0;
  for (const auto& kv : size_of_) total += kv.second;
  return total;
}

}  // namespace flash
