// A safetensors file's header (https://huggingface.co/docs/safetensors, "Format") read
// into a TensorTable, validated at least as strictly as safetensors does: JSON object,
// known dtypes, offsets in bounds, consistent with shape x dtype, no overlaps and no
// gaps. Untrusted input: every violation throws FormatError.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "tensor_table.h"

namespace flash {

struct SafetensorsRules {
  uint64_t max_header_bytes = 100000000;  // safetensors' own limit
  uint64_t max_ndim = 64;
  // safetensors dtype name -> index into the flash DtypeVocabulary; item sizes from it.
  std::vector<std::pair<std::string, uint32_t>> dtypes;
  DtypeVocabulary vocabulary;
};

// Appends the tensors of one file to `table` as data file number `table.files.size()`:
// `header` is the JSON header (the 8-byte length prefix removed), `file_size` the whole
// file's size. Tensors are appended in file order. Call table.index_names() after the
// last file.
void add_safetensors_file(TensorTable& table, const std::string& file_name, const char* header, uint64_t header_size,
                          uint64_t file_size, const SafetensorsRules& rules);

}  // namespace flash
