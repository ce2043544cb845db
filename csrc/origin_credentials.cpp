#include "origin_credentials.h"

#include <cctype>
#include <map>
#include <mutex>

#include "errors.h"

namespace flash {
namespace {

struct Registry {
  std::mutex mu;
  std::map<std::string, std::string> by_origin;
};

Registry& registry() {
  static Registry* r = new Registry;  // never destroyed: reads may run while the process exits
  return *r;
}

// The key of an origin: scheme, lower-case host and explicit port ("https://h:443").
std::string origin_key(const Url& url) {
  Url u = url;
  for (char& c : u.host) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return u.origin();
}

}  // namespace

void authorize_origin(const std::string& origin, const std::string& authorization) {
  const Url url = parse_url(origin);
  if (url.target != "/")
    throw IoError("authorize_origin: " + printable(shown_url(origin)) +
                  " is not an origin (scheme://host[:port], without a path or query)");
  if (authorization.find_first_of(std::string("\r\n\0", 3)) != std::string::npos)
    throw IoError("authorize_origin: the authorization for " + url.origin() +
                  " holds a line break or NUL and cannot be sent as a header");
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  if (authorization.empty())
    r.by_origin.erase(origin_key(url));
  else
    r.by_origin[origin_key(url)] = authorization;
}

std::string origin_authorization(const Url& url) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  if (r.by_origin.empty()) return "";
  const auto it = r.by_origin.find(origin_key(url));
  return it == r.by_origin.end() ? "" : it->second;
}

}  // namespace flash
