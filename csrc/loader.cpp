#include "loader.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <system_error>
#include <thread>

#include "crc32c.h"
#include "cuda_api.h"
#include "errors.h"
#include "pinned_pool.h"

namespace flash {
namespace {

// Remembers the first error any worker hit (as thrown: a RemoteError stays one) and
// tells the others to stop.
class FirstError {
 public:
  void set(std::exception_ptr error) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!failed_.exchange(true)) error_ = std::move(error);
  }
  bool failed() const { return failed_.load(std::memory_order_relaxed); }
  void rethrow() const {
    if (failed_) std::rethrow_exception(error_);
  }

 private:
  std::mutex mu_;
  std::atomic<bool> failed_{false};
  std::exception_ptr error_;
};

// Runs fn(worker_index) on n new threads and joins them all, even when one throws.
// The caller's thread is never used for CUDA work: workers call cudaSetDevice, which must
// not leak into the Python thread that torch tracks. Host-only work with one worker runs
// on the caller's thread (`inline_one`): starting a thread would cost more than a small
// load's one read.
template <typename Fn>
void run_workers(int n, FirstError& error, Fn fn, bool inline_one = false) {
  auto guarded = [&](int w) {
    try {
      fn(w);
    } catch (const CudaError&) {
      error.set(std::current_exception());
    } catch (const IoError&) {
      error.set(std::current_exception());
    } catch (const std::exception& e) {
      error.set(std::make_exception_ptr(IoError(e.what())));
    }
  };
  if (inline_one && n == 1) {
    guarded(0);
    return;
  }
  std::vector<std::thread> threads;
  threads.reserve(n);
  for (int w = 0; w < n && !error.failed(); ++w) {
    try {
      threads.emplace_back(guarded, w);
    } catch (const std::system_error& e) {
      // Out of threads (a pids limit, address space): stop and report it; the threads
      // already started still stop and get joined.
      error.set(std::make_exception_ptr(IoError(std::string("cannot start I/O thread ") + std::to_string(w + 1) +
                                                " of " + std::to_string(n) + ": " + e.what())));
    }
  }
  for (auto& t : threads) t.join();
}

// Splits ops into pieces of at most `chunk` bytes, interleaving the targets so that the
// threads feed every device (and the host) at once rather than one after another.
std::vector<ReadOp> split(const std::vector<ReadOp>& ops, uint64_t chunk) {
  std::map<int32_t, std::vector<ReadOp>> by_target;
  for (const ReadOp& op : ops) {
    for (uint64_t done = 0; done < op.length; done += chunk) {
      ReadOp piece = op;
      piece.offset += done;
      piece.dest += done;
      piece.length = std::min(chunk, op.length - done);
      by_target[op.device].push_back(piece);
    }
  }
  std::vector<ReadOp> out;
  for (size_t i = 0;; ++i) {
    const size_t before = out.size();
    for (const auto& kv : by_target)
      if (i < kv.second.size()) out.push_back(kv.second[i]);
    if (out.size() == before) return out;
  }
}

// Cuts the end of an ordered list of pieces finer, so that `workers` pulling pieces in
// turn finish together: each piece is about the bytes still left divided by the workers,
// never above the piece it was and never below `floor` (a remnant under it joins the
// piece before). The bulk of a load keeps its pieces; only about the last `workers`
// pieces' worth of bytes is cut finer.
std::vector<ReadOp> taper(const std::vector<ReadOp>& pieces, size_t workers, uint64_t floor) {
  uint64_t left = 0;
  for (const ReadOp& p : pieces) left += p.length;
  std::vector<ReadOp> out;
  out.reserve(pieces.size());
  for (const ReadOp& p : pieces) {
    for (uint64_t done = 0; done < p.length;) {
      const uint64_t share = std::max(floor, left / workers / kDirectAlign * kDirectAlign);
      ReadOp piece = p;
      piece.offset += done;
      piece.dest += done;
      const uint64_t rest = p.length - done;
      piece.length = rest < share + floor ? rest : share;  // never leave a remnant under the floor
      out.push_back(piece);
      done += piece.length;
      left -= piece.length;
    }
  }
  return out;
}

// A worker's pinned staging buffer and the event marking its last copy done.
struct StagingSlot {
  void* buffer = nullptr;
  int device = -1;  // device of the copy in flight, -1 when idle
  std::map<int, cudaEvent> events;
};

// One worker's CUDA state: streams per device, two staging slots used in turn.
class CudaStager {
 public:
  CudaStager(void* buffer_a, void* buffer_b) : cuda_(cuda_api()) {
    slots_[0].buffer = buffer_a;
    slots_[1].buffer = buffer_b;
  }
  ~CudaStager() {
    // Every copy queued on our streams must be over before the staging buffers go back
    // to the pool and the caller frees the device memory (even one whose event failed).
    for (auto& kv : streams_) cuda_.StreamSynchronize(kv.second);
    for (auto& slot : slots_)
      for (auto& kv : slot.events) cuda_.EventDestroy(kv.second);
    for (auto& kv : streams_) cuda_.StreamDestroy(kv.second);
  }
  CudaStager(const CudaStager&) = delete;
  CudaStager& operator=(const CudaStager&) = delete;

