// A remote data file read with HTTP/1.1 range GETs over plain POSIX sockets (TLS through
// the system's OpenSSL, tls_api.h): each piece is one `Range: bytes=a-b` request whose
// body is received straight into the piece's destination (a host buffer or a pinned
// staging buffer), with no copy and no Python. Connections are kept alive and reused:
// about one per worker thread, since each thread has one request in flight at a time,
// and kept across read calls until release_idle_connections (one load, many calls).
// The protocol itself (URLs, proxies, parsing what the server sends) is http_protocol.h.
//
// Faults: 5xx, 408, 429, refused or reset connections, short or empty bodies and
// timeouts are retried with jittered backoff, resuming after the bytes already received;
// 3xx redirects are followed; 403, 404 and other 4xx fail at once with a RemoteError
// naming the URL. A piece that receives no byte for `timeout_s`, retries included, fails
// the load. A URL pinned to an ETag (pinned_etag) is read with If-Match: an object
// replaced since then fails the load (HTTP 412) rather than mixing versions.
//
// Proxies: http_proxy / https_proxy (CONNECT tunnels) / all_proxy / no_proxy, lower or
// upper case, as curl honours them.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "http_protocol.h"
#include "source.h"

namespace flash {

class Connection;

class HttpSource : public Source {
 public:
  HttpSource(std::string url, double timeout_s);
  ~HttpSource() override;
  void read(void* dst, uint64_t offset, uint64_t length) const override;
  void read_fresh(void* dst, uint64_t offset, uint64_t length) const override;

 private:
  struct Attempt;
  void fetch(char* dst, uint64_t offset, uint64_t length, bool fresh) const;
  Attempt attempt(const Url& url, char* dst, uint64_t offset, uint64_t length, double seconds_left,
                  bool fresh) const;

  std::string url_;
  std::string shown_;
  std::string etag_;  // the version the load is pinned to, or ""
  Url parsed_;
  ProxyEnv proxies_;
  double timeout_s_;
};

// Closes the idle keep-alive connections that reads keep for the process's later reads
// (of any source); returns how many. Loads call it when they end, so no socket outlives a
// load; between the read calls of one load, connections are reused.
size_t release_idle_connections();

}  // namespace flash
