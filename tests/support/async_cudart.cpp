// A stand-in CUDA runtime that keeps CUDA's asynchrony, so the tests can drive the
// core's CUDA path on a machine without a GPU and still catch what a first GPU run
// would: a staging buffer refilled while its copy is in flight, results read before
// their copies ran, streams, events or pinned memory dropped with work still queued.
//
// "Device" memory is host memory, registered per device (cudaMalloc, or
// acu_register_device_memory for memory the test owns). Each stream is a queue run by
// a thread of its own, with a random delay before each operation; an event completes
// when its stream reaches it. Whatever real CUDA would reject, or tolerate at a cost
// the loader must not pay, is counted as a violation (acu_violations/acu_report); the
// acu_* functions are the tests' controls. Built by tests/test_cuda_path_async.py.
#include <pthread.h>

#include <condition_variable>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>

namespace {

constexpr int kDevices = 2;
enum Error : int {
  kSuccess = 0,
  kInvalidValue = 1,
  kMemoryAllocation = 2,
  kInvalidMemcpyDirection = 21,
  kInvalidDevice = 101,
  kInvalidResourceHandle = 400,
  kNotReady = 600,
  kIllegalAddress = 700,
};
constexpr int kHostToDevice = 1;
constexpr unsigned kHostAllocPortable = 1;

struct Block {  // a registered allocation
  size_t size;
  int device;     // device memory: its device; pinned memory: the device current at allocation
  bool portable;  // pinned memory usable by every device's copies
};

struct Op {  // a copy, or an event's marker when dst is null
  void* dst;
  const void* src;
  size_t n;
  uint64_t src_hash;  // the source when queued: it must not change before the copy runs
  bool fail;          // an injected asynchronous failure
};

struct Stream {
  int device;
  std::deque<Op> queue;  // front: running or next to run
  uint64_t queued = 0, done = 0;
  int error = kSuccess;  // an asynchronous error: later work is skipped, syncs report it
  bool destroyed = false;
  std::condition_variable wake;
};

struct Event {
  int device;
  std::shared_ptr<Stream> stream;  // of the last record; null when never recorded
  uint64_t position = 0;           // complete once stream->done reaches it
};

struct State {
  std::mutex mu;
  std::condition_variable progress;  // some stream finished an operation
  std::map<uintptr_t, Block> device_memory, pinned;
  std::map<void*, std::shared_ptr<Stream>> streams;  // by handle, until destroyed
  std::set<std::shared_ptr<Stream>> running;          // until their thread is done
  std::map<void*, std::unique_ptr<Event>> events;
  uint64_t seed = 1, streams_made = 0;
  int max_delay_us = 200;
  int pending = 0;  // operations queued on any stream and not yet finished
  int copies = 0, host_allocs = 0;
  int fail_copy_in = -1, fail_host_alloc_in = -1;
  bool fail_copy_async = false;
  int violations = 0;
  std::string report;
  unsigned contexts = 0;  // bit d: some call made device d's primary context (CUDA 12: cudaSetDevice does)
};

// Never destroyed: stream threads may still be waiting on it at process exit.
State& g = *new State();

// fork: the state is consistent at the fork (its lock held across it); the child has no
// stream threads, and none of its parent's GPU work, streams, events or pinned memory
// (what the parent pinned is plain copy-on-write memory in the child: copies from it
// count as pageable, freeing it as not pinned).
const int fork_handlers = pthread_atfork(
    [] { g.mu.lock(); }, [] { g.mu.unlock(); },
    [] {
      for (auto& s : g.running) new (&s->wake) std::condition_variable();
      new (&g.progress) std::condition_variable();  // no waiter of the parent's is left
      g.streams.clear();
      g.running.clear();
      g.events.clear();
      g.pinned.clear();
      g.pending = 0;
      g.mu.unlock();
    });
thread_local int current_device = 0;
thread_local int last_error = kSuccess;

// A call that needs the current device's primary context creates it (hundreds of MB of
// device memory on a real GPU). Called with g.mu held.
void touch(int device) { g.contexts |= 1u << device; }

int ret(int status) {
  if (status != kSuccess) last_error = status;
  return status;
}

// Called with g.mu held.
void violation(const char* format, ...) {
  char line[512];
  va_list args;
  va_start(args, format);
  std::vsnprintf(line, sizeof line, format, args);
  va_end(args);
  if (++g.violations <= 20) g.report += std::string(line) + "\n";
}

uint64_t hash(const void* p, size_t n) {
  uint64_t h = 1469598103934665603ull ^ n;
  const unsigned char* b = static_cast<const unsigned char*>(p);
  size_t i = 0;
  for (uint64_t w; i + 8 <= n; i += 8) {
    std::memcpy(&w, b + i, 8);
    h = (h ^ w) * 1099511628211ull;
  }
  for (; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
  return h;
}

// The registered block holding all of [p, p+n), or null.
const Block* find(const std::map<uintptr_t, Block>& blocks, const void* p, size_t n) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  auto it = blocks.upper_bound(a);
  if (it == blocks.begin()) return nullptr;
  --it;
  return a + n <= it->first + it->second.size ? &it->second : nullptr;
}

bool overlaps(const Op& op, uintptr_t begin, size_t size) {
  const uintptr_t dst = reinterpret_cast<uintptr_t>(op.dst), src = reinterpret_cast<uintptr_t>(op.src);
  return op.dst && ((src < begin + size && begin < src + op.n) || (dst < begin + size && begin < dst + op.n));
}

// Queued or running copies that read or write [begin, begin+size). Called with g.mu held.
int queued_copies_touching(uintptr_t begin, size_t size) {
  int n = 0;
  for (const auto& s : g.running)
    for (const Op& op : s->queue) n += overlaps(op, begin, size);
  return n;
}

void run_stream(std::shared_ptr<Stream> s, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::unique_lock<std::mutex> lock(g.mu);
  for (;;) {
    s->wake.wait(lock, [&] { return !s->queue.empty() || s->destroyed; });
    if (s->queue.empty()) {  // destroyed, and all its work done
      g.running.erase(s);
      return;
    }
    const Op op = s->queue.front();
    const int max_delay = g.max_delay_us;
    const bool skip = s->error != kSuccess;
    lock.unlock();
    // Half the operations run at once, the others after up to max_delay: streams
    // overtake each other and the host in every order.
    if (max_delay > 0 && rng() % 2) std::this_thread::sleep_for(std::chrono::microseconds(rng() % max_delay));
    const bool changed = op.dst && !skip && hash(op.src, op.n) != op.src_hash;
    if (op.dst && !skip && !op.fail) std::memcpy(op.dst, op.src, op.n);
    lock.lock();
    if (changed)
      violation("the source of a %zu-byte copy to %p changed between cudaMemcpyAsync and the copy", op.n, op.dst);
    if (op.fail) s->error = kIllegalAddress;
    s->queue.pop_front();
    ++s->done;
    --g.pending;
    g.progress.notify_all();
  }
}

template <typename T>
T* lookup(std::map<void*, T>& table, void* handle, const char* what, const char* call) {
  auto it = table.find(handle);
  if (it != table.end()) return &it->second;
  violation("%s: unknown or destroyed %s %p", call, what, handle);
  return nullptr;
}

}  // namespace