  // Waits until the next slot's previous copy has finished and returns its buffer.
  void* next_buffer() {
    StagingSlot& slot = slots_[turn_];
    if (slot.device >= 0) {
      cuda_check(cuda_.EventSynchronize(slot.events[slot.device]), "cudaEventSynchronize");
      slot.device = -1;
    }
    return slot.buffer;
  }

  // Queues the copy of `length` bytes from `skip` bytes into the current slot's buffer
  // to `dest` and moves to the other slot.
  void copy(uint64_t dest, uint64_t skip, uint64_t length, int device) {
    StagingSlot& slot = slots_[turn_];
    use_device(device);
    cudaStream stream = stream_for(device);
    cuda_check(cuda_.MemcpyAsync(reinterpret_cast<void*>(dest), static_cast<char*>(slot.buffer) + skip, length,
                                 kMemcpyHostToDevice, stream),
               "cudaMemcpyAsync");
    cudaEvent& event = slot.events[device];
    if (!event) cuda_check(cuda_.EventCreateWithFlags(&event, kEventDisableTiming), "cudaEventCreate");
    cuda_check(cuda_.EventRecord(event, stream), "cudaEventRecord");
    slot.device = device;
    turn_ ^= 1;
  }

  void finish() {
    for (auto& kv : streams_) cuda_check(cuda_.StreamSynchronize(kv.second), "cudaStreamSynchronize");
    for (auto& slot : slots_) slot.device = -1;
  }

 private:
  void use_device(int device) {
    if (device != current_device_) {
      cuda_check(cuda_.SetDevice(device), "cudaSetDevice");
      current_device_ = device;
    }
  }
  cudaStream stream_for(int device) {
    cudaStream& s = streams_[device];
    if (!s) cuda_check(cuda_.StreamCreateWithFlags(&s, kStreamNonBlocking), "cudaStreamCreate");
    return s;
  }

  const CudaApi& cuda_;
  StagingSlot slots_[2];
  int turn_ = 0;
  int current_device_ = -1;
  std::map<int, cudaStream> streams_;
};

// Returns pinned buffers to the pool when a load ends, however it ends.
struct PinnedLease {
  std::vector<void*> buffers;
  ~PinnedLease() {
    if (!buffers.empty()) PinnedPool::instance().release(buffers);
  }
};

// Thread counts outside [1, kMaxThreads] are clamped (Python validates them first).
constexpr int kMaxThreads = 1024;
size_t clamp_threads(int threads) { return static_cast<size_t>(std::clamp(threads, 1, kMaxThreads)); }

std::vector<std::unique_ptr<Source>> open_all(const std::vector<std::string>& paths, const SourceOptions& options,
                                              const std::vector<std::shared_ptr<FileTee>>& tees = {}) {
  std::vector<std::unique_ptr<Source>> files;
  files.reserve(paths.size());
  for (size_t i = 0; i < paths.size(); ++i) {
    files.push_back(open_source(paths[i], options));
    if (i < tees.size() && tees[i]) files.back() = std::make_unique<TeeSource>(std::move(files.back()), tees[i]);
  }
  return files;
}

void check_file_indices(const std::vector<ReadOp>& ops, size_t n_files) {
  for (const ReadOp& op : ops)
    if (op.file >= n_files) throw IoError("plan refers to file #" + std::to_string(op.file) + " of " +
                                          std::to_string(n_files));
}

// Requests in flight for remote sources when the caller leaves it to us:
// $FLASHTENSORS_CONNECTIONS, else kDefaultConnections.
int default_connections() {
  const char* env = std::getenv("FLASHTENSORS_CONNECTIONS");
  if (!env || !*env) return kDefaultConnections;
  char* end = nullptr;
  const long n = std::strtol(env, &end, 10);
  if (*end != '\0' || n < 1 || n > kMaxThreads)
    throw IoError("FLASHTENSORS_CONNECTIONS must be an integer from 1 to " + std::to_string(kMaxThreads) +
                  ", not '" + env + "'");
  return static_cast<int>(n);
}

// How a plan's reads are cut and spread over threads.
struct Concurrency {
  size_t threads;
  uint64_t chunk;
  bool taper = false;  // cut the last pieces finer (see taper)
};

