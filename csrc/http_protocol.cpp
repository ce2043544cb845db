#include "http_protocol.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>

#include "errors.h"

namespace flash {
namespace {

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string trim(std::string_view s) {
  const size_t a = s.find_first_not_of(" \t");
  if (a == std::string_view::npos) return "";
  return std::string(s.substr(a, s.find_last_not_of(" \t\r") - a + 1));
}

// A run of decimal digits that fits in 63 bits, and nothing else.
bool parse_count(std::string_view s, uint64_t& out) {
  if (s.empty() || s.size() > 18) return false;
  out = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    out = out * 10 + static_cast<uint64_t>(c - '0');
  }
  return true;
}

bool plain_ascii(std::string_view s) {
  for (char c : s)
    if (static_cast<unsigned char>(c) <= 0x20 || static_cast<unsigned char>(c) >= 0x7f) return false;
  return true;
}

// A request target with the bytes a request line cannot carry (controls, space,
// non-ASCII) percent-encoded, as curl does for a redirect's Location.
std::string encoded_target(std::string_view target) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (char c : target) {
    const auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7f) {
      out += '%';
      out += hex[u >> 4];
      out += hex[u & 15];
    } else {
      out += c;
    }
  }
  return out;
}

// The length of a URI reference's scheme with its ':' ("https:" is 6), 0 for a relative
// reference: a letter, then letters, digits, '+', '-' or '.', then ':' (RFC 3986 3.1).
size_t uri_scheme_length(std::string_view s) {
  if (s.empty() || !std::isalpha(static_cast<unsigned char>(s[0]))) return 0;
  for (size_t i = 1; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c == ':') return i + 1;
    if (!std::isalnum(c) && c != '+' && c != '-' && c != '.') return 0;
  }
  return 0;
}

// An absolute path with its "." and ".." segments resolved (RFC 3986 5.2.4).
std::string without_dot_segments(std::string_view path) {
  std::string out;
  while (!path.empty()) {
    if (path.rfind("../", 0) == 0) {
      path.remove_prefix(3);
    } else if (path.rfind("./", 0) == 0) {
      path.remove_prefix(2);
    } else if (path.rfind("/./", 0) == 0) {
      path.remove_prefix(2);
    } else if (path == "/.") {
      path = "/";
    } else if (path.rfind("/../", 0) == 0 || path == "/..") {
      path = path.size() == 3 ? std::string_view("/") : path.substr(3);
      const size_t cut = out.rfind('/');
      out.resize(cut == std::string::npos ? 0 : cut);
    } else if (path == "." || path == "..") {
      path = {};
    } else {
      const size_t next = path.find('/', 1);
      const size_t n = next == std::string_view::npos ? path.size() : next;
      out.append(path.substr(0, n));
      path.remove_prefix(n);
    }
  }
  return out.empty() || out[0] != '/' ? "/" + out : out;
}

bool is_ip_literal(const std::string& host) {
  unsigned char buffer[16];
  return inet_pton(AF_INET, host.c_str(), buffer) == 1 || inet_pton(AF_INET6, host.c_str(), buffer) == 1;
}

std::string percent_decoded(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && std::isxdigit(static_cast<unsigned char>(s[i + 1])) &&
        std::isxdigit(static_cast<unsigned char>(s[i + 2]))) {
      out += static_cast<char>(std::strtol(std::string(s.substr(i + 1, 2)).c_str(), nullptr, 16));
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}

std::string base64(const std::string& in) {
  static const char* digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  for (size_t i = 0; i < in.size(); i += 3) {
    uint32_t n = static_cast<unsigned char>(in[i]) << 16;
    if (i + 1 < in.size()) n |= static_cast<unsigned char>(in[i + 1]) << 8;
    if (i + 2 < in.size()) n |= static_cast<unsigned char>(in[i + 2]);
    out += digits[(n >> 18) & 63];
    out += digits[(n >> 12) & 63];
    out += i + 1 < in.size() ? digits[(n >> 6) & 63] : '=';
    out += i + 2 < in.size() ? digits[n & 63] : '=';
  }
  return out;
}

