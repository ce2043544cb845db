#include "tls_api.h"

#include <arpa/inet.h>
#include <dlfcn.h>

#include <algorithm>
#include <mutex>

#include "errors.h"

namespace flash {
namespace {

// The few OpenSSL 1.1/3 entry points used, as plain C function pointers.
struct Ssl {
  const void* (*TLS_client_method)();
  void* (*SSL_CTX_new)(const void*);
  int (*SSL_CTX_set_default_verify_paths)(void*);
  void (*SSL_CTX_set_verify)(void*, int, void*);
  void* (*SSL_new)(void*);
  void (*SSL_free)(void*);
  int (*SSL_set_fd)(void*, int);
  long (*SSL_ctrl)(void*, int, long, void*);
  int (*SSL_set1_host)(void*, const char*);
  void* (*SSL_get0_param)(void*);
  int (*X509_VERIFY_PARAM_set1_ip_asc)(void*, const char*);
  int (*SSL_connect)(void*);
  int (*SSL_read)(void*, void*, int);
  int (*SSL_write)(void*, const void*, int);
  long (*SSL_get_verify_result)(const void*);
  unsigned long (*ERR_get_error)();
  void (*ERR_error_string_n)(unsigned long, char*, size_t);
  const char* (*X509_verify_cert_error_string)(long);
  void* ctx = nullptr;
  std::string error;  // why TLS is unavailable, if it is
};

constexpr int kVerifyPeer = 1;                 // SSL_VERIFY_PEER
constexpr int kCtrlSetTlsextHostname = 55;     // SSL_CTRL_SET_TLSEXT_HOSTNAME
constexpr long kTlsextNametypeHostName = 0;    // TLSEXT_NAMETYPE_host_name
constexpr long kHostnameMismatch = 62;         // X509_V_ERR_HOSTNAME_MISMATCH
constexpr long kIpAddressMismatch = 64;        // X509_V_ERR_IP_ADDRESS_MISMATCH

bool is_ip_literal(const std::string& host) {
  unsigned char buffer[16];
  return inet_pton(AF_INET, host.c_str(), buffer) == 1 || inet_pton(AF_INET6, host.c_str(), buffer) == 1;
}

template <typename Fn>
bool bind(void* lib, const char* symbol, Fn& slot, std::string& error) {
  slot = reinterpret_cast<Fn>(dlsym(lib, symbol));
  if (!slot && error.empty()) error = std::string("symbol ") + symbol + " not found in libssl";
  return slot != nullptr;
}

const Ssl& ssl() {
  static Ssl s{};
  static std::once_flag once;
  std::call_once(once, [] {
    void* lib = nullptr;
    for (const char* name : {"libssl.so.3", "libssl.so.1.1", "libssl.so"})
      if ((lib = dlopen(name, RTLD_NOW | RTLD_LOCAL))) break;
    if (!lib) {
      s.error = "https:// needs OpenSSL's libssl (libssl.so.3 or .1.1), which is not installed";
      return;
    }
    std::string& e = s.error;
    bind(lib, "TLS_client_method", s.TLS_client_method, e);
    bind(lib, "SSL_CTX_new", s.SSL_CTX_new, e);
    bind(lib, "SSL_CTX_set_default_verify_paths", s.SSL_CTX_set_default_verify_paths, e);
    bind(lib, "SSL_CTX_set_verify", s.SSL_CTX_set_verify, e);
    bind(lib, "SSL_new", s.SSL_new, e);
    bind(lib, "SSL_free", s.SSL_free, e);
    bind(lib, "SSL_set_fd", s.SSL_set_fd, e);
    bind(lib, "SSL_ctrl", s.SSL_ctrl, e);
    bind(lib, "SSL_set1_host", s.SSL_set1_host, e);
    bind(lib, "SSL_get0_param", s.SSL_get0_param, e);
    bind(lib, "SSL_connect", s.SSL_connect, e);
    bind(lib, "SSL_read", s.SSL_read, e);
    bind(lib, "SSL_write", s.SSL_write, e);
    bind(lib, "SSL_get_verify_result", s.SSL_get_verify_result, e);
    // libcrypto's, reached through libssl's dependencies.
    bind(lib, "ERR_get_error", s.ERR_get_error, e);
    bind(lib, "ERR_error_string_n", s.ERR_error_string_n, e);
    bind(lib, "X509_verify_cert_error_string", s.X509_verify_cert_error_string, e);
    bind(lib, "X509_VERIFY_PARAM_set1_ip_asc", s.X509_VERIFY_PARAM_set1_ip_asc, e);
    if (!e.empty()) return;
    s.ctx = s.SSL_CTX_new(s.TLS_client_method());
    if (!s.ctx) {
      e = "cannot create an OpenSSL context";
      return;
    }
    if (s.SSL_CTX_set_default_verify_paths(s.ctx) != 1) {  // honours SSL_CERT_FILE / SSL_CERT_DIR
      e = "cannot load the system's trusted certificates";
      s.ctx = nullptr;  // leaked once: a context without trust anchors must not be used
      return;
    }
    s.SSL_CTX_set_verify(s.ctx, kVerifyPeer, nullptr);
  });
  return s;
}

std::string last_error(const Ssl& s) {
  const unsigned long code = s.ERR_get_error();
  if (!code) return "connection closed or timed out";
  char buffer[256];
  s.ERR_error_string_n(code, buffer, sizeof buffer);
  while (s.ERR_get_error()) {
  }
  return buffer;
}

}  // namespace

TlsSession::TlsSession(int fd, const std::string& host, const std::string& what) {
  const Ssl& s = ssl();
  if (!s.ctx) throw IoError(what + ": " + s.error);
  ssl_ = s.SSL_new(s.ctx);
  if (!ssl_) throw IoError(what + ": cannot start a TLS session: " + last_error(s));
  // Each step is checked: a session whose expected host could not be set would accept
  // any trusted certificate, for any host.
  auto refuse = [&](const std::string& why) {
    s.SSL_free(ssl_);
    ssl_ = nullptr;
    throw IoError(what + ": " + why);
  };
  if (s.SSL_set_fd(ssl_, fd) != 1) refuse("cannot attach TLS to the socket: " + last_error(s));
  if (is_ip_literal(host)) {  // no SNI for addresses; the certificate must name the address
    void* param = s.SSL_get0_param(ssl_);
    if (!param || s.X509_VERIFY_PARAM_set1_ip_asc(param, host.c_str()) != 1)
      refuse("cannot set the address " + host + " the certificate must name: " + last_error(s));
  } else {
    if (s.SSL_ctrl(ssl_, kCtrlSetTlsextHostname, kTlsextNametypeHostName, const_cast<char*>(host.c_str())) != 1)
      refuse("cannot set the TLS server name " + host + ": " + last_error(s));
    if (s.SSL_set1_host(ssl_, host.c_str()) != 1)
      refuse("cannot set the host name " + host + " the certificate must name: " + last_error(s));
  }
  if (s.SSL_connect(ssl_) != 1) {
    const long verify = s.SSL_get_verify_result(ssl_);
    std::string why;
    if (verify == kHostnameMismatch || verify == kIpAddressMismatch)
      why = "certificate not trusted: it is not for " + host + " (" + s.X509_verify_cert_error_string(verify) + ")";
    else if (verify != 0)
      why = std::string("certificate not trusted for ") + host + ": " + s.X509_verify_cert_error_string(verify);
    else
      why = last_error(s);
    refuse("TLS handshake failed: " + why);
  }
}

TlsSession::~TlsSession() {
  if (ssl_) ssl().SSL_free(ssl_);
}

long TlsSession::write(const void* data, size_t length) {
  const int n = ssl().SSL_write(ssl_, data, static_cast<int>(std::min<size_t>(length, 1 << 30)));
  return n > 0 ? n : -1;
}

long TlsSession::read(void* data, size_t length) {
  const int n = ssl().SSL_read(ssl_, data, static_cast<int>(std::min<size_t>(length, 1 << 30)));
  return n > 0 ? n : (n == 0 ? 0 : -1);
}

}  // namespace flash
