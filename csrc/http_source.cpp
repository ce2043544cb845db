#include "http_source.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <chrono>
#include <cstring>
#include <mutex>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include "errors.h"
#include "host_memory.h"
#include "origin_credentials.h"
#include "resolved_urls.h"
#include "tls_api.h"

namespace flash {
namespace {

using Clock = std::chrono::steady_clock;

constexpr int kMaxFailures = 8;  // failed attempts in a row (with no useful progress) before giving up
// Useful progress: this many bytes (or the piece's end) since the last step. A server
// that sends less per `timeout` (a byte per request, or per second) is not progressing.
constexpr uint64_t kUsefulBytes = 64 << 10;
constexpr size_t kMaxHeaderBytes = 64 << 10;
constexpr double kFirstBackoffS = 0.05, kMaxBackoffS = 2.0;
// read_fresh: pages faulted in per window of the body, just ahead of the bytes. 1 MiB
// windows load 1 GiB over loopback 2-4% faster than faulting each 8 MiB piece before its
// request (medians of 10, 2 vCPUs); much smaller windows cut the receives too short.
constexpr uint64_t kFreshWindowBytes = 1ull << 20;
// Idle connections kept for later reads of the process (ConnectionPool), all origins.
constexpr size_t kMaxIdleConnections = 256;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

}  // namespace

// Reads a response's status line and headers: `head` gets the text before the blank
// line, `rest` whatever followed it. False on a closed connection, an error or a timeout
// (`problem` says which; `nothing` when not a byte came).
template <typename Receive>
bool read_head(Receive&& receive, std::string& head, std::string& rest, std::string& problem, bool& nothing) {
  char buffer[16 << 10];
  head.clear();
  nothing = true;
  for (;;) {
    const long n = receive(buffer, sizeof buffer);
    if (n <= 0) {
      problem = n == 0 ? "the server closed the connection before answering"
                       : (errno == EAGAIN || errno == EWOULDBLOCK ? "no answer (timed out)"
                                                                  : "receiving failed: " + errno_message(errno));
      return false;
    }
    nothing = false;
    const size_t searched = head.size() < 3 ? 0 : head.size() - 3;
    head.append(buffer, static_cast<size_t>(n));
    if (const size_t end = head.find("\r\n\r\n", searched); end != std::string::npos) {
      rest = head.substr(end + 4);
      head.resize(end);
      return true;
    }
    if (head.size() > kMaxHeaderBytes) {
      problem = "response headers larger than " + std::to_string(kMaxHeaderBytes) + " bytes";
      return false;
    }
  }
}

// One keep-alive connection (plain or TLS, direct or through a proxy) to an origin.
class Connection {
 public:
  Connection(const Url& url, const Proxy& proxy, double seconds, const std::string& shown, std::string& problem,
             bool& fatal)
      : origin_(url.origin()), proxied_(proxy.use) {
    const std::string& host = proxy.use ? proxy.host : url.host;
    const std::string& port = proxy.use ? proxy.port : url.port;
    const std::string via = proxy.use ? " (the proxy for " + url.host + ")" : "";
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    const int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &found);
    if (rc != 0) {
      problem = "cannot resolve " + host + via + ": " + gai_strerror(rc);
      return;
    }
    for (addrinfo* a = found; a && fd_ < 0; a = a->ai_next) {
      const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
      if (fd < 0) continue;
      set_timeout_on(fd, seconds);  // Linux bounds connect() by the send timeout
      if (::connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
        fd_ = fd;
      } else {
        problem = "cannot connect to " + host + ":" + port + via + ": " + errno_message(errno);
        ::close(fd);
      }
    }
    freeaddrinfo(found);
    if (fd_ < 0) return;
    const int one = 1;
    setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (url.tls && proxy.use && !tunnel(url, proxy, problem, fatal)) {
      close_socket();
      return;
    }
    if (url.tls) {
      try {
        tls_ = std::make_unique<TlsSession>(fd_, url.host, shown);
      } catch (const IoError& e) {
        problem = e.what();
        fatal = true;  // no TLS library, or a certificate we must not trust: retrying cannot help
        close_socket();
      }
    }
  }
  ~Connection() {
    tls_.reset();
    close_socket();
  }
  bool ok() const { return fd_ >= 0; }
  const std::string& origin() const { return origin_; }
  bool proxied() const { return proxied_; }
  void set_timeout(double seconds) {
    set_timeout_on(fd_, seconds);
    timeout_s_ = seconds;
  }
  double timeout() const { return timeout_s_; }

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
  // CONNECT through the proxy: the socket then reaches the origin, for TLS end to end.
  bool tunnel(const Url& url, const Proxy& proxy, std::string& problem, bool& fatal) {
    if (!send_all(connect_request(url, proxy))) {
      problem = "sending CONNECT to the proxy " + proxy.host + ":" + proxy.port + " failed: " + errno_message(errno);
      return false;
    }
    std::string head, rest;
    bool nothing = false;
    if (!read_head([this](void* d, size_t n) { return receive(d, n); }, head, rest, problem, nothing)) {
      problem = "the proxy " + proxy.host + ":" + proxy.port + ": " + problem;
      return false;
    }
    const ResponseHead reply = parse_response_head(head);
    if (!reply.valid || reply.status < 200 || reply.status > 299 || !rest.empty()) {
      problem = "the proxy " + proxy.host + ":" + proxy.port + " refused the tunnel to " + url.host + ":" + url.port +
                (reply.valid ? " (HTTP " + reply.reason + ")" : " (not an HTTP answer)");
      fatal = reply.valid && reply.status < 500;
      return false;
    }
    return true;
  }
  void close_socket() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  static void set_timeout_on(int fd, double seconds) {
    seconds = std::max(seconds, 0.01);
    timeval tv{};
    tv.tv_sec = static_cast<time_t>(seconds);
    tv.tv_usec = static_cast<suseconds_t>((seconds - static_cast<double>(tv.tv_sec)) * 1e6);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  }