std::string env(const char* lower_name, const char* upper_name) {
  if (const char* v = std::getenv(lower_name); v && *v) return v;
  if (const char* v = std::getenv(upper_name); v && *v) return v;
  return "";
}

// A proxy URL: [http://][user[:password]@]host[:port][/]
Proxy parse_proxy(const std::string& text) {
  Proxy p;
  std::string rest = text;
  if (const size_t scheme = rest.find("://"); scheme != std::string::npos) {
    const std::string name = lower(rest.substr(0, scheme));
    if (name != "http")
      throw IoError("proxy " + printable(text) + ": only http:// proxies are supported (not " + printable(name) +
                    "://)");
    rest = rest.substr(scheme + 3);
  }
  rest = rest.substr(0, rest.find('/'));
  if (const size_t at = rest.rfind('@'); at != std::string::npos) {
    p.authorization = "Basic " + base64(percent_decoded(rest.substr(0, at)));
    rest = rest.substr(at + 1);
  }
  p.port = "1080";  // curl's default proxy port
  if (!rest.empty() && rest[0] == '[') {
    const size_t close = rest.find(']');
    if (close == std::string::npos) throw IoError("proxy " + printable(text) + ": bad IPv6 host");
    p.host = rest.substr(1, close - 1);
    if (close + 1 < rest.size() && rest[close + 1] == ':') p.port = rest.substr(close + 2);
  } else if (const size_t colon = rest.rfind(':'); colon != std::string::npos) {
    p.host = rest.substr(0, colon);
    p.port = rest.substr(colon + 1);
  } else {
    p.host = rest;
  }
  uint64_t port = 0;
  if (p.host.empty() || !plain_ascii(p.host) || !parse_count(p.port, port) || port == 0 || port > 65535)
    throw IoError("proxy " + printable(text) + ": bad host or port");
  p.use = true;
  return p;
}

}  // namespace

std::string printable(std::string_view text) {
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (char c : text.substr(0, 200)) {
    const auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7f) {
      out += c;
    } else {
      out += "\\x";
      out += hex[u >> 4];
      out += hex[u & 15];
    }
  }
  return text.size() > 200 ? out + "..." : out;
}

std::string Url::authority() const {
  const std::string h = host.find(':') != std::string::npos ? "[" + host + "]" : host;
  return port == (tls ? "443" : "80") ? h : h + ":" + port;
}

Url parse_url(const std::string& url) {
  Url u;
  size_t rest;
  const std::string scheme = lower(url.substr(0, 8));  // schemes are case-insensitive (RFC 3986 3.1)
  if (scheme.rfind("http://", 0) == 0) {
    rest = 7;
  } else if (scheme == "https://") {
    u.tls = true;
    rest = 8;
  } else {
    throw IoError(printable(shown_url(url)) + ": not an http:// or https:// URL");
  }
  const size_t slash = url.find_first_of("/?#", rest);
  std::string authority = url.substr(rest, slash == std::string::npos ? std::string::npos : slash - rest);
  if (const size_t at = authority.rfind('@'); at != std::string::npos) authority = authority.substr(at + 1);
  std::string host = authority, port = u.tls ? "443" : "80";
  if (!authority.empty() && authority[0] == '[') {  // [v6]:port
    const size_t close = authority.find(']');
    if (close == std::string::npos) throw IoError(printable(shown_url(url)) + ": bad IPv6 host");
    host = authority.substr(1, close - 1);
    if (close + 1 < authority.size() && authority[close + 1] == ':') port = authority.substr(close + 2);
  } else if (const size_t colon = authority.rfind(':'); colon != std::string::npos) {
    host = authority.substr(0, colon);
    port = authority.substr(colon + 1);
  }
  uint64_t port_number = 0;
  if (host.empty() || !parse_count(port, port_number) || port_number > 65535 || !plain_ascii(host) ||
      host.find('/') != std::string::npos)
    throw IoError(printable(shown_url(url)) + ": bad host or port in URL");
  u.host = host;
  u.port = port;
  u.target = slash == std::string::npos ? "/" : url.substr(slash);
  if (u.target[0] != '/') u.target = "/" + u.target;
  if (const size_t hash = u.target.find('#'); hash != std::string::npos) u.target.resize(hash);
  u.target = encoded_target(u.target);
  return u;
}

