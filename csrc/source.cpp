#include "source.h"

#include "data_file.h"
#include "http_source.h"

namespace flash {

bool is_remote(const std::string& location) {
  return location.rfind("http://", 0) == 0 || location.rfind("https://", 0) == 0;
}

std::unique_ptr<Source> open_source(const std::string& location, const SourceOptions& options) {
  if (is_remote(location)) return std::make_unique<HttpSource>(location, options.timeout_s);
  return std::make_unique<DataFile>(location, options.io);
}

}  // namespace flash