  std::string origin_;
  bool proxied_ = false;
  int fd_ = -1;
  double timeout_s_ = 0;
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
  double wait_s = 0;        // Retry: the server's Retry-After
};

// The no-progress clock of one piece: it restarts each time kUsefulBytes more arrived.
struct HttpSource::Progress {
  Clock::time_point since = Clock::now();
  uint64_t pending = 0;  // bytes since then, fewer than kUsefulBytes
  bool stepped = false;  // a step was made since the caller last looked

  void add(uint64_t bytes) {
    pending += bytes;
    if (pending >= kUsefulBytes) {
      since = Clock::now();
      pending = 0;
      stepped = true;
    }
  }
  double left(double timeout_s) const { return timeout_s - seconds_since(since); }
};

namespace {

// Idle keep-alive connections, kept across sources (one per path and read call), so that
// a load that reads in many calls (a group's pieces, the local tier's fill) does not open
// its connections afresh each time. The Python side empties it when a load ends
// (release_idle_connections). A forked child never uses its parent's connections: it
// only closes its copies of the sockets (a TLS session is freed without a word).
class ConnectionPool {
 public:
  static ConnectionPool& instance() {
    static ConnectionPool* pool = new ConnectionPool;  // never destroyed: no TLS calls after exit
    return *pool;
  }

  std::unique_ptr<Connection> take(const std::string& key) {
    std::vector<std::unique_ptr<Connection>> dropped;  // closed outside the lock
    std::lock_guard<std::mutex> lock(mu_);
    forget_if_forked(dropped);
    for (auto it = idle_.rbegin(); it != idle_.rend(); ++it) {  // the most recently used first
      if (it->first == key) {
        auto c = std::move(it->second);
        idle_.erase(std::next(it).base());
        return c;
      }
    }
    return nullptr;
  }

  void give(const std::string& key, std::unique_ptr<Connection> connection) {
    std::vector<std::unique_ptr<Connection>> dropped;
    std::lock_guard<std::mutex> lock(mu_);
    forget_if_forked(dropped);
    idle_.emplace_back(key, std::move(connection));
    if (idle_.size() > kMaxIdleConnections) {
      dropped.push_back(std::move(idle_.front().second));
      idle_.erase(idle_.begin());
    }
  }

  size_t release() {
    std::vector<std::pair<std::string, std::unique_ptr<Connection>>> dropped;
    std::lock_guard<std::mutex> lock(mu_);
    dropped.swap(idle_);
    return dropped.size();
  }

 private:
  void forget_if_forked(std::vector<std::unique_ptr<Connection>>& dropped) {
    if (pid_ == ::getpid()) return;
    for (auto& kv : idle_) dropped.push_back(std::move(kv.second));
    idle_.clear();
    pid_ = ::getpid();
  }

  std::mutex mu_;
  pid_t pid_ = ::getpid();
  std::vector<std::pair<std::string, std::unique_ptr<Connection>>> idle_;  // (key, connection), oldest first
};

// Which idle connections a request may use: the same origin, reached the same way.
std::string pool_key(const Url& url, const Proxy& proxy) {
  return url.origin() + (proxy.use ? " via " + proxy.host + ":" + proxy.port : "");
}

}  // namespace

size_t release_idle_connections() {
  ResolvedUrls::instance().clear();
  return ConnectionPool::instance().release();
}

