// A safetensors file's header (https://huggingface.co/docs/safetensors, "Format") read
// into a TensorTable, validated at least as strictly as safetensors does: JSON object,
// known dtypes, offsets in bounds, consistent with shape x dtype, no overlaps and no
// gaps. Untrusted input: every violation throws FormatError. Entries are checked as they
// are read and kept compactly, so memory follows the tensors, whatever the header holds.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "tensor_table.h"

namespace flash {

// A safetensors dtype as torch holds it: `dtype` indexes the flash DtypeVocabulary
// (item sizes from it); `per_item` safetensors elements make one torch element (2 for
// F4, whose 4-bit elements torch packs in pairs along the last dimension).
struct SafetensorsDtype {
  std::string name;
  uint32_t dtype = 0;
  uint32_t per_item = 1;
};

struct SafetensorsRules {
  uint64_t max_header_bytes = 100000000;  // safetensors' own limit
  uint64_t max_ndim = 64;
  uint64_t max_tensors = 1000000;  // per checkpoint, all files together
  std::vector<SafetensorsDtype> dtypes;
  DtypeVocabulary vocabulary;
};

// Appends the tensors of one file to `table` as data file number `table.files.size()`:
// `header` is the JSON header (the 8-byte length prefix removed), `file_size` the whole
// file's size. Tensors are appended in file order. Call table.index_names() after the
// last file.
void add_safetensors_file(TensorTable& table, const std::string& file_name, const char* header, uint64_t header_size,
                          uint64_t file_size, const SafetensorsRules& rules);

}  // namespace flash
