#include "load_plan.h"

#include <algorithm>
#include <numeric>
#include <stdexcept>
#include <unordered_map>

namespace flash {
namespace {

// A DLManagedTensor with its shape, strides and the memory it keeps alive.
struct ManagedView {
  DLManagedTensor managed{};
  std::vector<int64_t> shape, strides;
  std::shared_ptr<void> owner;
};

void delete_view(DLManagedTensor* self) { delete static_cast<ManagedView*>(self->manager_ctx); }

DLManagedTensor* make_view(const Memory& memory, uint64_t offset, int32_t device, DLDataType dtype,
                           std::vector<int64_t> shape, std::vector<int64_t> strides) {
  auto* view = new ManagedView;
  view->shape = std::move(shape);
  view->strides = std::move(strides);
  view->owner = memory.owner;
  DLTensor& t = view->managed.dl_tensor;
  t.data = reinterpret_cast<void*>(memory.address + offset);
  t.device = device == kHostDevice ? DLDevice{kDLCPU, 0} : DLDevice{kDLCUDA, device};
  t.ndim = static_cast<int32_t>(view->shape.size());
  t.dtype = dtype;
  t.shape = view->shape.data();
  t.strides = view->strides.data();
  t.byte_offset = 0;
  view->managed.manager_ctx = view;
  view->managed.deleter = delete_view;
  return &view->managed;
}

// The alignment a tensor's address needs: its item size (length over element count; 1
// where that is not a whole number, as for strided or packed sub-byte data) as a power of
// two, at most 16 (what vector loads of any dtype need).
uint64_t address_alignment(const TensorInfo& t) {
  uint64_t numel = 1;
  for (int64_t d : t.shape) numel *= static_cast<uint64_t>(std::max<int64_t>(d, 0));
  if (numel == 0 || t.has_strides || t.length % numel) return 1;
  const uint64_t item = t.length / numel;
  return std::min<uint64_t>(item & (~item + 1), 16);  // its lowest set bit
}

// The first residue c (mod 16) of a region's buffer offset, starting from `preferred`,
// that puts every member at an address its dtype allows; `preferred` when none does
// (members of one storage saved at offsets no placement can align).
uint64_t aligned_residue(const LoadPlan& plan, const Region& r, uint64_t preferred) {
  for (uint64_t shift = 0; shift < 16; ++shift) {
    const uint64_t c = (preferred + shift) % 16;
    bool fits = true;
    for (uint32_t m : r.members) {
      const TensorInfo& t = plan.tensor(m);
      fits = fits && (c + t.offset - r.start) % address_alignment(t) == 0;
    }
    if (fits) return c;
  }
  return preferred % 16;
}

std::vector<int64_t> contiguous_strides(const std::vector<int64_t>& shape) {
  std::vector<int64_t> strides(shape.size());
  int64_t s = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = s;
    s *= std::max<int64_t>(shape[i], 1);
  }
  return strides;
}

}  // namespace

std::vector<int32_t> assign_devices(const TensorTable& table, const std::vector<uint32_t>& selection,
                                    const std::vector<std::pair<std::string, int32_t>>& device_map) {
  std::vector<int32_t> out(selection.size());
  if (device_map.size() == 1 && device_map[0].first.empty()) {
    std::fill(out.begin(), out.end(), device_map[0].second);
    return out;
  }
  std::unordered_map<std::string_view, int32_t> prefixes;
  for (const auto& [prefix, device] : device_map) prefixes[prefix] = device;
  for (size_t i = 0; i < selection.size(); ++i) {
    std::string_view prefix = table.tensors[selection[i]].name;
    for (;;) {
      auto it = prefixes.find(prefix);
      if (it != prefixes.end()) {
        out[i] = it->second;
        break;
      }
      if (prefix.empty()) throw UncoveredTensor(table.tensors[selection[i]].name);
      const size_t cut = prefix.rfind('.');
      prefix = cut == std::string_view::npos ? std::string_view() : prefix.substr(0, cut);
    }
  }
  return out;
}

LoadPlan::LoadPlan(std::shared_ptr<const TensorTable> table, std::vector<uint32_t> selection,
                   std::vector<int32_t> devices)
    : table_(std::move(table)), selection_(std::move(selection)), devices_(std::move(devices)) {
  if (devices_.size() != selection_.size()) throw std::invalid_argument("one device per selected tensor");
  for (uint32_t s : selection_)
    if (s >= table_->tensors.size()) throw std::out_of_range("selection outside the table");
}

std::vector<uint32_t> LoadPlan::files_used(bool host_only) const {
  std::vector<bool> used(table_->files.size(), false);
  for (size_t i = 0; i < selection_.size(); ++i) {
    const TensorInfo& t = tensor(static_cast<uint32_t>(i));
    if (t.length && (!host_only || devices_[i] == kHostDevice)) used[t.file] = true;
  }
  std::vector<uint32_t> out;
  for (uint32_t f = 0; f < used.size(); ++f)
    if (used[f]) out.push_back(f);
  return out;
}

