// A remote data file read with HTTP/1.1 range GETs over plain POSIX sockets (TLS through
// the system's OpenSSL, tls_api.h): each piece is one `Range: bytes=a-b` request whose
// body is received straight into the piece's destination (a host buffer or a pinned
// staging buffer), with no copy and no Python. Connections are kept alive and reused:
// about one per worker thread, since each thread has one request in flight at a time,
// and kept across read calls until release_idle_connections (one load, many calls).
// The protocol itself (URLs, proxies, parsing what the server sends) is http_protocol.h.
//
// Faults: 5xx, 408, 429, refused or reset connections, short or empty bodies and
// timeouts are retried with jittered backoff (at least the server's Retry-After),
// resuming after the bytes already received; 403, 404 and other 4xx fail at once with a
// RemoteError naming the URL. A piece that makes no useful progress for `timeout_s`,
// retries included, fails the load: progress is counted in steps of 64 KiB (or the
// piece's end), so a server that trickles a byte per request or per second cannot hold
// a load past its timeout. A URL pinned to an ETag (pinned_etag) is read with If-Match:
// an object replaced since then fails the load (HTTP 412) rather than mixing versions.
//
// Redirects are followed, and where each URL led is remembered for the rest of the load
// (resolved_urls.h): a Hub resolve URL is resolved once, not once per piece. Requests to
// an origin given a credential (origin_credentials.h) carry it; those to any other host a
// redirect leads to do not.
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
  struct Progress;
  void fetch(char* dst, uint64_t offset, uint64_t length, bool fresh) const;
  Attempt attempt(const Url& url, char* dst, uint64_t offset, uint64_t length, Progress& progress, bool fresh,
                  bool publish) const;
  std::string timeout_text() const;  // "30 s"

  std::string url_;
  std::string shown_;
  std::string etag_;  // the version the load is pinned to, or ""
  Url parsed_;
  ProxyEnv proxies_;
  double timeout_s_;
};

// Closes the idle keep-alive connections that reads keep for the process's later reads
// (of any source), and forgets where redirects led; returns how many connections it
// closed. Loads call it when they end, so no socket (nor signed URL) outlives a load;
// between the read calls of one load, connections and redirect targets are reused.
size_t release_idle_connections();

}  // namespace flash
