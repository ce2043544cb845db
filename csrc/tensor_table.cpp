#include "tensor_table.h"

namespace flash {

bool TensorTable::index_names(std::string* duplicate) {
  by_name_.clear();
  by_name_.reserve(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (!by_name_.emplace(tensors[i].name, static_cast<uint32_t>(i)).second) {
      *duplicate = tensors[i].name;
      return false;
    }
  }
  return true;
}

namespace {

class Fnv1a {
 public:
  void add(const void* data, size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < n; ++i) hash_ = (hash_ ^ p[i]) * 1099511628211ull;
  }
  void add(const std::string& s) {
    add_int(s.size());
    add(s.data(), s.size());
  }
  template <typename T>
  void add_int(T v) {
    const uint64_t x = static_cast<uint64_t>(v);
    add(&x, sizeof x);
  }
  uint64_t value() const { return hash_; }

 private:
  uint64_t hash_ = 14695981039346656037ull;
};

}  // namespace

uint64_t TensorTable::fingerprint() const {
  Fnv1a h;
  h.add_int(files.size());
  for (const auto& f : files) {
    h.add(f.name);
    h.add_int(f.size);
  }
  h.add_int(tensors.size());
  for (const auto& t : tensors) {
    h.add(t.name);
    h.add_int(t.dtype);
    h.add_int(t.file);
    h.add_int(t.offset);
    h.add_int(t.length);
    h.add_int(t.crc32c);
    h.add_int(t.shape.size());
    for (int64_t d : t.shape) h.add_int(d);
    h.add_int(t.has_strides);
    for (int64_t s : t.strides) h.add_int(s);
  }
  return h.value();
}

}  // namespace flash
