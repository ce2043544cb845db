#include "json_reader.h"

#include <algorithm>
#include <vector>

namespace flash {
namespace {

// Deeper nesting than any index needs; bounds the recursion of skip() on hostile input.
constexpr int kMaxDepth = 64;

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

// Length of the UTF-8 sequence starting at s (at most n bytes available), 0 if invalid:
// no overlong forms, no encoded surrogates, nothing above U+10FFFF.
size_t utf8_sequence(const unsigned char* s, size_t n) {
  const unsigned char c = s[0];
  if (c < 0x80) return 1;
  size_t len;
  uint32_t min, cp;
  if ((c & 0xE0) == 0xC0) len = 2, min = 0x80, cp = c & 0x1F;
  else if ((c & 0xF0) == 0xE0) len = 3, min = 0x800, cp = c & 0x0F;
  else if ((c & 0xF8) == 0xF0) len = 4, min = 0x10000, cp = c & 0x07;
  else return 0;
  if (n < len) return 0;
  for (size_t i = 1; i < len; ++i) {
    if ((s[i] & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (s[i] & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return len;
}

}  // namespace

void JsonReader::fail(const std::string& what) const {
  throw FormatError("not valid JSON: " + what + " at byte " + std::to_string(p_ - begin_));
}

void JsonReader::space() {
  while (p_ < end_ && is_space(*p_)) ++p_;
}

void JsonReader::expect(char c) {
  space();
  if (p_ >= end_ || *p_ != c) fail(std::string("expected '") + c + "'");
  ++p_;
}

void JsonReader::enter() {
  if (++depth_ > kMaxDepth) fail("nested too deeply");
}

JsonReader::Kind JsonReader::peek() {
  space();
  if (p_ >= end_) fail("unexpected end");
  switch (*p_) {
    case '{': return Kind::Object;
    case '[': return Kind::Array;
    case '"': return Kind::String;
    case 't': case 'f': return Kind::Bool;
    case 'n': return Kind::Null;
    default:
      if (*p_ == '-' || (*p_ >= '0' && *p_ <= '9')) return Kind::Number;
      fail("unexpected character");
  }
}

// A key as read, and its bytes as written when it has no escapes (any escape makes the
// written form longer than the decoded one).
std::string JsonReader::key(std::string_view* raw) {
  space();
  if (p_ >= end_ || *p_ != '"') fail("expected a string key");
  const char* start = p_ + 1;
  std::string k = string();
  const size_t written = static_cast<size_t>(p_ - 1 - start);
  *raw = written == k.size() ? std::string_view(start, written) : std::string_view();
  return k;
}

namespace {

// The keys of one object, to find a repeated one. The first few are compared as they
// come. Past them every key is kept as an 8-byte reference, to its bytes in the input or,
// when it has escapes, to its decoded form, and the references are sorted when the
// object ends: memory stays below the input's size, where a hash set of copies costs
// several times it (a safetensors header has a key per tensor).
class KeySet {
 public:
  explicit KeySet(const char* input) : input_(input) {}

  // The key if it repeats one of the first few, else null.
  const std::string* add(const std::string& key, std::string_view raw) {
    if (few_.size() < kFew) {
      for (const auto& seen : few_)
        if (seen == key) return &seen;
      few_.push_back(key);
    }
    if (raw.data() != nullptr) {
      refs_.push_back({static_cast<uint32_t>(raw.data() - input_), static_cast<uint32_t>(raw.size())});
    } else {
      refs_.push_back({static_cast<uint32_t>(decoded_.size()), static_cast<uint32_t>(key.size()) | kDecoded});
      decoded_ += key;
    }
    return nullptr;
  }

  // Whether a key appears twice (found after the first few), and which.
  bool repeated(std::string* key) {
    if (refs_.size() <= kFew) return false;  // the scan saw them all
    std::sort(refs_.begin(), refs_.end(), [&](Ref a, Ref b) { return view(a) < view(b); });
    const auto at = std::adjacent_find(refs_.begin(), refs_.end(), [&](Ref a, Ref b) { return view(a) == view(b); });
    if (at == refs_.end()) return false;
    *key = std::string(view(*at));
    return true;
  }

 private:
  static constexpr size_t kFew = 16;
  static constexpr uint32_t kDecoded = 1u << 31;
  struct Ref {
    uint32_t offset, length;  // length | kDecoded: in decoded_, else in the input
  };
  std::string_view view(Ref r) const {
    const char* base = (r.length & kDecoded) ? decoded_.data() : input_;
    return std::string_view(base + r.offset, r.length & ~kDecoded);
  }

  const char* input_;
  std::vector<std::string> few_;
  std::vector<Ref> refs_;
  std::string decoded_;
};

}  // namespace

void JsonReader::object(const std::function<void(const std::string&)>& on_member) {
  expect('{');
  enter();
  KeySet keys(begin_);
  space();
  if (p_ < end_ && *p_ == '}') {
    ++p_;
    leave();
    return;
  }
  for (;;) {
    std::string_view raw;
    std::string k = key(&raw);
    if (keys.add(k, raw) != nullptr) fail("duplicate key \"" + abbreviated(k) + "\"");
    expect(':');
    on_member(k);
    space();
    if (p_ < end_ && *p_ == ',') {
      ++p_;
      continue;
    }
    expect('}');
    break;
  }
  std::string repeated;
  if (keys.repeated(&repeated)) fail("duplicate key \"" + abbreviated(repeated) + "\"");
  leave();
}

void JsonReader::array(const std::function<void(size_t)>& on_item) {
  expect('[');
  enter();
  space();
  if (p_ < end_ && *p_ == ']') {
    ++p_;
    leave();
    return;
  }
  for (size_t i = 0;; ++i) {
    on_item(i);
    space();
    if (p_ < end_ && *p_ == ',') {
      ++p_;
      continue;
    }
    expect(']');
    leave();
    return;
  }
}

uint32_t JsonReader::hex4() {
  if (end_ - p_ < 4) fail("truncated \\u escape");
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) {
    const char c = *p_++;
    v <<= 4;
    if (c >= '0' && c <= '9') v |= c - '0';
    else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
    else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
    else fail("bad \\u escape");
  }
  return v;
}

void JsonReader::append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {  // lone surrogates land here too (WTF-8)
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

std::string JsonReader::string() {
  expect('"');
  std::string out;
  for (;;) {
    const char* run = p_;
    while (p_ < end_ && *p_ != '"' && *p_ != '\\' && static_cast<unsigned char>(*p_) >= 0x20) {
      if (static_cast<unsigned char>(*p_) < 0x80) {
        ++p_;
        continue;
      }
      const size_t n = utf8_sequence(reinterpret_cast<const unsigned char*>(p_), end_ - p_);
      if (n == 0) fail("invalid UTF-8");
      p_ += n;
    }
    out.append(run, p_ - run);
    if (p_ >= end_) fail("unterminated string");
    const char c = *p_++;
    if (c == '"') return out;
    if (c != '\\') fail("control character in string");
    if (p_ >= end_) fail("unterminated string");
    switch (const char e = *p_++) {
      case '"': out += '"'; break;
      case '\\': out += '\\'; break;
      case '/': out += '/'; break;
      case 'b': out += '\b'; break;
      case 'f': out += '\f'; break;
      case 'n': out += '\n'; break;
      case 'r': out += '\r'; break;
      case 't': out += '\t'; break;
      case 'u': {
        uint32_t cp = hex4();
        // A high surrogate followed by an escaped low one is one code point.
        if (cp >= 0xD800 && cp <= 0xDBFF && end_ - p_ >= 6 && p_[0] == '\\' && p_[1] == 'u') {
          const char* save = p_;
          p_ += 2;
          const uint32_t low = hex4();
          if (low >= 0xDC00 && low <= 0xDFFF) cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
          else p_ = save;
        }
        append_utf8(out, cp);
        break;
      }
      default:
        (void)e;
        fail("bad escape");
    }
  }
}

JsonNumber JsonReader::number() {
  space();
  const char* start = p_;
  if (p_ < end_ && *p_ == '-') ++p_;
  if (p_ >= end_ || *p_ < '0' || *p_ > '9') fail("bad number");
  if (*p_ == '0' && p_ + 1 < end_ && p_[1] >= '0' && p_[1] <= '9') fail("leading zero");
  bool is_int = true, overflow = false;
  uint64_t magnitude = 0;
  while (p_ < end_ && *p_ >= '0' && *p_ <= '9') {
    const uint64_t digit = static_cast<uint64_t>(*p_++ - '0');
    if (magnitude > (UINT64_MAX - digit) / 10) overflow = true;
    else magnitude = magnitude * 10 + digit;
  }
  if (p_ < end_ && *p_ == '.') {
    is_int = false;
    ++p_;
    if (p_ >= end_ || *p_ < '0' || *p_ > '9') fail("bad number");
    while (p_ < end_ && *p_ >= '0' && *p_ <= '9') ++p_;
  }
  if (p_ < end_ && (*p_ == 'e' || *p_ == 'E')) {
    is_int = false;
    ++p_;
    if (p_ < end_ && (*p_ == '+' || *p_ == '-')) ++p_;
    if (p_ >= end_ || *p_ < '0' || *p_ > '9') fail("bad number");
    while (p_ < end_ && *p_ >= '0' && *p_ <= '9') ++p_;
  }
  JsonNumber n;
  n.text = std::string_view(start, p_ - start);
  const bool negative = *start == '-';
  if (is_int && !overflow && magnitude <= (negative ? uint64_t(INT64_MAX) + 1 : uint64_t(INT64_MAX))) {
    n.is_int = true;
    n.value = negative ? static_cast<int64_t>(0 - magnitude) : static_cast<int64_t>(magnitude);
  }
  return n;
}

void JsonReader::literal(std::string_view word) {
  space();
  if (static_cast<size_t>(end_ - p_) < word.size() || std::string_view(p_, word.size()) != word)
    fail("unexpected word");
  p_ += word.size();
}

bool JsonReader::boolean() {
  space();
  if (p_ < end_ && *p_ == 't') {
    literal("true");
    return true;
  }
  literal("false");
  return false;
}

void JsonReader::null() { literal("null"); }

void JsonReader::skip() {
  switch (peek()) {
    case Kind::Object: object([&](const std::string&) { skip(); }); break;
    case Kind::Array: array([&](size_t) { skip(); }); break;
    case Kind::String: string(); break;
    case Kind::Number: number(); break;
    case Kind::Bool: boolean(); break;
    case Kind::Null: null(); break;
  }
}

void JsonReader::finish() {
  space();
  if (p_ != end_) fail("trailing data after the document");
}

}  // namespace flash