HttpSource::HttpSource(std::string url, double timeout_s)
    : url_(std::move(url)),
      shown_(shown_url(url_)),
      etag_(pinned_etag(url_)),
      parsed_(parse_url(url_)),
      proxies_(ProxyEnv::from_environment()),
      timeout_s_(timeout_s) {}

HttpSource::~HttpSource() = default;

HttpSource::Attempt HttpSource::attempt(const Url& url, char* dst, uint64_t offset, uint64_t length,
                                        Progress& progress, bool fresh, bool publish) const {
  Attempt out;
  const double seconds_left = progress.left(timeout_s_);
  Proxy proxy;
  try {
    proxy = choose_proxy(url, proxies_);
  } catch (const IoError& e) {
    out.kind = Attempt::Fatal;
    out.problem = e.what();
    return out;
  }
  const std::string key = pool_key(url, proxy);
  std::unique_ptr<Connection> conn = ConnectionPool::instance().take(key);
  const bool reused = conn != nullptr;
  if (!conn) {
    bool fatal = false;
    conn = std::make_unique<Connection>(url, proxy, seconds_left, shown_, out.problem, fatal);
    if (!conn->ok()) {
      out.kind = fatal ? Attempt::Fatal : Attempt::Retry;
      return out;
    }
  }
  conn->set_timeout(seconds_left);
  if (!conn->send_all(range_request(url, proxy, offset, length, etag_, origin_authorization(url)))) {
    out.kind = Attempt::Retry;
    out.stale = reused;
    out.problem = "sending the request failed: " + errno_message(errno);
    return out;
  }

  // The status line and headers; what follows them is the start of the body.
  std::string head, body_start;
  bool nothing = false;
  auto receive_head = [&](void* d, size_t n) -> long {
    if (progress.left(timeout_s_) <= 0) {  // headers trickled in: no answer within the timeout
      errno = EAGAIN;
      return -1;
    }
    return conn->receive(d, n);
  };
  if (!read_head(receive_head, head, body_start, out.problem, nothing)) {
    out.kind = head.size() > kMaxHeaderBytes ? Attempt::Fatal : Attempt::Retry;
    out.stale = reused && nothing;
    return out;
  }
  const ResponseHead response = parse_response_head(head);
  const BodyPlan plan = plan_body(response, offset, length, etag_);
  out.status = response.status;
  switch (plan.kind) {
    case BodyPlan::Redirect:
      out.kind = Attempt::Redirect;
      out.location = response.location;
      return out;
    case BodyPlan::Retry:
      out.kind = Attempt::Retry;
      out.problem = plan.problem;
      out.wait_s = plan.wait_s;
      return out;
    case BodyPlan::Fatal:
      out.kind = Attempt::Fatal;
      out.problem = plan.problem;
      return out;
    case BodyPlan::Body:
      break;
  }
  if (publish) ResolvedUrls::instance().remember(url_, url);  // the threads waiting for it go ahead
  const uint64_t want = plan.want;
  out.received = std::min<uint64_t>(want, body_start.size());
  std::memcpy(dst, body_start.data(), out.received);
  progress.add(out.received);
  uint64_t ready = fresh ? out.received : want;  // dst bytes whose pages are faulted in
  while (out.received < want) {
    if (out.received == ready) {
      const uint64_t window = std::min(kFreshWindowBytes, want - ready);
      populate_for_write(reinterpret_cast<uint64_t>(dst + ready), window);
      ready += window;
    }
    // Each receive waits at most until the no-progress deadline, so a server trickling
    // bytes slower than a useful step per timeout cannot hold the piece past it.
    const double left = progress.left(timeout_s_);
    auto trickled = [&] {
      return "the body trickled (" + std::to_string(progress.pending) + " bytes in " + timeout_text() + ")";
    };
    if (left <= 0) {
      out.kind = Attempt::Retry;
      out.problem = trickled();
      return out;
    }
    if (std::abs(left - conn->timeout()) > 0.05) conn->set_timeout(left);
    const long n = conn->receive(dst + out.received, ready - out.received);
    if (n <= 0) {
      const bool timed_out = n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
      out.kind = Attempt::Retry;
      out.problem = n == 0 ? "a short body: the server closed the connection after " + std::to_string(out.received) +
                                 " of " + std::to_string(want) + " bytes"
                           : !timed_out             ? "receiving failed: " + errno_message(errno)
                           : progress.pending == 0 ? "the body stalled (timed out)"
                                                   : trickled();  // bytes came, too few to count
      return out;
    }
    out.received += static_cast<uint64_t>(n);
    progress.add(static_cast<uint64_t>(n));
  }
  if (!plan.close_after && body_start.size() <= want) ConnectionPool::instance().give(key, std::move(conn));
  out.kind = Attempt::Done;
  return out;
}

