// The flash format's index (flash_index.json, docs/format.md) read into a TensorTable,
// validated as the spec demands. Untrusted input: every violation throws FormatError.
#pragma once
#include <cstdint>
#include <string>

#include "tensor_table.h"

namespace flash {

// The spec's constants and limits, passed in by the Python format module that owns them.
struct FlashIndexRules {
  std::string format_name;
  int64_t version = 1;
  int64_t alignment = 4096;
  std::string checksum;
  std::string data_suffix;
  uint64_t max_tensors = 0, max_files = 0, max_ndim = 0, max_tensor_bytes = 0, max_name_bytes = 0;
  DtypeVocabulary dtypes;
};

TensorTable parse_flash_index(const char* data, size_t size, const FlashIndexRules& rules);

// Bytes from a tensor's first element to the end of its last one; false on overflow
// of the limit `max`.
bool span_bytes(const std::vector<int64_t>& shape, const std::vector<int64_t>* strides, uint64_t itemsize,
                uint64_t max, uint64_t* out);

}  // namespace flash
