#include "safetensors_header.h"

#include <algorithm>
#include <iterator>

#include "flash_index.h"
#include "json_reader.h"

namespace flash {
namespace {

using Kind = JsonReader::Kind;

[[noreturn]] void fail(const std::string& message, const std::string& tensor) {
  throw FormatError(message, tensor, true);
}

// A list of at most `max` non-negative integers; false if it is anything else (only
// max + 1 values are ever kept).
bool read_sizes(JsonReader& r, size_t max, std::vector<int64_t>& out) {
  if (r.peek() != Kind::Array) {
    r.skip();
    return false;
  }
  bool ok = true;
  r.array([&](size_t) {
    if (r.peek() != Kind::Number) {
      r.skip();
      ok = false;
      return;
    }
    const JsonNumber n = r.number();
    ok = ok && n.is_int && n.value >= 0 && out.size() < max;
    if (out.size() <= max) out.push_back(n.value);
  });
  return ok;
}

// One entry of the header, read into `t` (offset and length relative to the data
// area) and checked on its own; the checks between entries come once all are read.
void read_entry(JsonReader& r, const std::string& name, const SafetensorsRules& rules, TensorInfo& t) {
  if (r.peek() != Kind::Object) fail("entry is not an object", name);
  std::string dtype_name;
  bool dtype_ok = false, shape_ok = false, offsets_ok = false;
  std::vector<int64_t> offsets;
  r.object([&](const std::string& field) {
    if (field == "dtype") {
      if (r.peek() != Kind::String) return r.skip();
      dtype_name = r.string();
      dtype_ok = true;
    } else if (field == "shape") {
      shape_ok = read_sizes(r, rules.max_ndim, t.shape);
    } else if (field == "data_offsets") {
      offsets_ok = read_sizes(r, 2, offsets) && offsets.size() == 2;
    } else {
      r.skip();
    }
  });
  if (!dtype_ok) fail("missing or invalid dtype", name);
  if (!shape_ok) fail(t.shape.size() > rules.max_ndim ? "too many dimensions" : "missing or invalid shape", name);
  if (!offsets_ok) fail("missing or invalid data_offsets", name);
  const auto dtype = std::find_if(rules.dtypes.begin(), rules.dtypes.end(),
                                  [&](const SafetensorsDtype& d) { return d.name == dtype_name; });
  if (dtype == rules.dtypes.end()) fail("dtype '" + abbreviated(dtype_name) + "' has no torch equivalent", name);
  const uint64_t begin = static_cast<uint64_t>(offsets[0]), end = static_cast<uint64_t>(offsets[1]);
  if (end < begin) fail("data_offsets end before they begin", name);
  if (dtype->per_item > 1) {  // torch's shape counts packed items
    if (t.shape.empty() || t.shape.back() % dtype->per_item != 0)
      fail("dtype '" + dtype_name + "' needs a last dimension divisible by " + std::to_string(dtype->per_item) +
               " to load into torch",
           name);
    t.shape.back() /= dtype->per_item;
  }
  uint64_t nbytes = 0;
  if (!span_bytes(t.shape, nullptr, rules.vocabulary.sizes[dtype->dtype], UINT64_MAX >> 1, &nbytes) ||
      nbytes != end - begin)
    fail("data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) + ") do not match shape and dtype",
         name);
  t.name = name;
  t.dtype = dtype->dtype;
  t.offset = begin;
  t.length = nbytes;
}

// Reorders `items` so that items[k] is what items[order[k]] was, in place.
void permute(std::vector<TensorInfo>& items, std::vector<uint32_t>& order) {
  for (size_t i = 0; i < items.size(); ++i) {
    if (order[i] == i) continue;
    TensorInfo held = std::move(items[i]);
    size_t j = i;
    for (;;) {
      const size_t k = order[j];
      order[j] = static_cast<uint32_t>(j);
      if (k == i) {
        items[j] = std::move(held);
        break;
      }
      items[j] = std::move(items[k]);
      j = k;
    }
  }
}

}  // namespace

void add_safetensors_file(TensorTable& table, const std::string& file_name, const char* header, uint64_t header_size,
                          uint64_t file_size, const SafetensorsRules& rules) {
  if (header_size > rules.max_header_bytes)
    throw FormatError("header of " + std::to_string(header_size) + " bytes is larger than safetensors allows (" +
                      std::to_string(rules.max_header_bytes) + ")");
  if (8 + header_size > file_size)
    throw FormatError("header of " + std::to_string(header_size) + " bytes does not fit in the file (" +
                      std::to_string(file_size) + " bytes; truncated?)");
  if (header_size == 0 || header[0] != '{') throw FormatError("header is not a JSON object");
  JsonReader r(header, header_size);
  std::vector<TensorInfo> entries;
  r.object([&](const std::string& key) {
    if (key == "__metadata__") {
      if (r.peek() != Kind::Object) throw FormatError("__metadata__ must map strings to strings");
      r.object([&](const std::string& k) {
        if (r.peek() != Kind::String) throw FormatError("__metadata__ must map strings to strings");
        const std::string v = r.string();
        if (table.files.empty()) table.metadata.add(k, v);  // the first file's, as load_file keeps none
      });
      return;
    }
    // Counted before anything is kept: the limit bounds memory, whatever follows.
    if (table.tensors.size() + entries.size() >= rules.max_tensors)
      throw FormatError("more than " + std::to_string(rules.max_tensors) + " tensors");
    read_entry(r, key, rules, entries.emplace_back());
  });
  r.finish();  // safetensors pads the header with spaces: whitespace may follow

  const uint64_t data_start = 8 + header_size;
  const uint64_t data_size = file_size - data_start;
  const uint32_t file = static_cast<uint32_t>(table.files.size());
  // File order: safetensors requires the tensors to tile the data area exactly.
  std::vector<uint32_t> order(entries.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<uint32_t>(i);
  std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) {
    const TensorInfo &x = entries[a], &y = entries[b];
    return x.offset != y.offset ? x.offset < y.offset : x.length < y.length;
  });
  uint64_t expected_begin = 0;
  for (uint32_t i : order) {
    const TensorInfo& e = entries[i];
    const uint64_t end = e.offset + e.length;
    if (e.offset != expected_begin)
      fail(e.offset < expected_begin ? "bytes overlap another tensor's" : "a gap of unused bytes precedes the tensor",
           e.name);
    if (end > data_size)
      fail("bytes [" + std::to_string(e.offset) + ", " + std::to_string(end) + ") lie beyond the end of the file",
           e.name);
    expected_begin = end;
  }
  if (expected_begin != data_size)
    throw FormatError("the tensors cover " + std::to_string(expected_begin) + " bytes of a " +
                      std::to_string(data_size) + "-byte data area (trailing bytes or a truncated header)");
  permute(entries, order);
  for (TensorInfo& t : entries) {
    t.file = file;
    t.offset += data_start;
  }
  if (table.tensors.empty()) {
    table.tensors = std::move(entries);
  } else {
    table.tensors.reserve(table.tensors.size() + entries.size());
    std::move(entries.begin(), entries.end(), std::back_inserter(table.tensors));
  }
  table.files.push_back({file_name, file_size});
}

}  // namespace flash
