#include "hf_weight_index.h"

#include <unordered_set>

#include "errors.h"
#include "json_reader.h"

namespace flash {

std::vector<std::string> hf_weight_files(const char* data, size_t size, uint64_t max_files) {
  using Kind = JsonReader::Kind;
  JsonReader r(data, size);
  if (r.peek() != Kind::Object) throw FormatError("the weight index is not a JSON object");
  std::vector<std::string> files;
  std::unordered_set<std::string> seen;
  bool have_map = false;
  r.object([&](const std::string& key) {
    if (key != "weight_map") return r.skip();
    have_map = true;
    if (r.peek() != Kind::Object) throw FormatError("weight_map is not an object");
    r.object([&](const std::string& tensor) {
      if (r.peek() != Kind::String)
        throw FormatError("weight_map maps tensor '" + abbreviated(tensor) + "' to a non-string");
      std::string file = r.string();
      if (seen.count(file)) return;
      if (files.size() >= max_files)
        throw FormatError("weight_map names more than " + std::to_string(max_files) + " files");
      seen.insert(file);
      files.push_back(std::move(file));
    });
  });
  r.finish();
  if (!have_map) throw FormatError("no weight_map");
  return files;
}

}  // namespace flash