std::vector<std::pair<int32_t, uint64_t>> LoadPlan::layout(const std::vector<uint32_t>& mapped_files,
                                                           uint64_t alignment) {
  alignment_ = alignment;
  std::vector<bool> mapped(table_->files.size(), false);
  for (uint32_t f : mapped_files)
    if (f < mapped.size()) mapped[f] = true;
  // Positions per device, devices in order of first use.
  std::vector<std::vector<uint32_t>> by_device;
  device_order_.clear();
  for (uint32_t i = 0; i < selection_.size(); ++i) {
    if (!tensor(i).length) continue;
    auto it = std::find(device_order_.begin(), device_order_.end(), devices_[i]);
    if (it == device_order_.end()) {
      device_order_.push_back(devices_[i]);
      by_device.emplace_back();
      it = device_order_.end() - 1;
    }
    by_device[it - device_order_.begin()].push_back(i);
  }
  regions_.clear();
  std::vector<std::pair<int32_t, uint64_t>> sizes;
  for (size_t d = 0; d < device_order_.size(); ++d) {
    std::vector<uint32_t>& positions = by_device[d];
    std::stable_sort(positions.begin(), positions.end(), [&](uint32_t a, uint32_t b) {
      const TensorInfo &x = tensor(a), &y = tensor(b);
      return x.file != y.file ? x.file < y.file : x.offset < y.offset;
    });
    const size_t first = regions_.size();
    const uint64_t g = table_->storage_granularity;
    for (uint32_t p : positions) {
      const TensorInfo& t = tensor(p);
      const uint64_t start = t.offset / g * g;
      const uint64_t end = (t.offset + t.length + g - 1) / g * g;
      if (regions_.size() > first && regions_.back().file == t.file && start < regions_.back().end) {
        regions_.back().end = std::max(regions_.back().end, end);
      } else {
        Region r{device_order_[d], t.file, start, end, 0, false, {}};
        r.mapped = device_order_[d] == kHostDevice && mapped[t.file];
        regions_.push_back(std::move(r));
      }
      regions_.back().members.push_back(p);
    }
    // Regions adjacent in the file are placed adjacent in the buffer, and each such run
    // keeps its offset within an aligned block, so that it is read in one piece from an
    // aligned file offset into an aligned address (O_DIRECT), whatever the format's offsets.
    // Except where that would put a tensor at an address its dtype does not allow (a
    // safetensors writer that did not sort by dtype can leave fp32 data at 2 mod 4: CUDA
    // kernels fault on it): such a region starts a run of its own, shifted by under 16
    // bytes past the room for its aligned block's lead (buffers are 16-aligned at least).
    uint64_t offset = 0;
    const Region* previous = nullptr;
    for (size_t r = first; r < regions_.size(); ++r) {
      Region& region = regions_[r];
      if (region.mapped) continue;
      const bool adjacent = previous && previous->file == region.file && previous->end == region.start;
      const uint64_t next_to_previous = adjacent ? previous->buffer_offset + (previous->end - previous->start) : 0;
      if (adjacent && aligned_residue(*this, region, next_to_previous) == next_to_previous % 16) {
        region.buffer_offset = next_to_previous;
      } else {
        const uint64_t own = (offset + alignment - 1) / alignment * alignment + region.start % alignment;
        region.buffer_offset = own + (aligned_residue(*this, region, own) + 16 - own % 16) % 16;
      }
      offset = region.buffer_offset + (region.end - region.start);
      previous = &region;
    }
    sizes.emplace_back(device_order_[d], offset);
  }
  return sizes;
}

std::vector<ReadOp> LoadPlan::read_ops(const std::vector<uint64_t>& bases) const {
  if (bases.size() != device_order_.size()) throw std::invalid_argument("one base address per device buffer");
  std::vector<ReadOp> ops;
  size_t d = 0;
  for (const Region& r : regions_) {
    while (device_order_[d] != r.device) ++d;
    if (r.mapped) continue;
    const uint64_t dest = bases[d] + r.buffer_offset;
    if (!ops.empty() && ops.back().device == r.device && ops.back().file == r.file &&
        ops.back().offset + ops.back().length == r.start && ops.back().dest + ops.back().length == dest) {
      ops.back().length += r.end - r.start;
    } else {
      // From the aligned block that holds the region's start (layout() left room for it).
      const uint64_t lead = r.start % alignment_;
      ops.push_back({r.file, r.start - lead, r.end - r.start + lead, dest - lead, r.device});
    }
  }
  return ops;
}

TensorViews LoadPlan::views(const std::vector<Memory>& buffers, const std::vector<Memory>& mappings,
                            const std::vector<DlpackDtype>& dtypes) const {
  if (buffers.size() != device_order_.size()) throw std::invalid_argument("one buffer per device");
  TensorViews out;
  out.direct.assign(selection_.size(), nullptr);
  size_t d = 0;
  try {
    for (const Region& r : regions_) {
      while (device_order_[d] != r.device) ++d;
      const Memory& memory = r.mapped ? mappings.at(r.file) : buffers[d];
      const uint64_t base = r.mapped ? r.start : r.buffer_offset;
      const TensorInfo& first = tensor(r.members[0]);
      const DlpackDtype dt = dtypes.at(first.dtype);
      if (r.members.size() == 1 && dt.code != 255) {
        out.direct[r.members[0]] = make_view(
            memory, base + (first.offset - r.start), r.device, DLDataType{dt.code, dt.bits, 1}, first.shape,
            first.has_strides ? first.strides : contiguous_strides(first.shape));
        continue;
      }
      const int64_t nbytes = static_cast<int64_t>(r.end - r.start);
      auto& group = out.grouped.emplace_back(
          make_view(memory, base, r.device, DLDataType{1, 8, 1}, {nbytes}, {1}),
          std::vector<std::pair<uint32_t, uint64_t>>());
      for (uint32_t p : r.members) group.second.emplace_back(p, tensor(p).offset - r.start);
    }
  } catch (...) {
    for (auto* m : out.direct)
      if (m) m->deleter(m);
    for (auto& g : out.grouped) g.first->deleter(g.first);
    throw;
  }
  return out;
}

}  // namespace flash
