// TLS for https:// sources: the system's OpenSSL (libssl.so.3, or 1.1), looked up at
// run time as cuda_api.cpp finds the CUDA runtime. Python's own ssl module links the same
// library, so it is there wherever Python speaks HTTPS; the build needs no OpenSSL
// headers and the wheel no new dependency. Certificates are checked against the
// system's trust store (SSL_CERT_FILE / SSL_CERT_DIR override it), host names included.
#pragma once
#include <cstddef>
#include <string>

namespace flash {

// One TLS session over a connected socket. Throws IoError when OpenSSL is missing or the
// handshake or certificate check fails (`what` names the URL).
class TlsSession {
 public:
  TlsSession(int fd, const std::string& host, const std::string& what);
  ~TlsSession();
  TlsSession(const TlsSession&) = delete;
  TlsSession& operator=(const TlsSession&) = delete;

  // As send/recv: bytes moved, 0 at the end of the stream, -1 on an error or timeout.
  long write(const void* data, size_t length);
  long read(void* data, size_t length);

 private:
  void* ssl_ = nullptr;
};

}  // namespace flash