std::string shown_url(const std::string& url) {
  return url.substr(0, url.find_first_of("?#"));
}

std::string pinned_etag(const std::string& url) {
  static const std::string key = "#flash-if-match=";
  const size_t at = url.find(key);
  return at == std::string::npos ? "" : percent_decoded(std::string_view(url).substr(at + key.size()));
}

bool retryable_status(int status) { return status >= 500 || status == 408 || status == 429; }

Url redirect_target(const Url& from, const std::string& location) {
  const std::string scheme = lower(location.substr(0, uri_scheme_length(location)));
  if (!scheme.empty()) {
    if (scheme != "http:" && scheme != "https:")
      throw IoError("redirected to an unsupported location: " + printable(shown_url(location)));
    return parse_url(scheme + location.substr(scheme.size()));
  }
  if (location.rfind("//", 0) == 0) return parse_url((from.tls ? "https:" : "http:") + location);
  // A relative reference: its path, query and fragment; the fragment is never sent.
  const std::string reference = location.substr(0, location.find('#'));
  const size_t query_at = reference.find('?');
  const std::string path = reference.substr(0, query_at);
  const std::string query = query_at == std::string::npos ? "" : reference.substr(query_at);
  const size_t base_query_at = from.target.find('?');
  const std::string base_path = from.target.substr(0, base_query_at);
  Url to = from;
  if (path.empty()) {  // "?q" keeps the path; "" and "#f" keep the query too
    to.target = base_path + (query_at != std::string::npos || base_query_at == std::string::npos
                                 ? query
                                 : from.target.substr(base_query_at));
  } else if (path[0] == '/') {
    to.target = without_dot_segments(path) + query;
  } else {  // relative to the base's directory
    to.target = without_dot_segments(base_path.substr(0, base_path.rfind('/') + 1) + path) + query;
  }
  to.target = encoded_target(to.target);
  return to;
}

ProxyEnv ProxyEnv::from_environment() {
  return {env("http_proxy", "HTTP_PROXY"), env("https_proxy", "HTTPS_PROXY"), env("all_proxy", "ALL_PROXY"),
          env("no_proxy", "NO_PROXY")};
}

bool no_proxy_matches(const std::string& host, const std::string& no_proxy) {
  const std::string h = lower(host);
  size_t start = 0;
  while (start <= no_proxy.size()) {
    size_t comma = no_proxy.find(',', start);
    if (comma == std::string::npos) comma = no_proxy.size();
    std::string entry = lower(trim(std::string_view(no_proxy).substr(start, comma - start)));
    start = comma + 1;
    if (entry == "*") return true;
    if (entry.rfind("*.", 0) == 0) entry = entry.substr(1);
    if (!entry.empty() && entry[0] == '.') entry = entry.substr(1);
    if (entry.size() > 2 && entry.front() == '[' && entry.back() == ']') entry = entry.substr(1, entry.size() - 2);
    if (entry.empty()) continue;
    if (h == entry) return true;
    if (!is_ip_literal(h) && h.size() > entry.size() && h.compare(h.size() - entry.size(), entry.size(), entry) == 0 &&
        h[h.size() - entry.size() - 1] == '.')
      return true;
  }
  return false;
}