void HttpSource::read(void* dst, uint64_t offset, uint64_t length) const {
  fetch(static_cast<char*>(dst), offset, length, false);
}

void HttpSource::read_fresh(void* dst, uint64_t offset, uint64_t length) const {
  fetch(static_cast<char*>(dst), offset, length, true);
}

std::string HttpSource::timeout_text() const { return std::to_string(static_cast<int>(timeout_s_ + 0.5)) + " s"; }

namespace {

// A redirect target, or the URL itself, that refuses a request it took before: a signed
// URL past its expiry answers 401, 403 or 410.
bool expired_signature(int status) { return status == 401 || status == 403 || status == 410; }

bool same_url(const Url& a, const Url& b) { return a.origin() == b.origin() && a.target == b.target; }

// Releases a claim to resolve a URL (ResolvedUrls) that its holder did not settle.
struct Claim {
  const std::string& url;
  bool held = false;
  ~Claim() { settle(); }
  void settle() {
    if (held) ResolvedUrls::instance().release(url);
    held = false;
  }
};

}  // namespace

void HttpSource::fetch(char* out, uint64_t offset, uint64_t length, bool fresh) const {
  if (length == 0) return;
  uint64_t done = 0;
  Progress progress;
  ResolvedUrls& resolved = ResolvedUrls::instance();
  Claim claim{url_};
  Url url;
  bool remembered = false;  // `url` is where an earlier request's redirects led
  int redirects = 0, failures = 0;
  bool resolved_again = false;  // since the last useful progress, after a remembered target failed
  // From the start: the remembered target of this URL, or the URL itself (and then, for
  // everyone, where its redirects lead).
  auto start = [&]() {
    const ResolvedUrls::Lookup found = resolved.find(url_, progress.left(timeout_s_));
    url = found.found ? found.target : parsed_;
    remembered = found.found;
    claim.held = found.claimed;
    redirects = 0;
  };
  double backoff = kFirstBackoffS;
  std::string problem;
  thread_local std::minstd_rand jitter{std::random_device{}()};
  auto fail = [&](const std::string& why, int status) {
    throw RemoteError(shown_ + ": " + why + " (reading " + range_text(offset, length) + ")", status, shown_, offset);
  };
  start();
  while (done < length) {
    const double left = progress.left(timeout_s_);
    if (left <= 0)
      fail((progress.pending ? "only " + std::to_string(progress.pending) + " bytes" : std::string("no data")) +
               " for " + timeout_text() + ", retries included; last: " + (problem.empty() ? "timed out" : problem),
           0);
    progress.stepped = false;
    Attempt a = attempt(url, out + done, offset + done, length - done, progress, fresh, !remembered);
    done += a.received;
    if (a.kind != Attempt::Redirect) claim.settle();
    if (progress.stepped) {
      failures = 0;
      backoff = kFirstBackoffS;
      resolved_again = false;
    }
    const bool redirected = !same_url(url, parsed_);
    switch (a.kind) {
      case Attempt::Done:
        break;
      case Attempt::Fatal:
        if (redirected && expired_signature(a.status) && !resolved_again) {
          // A signed target that expired: where the URL leads now, once per such failure.
          if (remembered) resolved.forget(url_, url);
          resolved_again = true;
          start();
          break;
        }
        fail(a.problem, a.status);
        break;
      case Attempt::Redirect:
        if (++redirects > kMaxRedirects) fail("more than " + std::to_string(kMaxRedirects) + " redirects", a.status);
        try {
          url = redirect_target(url, a.location);
        } catch (const IoError& e) {
          fail(e.what(), a.status);
        }
        break;
      case Attempt::Retry:
        problem = a.problem;
        if (a.stale) break;  // an idle connection the server had closed: reconnect at once
        if (++failures >= kMaxFailures)
          fail(std::to_string(failures) + " attempts in a row failed; last: " + a.problem, a.status);
        {
          const double room = std::max(0.0, progress.left(timeout_s_));
          if (a.wait_s > room)
            fail(a.problem + ", and its Retry-After of " + std::to_string(static_cast<long>(a.wait_s)) +
                     " s is past the " + timeout_text() + " timeout",
                 a.status);
          const double pause = std::max(a.wait_s, backoff * (0.5 + std::uniform_real_distribution<double>(0, 1)(jitter)));
          std::this_thread::sleep_for(std::chrono::duration<double>(std::min(pause, room)));
          backoff = std::min(backoff * 2, kMaxBackoffS);
        }
        // A remembered target that cannot be reached: through the URL itself again.
        if (remembered && redirected && a.status == 0 && a.received == 0) {
          resolved.forget(url_, url);
          start();
        }
        break;
    }
  }
}

}  // namespace flash
