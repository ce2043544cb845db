// The HTTP/1.1 pieces of the native reader as pure functions, with no sockets: URLs,
// redirects, proxy choice (the environment variables as curl reads them), the request
// text, and the parsing of a response's status line and headers into what the body
// holds. http_source.cpp does the I/O around them; the fuzz tests call them directly
// (bindings.cpp), so everything a server sends is parsed here and only here.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace flash {

// The retry policy, written once for the native reader (flashtensors/stores' Python
// client holds the same, checked equal by the tests): redirects followed per request,
// and the statuses worth asking again for.
constexpr int kMaxRedirects = 8;
bool retryable_status(int status);  // 5xx, 408 Request Timeout, 429 Too Many Requests
// The longest Retry-After honoured as such (longer ones are clipped to it).
constexpr double kMaxRetryAfterS = 3600;

// The parts of an http(s) URL a request needs.
struct Url {
  bool tls = false;
  std::string host;    // without brackets for IPv6 literals
  std::string port;    // "80", "443" or as given
  std::string target;  // path and query, as sent in the request line
  std::string origin() const { return (tls ? "https://" : "http://") + host + ":" + port; }
  std::string authority() const;  // host[:port] as the Host header and CONNECT write it
};

// Parses an absolute http(s) URL; IoError if it is not one.
Url parse_url(const std::string& url);

// The URL as error messages show it: without its query string (which, for presigned
// URLs, holds credentials) and fragment.
std::string shown_url(const std::string& url);

// The version of the object a URL is pinned to: the ETag in its fragment,
// "#flash-if-match=<percent-encoded ETag>" (Python's store adds it; fragments are never
// sent to servers), or "".
std::string pinned_etag(const std::string& url);

// Where a redirect's Location leads from `from`: an absolute http(s) URL or a relative
// reference resolved as RFC 3986 section 5.2 says (scheme-relative "//host/p",
// absolute-path "/p", relative path "p" or "../p", query only "?q", fragment only "#f");
// IoError for another scheme.
Url redirect_target(const Url& from, const std::string& location);

// A forward proxy (http://[user:password@]host[:port]) a request goes through.
struct Proxy {
  bool use = false;
  std::string host, port;
  std::string authorization;  // "Basic ..." for Proxy-Authorization, or ""
};

// The proxy settings of the environment, read once per source: lower case first, then
// upper case, as curl does (http_proxy, https_proxy, all_proxy, no_proxy).
struct ProxyEnv {
  std::string http, https, all, no_proxy;
  static ProxyEnv from_environment();
};

// Whether `host` is excluded from proxying by a NO_PROXY list: "*" matches every host;
// otherwise comma-separated names, each matching itself and its subdomains (a leading
// "." or "*." is ignored), or IP addresses, matched exactly.
bool no_proxy_matches(const std::string& host, const std::string& no_proxy);

// The proxy for `url` under `env` (none if NO_PROXY excludes the host). IoError for a
// proxy URL that is not http:// (https:// and SOCKS proxies are not supported).
Proxy choose_proxy(const Url& url, const ProxyEnv& env);

// The GET of bytes offset..offset+length-1 of `url` (absolute-form through a plain-HTTP
// proxy), with If-Match when `etag` is a strong ETag, and `authorization` (the origin's
// credential, origin_credentials.h) as its Authorization header unless "".
std::string range_request(const Url& url, const Proxy& proxy, uint64_t offset, uint64_t length,
                          const std::string& etag, const std::string& authorization = "");

// The CONNECT that opens a tunnel through `proxy` to an https:// origin.
std::string connect_request(const Url& url, const Proxy& proxy);

// A response's status line and headers, as sent (the text before the blank line).
struct ResponseHead {
  bool valid = false;     // an HTTP/1.x status line
  int status = 0;
  std::string reason;     // "206 Partial Content" as shown in errors
  bool bad_length = false;  // a Content-Length that is not one non-negative number
  int64_t content_length = -1;
  bool chunked = false, close_after = false;
  bool has_range = false, bad_range = false;
  uint64_t range_first = 0, range_last = 0;
  std::string location, etag;
  double retry_after_s = -1;  // Retry-After in seconds (clipped to kMaxRetryAfterS), -1 if none or a date
};

ResponseHead parse_response_head(std::string_view head);

// What to do with a response to the GET of bytes offset..offset+length-1, made with
// If-Match `etag` ("" for none).
struct BodyPlan {
  enum Kind { Body, Retry, Redirect, Fatal } kind = Fatal;
  uint64_t want = 0;         // Body: bytes of the body that go to the destination (> 0)
  bool close_after = false;  // Body: the connection cannot be reused afterwards
  std::string problem;       // Retry and Fatal
  double wait_s = 0;         // Retry: the server's Retry-After (429, 503), the least pause before asking again
};

BodyPlan plan_body(const ResponseHead& head, uint64_t offset, uint64_t length, const std::string& etag);

// `text` from a server or the environment as messages may show it: printable ASCII, other
// bytes as \xNN, at most 200 characters (messages reach Python as UTF-8 strings).
std::string printable(std::string_view text);

// "bytes a-b" of the range offset..offset+length-1, for messages.
std::string range_text(uint64_t offset, uint64_t length);

}  // namespace flash