// Local files: `threads` threads, pieces of chunk_bytes. Remote sources: one thread per
// connection (as many as asked for, more or fewer than `threads`), pieces of at most
// kRemotePieceBytes, the last ones cut finer (taper), shrunk where needed so that their
// pinned staging slices (two per thread, GPU targets only) fit the pool's blocks that a
// local load of `threads` threads pins: ceil(connections / threads) slices per block, so
// remote and local loads taking turns reuse the same pinned blocks.
Concurrency concurrency_for(const std::vector<std::string>& paths, const LoadOptions& options, bool staged) {
  const auto align = [](uint64_t bytes) { return std::max<uint64_t>(kDirectAlign, bytes / kDirectAlign * kDirectAlign); };
  const size_t threads = clamp_threads(options.threads);
  const uint64_t chunk = align(options.chunk_bytes);
  if (!std::any_of(paths.begin(), paths.end(), [](const std::string& p) { return is_remote(p); }))
    return {threads, chunk};
  const size_t connections = clamp_threads(options.connections > 0 ? options.connections : default_connections());
  const uint64_t piece = std::min(chunk, kRemotePieceBytes);
  if (!staged) return {connections, align(piece), true};
  const uint64_t block = std::max<uint64_t>(PinnedPool::kBlockBytes, chunk + kDirectAlign);  // a local slice's
  const uint64_t per_block = (connections + threads - 1) / threads;
  const uint64_t fits = block / per_block > 2 * kDirectAlign ? block / per_block - kDirectAlign : kDirectAlign;
  return {connections, std::min(align(piece), fits / kDirectAlign * kDirectAlign), true};
}

}  // namespace

void execute_plan(const std::vector<std::string>& paths, const std::vector<ReadOp>& ops,
                  const LoadOptions& options) {
  check_file_indices(ops, paths.size());
  const bool any_cuda = std::any_of(ops.begin(), ops.end(), [](const ReadOp& op) { return op.device >= 0; });
  const Concurrency plan = concurrency_for(paths, options, any_cuda);
  const uint64_t chunk = plan.chunk;
  const std::vector<ReadOp> chunks =
      plan.taper ? taper(split(ops, chunk), plan.threads, std::min(chunk, kRemoteTailPieceBytes)) : split(ops, chunk);
  if (chunks.empty()) return;
  const auto files = open_all(paths, options.source, options.tees);
  const int n_threads = static_cast<int>(std::min<size_t>(plan.threads, chunks.size()));

  PinnedLease pinned;
  // A block more than a chunk: room to read a piece from the block that holds its start.
  // Pinned with the load's first target device current (see PinnedPool::acquire).
  if (any_cuda) {
    const auto first = std::find_if(ops.begin(), ops.end(), [](const ReadOp& op) { return op.device >= 0; });
    pinned.buffers = PinnedPool::instance().acquire(2 * n_threads, chunk + kDirectAlign, first->device);
  }

  std::atomic<size_t> next{0};
  FirstError error;
  run_workers(n_threads, error, [&](int w) {
    std::unique_ptr<CudaStager> stager;
    if (any_cuda) stager = std::make_unique<CudaStager>(pinned.buffers[2 * w], pinned.buffers[2 * w + 1]);
    for (size_t i = next++; i < chunks.size() && !error.failed(); i = next++) {
      const ReadOp& c = chunks[i];
      const Source& file = *files[c.file];
      if (c.device < 0) {
        if (options.populate)
          file.read_fresh(reinterpret_cast<void*>(c.dest), c.offset, c.length);
        else
          file.read(reinterpret_cast<void*>(c.dest), c.offset, c.length);
      } else {
        // Staging buffers are aligned: reading from the block that holds the piece's
        // start keeps the read eligible for O_DIRECT at any file offset (safetensors
        // offsets are not aligned); only the piece itself is copied.
        const uint64_t lead = c.offset % kDirectAlign;
        file.read(stager->next_buffer(), c.offset - lead, lead + c.length);
        stager->copy(c.dest, lead, c.length, c.device);
      }
    }
    if (stager) stager->finish();
  }, !any_cuda);
  error.rethrow();
}

std::vector<uint32_t> checksum_ranges(const std::vector<std::string>& paths,
                                      const std::vector<ReadOp>& ranges, int threads, double timeout_s) {
  check_file_indices(ranges, paths.size());
  std::vector<uint32_t> out(ranges.size(), 0);
  if (ranges.empty()) return out;
  SourceOptions source;
  source.io = IoMode::Buffered;
  source.timeout_s = timeout_s;
  const auto files = open_all(paths, source);
  const uint64_t piece = 8ull << 20;
  std::atomic<size_t> next{0};
  FirstError error;
  const int n_threads = static_cast<int>(std::min<size_t>(clamp_threads(threads), ranges.size()));
  run_workers(n_threads, error, [&](int) {
    std::unique_ptr<char[]> buffer(new char[piece]);
    for (size_t i = next++; i < ranges.size() && !error.failed(); i = next++) {
      const ReadOp& r = ranges[i];
      uint32_t crc = 0;
      for (uint64_t done = 0; done < r.length; done += piece) {
        const uint64_t n = std::min(piece, r.length - done);
        files[r.file]->read(buffer.get(), r.offset + done, n);
        crc = crc32c_extend(crc, buffer.get(), n);
      }
      out[i] = crc;
    }
  });
  error.rethrow();
  return out;
}

}  // namespace flash
