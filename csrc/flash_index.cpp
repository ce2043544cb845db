#include "flash_index.h"

#include <unordered_set>

#include "json_reader.h"

namespace flash {
namespace {

using Kind = JsonReader::Kind;

// A scalar field as found: absent, an integer, a string, or something else (kept as
// its JSON text for the error message).
struct Field {
  bool present = false;
  bool is_int = false;
  bool is_string = false;
  int64_t value = 0;
  std::string text;  // the string's value, or the JSON text of other values
};

Field read_field(JsonReader& r, const char* data) {
  Field f;
  f.present = true;
  const size_t start = r.position();
  const Kind kind = r.peek();
  if (kind == Kind::String) {
    f.is_string = true;
    f.text = r.string();
    return f;
  }
  if (kind == Kind::Number) {
    const JsonNumber n = r.number();
    f.is_int = n.is_int;
    f.value = n.value;
    f.text = std::string(n.text);
    return f;
  }
  r.skip();
  f.text = std::string(data + start, std::min<size_t>(r.position() - start, 60));
  return f;
}

// A list of integers as found: `ok` unless it was not a list, held a non-integer or
// was longer than `max` (only the first max + 1 values are kept: memory follows what is
// kept, not what the file holds).
struct IntList {
  bool present = false;
  bool is_null = false;
  bool ok = true;
  std::vector<int64_t> values;
};

IntList read_int_list(JsonReader& r, size_t max) {
  IntList l;
  l.present = true;
  const Kind kind = r.peek();
  if (kind == Kind::Null) {
    r.null();
    l.is_null = true;
    return l;
  }
  if (kind != Kind::Array) {
    r.skip();
    l.ok = false;
    return l;
  }
  r.array([&](size_t) {
    if (r.peek() != Kind::Number) {
      r.skip();
      l.ok = false;
      return;
    }
    const JsonNumber n = r.number();
    if (!n.is_int) l.ok = false;
    if (l.values.size() <= max) l.values.push_back(n.value);
    else l.ok = false;
  });
  return l;
}

struct RawTensor {
  bool is_object = false;
  Field name, dtype, file, offset, length, crc;
  IntList shape, strides;
};

struct RawFile {
  bool is_object = false;
  Field name, size;
};

class Checker {
 public:
  [[noreturn]] void fail(const std::string& message) const { throw FormatError(message); }
  [[noreturn]] void fail(const std::string& message, const std::string& tensor) const {
    throw FormatError(message, tensor, true);
  }
};

// Messages are built only when a check fails: this runs for every field of every tensor.
#define CHECK(v, ok, ...)   \
  do {                      \
    if (!(ok)) (v).fail(__VA_ARGS__); \
  } while (0)

std::string quoted(const Field& f) {
  if (!f.present) return "None";
  if (f.is_string) return "'" + abbreviated(f.text) + "'";
  return abbreviated(f.text);
}

bool safe_file_name(const Field& f, const FlashIndexRules& rules) {
  if (!f.is_string) return false;
  const std::string& n = f.text;
  const std::string& suffix = rules.data_suffix;
  return n.size() >= suffix.size() && n.compare(n.size() - suffix.size(), suffix.size(), suffix) == 0 &&
         !n.empty() && n.size() <= 255 && n.find('/') == std::string::npos &&
         n.find('\\') == std::string::npos && n.find('\0') == std::string::npos && n != "." && n != ".." &&
         n[0] != '.';
}

bool in_range(const Field& f, uint64_t max) { return f.is_int && f.value >= 0 && static_cast<uint64_t>(f.value) <= max; }

void parse_files(const std::vector<RawFile>& raw, bool is_list, const FlashIndexRules& rules, const Checker& v,
                 TensorTable& table) {
  CHECK(v, is_list, "files must be a list");
  CHECK(v, raw.size() <= rules.max_files, "more than " + std::to_string(rules.max_files) + " data files");
  std::unordered_set<std::string> seen;
  for (size_t i = 0; i < raw.size(); ++i) {
    const RawFile& f = raw[i];
    const std::string at = "files[" + std::to_string(i) + "]";
    CHECK(v, f.is_object, at + " must be an object");
    CHECK(v, safe_file_name(f.name, rules), at + " has an unsafe or invalid name " + quoted(f.name));
    CHECK(v, seen.insert(f.name.text).second, "data file '" + f.name.text + "' listed twice");
    CHECK(v, in_range(f.size, rules.max_tensor_bytes) && f.size.value % rules.alignment == 0,
            "data file '" + f.name.text + "' has an invalid size " + quoted(f.size));
    table.files.push_back({f.name.text, static_cast<uint64_t>(f.size.value)});
  }
}

bool hex8(const Field& f, uint32_t* out) {
  if (!f.is_string || f.text.size() != 8) return false;
  uint32_t v = 0;
  for (char c : f.text) {
    v <<= 4;
    if (c >= '0' && c <= '9') v |= c - '0';
    else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
    else return false;
  }
  *out = v;
  return true;
}

TensorInfo check_tensor(RawTensor& t, const FlashIndexRules& rules, const TensorTable& table, const Checker& v) {
  const std::string& name = t.name.text;
  TensorInfo out;
  const int dtype = t.dtype.is_string ? rules.dtypes.find(t.dtype.text) : -1;
  CHECK(v, dtype >= 0, "unknown dtype " + quoted(t.dtype), name);
  const uint64_t itemsize = rules.dtypes.sizes[dtype];
  bool shape_ok = t.shape.present && !t.shape.is_null && t.shape.ok && t.shape.values.size() <= rules.max_ndim;
  for (int64_t d : t.shape.values) shape_ok = shape_ok && d >= 0 && static_cast<uint64_t>(d) <= rules.max_tensor_bytes;
  CHECK(v, shape_ok, "invalid shape", name);
  uint64_t nbytes = 0;
  CHECK(v, span_bytes(t.shape.values, nullptr, itemsize, rules.max_tensor_bytes, &nbytes), "tensor too large", name);
  const bool has_strides = t.strides.present && !t.strides.is_null;
  if (has_strides) {
    bool ok = t.strides.ok && t.strides.values.size() == t.shape.values.size();
    for (int64_t s : t.strides.values) ok = ok && s >= 0 && static_cast<uint64_t>(s) <= rules.max_tensor_bytes;
    CHECK(v, ok, "invalid strides", name);
  }
  CHECK(v, t.file.is_int && t.file.value >= 0 && static_cast<uint64_t>(t.file.value) < table.files.size(),
          "invalid data file number " + quoted(t.file), name);
  CHECK(v, in_range(t.offset, rules.max_tensor_bytes) && t.offset.value % itemsize == 0,
          "invalid offset " + quoted(t.offset), name);
  uint64_t expected = 0;
  const bool fits = span_bytes(t.shape.values, has_strides ? &t.strides.values : nullptr, itemsize, UINT64_MAX >> 1,
                               &expected);
  CHECK(v, fits && t.length.is_int && t.length.value >= 0 && static_cast<uint64_t>(t.length.value) == expected,
          "length " + quoted(t.length) + " does not match shape and dtype (" +
              (fits ? std::to_string(expected) : std::string("too large")) + ")",
          name);
  const DataFileInfo& file = table.files[t.file.value];
  const uint64_t end = static_cast<uint64_t>(t.offset.value) + expected;
  CHECK(v, end <= file.size,
          "bytes [" + std::to_string(t.offset.value) + ", " + std::to_string(end) + ") lie beyond the end of " + file.name,
          name);
  uint32_t crc = 0;
  CHECK(v, hex8(t.crc, &crc), "invalid crc32c", name);
  out.name = std::move(t.name.text);
  out.dtype = static_cast<uint32_t>(dtype);
  out.file = static_cast<uint32_t>(t.file.value);
  out.offset = static_cast<uint64_t>(t.offset.value);
  out.length = expected;
  out.crc32c = crc;
  out.has_crc32c = true;
  out.shape = std::move(t.shape.values);
  out.has_strides = has_strides;
  if (has_strides) out.strides = std::move(t.strides.values);
  return out;
}

}  // namespace

bool span_bytes(const std::vector<int64_t>& shape, const std::vector<int64_t>* strides, uint64_t itemsize,
                uint64_t max, uint64_t* out) {
  for (int64_t d : shape)
    if (d == 0) {
      *out = 0;
      return true;
    }
  unsigned __int128 elements = 1;
  if (strides == nullptr) {
    for (int64_t d : shape) {
      elements *= static_cast<uint64_t>(d);
      if (elements > max) return false;  // dims are <= max, so this cannot wrap first
    }
  } else {
    for (size_t i = 0; i < shape.size(); ++i)
      elements += static_cast<unsigned __int128>(shape[i] - 1) * static_cast<uint64_t>((*strides)[i]);
  }
  const unsigned __int128 bytes = elements * itemsize;
  if (bytes > max) return false;
  *out = static_cast<uint64_t>(bytes);
  return true;
}

namespace {

// Reads the index's top-level object. Tensors are validated as they are read and only
// the valid ones kept, so memory follows the table, never the number of array elements
// a file claims; the header fields and the files they are checked against come first
// in every index flashtensors writes. In any other order the tensors are read on a
// second pass, once those fields are known.
class IndexParser {
 public:
  IndexParser(const char* data, size_t size, const FlashIndexRules& rules) : r_(data, size), data_(data), rules_(rules) {}

