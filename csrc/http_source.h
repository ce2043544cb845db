// A remote data file read with HTTP/1.1 range GETs over plain POSIX sockets (TLS through
// the system's OpenSSL, tls_api.h): each piece is one `Range: bytes=a-b` request whose
// body is received straight into the piece's destination (a host buffer or a pinned
// staging buffer), with no copy and no Python. Connections are kept alive and reused:
// about one per worker thread, since each thread has one request in flight at a time.
//
// Faults: 5xx, 408, 429, refused or reset connections, short bodies and timeouts are
// retried with backoff, resuming after the bytes already received; 3xx redirects are
// followed; 403, 404 and other 4xx fail at once with a RemoteError naming the URL. A
// piece that receives no byte for `timeout_s`, retries included, fails the load.
#pragma once
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "source.h"

namespace flash {

// The parts of an http(s) URL a request needs.
struct Url {
  bool tls = false;
  std::string host;    // without brackets for IPv6 literals
  std::string port;    // "80", "443" or as given
  std::string target;  // path and query, as sent in the request line
  std::string origin() const { return (tls ? "https://" : "http://") + host + ":" + port; }
};

// Parses an absolute http(s) URL; IoError if it is not one.
Url parse_url(const std::string& url);

// The URL as error messages show it: without its query string (which, for presigned
// URLs, holds credentials).
std::string shown_url(const std::string& url);

class Connection;

class HttpSource : public Source {
 public:
  HttpSource(std::string url, double timeout_s);
  ~HttpSource() override;
  void read(void* dst, uint64_t offset, uint64_t length) const override;

 private:
  struct Attempt;
  Attempt attempt(const Url& url, char* dst, uint64_t offset, uint64_t length, double seconds_left) const;
  std::unique_ptr<Connection> take(const Url& url, bool& reused) const;
  void give(std::unique_ptr<Connection> connection) const;

  std::string url_;
  std::string shown_;
  Url parsed_;
  double timeout_s_;
  mutable std::mutex mu_;
  mutable std::vector<std::unique_ptr<Connection>> idle_;
};

}  // namespace flash
