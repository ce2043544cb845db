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

struct LoadOptions {
  int threads = 4;
  uint64_t chunk_bytes = 16ull << 20;  // reads are split into pieces of at most this
  SourceOptions source;  // how each path becomes a source (I/O mode, remote timeout)
  // Per path (or empty): where to also write each piece read from it (null: nowhere).
  std::vector<std::shared_ptr<FileTee>> tees;
};

// Reads every op, each path through its source (a local file or a URL); host targets are read straight into place, CUDA targets go through
// two pinned staging buffers per thread and cudaMemcpyAsync on per-thread streams, so
// disk reads and PCIe copies overlap. Throws IoError/CudaError after all threads stop
// and all copies in flight have finished.
void execute_plan(const std::vector<std::string>& paths, const std::vector<ReadOp>& ops,
                  const LoadOptions& options);

// CRC-32C of each (file, offset, length) range, read with `threads` threads.
std::vector<uint32_t> checksum_ranges(const std::vector<std::string>& paths,
                                      const std::vector<ReadOp>& ranges, int threads, double timeout_s = 30.0);

}  // namespace flash