  TensorTable parse() {
    if (r_.peek() != Kind::Object) {
      r_.skip();
      r_.finish();
      v_.fail("index must be a JSON object");
    }
    r_.object([&](const std::string& key) { member(key); });
    r_.finish();
    check_header();
    CHECK(v_, have_tensors_ && tensors_is_list_, "tensors must be a list");
    if (tensors_at_ != kNone) {
      r_.seek(tensors_at_);
      read_tensors();
    }
    std::string duplicate;
    CHECK(v_, table_.index_names(&duplicate), "tensor listed twice", duplicate);
    return std::move(table_);
  }

 private:
  static constexpr size_t kNone = SIZE_MAX;

  void member(const std::string& key) {
    if (key == "format") {
      format_ = read_field(r_, data_);
    } else if (key == "version") {
      version_ = read_field(r_, data_);
    } else if (key == "alignment") {
      alignment_ = read_field(r_, data_);
    } else if (key == "checksum") {
      checksum_ = read_field(r_, data_);
    } else if (key == "metadata") {
      read_metadata();
    } else if (key == "files") {
      read_files();
    } else if (key == "tensors") {
      have_tensors_ = true;
      if (r_.peek() != Kind::Array) return r_.skip();
      tensors_is_list_ = true;
      if (format_.present && version_.present && alignment_.present && checksum_.present && have_files_) {
        check_header();
        read_tensors();
      } else {
        tensors_at_ = r_.position();
        r_.skip();
      }
    } else {
      r_.skip();
    }
  }

