#include "http_source.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <random>
#include <thread>

#include "errors.h"
#include "tls_api.h"

namespace flash {
namespace {

using Clock = std::chrono::steady_clock;

constexpr int kMaxRedirects = 8;
constexpr int kMaxFailures = 8;          // failed attempts in a row (with no byte received) before giving up
constexpr size_t kMaxHeaderBytes = 64 << 10;
constexpr double kFirstBackoffS = 0.05, kMaxBackoffS = 2.0;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string trim(const std::string& s) {
  const size_t a = s.find_first_not_of(" \t");
  if (a == std::string::npos) return "";
  return s.substr(a, s.find_last_not_of(" \t\r") - a + 1);
}

std::string range_text(uint64_t offset, uint64_t length) {
  return "bytes " + std::to_string(offset) + "-" + std::to_string(offset + length - 1);
}

}  // namespace

Url parse_url(const std::string& url) {
  Url u;
  size_t rest;
  if (url.rfind("http://", 0) == 0) {
    rest = 7;
  } else if (url.rfind("https://", 0) == 0) {
    u.tls = true;
    rest = 8;
  } else {
    throw IoError(shown_url(url) + ": not an http:// or https:// URL");
  }
  const size_t slash = url.find_first_of("/?#", rest);
  std::string authority = url.substr(rest, slash == std::string::npos ? std::string::npos : slash - rest);
  if (const size_t at = authority.rfind('@'); at != std::string::npos) authority = authority.substr(at + 1);
  std::string host = authority, port = u.tls ? "443" : "80";
  if (!authority.empty() && authority[0] == '[') {  // [v6]:port
    const size_t close = authority.find(']');
    if (close == std::string::npos) throw IoError(shown_url(url) + ": bad IPv6 host");
    host = authority.substr(1, close - 1);
    if (close + 1 < authority.size() && authority[close + 1] == ':') port = authority.substr(close + 2);
  } else if (const size_t colon = authority.rfind(':'); colon != std::string::npos) {
    host = authority.substr(0, colon);
    port = authority.substr(colon + 1);
  }
  if (host.empty() || port.empty() || port.find_first_not_of("0123456789") != std::string::npos)
    throw IoError(shown_url(url) + ": bad host or port in URL");
  u.host = host;
  u.port = port;
  u.target = slash == std::string::npos ? "/" : url.substr(slash);
  if (u.target[0] == '?') u.target = "/" + u.target;
  if (const size_t hash = u.target.find('#'); hash != std::string::npos) u.target.resize(hash);
  return u;
}

std::string shown_url(const std::string& url) {
  const size_t q = url.find('?');
  return q == std::string::npos ? url : url.substr(0, q);
}

// One keep-alive connection (plain or TLS) to an origin.
class Connection {
 public:
  Connection(const Url& url, double seconds, const std::string& shown, std::string& problem, bool& fatal)
      : origin_(url.origin()) {
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    const int rc = getaddrinfo(url.host.c_str(), url.port.c_str(), &hints, &found);
    if (rc != 0) {
      problem = "cannot resolve " + url.host + ": " + gai_strerror(rc);
      return;
    }
    for (addrinfo* a = found; a && fd_ < 0; a = a->ai_next) {
      const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
      if (fd < 0) continue;
      set_timeout_on(fd, seconds);  // Linux bounds connect() by the send timeout
      if (::connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
        fd_ = fd;
      } else {
        problem = "cannot connect to " + url.host + ":" + url.port + ": " + errno_message(errno);
        ::close(fd);
      }
    }
    freeaddrinfo(found);
    if (fd_ < 0) return;
    const int one = 1;
    setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (url.tls) {
      try {
        tls_ = std::make_unique<TlsSession>(fd_, url.host, shown);
      } catch (const IoError& e) {
        problem = e.what();
        fatal = true;  // no TLS library, or a certificate we must not trust: retrying cannot help
        ::close(fd_);
        fd_ = -1;
      }
    }
  }
  ~Connection() {
    tls_.reset();
    if (fd_ >= 0) ::close(fd_);
  }
  bool ok() const { return fd_ >= 0; }
  const std::string& origin() const { return origin_; }
  void set_timeout(double seconds) { set_timeout_on(fd_, seconds); }

