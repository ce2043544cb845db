// The formats' common output: every tensor of a checkpoint as (name, dtype, shape,
// strides, data file, offset, length, checksum). A flash index and a safetensors
// header both become one of these; nothing downstream knows which it was.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace flash {

// The dtypes a reader accepts: spec names and item sizes, given by the caller (the
// Python format module is the single source of truth for them).
struct DtypeVocabulary {
  std::vector<std::string> names;
  std::vector<uint32_t> sizes;
  int find(std::string_view name) const {
    for (size_t i = 0; i < names.size(); ++i)
      if (names[i] == name) return static_cast<int>(i);
    return -1;
  }
};

struct TensorInfo {
  std::string name;
  uint32_t dtype = 0;  // index into the DtypeVocabulary
  uint32_t file = 0;   // index into TensorTable::files
  uint64_t offset = 0;
  uint64_t length = 0;
  uint32_t crc32c = 0;
  bool has_crc32c = false;
  bool has_strides = false;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;  // in elements; empty unless has_strides
};

// String pairs stored end to end (a checkpoint's metadata): a hostile index's millions
// of tiny entries cost their bytes and 4 more per string, not a std::string pair each.
class StringPairs {
 public:
  // Throws std::length_error past 4 GiB (more than any index these come from holds).
  void add(std::string_view key, std::string_view value) {
    for (std::string_view s : {key, value}) {
      if (bytes_.size() + s.size() > UINT32_MAX) throw std::length_error("metadata over 4 GiB");
      bytes_.append(s);
      ends_.push_back(static_cast<uint32_t>(bytes_.size()));
    }
  }
  size_t size() const { return ends_.size() / 2; }
  bool empty() const { return ends_.empty(); }
  std::pair<std::string_view, std::string_view> operator[](size_t i) const { return {at(2 * i), at(2 * i + 1)}; }

 private:
  std::string_view at(size_t j) const {
    const size_t begin = j == 0 ? 0 : ends_[j - 1];
    return std::string_view(bytes_).substr(begin, ends_[j] - begin);
  }
  std::string bytes_;
  std::vector<uint32_t> ends_;
};

struct DataFileInfo {
  std::string name;
  uint64_t size = 0;
};

struct TensorTable {
  int64_t version = 0;
  // Tensors whose byte ranges, rounded out to this, overlap share one storage when
  // loaded: the flash format stores each storage in its own aligned region (4096), so
  // views of one saved storage come back sharing it; safetensors tensors never share (1).
  uint64_t storage_granularity = 1;
  std::vector<DataFileInfo> files;
  StringPairs metadata;
  std::vector<TensorInfo> tensors;

  // Indexes the names (call once the tensors are final); false if a name repeats,
  // with `duplicate` set to it.
  bool index_names(std::string* duplicate);
  // A hash of everything above (FNV-1a): processes that must read the same checkpoint
  // compare it.
  uint64_t fingerprint() const;
  // Position of a tensor, or -1.
  int64_t find(std::string_view name) const {
    auto it = by_name_.find(name);
    return it == by_name_.end() ? -1 : static_cast<int64_t>(it->second);
  }

 private:
  std::unordered_map<std::string_view, uint32_t> by_name_;  // views of tensors[i].name
};

}  // namespace flash