  void read_metadata() {
    if (r_.peek() != Kind::Object) {
      r_.skip();
      metadata_ok_ = false;
      return;
    }
    r_.object([&](const std::string& k) {
      if (r_.peek() != Kind::String) {
        r_.skip();
        metadata_ok_ = false;
        return;
      }
      table_.metadata.add(k, r_.string());
    });
  }

  void read_files() {
    have_files_ = true;
    if (r_.peek() != Kind::Array) return r_.skip();
    files_is_list_ = true;
    r_.array([&](size_t i) {
      CHECK(v_, i < rules_.max_files, "more than " + std::to_string(rules_.max_files) + " data files");
      RawFile& f = files_.emplace_back();
      if (r_.peek() != Kind::Object) return r_.skip();
      f.is_object = true;
      r_.object([&](const std::string& k) {
        if (k == "name") f.name = read_field(r_, data_);
        else if (k == "size") f.size = read_field(r_, data_);
        else r_.skip();
      });
    });
  }

  // The fields every tensor is checked against, once.
  void check_header() {
    if (header_checked_) return;
    header_checked_ = true;
    CHECK(v_, format_.is_string && format_.text == rules_.format_name,
          "not a flash index (format is " + quoted(format_) + ")");
    CHECK(v_, version_.is_int, "version must be an integer");
    CHECK(v_, version_.value <= rules_.version, "format version " + version_.text +
                                                    " is newer than this flashtensors reads (" +
                                                    std::to_string(rules_.version) + "); upgrade");
    CHECK(v_, version_.value >= 1, "format version " + version_.text + " is invalid");
    CHECK(v_, alignment_.is_int && alignment_.value == rules_.alignment,
          "alignment must be " + std::to_string(rules_.alignment));
    CHECK(v_, checksum_.is_string && checksum_.text == rules_.checksum,
          "checksum must be '" + rules_.checksum + "'");
    CHECK(v_, metadata_ok_, "metadata must map strings to strings");
    table_.version = version_.value;
    table_.storage_granularity = static_cast<uint64_t>(rules_.alignment);
    parse_files(files_, have_files_ && files_is_list_, rules_, v_, table_);
    files_.clear();
    files_.shrink_to_fit();
  }

  void read_tensors() {
    RawTensor t;  // one, reused: only checked tensors are kept
    r_.array([&](size_t i) {
      // Counted before anything is kept: the limit bounds memory, whatever follows.
      CHECK(v_, table_.tensors.size() < rules_.max_tensors,
            "more than " + std::to_string(rules_.max_tensors) + " tensors");
      t = RawTensor();
      const std::string at = "tensors[" + std::to_string(i) + "]";
      CHECK(v_, r_.peek() == Kind::Object, at + " must be an object");
      t.is_object = true;
      r_.object([&](const std::string& k) {
        if (k == "name") t.name = read_field(r_, data_);
        else if (k == "dtype") t.dtype = read_field(r_, data_);
        else if (k == "shape") t.shape = read_int_list(r_, rules_.max_ndim);
        else if (k == "strides") t.strides = read_int_list(r_, rules_.max_ndim);
        else if (k == "file") t.file = read_field(r_, data_);
        else if (k == "offset") t.offset = read_field(r_, data_);
        else if (k == "length") t.length = read_field(r_, data_);
        else if (k == "crc32c") t.crc = read_field(r_, data_);
        else r_.skip();
      });
      CHECK(v_, t.name.is_string && t.name.text.size() <= rules_.max_name_bytes, at + " has an invalid name");
      table_.tensors.push_back(check_tensor(t, rules_, table_, v_));
    });
  }

  JsonReader r_;
  const char* data_;
  const FlashIndexRules& rules_;
  const Checker v_{};
  TensorTable table_;
  Field format_, version_, alignment_, checksum_;
  bool have_files_ = false, files_is_list_ = false, have_tensors_ = false, tensors_is_list_ = false;
  bool metadata_ok_ = true, header_checked_ = false;
  size_t tensors_at_ = kNone;  // where the tensors are, when they came before the header
  std::vector<RawFile> files_;
};

}  // namespace

TensorTable parse_flash_index(const char* data, size_t size, const FlashIndexRules& rules) {
  return IndexParser(data, size, rules).parse();
}

}  // namespace flash