Proxy choose_proxy(const Url& url, const ProxyEnv& env) {
  const std::string& chosen = !(url.tls ? env.https : env.http).empty() ? (url.tls ? env.https : env.http) : env.all;
  if (chosen.empty() || no_proxy_matches(url.host, env.no_proxy)) return {};
  return parse_proxy(chosen);
}

std::string range_request(const Url& url, const Proxy& proxy, uint64_t offset, uint64_t length,
                          const std::string& etag, const std::string& authorization) {
  const bool absolute = proxy.use && !url.tls;  // through a tunnel, the origin sees an ordinary request
  std::string r = "GET " + (absolute ? "http://" + url.authority() : "") + url.target + " HTTP/1.1\r\nHost: " +
                  url.authority() + "\r\nRange: bytes=" + std::to_string(offset) + "-" +
                  std::to_string(offset + length - 1) + "\r\nAccept-Encoding: identity\r\nUser-Agent: flashtensors\r\n";
  if (!etag.empty() && etag[0] == '"' && etag.find_first_of("\r\n") == std::string::npos)
    r += "If-Match: " + etag + "\r\n";  // weak ETags (W/"...") never match If-Match: compared after the answer
  if (absolute && !proxy.authorization.empty()) r += "Proxy-Authorization: " + proxy.authorization + "\r\n";
  if (!authorization.empty()) r += "Authorization: " + authorization + "\r\n";
  return r + "\r\n";
}

std::string connect_request(const Url& url, const Proxy& proxy) {
  const std::string to = (url.host.find(':') != std::string::npos ? "[" + url.host + "]" : url.host) + ":" + url.port;
  std::string r = "CONNECT " + to + " HTTP/1.1\r\nHost: " + to + "\r\nUser-Agent: flashtensors\r\n";
  if (!proxy.authorization.empty()) r += "Proxy-Authorization: " + proxy.authorization + "\r\n";
  return r + "\r\n";
}

ResponseHead parse_response_head(std::string_view head) {
  ResponseHead out;
  // "HTTP/1.1 206 Partial Content"
  const size_t eol = std::min(head.find("\r\n"), head.size());
  const std::string_view status_line = head.substr(0, eol);
  if (status_line.size() < 12 || status_line.substr(0, 7) != "HTTP/1." ||
      !std::isdigit(static_cast<unsigned char>(status_line[7])) || status_line[8] != ' ')
    return out;
  uint64_t status = 0;
  if (!parse_count(status_line.substr(9, 3), status) || status < 100 || status > 999 ||
      (status_line.size() > 12 && status_line[12] != ' '))
    return out;
  out.valid = true;
  out.status = static_cast<int>(status);
  out.reason = printable(trim(status_line.substr(9)));
  out.close_after = status_line[7] == '0';  // HTTP/1.0 closes unless it says keep-alive
  bool seen_length = false;
  size_t at = eol;
  while (at < head.size()) {
    at += 2;  // past "\r\n"
    if (at > head.size()) break;
    size_t next = head.find("\r\n", at);
    if (next == std::string_view::npos) next = head.size();
    const std::string_view line = head.substr(at, next - at);
    at = next;
    const size_t colon = line.find(':');
    if (colon == std::string_view::npos) continue;
    const std::string name = lower(trim(line.substr(0, colon)));
    const std::string value = trim(line.substr(colon + 1));
    if (name == "content-length") {
      uint64_t n = 0;
      if (!parse_count(value, n) || (seen_length && static_cast<int64_t>(n) != out.content_length))
        out.bad_length = true;
      out.content_length = static_cast<int64_t>(n);
      seen_length = true;
    } else if (name == "location") {
      out.location = value;
    } else if (name == "etag") {
      out.etag = value;
    } else if (name == "retry-after") {
      uint64_t seconds = 0;  // delta-seconds; an HTTP-date is left to the usual backoff
      if (parse_count(value, seconds)) out.retry_after_s = std::min<double>(static_cast<double>(seconds), kMaxRetryAfterS);
    } else if (name == "connection") {
      const std::string v = lower(value);
      if (v.find("close") != std::string::npos) out.close_after = true;
      else if (v.find("keep-alive") != std::string::npos) out.close_after = false;
    } else if (name == "transfer-encoding") {
      out.chunked = out.chunked || lower(value) != "identity";
    } else if (name == "content-range") {
      // "bytes a-b/total" or "bytes a-b/*"
      const std::string v = lower(value);
      const size_t dash = v.find('-'), slash = v.find('/');
      uint64_t a = 0, b = 0, total = 0;
      out.has_range = v.rfind("bytes ", 0) == 0 && dash != std::string::npos && slash != std::string::npos &&
                      dash < slash && parse_count(trim(std::string_view(v).substr(6, dash - 6)), a) &&
                      parse_count(std::string_view(v).substr(dash + 1, slash - dash - 1), b) &&
                      (v.substr(slash + 1) == "*" || parse_count(std::string_view(v).substr(slash + 1), total));
      out.bad_range = !out.has_range;
      out.range_first = a;
      out.range_last = b;
    }
  }
  return out;
}

