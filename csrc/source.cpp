#include "source.h"

#include "data_file.h"
#include "host_memory.h"
#include "http_source.h"

namespace flash {

void Source::read_fresh(void* dst, uint64_t offset, uint64_t length) const {
  populate_for_write(reinterpret_cast<uint64_t>(dst), length);
  read(dst, offset, length);
}

bool is_remote(const std::string& location) {
  return location.rfind("http://", 0) == 0 || location.rfind("https://", 0) == 0;
}

std::unique_ptr<Source> open_source(const std::string& location, const SourceOptions& options) {
  if (is_remote(location)) return std::make_unique<HttpSource>(location, options.timeout_s);
  return std::make_unique<DataFile>(location, options.io);
}

}  // namespace flash