  bool send_all(const std::string& data) {
    size_t done = 0;
    while (done < data.size()) {
      const long n = tls_ ? tls_->write(data.data() + done, data.size() - done)
                          : ::send(fd_, data.data() + done, data.size() - done, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR && !tls_) continue;
      if (n <= 0) return false;
      done += static_cast<size_t>(n);
    }
    return true;
  }
  // Bytes received (into dst), 0 at the end of the stream, -1 on an error or timeout.
  long receive(void* dst, size_t length) {
    for (;;) {
      const long n = tls_ ? tls_->read(dst, length) : ::recv(fd_, dst, length, 0);
      if (n < 0 && !tls_ && errno == EINTR) continue;
      return n;
    }
  }

 private:
  static void set_timeout_on(int fd, double seconds) {
    seconds = std::max(seconds, 0.01);
    timeval tv{};
    tv.tv_sec = static_cast<time_t>(seconds);
    tv.tv_usec = static_cast<suseconds_t>((seconds - static_cast<double>(tv.tv_sec)) * 1e6);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  }

  std::string origin_;
  int fd_ = -1;
  std::unique_ptr<TlsSession> tls_;
};

// What one request came to.
struct HttpSource::Attempt {
  enum Kind { Done, Retry, Redirect, Fatal } kind = Done;
  uint64_t received = 0;    // body bytes now in place at dst
  int status = 0;
  std::string problem;      // for Retry and Fatal
  std::string location;     // for Redirect
  bool stale = false;       // a reused connection the server had closed: retry at once
};

HttpSource::HttpSource(std::string url, double timeout_s)
    : url_(std::move(url)), shown_(shown_url(url_)), parsed_(parse_url(url_)), timeout_s_(timeout_s) {}

HttpSource::~HttpSource() = default;

std::unique_ptr<Connection> HttpSource::take(const Url& url, bool& reused) const {
  {
    std::lock_guard<std::mutex> lock(mu_);
    const std::string origin = url.origin();
    for (auto it = idle_.rbegin(); it != idle_.rend(); ++it) {
      if ((*it)->origin() == origin) {
        auto c = std::move(*it);
        idle_.erase(std::next(it).base());
        reused = true;
        return c;
      }
    }
  }
  reused = false;
  return nullptr;  // the caller connects (outside the lock)
}

void HttpSource::give(std::unique_ptr<Connection> connection) const {
  std::lock_guard<std::mutex> lock(mu_);
  idle_.push_back(std::move(connection));
}

HttpSource::Attempt HttpSource::attempt(const Url& url, char* dst, uint64_t offset, uint64_t length,
                                        double seconds_left) const {
  Attempt out;
  bool reused = false;
  std::unique_ptr<Connection> conn = take(url, reused);
  if (!conn) {
    bool fatal = false;
    conn = std::make_unique<Connection>(url, seconds_left, shown_, out.problem, fatal);
    if (!conn->ok()) {
      out.kind = fatal ? Attempt::Fatal : Attempt::Retry;
      return out;
    }
  }
  conn->set_timeout(seconds_left);
  const std::string request = "GET " + url.target + " HTTP/1.1\r\nHost: " +
                              (url.host.find(':') != std::string::npos ? "[" + url.host + "]" : url.host) +
                              ((url.port == (url.tls ? "443" : "80")) ? "" : ":" + url.port) +
                              "\r\nRange: bytes=" + std::to_string(offset) + "-" + std::to_string(offset + length - 1) +
                              "\r\nAccept-Encoding: identity\r\nUser-Agent: flashtensors\r\n\r\n";
  if (!conn->send_all(request)) {
    out.kind = Attempt::Retry;
    out.stale = reused;
    out.problem = "sending the request failed: " + errno_message(errno);
    return out;
  }

  // The status line and headers; what follows them in the buffer is the start of the body.
  std::string head;
  char buffer[16 << 10];
  size_t end = std::string::npos;
  while (end == std::string::npos) {
    const long n = conn->receive(buffer, sizeof buffer);
    if (n <= 0) {
      out.kind = Attempt::Retry;
      out.stale = reused && head.empty();
      out.problem = n == 0 ? "the server closed the connection before answering"
                           : (errno == EAGAIN || errno == EWOULDBLOCK ? "no answer (timed out)"
                                                                      : "receiving failed: " + errno_message(errno));
      return out;
    }
    head.append(buffer, static_cast<size_t>(n));
    end = head.find("\r\n\r\n");
    if (end == std::string::npos && head.size() > kMaxHeaderBytes) {
      out.kind = Attempt::Fatal;
      out.problem = "response headers larger than " + std::to_string(kMaxHeaderBytes) + " bytes";
      return out;
    }
  }
  const std::string body_start = head.substr(end + 4);
  head.resize(end);

  // "HTTP/1.1 206 Partial Content"
  const size_t sp = head.find(' ');
  if (head.rfind("HTTP/1.", 0) != 0 || sp == std::string::npos) {
    out.kind = Attempt::Retry;
    out.problem = "not an HTTP response";
    return out;
  }
  out.status = std::atoi(head.c_str() + sp + 1);
  const std::string reason = trim(head.substr(sp + 1, head.find("\r\n") - sp - 1));
  int64_t content_length = -1;
  bool close_after = head.rfind("HTTP/1.0", 0) == 0, chunked = false, has_range = false;
  uint64_t range_first = 0, range_last = 0;
  for (size_t line = head.find("\r\n"); line != std::string::npos;) {
    const size_t next = head.find("\r\n", line + 2);
    const std::string h = head.substr(line + 2, next == std::string::npos ? std::string::npos : next - line - 2);
    line = next;
    const size_t colon = h.find(':');
    if (colon == std::string::npos) continue;
    const std::string name = lower(trim(h.substr(0, colon))), value = trim(h.substr(colon + 1));
    if (name == "content-length") content_length = std::strtoll(value.c_str(), nullptr, 10);
    else if (name == "location") out.location = value;
    else if (name == "connection") close_after = lower(value).find("close") != std::string::npos;
    else if (name == "transfer-encoding") chunked = lower(value).find("chunked") != std::string::npos;
    else if (name == "content-range") {
      unsigned long long a = 0, b = 0;
      has_range = std::sscanf(value.c_str(), "bytes %llu-%llu", &a, &b) == 2;
      range_first = a;
      range_last = b;
    }
  }

  if (out.status >= 300 && out.status < 400 && !out.location.empty() && out.status != 304) {
    out.kind = Attempt::Redirect;
    return out;
  }
  if (out.status >= 500 || out.status == 408 || out.status == 429) {
    out.kind = Attempt::Retry;
    out.problem = "HTTP " + reason;
    return out;
  }
  if (out.status != 200 && out.status != 206) {
    out.kind = Attempt::Fatal;
    out.problem = "HTTP " + reason;
    return out;
  }
  // The bytes the body holds: the range asked for (or its start, which a server may
  // send), or, from a server that ignores Range, the object from its start.
  uint64_t want = length;
  if (has_range) {
    if (range_first != offset || range_last < range_first || range_last > offset + length - 1) {
      out.kind = Attempt::Fatal;
      out.problem = "the server answered " + range_text(offset, length) + " with Content-Range bytes " +
                    std::to_string(range_first) + "-" + std::to_string(range_last);
      return out;
    }
    want = range_last - range_first + 1;
  } else if (out.status == 206 || offset != 0) {
    out.kind = Attempt::Fatal;
    out.problem = out.status == 206 ? "a 206 answer without Content-Range"
                                    : "the server ignores Range requests (answered 200 with the whole object)";
    return out;
  } else {
    close_after = true;  // the whole object follows: take the start, drop the rest
  }
  if (chunked || content_length < 0 || static_cast<uint64_t>(content_length) < want) {
    if (chunked || content_length < 0) {
      out.kind = Attempt::Fatal;
      out.problem = "a range answer without Content-Length";
      return out;
    }
    want = static_cast<uint64_t>(content_length);
  }
  if (static_cast<uint64_t>(content_length) > want) close_after = true;

  out.received = std::min<uint64_t>(want, body_start.size());
  std::memcpy(dst, body_start.data(), out.received);
  while (out.received < want) {
    const long n = conn->receive(dst + out.received, want - out.received);
    if (n <= 0) {
      out.kind = Attempt::Retry;
      out.problem = n == 0 ? "the server closed the connection mid-body"
                           : (errno == EAGAIN || errno == EWOULDBLOCK ? "the body stalled (timed out)"
                                                                      : "receiving failed: " + errno_message(errno));
      return out;
    }
    out.received += static_cast<uint64_t>(n);
  }
  if (!close_after && body_start.size() <= want) give(std::move(conn));
  out.kind = Attempt::Done;
  return out;
}

void HttpSource::read(void* dst, uint64_t offset, uint64_t length) const {
  if (length == 0) return;
  char* out = static_cast<char*>(dst);
  uint64_t done = 0;
  Url url = parsed_;
  int redirects = 0, failures = 0;
  double backoff = kFirstBackoffS;
  auto progress = Clock::now();
  std::string problem;
  thread_local std::minstd_rand jitter{std::random_device{}()};
  auto fail = [&](const std::string& why, int status) {
    throw RemoteError(shown_ + ": " + why + " (reading " + range_text(offset, length) + ")", status, shown_, offset);
  };
  while (done < length) {
    const double left = timeout_s_ - seconds_since(progress);
    if (left <= 0)
      fail("no data for " + std::to_string(static_cast<int>(timeout_s_ + 0.5)) + " s, retries included; last: " +
               (problem.empty() ? "timed out" : problem),
           0);
    Attempt a = attempt(url, out + done, offset + done, length - done, left);
    if (a.received) {
      done += a.received;
      progress = Clock::now();
      failures = 0;
      backoff = kFirstBackoffS;
    }
    switch (a.kind) {
      case Attempt::Done:
        break;
      case Attempt::Fatal:
        fail(a.problem, a.status);
        break;
      case Attempt::Redirect:
        if (++redirects > kMaxRedirects) fail("more than " + std::to_string(kMaxRedirects) + " redirects", a.status);
        if (a.location.rfind("http://", 0) == 0 || a.location.rfind("https://", 0) == 0) {
          url = parse_url(a.location);
        } else if (!a.location.empty() && a.location[0] == '/') {
          url.target = a.location;  // same origin
        } else {
          fail("redirected to an unsupported location: " + shown_url(a.location), a.status);
        }
        break;
      case Attempt::Retry:
        problem = a.problem;
        if (a.stale) break;  // an idle connection the server had closed: reconnect at once
        if (++failures >= kMaxFailures)
          fail(std::to_string(failures) + " attempts in a row failed; last: " + a.problem, a.status);
        {
          const double pause = std::min(backoff * (0.5 + std::uniform_real_distribution<double>(0, 1)(jitter)),
                                        std::max(0.0, timeout_s_ - seconds_since(progress)));
          std::this_thread::sleep_for(std::chrono::duration<double>(pause));
          backoff = std::min(backoff * 2, kMaxBackoffS);
        }
        break;
    }
  }
}

}  // namespace flash
