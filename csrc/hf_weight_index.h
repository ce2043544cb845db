// A Hugging Face weight index (model.safetensors.index.json: {"weight_map": {tensor:
// file}, ...}) read for the one thing a loader needs from it: which files hold the
// weights. Untrusted input, read with the strict JSON reader: memory follows the
// distinct file names kept, never the size of the maps or lists the file holds.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace flash {

// The distinct file names `weight_map` maps tensors to, in first-use order. Throws
// FormatError if the index is not JSON, has no weight_map object, maps a tensor to
// anything but a string, or names more than `max_files` files.
std::vector<std::string> hf_weight_files(const char* data, size_t size, uint64_t max_files);

}  // namespace flash
