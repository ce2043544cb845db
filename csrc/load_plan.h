// The load plan: which byte range of which data file lands where in which device's one
// buffer, and the tensors handed back as views of it. Shared by every format (it reads
// a TensorTable) and every source (it yields ReadOps).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dlpack.h"
#include "errors.h"
#include "loader.h"
#include "tensor_table.h"

namespace flash {

constexpr int32_t kHostDevice = -1;

// A run of file bytes that becomes one storage on one device. Tensors whose bytes
// overlap in the file (shared storage, such as tied weights) share a region.
struct Region {
  int32_t device;
  uint32_t file;
  uint64_t start, end;         // in the file, aligned
  uint64_t buffer_offset = 0;  // in the device's buffer; unused when mapped
  bool mapped = false;         // a view of the file's mapping (host targets only)
  std::vector<uint32_t> members;  // positions in the plan's selection
};

// Where a tensor's memory comes from: a device buffer or a file mapping.
struct Memory {
  uint64_t address = 0;
  std::shared_ptr<void> owner;  // kept alive by every tensor viewing this memory
};

// How one dtype is described to DLPack; code 255 means "no DLPack code: hand back bytes".
struct DlpackDtype {
  uint8_t code = 255;
  uint8_t bits = 0;
};

struct TensorViews {
  std::vector<DLManagedTensor*> direct;  // per selected tensor; null if empty or grouped
  // Regions handed back as one byte tensor each, with (selection position, byte offset)
  // of the tensors to view inside: shared storage, or dtypes DLPack cannot carry here.
  std::vector<std::pair<DLManagedTensor*, std::vector<std::pair<uint32_t, uint64_t>>>> grouped;
};

class LoadPlan {
 public:
  // `selection`: positions in the table to load, in output order (empty: all).
  // `devices`: the device of each selected tensor (kHostDevice or a CUDA index).
  LoadPlan(std::shared_ptr<const TensorTable> table, std::vector<uint32_t> selection, std::vector<int32_t> devices);

  const TensorTable& table() const { return *table_; }
  const std::vector<uint32_t>& selection() const { return selection_; }
  const TensorInfo& tensor(uint32_t position) const { return table_->tensors[selection_[position]]; }
  int32_t device(uint32_t position) const { return devices_.at(position); }

  // Files holding bytes of selected tensors (only those bound for the host, if asked).
  std::vector<uint32_t> files_used(bool host_only) const;
  // Builds the regions; host regions of `mapped_files` take no buffer room. Reads will
  // start at `alignment`-aligned file offsets and addresses (given aligned buffers).
  // Returns (device, buffer bytes) in order of first use.
  std::vector<std::pair<int32_t, uint64_t>> layout(const std::vector<uint32_t>& mapped_files, uint64_t alignment);
  // Reads for the unmapped regions, adjacent ones coalesced, into buffers at `bases`
  // (indexed like layout()'s result).
  std::vector<ReadOp> read_ops(const std::vector<uint64_t>& bases) const;
  // The tensors as DLPack views of the buffers (indexed like layout()'s result) and
  // mappings (per file; empty where not mapped). The caller owns the returned tensors.
  TensorViews views(const std::vector<Memory>& buffers, const std::vector<Memory>& mappings,
                    const std::vector<DlpackDtype>& dtypes) const;
  const std::vector<Region>& regions() const { return regions_; }

 private:
  std::shared_ptr<const TensorTable> table_;
  std::vector<uint32_t> selection_;
  std::vector<int32_t> devices_;
  std::vector<int32_t> device_order_;
  std::vector<Region> regions_;
  uint64_t alignment_ = 1;
};

// Device of each named tensor under a device map of name prefixes (the longest matching
// prefix wins, "" matches all). Throws UncoveredTensor naming the first tensor no key covers.
std::vector<int32_t> assign_devices(const TensorTable& table, const std::vector<uint32_t>& selection,
                                    const std::vector<std::pair<std::string, int32_t>>& device_map);

}  // namespace flash