extern "C" {

// ---- The runtime functions the core uses (and a few the tests call) ----

int cudaGetDeviceCount(int* n) {
  *n = kDevices;
  return kSuccess;
}

int cudaSetDevice(int device) {
  if (device < 0 || device >= kDevices) return ret(kInvalidDevice);
  current_device = device;
  std::lock_guard<std::mutex> lock(g.mu);
  touch(device);
  return kSuccess;
}

int cudaGetDevice(int* device) {
  *device = current_device;
  return kSuccess;
}

int cudaGetLastError(void) {
  const int e = last_error;
  last_error = kSuccess;
  return e;
}

int cudaPeekAtLastError(void) { return last_error; }

int cudaStreamCreateWithFlags(void** handle, unsigned flags) {
  (void)flags;
  auto s = std::make_shared<Stream>();
  s->device = current_device;
  std::lock_guard<std::mutex> lock(g.mu);
  touch(current_device);
  const uint64_t seed = g.seed * 0x9E3779B97F4A7C15ull + ++g.streams_made;
  *handle = s.get();
  g.streams[s.get()] = s;
  g.running.insert(s);
  std::thread(run_stream, s, seed).detach();
  return kSuccess;
}

int cudaStreamDestroy(void* handle) {
  std::lock_guard<std::mutex> lock(g.mu);
  auto* s = lookup(g.streams, handle, "stream", "cudaStreamDestroy");
  if (!s) return ret(kInvalidResourceHandle);
  // Legal in CUDA (the work still runs), but whoever destroys a stream is done with it:
  // work still queued means memory it uses may be released before it runs.
  if (!(*s)->queue.empty())
    violation("cudaStreamDestroy with %zu operations still queued", (*s)->queue.size());
  (*s)->destroyed = true;
  (*s)->wake.notify_one();
  g.streams.erase(handle);
  return kSuccess;
}

int cudaStreamSynchronize(void* handle) {
  std::unique_lock<std::mutex> lock(g.mu);
  auto* found = lookup(g.streams, handle, "stream", "cudaStreamSynchronize");
  if (!found) return ret(kInvalidResourceHandle);
  std::shared_ptr<Stream> s = *found;
  g.progress.wait(lock, [&] { return s->done == s->queued; });
  return ret(s->error);
}

// Waits for every stream of the current device, whoever made it (torch.cuda.synchronize).
int cudaDeviceSynchronize(void) {
  const int device = current_device;
  std::unique_lock<std::mutex> lock(g.mu);
  touch(device);
  int error = kSuccess;
  const auto streams = g.running;  // the set changes while we wait
  for (const auto& s : streams) {
    if (s->device != device) continue;
    g.progress.wait(lock, [&] { return s->done == s->queued; });
    if (!error) error = s->error;
  }
  return ret(error);
}

int cudaEventCreateWithFlags(void** handle, unsigned flags) {
  (void)flags;
  auto e = std::make_unique<Event>();
  e->device = current_device;
  std::lock_guard<std::mutex> lock(g.mu);
  touch(current_device);
  *handle = e.get();
  g.events[e.get()] = std::move(e);
  return kSuccess;
}

int cudaEventDestroy(void* handle) {
  std::lock_guard<std::mutex> lock(g.mu);
  auto* e = lookup(g.events, handle, "event", "cudaEventDestroy");
  if (!e) return ret(kInvalidResourceHandle);
  if ((*e)->stream && (*e)->stream->done < (*e)->position)
    violation("cudaEventDestroy before its stream reached the event");
  g.events.erase(handle);
  return kSuccess;
}

int cudaEventRecord(void* event, void* stream) {
  std::lock_guard<std::mutex> lock(g.mu);
  auto* e = lookup(g.events, event, "event", "cudaEventRecord");
  auto* s = lookup(g.streams, stream, "stream", "cudaEventRecord");
  if (!e || !s) return ret(kInvalidResourceHandle);
  if ((*e)->device != (*s)->device) {  // CUDA refuses this
    violation("cudaEventRecord of an event of device %d on a stream of device %d", (*e)->device, (*s)->device);
    return ret(kInvalidResourceHandle);
  }
  (*s)->queue.push_back(Op{nullptr, nullptr, 0, 0, false});
  ++g.pending;
  (*e)->stream = *s;
  (*e)->position = ++(*s)->queued;
  (*s)->wake.notify_one();
  return kSuccess;
}

int cudaEventSynchronize(void* handle) {
  std::unique_lock<std::mutex> lock(g.mu);
  auto* found = lookup(g.events, handle, "event", "cudaEventSynchronize");
  if (!found) return ret(kInvalidResourceHandle);
  std::shared_ptr<Stream> s = (*found)->stream;
  if (!s) return kSuccess;  // never recorded: complete
  const uint64_t position = (*found)->position;
  g.progress.wait(lock, [&] { return s->done >= position; });
  return ret(s->error);
}

int cudaEventQuery(void* handle) {
  std::lock_guard<std::mutex> lock(g.mu);
  auto* e = lookup(g.events, handle, "event", "cudaEventQuery");
  if (!e) return ret(kInvalidResourceHandle);
  if (!(*e)->stream) return kSuccess;
  if ((*e)->stream->error) return ret((*e)->stream->error);
  return (*e)->stream->done >= (*e)->position ? kSuccess : kNotReady;  // not an error
}

int cudaMemcpyAsync(void* dst, const void* src, size_t n, int kind, void* stream) {
  if (kind != kHostToDevice) return ret(kInvalidMemcpyDirection);
  const uint64_t src_hash = hash(src, n);
  std::lock_guard<std::mutex> lock(g.mu);
  auto* s = lookup(g.streams, stream, "stream", "cudaMemcpyAsync");
  if (!s) return ret(kInvalidResourceHandle);
  const bool fail = g.fail_copy_in >= 0 && g.fail_copy_in-- == 0;
  if (fail && !g.fail_copy_async) return ret(kIllegalAddress);
  const int device = current_device;
  touch(device);
  // Stricter than CUDA, which copies through whichever context the stream has: the
  // loader means to use the target device's own stream and copy engines.
  if ((*s)->device != device)
    violation("cudaMemcpyAsync on a stream of device %d while device %d is current", (*s)->device, device);
  const Block* target = find(g.device_memory, dst, n);
  if (!target || target->device != device)
    violation("cudaMemcpyAsync of %zu bytes to %p: not memory of the current device %d (%s)", n, dst, device,
              target ? "another device's" : "not device memory");
  const Block* source = find(g.pinned, src, n);
  if (!source || !(source->portable || source->device == device))
    violation("cudaMemcpyAsync of %zu bytes from %p: %s, so real CUDA copies it synchronously", n, src,
              source ? "pinned for another device only" : "pageable memory");
  (*s)->queue.push_back(Op{dst, src, n, src_hash, fail});
  ++(*s)->queued;
  ++g.pending;
  ++g.copies;
  (*s)->wake.notify_one();
  return kSuccess;
}

int cudaHostAlloc(void** p, size_t n, unsigned flags) {
  std::lock_guard<std::mutex> lock(g.mu);
  touch(current_device);
  ++g.host_allocs;
  if (g.fail_host_alloc_in >= 0 && g.fail_host_alloc_in-- == 0) return ret(kMemoryAllocation);
  if (posix_memalign(p, 4096, n ? n : 1) != 0) return ret(kMemoryAllocation);
  g.pinned[reinterpret_cast<uintptr_t>(*p)] = Block{n, current_device, (flags & kHostAllocPortable) != 0};
  return kSuccess;
}

int cudaFreeHost(void* p) {
  std::lock_guard<std::mutex> lock(g.mu);
  auto it = g.pinned.find(reinterpret_cast<uintptr_t>(p));
  if (it == g.pinned.end()) {
    violation("cudaFreeHost(%p): not pinned memory from cudaHostAlloc", p);
    return ret(kInvalidValue);
  }
  if (int n = queued_copies_touching(it->first, it->second.size))
    violation("cudaFreeHost of pinned memory that %d queued copies still read", n);
  g.pinned.erase(it);
  std::free(p);
  return kSuccess;
}

int cudaMalloc(void** p, size_t n) {
  std::lock_guard<std::mutex> lock(g.mu);
  touch(current_device);
  if (posix_memalign(p, 256, n ? n : 1) != 0) return ret(kMemoryAllocation);
  std::memset(*p, 0xA5, n);  // never zeroed on a GPU either
  g.device_memory[reinterpret_cast<uintptr_t>(*p)] = Block{n, current_device, false};
  return kSuccess;
}

int cudaFree(void* p) {
  std::lock_guard<std::mutex> lock(g.mu);
  auto it = g.device_memory.find(reinterpret_cast<uintptr_t>(p));
  if (it == g.device_memory.end()) return ret(kInvalidValue);
  if (int n = queued_copies_touching(it->first, it->second.size))
    violation("cudaFree of device memory that %d queued copies still write", n);
  g.device_memory.erase(it);
  std::free(p);
  return kSuccess;
}

const char* cudaGetErrorString(int e) {
  switch (e) {
    case kSuccess: return "no error";
    case kInvalidValue: return "invalid argument";
    case kMemoryAllocation: return "out of memory";
    case kInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case kInvalidDevice: return "invalid device ordinal";
    case kInvalidResourceHandle: return "invalid resource handle";
    case kNotReady: return "device not ready";
    case kIllegalAddress: return "an illegal memory access was encountered";
    default: return "unknown error";
  }
}

// ---- Controls for the tests ----

// Seeds the stream threads' delays (streams made from now on) and bounds each delay.
void acu_configure(uint64_t seed, int max_delay_us) {
  std::lock_guard<std::mutex> lock(g.mu);
  g.seed = seed;
  g.max_delay_us = max_delay_us;
}

// Memory the test owns (a CPU tensor standing for a GPU buffer) becomes device memory.
void acu_register_device_memory(void* p, size_t n, int device) {
  std::lock_guard<std::mutex> lock(g.mu);
  g.device_memory[reinterpret_cast<uintptr_t>(p)] = Block{n, device, false};
}

void acu_unregister_device_memory(void* p) {
  std::lock_guard<std::mutex> lock(g.mu);
  auto it = g.device_memory.find(reinterpret_cast<uintptr_t>(p));
  if (it == g.device_memory.end()) return;
  if (int n = queued_copies_touching(it->first, it->second.size))
    violation("device memory given back while %d queued copies still write it", n);
  g.device_memory.erase(it);
}

// The cudaMemcpyAsync call `after` calls from now fails: at once (asynchronous == 0),
// or, like a real illegal address, when its stream runs it (reported by later syncs).
void acu_fail_copy(int after, int asynchronous) {
  std::lock_guard<std::mutex> lock(g.mu);
  g.fail_copy_in = after;
  g.fail_copy_async = asynchronous != 0;
}

// The cudaHostAlloc call `after` calls from now fails with cudaErrorMemoryAllocation.
void acu_fail_host_alloc(int after) {
  std::lock_guard<std::mutex> lock(g.mu);
  g.fail_host_alloc_in = after;
}

int acu_violations(void) {
  std::lock_guard<std::mutex> lock(g.mu);
  return g.violations;
}

// The first violations, one a line (the pointer stays valid until the next call).
const char* acu_report(void) {
  static std::string copy;
  std::lock_guard<std::mutex> lock(g.mu);
  copy = g.report;
  return copy.c_str();
}

int acu_pending(void) {  // operations queued on any stream and not yet finished
  std::lock_guard<std::mutex> lock(g.mu);
  return g.pending;
}

int acu_live_streams(void) {
  std::lock_guard<std::mutex> lock(g.mu);
  return static_cast<int>(g.streams.size());
}

int acu_live_events(void) {
  std::lock_guard<std::mutex> lock(g.mu);
  return static_cast<int>(g.events.size());
}

int acu_copies(void) {
  std::lock_guard<std::mutex> lock(g.mu);
  return g.copies;
}

// Devices whose primary context some call made (bit d for device d), since the last reset.
unsigned acu_contexts(void) {
  std::lock_guard<std::mutex> lock(g.mu);
  return g.contexts;
}

void acu_reset_contexts(void) {
  std::lock_guard<std::mutex> lock(g.mu);
  g.contexts = 0;
}

int acu_host_allocs(void) {
  std::lock_guard<std::mutex> lock(g.mu);
  return g.host_allocs;
}

}  // extern "C"
