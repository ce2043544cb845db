#include "safetensors_header.h"

#include <algorithm>

#include "flash_index.h"
#include "json_reader.h"

namespace flash {
namespace {

using Kind = JsonReader::Kind;

struct RawEntry {
  std::string name;
  std::string dtype;
  bool dtype_ok = false, shape_ok = false, offsets_ok = false;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;
};

[[noreturn]] void fail(const std::string& message, const std::string& tensor) {
  throw FormatError(message, tensor, true);
}

// A list of non-negative integers; false if it is anything else.
bool read_sizes(JsonReader& r, std::vector<int64_t>& out) {
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
    ok = ok && n.is_int && n.value >= 0;
    out.push_back(n.value);
  });
  return ok;
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
  std::vector<RawEntry> entries;
  r.object([&](const std::string& key) {
    if (key == "__metadata__") {
      if (r.peek() != Kind::Object) throw FormatError("__metadata__ must map strings to strings");
      r.object([&](const std::string& k) {
        if (r.peek() != Kind::String) throw FormatError("__metadata__ must map strings to strings");
        const std::string v = r.string();
        if (table.files.empty()) table.metadata.emplace_back(k, v);  // the first file's, as load_file keeps none
      });
      return;
    }
    RawEntry& e = entries.emplace_back();
    e.name = key;
    if (r.peek() != Kind::Object) fail("entry is not an object", key);
    r.object([&](const std::string& field) {
      if (field == "dtype") {
        if (r.peek() != Kind::String) return r.skip();
        e.dtype = r.string();
        e.dtype_ok = true;
      } else if (field == "shape") {
        e.shape_ok = read_sizes(r, e.shape);
      } else if (field == "data_offsets") {
        std::vector<int64_t> offsets;
        e.offsets_ok = read_sizes(r, offsets) && offsets.size() == 2;
        if (e.offsets_ok) e.begin = offsets[0], e.end = offsets[1];
      } else {
        r.skip();
      }
    });
  });
  r.finish();  // safetensors pads the header with spaces: whitespace may follow

  const uint64_t data_start = 8 + header_size;
  const uint64_t data_size = file_size - data_start;
  const uint32_t file = static_cast<uint32_t>(table.files.size());
  // File order: safetensors requires the tensors to tile the data area exactly.
  std::vector<size_t> order(entries.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  for (const RawEntry& e : entries) {
    if (!e.dtype_ok) fail("missing or invalid dtype", e.name);
    if (!e.shape_ok) fail("missing or invalid shape", e.name);
    if (e.shape.size() > rules.max_ndim) fail("too many dimensions", e.name);
    if (!e.offsets_ok) fail("missing or invalid data_offsets", e.name);
  }
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return entries[a].begin != entries[b].begin ? entries[a].begin < entries[b].begin : entries[a].end < entries[b].end;
  });
  uint64_t expected_begin = 0;
  table.tensors.reserve(table.tensors.size() + entries.size());
  for (size_t i : order) {
    RawEntry& e = entries[i];
    int dtype = -1;
    for (const auto& [name, index] : rules.dtypes)
      if (name == e.dtype) dtype = static_cast<int>(index);
    if (dtype < 0) fail("unsupported dtype '" + e.dtype + "'", e.name);
    if (e.end < e.begin) fail("data_offsets end before they begin", e.name);
    if (e.begin != expected_begin)
      fail(e.begin < expected_begin ? "bytes overlap another tensor's" : "a gap of unused bytes precedes the tensor",
           e.name);
    uint64_t nbytes = 0;
    if (!span_bytes(e.shape, nullptr, rules.vocabulary.sizes[dtype], UINT64_MAX >> 1, &nbytes) ||
        nbytes != e.end - e.begin)
      fail("data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
               ") do not match shape and dtype",
           e.name);
    if (e.end > data_size)
      fail("bytes [" + std::to_string(e.begin) + ", " + std::to_string(e.end) + ") lie beyond the end of the file",
           e.name);
    expected_begin = e.end;
    TensorInfo& t = table.tensors.emplace_back();
    t.name = std::move(e.name);
    t.dtype = static_cast<uint32_t>(dtype);
    t.file = file;
    t.offset = data_start + e.begin;
    t.length = nbytes;
    t.shape = std::move(e.shape);
  }
  if (expected_begin != data_size)
    throw FormatError("the tensors cover " + std::to_string(expected_begin) + " bytes of a " +
                      std::to_string(data_size) + "-byte data area (trailing bytes or a truncated header)");
  table.files.push_back({file_name, file_size});
}

}  // namespace flash