std::string range_text(uint64_t offset, uint64_t length) {
  return "bytes " + std::to_string(offset) + "-" + std::to_string(offset + length - 1);
}

BodyPlan plan_body(const ResponseHead& head, uint64_t offset, uint64_t length, const std::string& etag) {
  BodyPlan out;
  auto fatal = [&](std::string why) {
    out.kind = BodyPlan::Fatal;
    out.problem = std::move(why);
    return out;
  };
  auto retry = [&](std::string why) {
    out.kind = BodyPlan::Retry;
    out.problem = std::move(why);
    return out;
  };
  if (!head.valid) return retry("not an HTTP response");
  const int status = head.status;
  if (status >= 300 && status < 400 && status != 304 && !head.location.empty()) {
    out.kind = BodyPlan::Redirect;
    return out;
  }
  if (status == 412)
    return fatal("the object changed since the load opened it (HTTP " + head.reason + " to If-Match " +
                 printable(etag) + ")");
  if (retryable_status(status)) {
    out.wait_s = std::max(0.0, head.retry_after_s);
    return retry("HTTP " + head.reason);
  }
  if (status != 200 && status != 206) return fatal("HTTP " + head.reason);
  if (!etag.empty() && !head.etag.empty() && head.etag != etag)
    return fatal("the object changed since the load opened it (ETag " + printable(head.etag) + ", was " +
                 printable(etag) + ")");
  if (head.bad_length) return fatal("a bad Content-Length header");
  if (head.bad_range) return fatal("a bad Content-Range header");
  // The bytes the body holds: the range asked for (or its start, which a server may
  // send), or, from a server that ignores Range, the object from its start.
  out.close_after = head.close_after;
  uint64_t want = length;
  if (head.has_range) {
    if (head.range_first != offset || head.range_last < head.range_first || head.range_last - offset >= length)
      return fatal("the server answered " + range_text(offset, length) + " with Content-Range bytes " +
                   std::to_string(head.range_first) + "-" + std::to_string(head.range_last));
    want = head.range_last - head.range_first + 1;
  } else if (status == 206 || offset != 0) {
    return fatal(status == 206 ? "a 206 answer without Content-Range"
                               : "the server ignores Range requests (answered 200 with the whole object)");
  } else {
    out.close_after = true;  // the whole object follows: take the start, drop the rest
  }
  if (head.chunked || head.content_length < 0) return fatal("a range answer without Content-Length");
  const uint64_t sent = static_cast<uint64_t>(head.content_length);
  if (sent > want) out.close_after = true;  // more than the range: the rest is dropped with the connection
  want = std::min(want, sent);
  if (want == 0) return retry("an empty body (HTTP " + head.reason + ", Content-Length: 0)");
  out.kind = BodyPlan::Body;
  out.want = want;
  return out;
}

}  // namespace flash
