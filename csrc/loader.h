// Executes a load plan computed in Python: which byte range of which data file lands
// at which address (host memory, or device memory of a CUDA device). Runs on its own
// threads; callers release the GIL around it.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "file_tee.h"
#include "source.h"

namespace flash {

struct ReadOp {
  uint32_t file;    // index into the plan's file list
  uint64_t offset;  // byte offset in that file
  uint64_t length;  // bytes to read
  uint64_t dest;    // destination address
  int32_t device;   // CUDA device index, or -1 for host memory
};

// Remote sources: requests in flight per load when the caller leaves it to us. Object
// stores serve each connection at ~100 MB/s (S3) and scale with connections: 32 fill
// a 25 Gb/s link. Each request has one worker thread (blocked on its socket, not busy).
constexpr int kDefaultConnections = 32;
// Remote sources: the largest piece one request asks for (S3's guidance: 8-16 MiB per
// ranged GET). Small enough that the last pieces of a load do not leave most
// connections idle, large enough that the per-request round trip is noise.
constexpr uint64_t kRemotePieceBytes = 8ull << 20;
// Remote sources: the smallest piece the end of a load is cut into. A connection capped
// at ~100 MB/s spends a whole piece's time on its last piece while the others idle, so
// the last pieces shrink towards this (2 MiB: ~20 ms at S3's rate, still several times
// the bytes one request round trip costs).
constexpr uint64_t kRemoteTailPieceBytes = 2ull << 20;

struct LoadOptions {
  int threads = 4;
  uint64_t chunk_bytes = 16ull << 20;  // reads are split into pieces of at most this
  // Remote sources: requests in flight (one connection and one thread each); 0 for
  // $FLASHTENSORS_CONNECTIONS, else kDefaultConnections. Local files use `threads`.
  int connections = 0;
  // Fault host destination pages in ahead of the bytes (Source::read_fresh, see
  // host_memory.h) rather than page by page in the middle of the reads.
  bool populate = true;
  SourceOptions source;  // how each path becomes a source (I/O mode, remote timeout)
  // Per path (or empty): where to also write each piece read from it (null: nowhere).
  std::vector<std::shared_ptr<FileTee>> tees;
};

// Reads every op, each path through its source (a local file or a URL); host targets are read straight into place, CUDA targets go through
// two pinned staging buffers per thread and cudaMemcpyAsync on per-thread streams, so
// disk reads and PCIe copies overlap. A plan that reads any URL runs one thread per
// connection in pieces of at most kRemotePieceBytes (the last ones shrinking towards
// kRemoteTailPieceBytes so that the connections finish together), within the pinned memory that
// `threads` pieces of `chunk_bytes` would have used. Throws IoError/CudaError after all threads stop
// and all copies in flight have finished.
void execute_plan(const std::vector<std::string>& paths, const std::vector<ReadOp>& ops,
                  const LoadOptions& options);

// CRC-32C of each (file, offset, length) range, read with `threads` threads.
std::vector<uint32_t> checksum_ranges(const std::vector<std::string>& paths,
                                      const std::vector<ReadOp>& ranges, int threads, double timeout_s = 30.0);

}  // namespace flash
