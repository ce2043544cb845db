// A strict pull parser for JSON (RFC 8259) over untrusted bytes: the index formats'
// headers are read field by field straight into their tables, with no document tree.
// Every error throws FormatError with the byte position; nesting is bounded, strings
// must be valid UTF-8 (escaped lone surrogates are kept as WTF-8, as Python's json does).
// Memory stays a small multiple of the input whatever it holds: the reader keeps only
// the current string and, per object, 8 bytes for each key (to refuse duplicates).
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "errors.h"

namespace flash {

// A JSON number: `is_int` when it is an integer (no fraction or exponent) that fits in
// int64; other numbers are kept only as text (every field that wants one rejects them).
struct JsonNumber {
  bool is_int = false;
  int64_t value = 0;
  std::string_view text;
};

// `text` for an error message: as is when short, else its start and its length (a
// hostile file's string may be the size of the file).
inline std::string abbreviated(std::string_view text) {
  if (text.size() <= 200) return std::string(text);
  return std::string(text.substr(0, 60)) + "... (" + std::to_string(text.size()) + " bytes)";
}

class JsonReader {
 public:
  enum class Kind { Null, Bool, Number, String, Array, Object };

  // Documents are at most 2 GiB (kMaxDocument): positions fit in 32 bits.
  JsonReader(const char* data, size_t size) : p_(data), begin_(data), end_(data + size) {
    if (size > kMaxDocument) throw FormatError("not valid JSON: larger than 2 GiB");
  }
  static constexpr size_t kMaxDocument = (size_t{1} << 31) - 1;

  // The kind of the next value (after whitespace); throws at the end of input.
  Kind peek();
  // Reads an object, calling on_member(key) with the reader positioned at each value;
  // the callback must consume the value. Duplicate keys are an error (in objects of
  // more than a few members, found when the object ends).
  void object(const std::function<void(const std::string& key)>& on_member);
  // Reads an array, calling on_item(i) with the reader positioned at each value.
  void array(const std::function<void(size_t i)>& on_item);
  std::string string();
  JsonNumber number();
  bool boolean();
  void null();
  void skip();  // any value
  // After the top-level value: only whitespace may follow.
  void finish();

  // Byte position of the next value (after whitespace), to quote a value's text.
  size_t position() {
    space();
    return static_cast<size_t>(p_ - begin_);
  }

  // Moves to byte `position` (one that position() returned) to read a value again.
  void seek(size_t position) { p_ = begin_ + position; }

  [[noreturn]] void fail(const std::string& what) const;

 private:
  void space();
  void expect(char c);
  void literal(std::string_view word);
  void append_utf8(std::string& out, uint32_t cp);
  uint32_t hex4();
  std::string key(std::string_view* raw);
  void enter();
  void leave() { --depth_; }

  const char* p_;
  const char* begin_;
  const char* end_;
  int depth_ = 0;
};

}  // namespace flash
