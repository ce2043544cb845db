"""Servers on loopback for the remote-source tests: the real nginx and tinyproxy (started
by the tests themselves, skipped with a reason where they are not installed unless
FLASHTENSORS_REQUIRE_SERVERS=1, as in CI), a small HTTP server of our own that serves a
directory with range requests and injects faults on demand, a server that accepts
connections and never answers, a test certificate authority; moto's S3 server (the
``s3`` fixtures in conftest.py), recording the requests it answers."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from flashtensors.benchmark.nginx import Nginx, nginx_binary


def required() -> bool:
    return os.environ.get("FLASHTENSORS_REQUIRE_SERVERS") == "1"


def need_nginx():
    if nginx_binary() is None:
        if required():
            pytest.fail("nginx is not installed, and FLASHTENSORS_REQUIRE_SERVERS=1 (CI) requires it")
        pytest.skip("nginx is not installed (Debian: apt-get install nginx); .ci/run installs it")


def nginx(root, **kwargs) -> Nginx:
    need_nginx()
    return Nginx(root, **kwargs)


class Faults:
    """What the fault server does wrong. Counters apply per file name; a "big" read is a
    range longer than one byte (the loader's data reads; its size probes read one byte)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.fail_5xx = 0          # the first N big reads of each file answer 503
        self.reset_after = None    # the first big read of each file sends this many bytes, then resets
        self.close_after = None    # the first big read of each file sends this many bytes, then closes
        self.stall_big = False     # big reads get no answer at all
        self.status_big = None     # big reads answer this status (403, 404, ...)
        self.ignore_range = False  # answer 200 with the whole object
        self.redirect_all = False  # every request to /r/<name> is a 302 to /<name>
        self.empty_body = None     # big reads answer this status (200 or 206) with Content-Length: 0
        self.trickle = None        # "big" (big reads) or "all": the whole answer promised, one byte sent, closed;
        #                            "slow": big reads send a byte every 0.5 s
        self.retry_after = None    # (status, seconds): the first big read of each file answers it with Retry-After
        self.answered_at: list = []  # (name, first byte, status, time.monotonic()) of each big read's answer
        self.after_big_read = None  # called with (name, count) after each big read was answered
        self.bytes_sent = 0        # body bytes written to sockets, all requests
        self.big_reads: list = []  # (name, first byte, last byte) of each big read asked for
        self.seen: dict = {}
        self.requests = 0
        self.stop = threading.Event()

    def count(self, name: str) -> int:
        with self.lock:
            self.requests += 1
            self.seen[name] = self.seen.get(name, 0) + 1
            return self.seen[name]


class _ServedInThread:
    """A loopback HTTP server (``self.httpd``, set by the subclass through ``_serve``) that
    answers at ``.url`` on a thread of its own inside a ``with`` block."""

    def _serve(self, httpd) -> None:
        self.httpd = httpd
        self.url = f"http://127.0.0.1:{httpd.server_address[1]}"
        self.thread = threading.Thread(target=httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


class FaultServer(_ServedInThread):
    """Serves ``root`` at ``.url`` (HTTP/1.1, keep-alive, ranges), with ``.faults``."""

    def __init__(self, root):
        self.root = os.fspath(root)
        self.faults = Faults()
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.root, self.faults))
        httpd.daemon_threads = True
        self._serve(httpd)

    def __exit__(self, *exc):
        self.faults.stop.set()  # stalled replies end now, not after their 120 s
        super().__exit__(*exc)


def _handler(root: str, faults: Faults):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            path = self.path.split("?", 1)[0]
            if path.startswith("/r/"):
                self.send_response(302)
                self.send_header("Location", path[2:])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            name = path.lstrip("/")
            file = os.path.join(root, name)
            if not os.path.isfile(file):
                return self._status(404)
            size = os.path.getsize(file)
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
            start, end = (int(m[1]), min(size - 1, int(m[2]) if m[2] else size - 1)) if m else (0, size - 1)
            big = m is not None and end > start
            n = faults.count(name) if big else 0
            if big:
                with faults.lock:
                    faults.big_reads.append((name, start, end))
            if big and faults.stall_big:
                faults.stop.wait(120)
                return
            if big and faults.retry_after and n == 1:
                status, seconds = faults.retry_after
                with faults.lock:
                    faults.answered_at.append((name, start, status, time.monotonic()))
                self.send_response(status)
                self.send_header("Retry-After", str(seconds))
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if big:
                with faults.lock:
                    faults.answered_at.append((name, start, 206, time.monotonic()))
            if faults.trickle == "all" or (big and faults.trickle in ("big", "slow")):
                self.send_response(206 if m else 200)
                if m:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                self.send_header("Content-Length", str(end - start + 1))
                self.end_headers()
                with open(file, "rb") as f:
                    f.seek(start)
                    self.wfile.write(f.read(1))
                    self.wfile.flush()
                    try:
                        while faults.trickle == "slow" and not faults.stop.wait(0.5):
                            self.wfile.write(f.read(1))
                            self.wfile.flush()
                    except OSError:  # the client hung up
                        pass
                self.close_connection = True
                return
            if big and faults.status_big:
                return self._status(faults.status_big)
            if big and n <= faults.fail_5xx:
                return self._status(503)
            etag = f'"{int(os.path.getmtime(file) * 1e9):x}-{size:x}"'
            if self.headers.get("If-Match") not in (None, etag):
                return self._status(412)
            if big and faults.empty_body:
                self.send_response(faults.empty_body)
                if faults.empty_body == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if faults.ignore_range or m is None:
                start, end = 0, size - 1
                self.send_response(200)
            else:
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.send_header("Content-Length", str(end - start + 1))
            self.send_header("ETag", etag)
            self.end_headers()
            with open(file, "rb") as f:
                f.seek(start)
                if big and n == 1 and faults.reset_after is not None:
                    self.wfile.write(f.read(min(faults.reset_after, end - start + 1)))
                    self.wfile.flush()
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01" + bytes(7))
                    self.connection.close()
                    self.close_connection = True
                    return
                if big and n == 1 and faults.close_after is not None:  # every byte sent arrives, then EOF
                    self.wfile.write(f.read(min(faults.close_after, end - start + 1)))
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_WR)
                    self.close_connection = True
                    return
                try:  # in pieces, counted as they go (a client may hang up), never the whole file in memory
                    left = end - start + 1
                    while left > 0:
                        piece = f.read(min(left, 64 << 10))
                        if not piece:
                            break
                        self.wfile.write(piece)
                        left -= len(piece)
                        with faults.lock:
                            faults.bytes_sent += len(piece)
                except OSError:
                    self.close_connection = True
                    return
            if big and faults.after_big_read is not None:
                faults.after_big_read(name, n)

        def _status(self, code: int):
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


class SigningOrigin:
    """A data origin in front of a "CDN", as the Hugging Face Hub serves files: every GET of
    ``/<name>`` at ``.url`` is a redirect (counted in ``.resolves``, with the Range of each)
    to the file at a signed URL, ``<cdn>/<name>?X-Amz-Signature=<generation>`` on a
    second port (``mode="cdn"``), or the query-only relative ``?X-Amz-Signature=...`` back
    to the origin (``mode="query"``). The first signature expires after ``expire_after``
    ranged reads with it (then 403, and the origin signs with the next generation, which
    lasts; with ``expire_after=0`` no signature lasts). With a
    ``token``, the origin answers 401 to a request without ``Authorization: <token>``, and
    the CDN answers 400 to any request that carries an Authorization header (as presigned
    URLs refuse a second credential); ``.cdn_authorizations`` counts those."""

    def __init__(self, root, mode: str = "cdn", token: str | None = None, expire_after: int | None = None):
        self.root = os.fspath(root)
        self.mode, self.token, self.expire_after = mode, token, expire_after
        self.lock = threading.Lock()
        self.generation = 1
        self.used = 0  # ranged reads with the current signature
        self.resolves: list = []  # (name, Range header) of each request the origin redirected
        self.expired = 0  # requests refused for an expired signature
        self.cdn_authorizations = 0
        self.origin_unauthorized = 0
        self.origin = self._server(self._origin_get)
        self.cdn = self._server(self._cdn_get)
        self.url = f"http://127.0.0.1:{self.origin.server_address[1]}"
        self.cdn_url = f"http://127.0.0.1:{self.cdn.server_address[1]}"

    def _server(self, get):
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                get(self)

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        httpd.daemon_threads = True
        return httpd

    def _origin_get(self, h):
        path, _, query = h.path.partition("?")
        if query:  # mode "query": the signed URL is the origin's own
            return self._serve_signed(h, path, query)
        if self.token is not None and h.headers.get("Authorization") != self.token:
            with self.lock:
                self.origin_unauthorized += 1
            return _empty(h, 401)
        with self.lock:
            self.resolves.append((path.lstrip("/"), h.headers.get("Range")))
            signature = f"X-Amz-Signature={self.generation}&X-Amz-Expires=60"
        h.send_response(302)
        h.send_header("Location", f"{self.cdn_url}{path}?{signature}" if self.mode == "cdn" else f"?{signature}")
        h.send_header("Content-Length", "0")
        h.end_headers()

    def _cdn_get(self, h):
        if "Authorization" in h.headers:
            with self.lock:
                self.cdn_authorizations += 1
            return _empty(h, 400)
        path, _, query = h.path.partition("?")
        self._serve_signed(h, path, query)

    def _serve_signed(self, h, path, query):
        m = re.search(r"X-Amz-Signature=(\d+)", query)
        with self.lock:
            valid = m is not None and int(m[1]) == self.generation
            if valid and h.headers.get("Range"):
                self.used += 1
                if self.expire_after is not None and self.used > self.expire_after and (
                        self.generation == 1 or self.expire_after == 0):
                    self.generation, self.used, valid = self.generation + 1, 0, False
            if not valid:
                self.expired += 1
        if not valid:
            return _empty(h, 403)
        file = os.path.join(self.root, path.lstrip("/"))
        if not os.path.isfile(file):
            return _empty(h, 404)
        size = os.path.getsize(file)
        r = re.fullmatch(r"bytes=(\d+)-(\d*)", h.headers.get("Range", ""))
        start, end = (int(r[1]), min(size - 1, int(r[2]) if r[2] else size - 1)) if r else (0, size - 1)
        h.send_response(206 if r else 200)
        if r:
            h.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        h.send_header("Content-Length", str(end - start + 1))
        h.end_headers()
        with open(file, "rb") as f:
            f.seek(start)
            h.wfile.write(f.read(end - start + 1))

    def data_resolves(self, suffix: str) -> list:
        """The resolves of files ending in ``suffix`` for ranges longer than one byte (the
        native reader's reads, not Python's probes)."""
        def big(r):
            m = re.fullmatch(r"bytes=(\d+)-(\d+)", r or "")
            return m is not None and int(m[2]) > int(m[1])
        return [(n, r) for n, r in self.resolves if n.endswith(suffix) and big(r)]

    def __enter__(self) -> SigningOrigin:
        self.threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (self.origin, self.cdn)]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        for s in (self.origin, self.cdn):
            s.shutdown()
            s.server_close()


def _empty(h, status: int):
    h.send_response(status)
    h.send_header("Content-Length", "0")
    h.end_headers()


class SilentServer:
    """Accepts connections on ``.url`` and never answers (nor closes them)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.held: list = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self):
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                pass

    def __enter__(self) -> SilentServer:
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        for c in self.held:
            c.close()
        self.sock.close()


def need_openssl():
    if shutil.which("openssl") is None:
        if required():
            pytest.fail("the openssl command is not installed, and FLASHTENSORS_REQUIRE_SERVERS=1 requires it")
        pytest.skip("the openssl command is not installed (to make test certificates)")


def _openssl(*args):
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def make_ca(directory):
    """A certificate authority for tests: ``(ca.pem, ca.key)`` in ``directory``."""
    need_openssl()
    cert, key = directory / "ca.pem", directory / "ca.key"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=flashtensors test CA",
             "-keyout", key, "-out", cert)
    return cert, key


def issue_cert(ca, directory, name: str):
    """``(cert.pem, key.pem)`` for DNS name ``name``, signed by ``ca`` (from make_ca)."""
    cert, key, request = directory / f"{name}.pem", directory / f"{name}.key", directory / f"{name}.csr"
    ext = directory / f"{name}.ext"
    ext.write_text(f"subjectAltName=DNS:{name}\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", key, "-out", request)
    _openssl("x509", "-req", "-in", request, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial", "-days", "1",
             "-extfile", ext, "-out", cert)
    return cert, key


class Tinyproxy:
    """Debian's tinyproxy on loopback (``.url``), allowing CONNECT to ``connect_ports``,
    with its log at ``.log`` (every request it forwards)."""

    def __init__(self, scratch, connect_ports=()):
        binary = shutil.which("tinyproxy") or ("/usr/bin/tinyproxy" if os.path.exists("/usr/bin/tinyproxy") else None)
        if binary is None:
            if required():
                pytest.fail("tinyproxy is not installed, and FLASHTENSORS_REQUIRE_SERVERS=1 (CI) requires it")
            pytest.skip("tinyproxy is not installed (Debian: apt-get install tinyproxy); .ci/run installs it")
        from flashtensors.benchmark.nginx import free_port

        self.binary = binary
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = scratch / "tinyproxy.log"
        self.config = scratch / "tinyproxy.conf"
        # No ConnectPort line would allow CONNECT to any port; tinyproxy's packaged
        # config allows 443 and 563 only. The tests name the ports they tunnel to.
        connect = "".join(f"ConnectPort {p}\n" for p in connect_ports)
        self.config.write_text(f"Port {self.port}\nListen 127.0.0.1\nTimeout 60\nAllow 127.0.0.1\n"
                               f"MaxClients 50\nLogFile \"{self.log}\"\nLogLevel Info\n"
                               f"PidFile \"{scratch / 'tinyproxy.pid'}\"\n{connect}")
        self.proc = None

    def requests(self) -> list:
        """The request lines tinyproxy logged ("GET http://...", "CONNECT host:port")."""
        text = self.log.read_text() if self.log.exists() else ""
        return re.findall(r'Request \(file descriptor \d+\): (\S+ \S+)', text)

    def __enter__(self) -> Tinyproxy:
        self.proc = subprocess.Popen([self.binary, "-d", "-c", str(self.config)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"tinyproxy did not start: {self.proc.stderr.read().decode()}") from None
                time.sleep(0.05)
        self.proc.kill()
        raise RuntimeError("tinyproxy did not start listening")

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(10)
        self.proc.stderr.close()


class MotoServer(_ServedInThread):
    """moto's S3 REST server on loopback (``.url``), in a thread, with every request it
    answers recorded in ``.requests`` as ``(method, path, Range header or None)``."""

    def __init__(self):
        try:
            from moto.server import DomainDispatcherApplication, create_backend_app
            from werkzeug.serving import WSGIRequestHandler, make_server
        except ImportError:
            if required():
                pytest.fail("moto[server] is not installed, and FLASHTENSORS_REQUIRE_SERVERS=1 requires it")
            pytest.skip('moto[server] is not installed (pip install "moto[server]"; in the test extras)')
        self.requests: list = []
        app = DomainDispatcherApplication(create_backend_app)

        def recorded(environ, start_response):
            self.requests.append((environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""),
                                  environ.get("HTTP_RANGE")))
            return app(environ, start_response)

        class Quiet(WSGIRequestHandler):
            def log_request(self, *args, **kwargs):
                pass

        self._serve(make_server("127.0.0.1", 0, recorded, threaded=True, request_handler=Quiet))


def point_aws_at(monkeypatch, url: str) -> None:
    """Sets the AWS environment (through ``monkeypatch``) so that botocore, flashtensors and
    the ranks a test spawns talk to the S3 server at ``url`` with test keys."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")


def upload(c, bucket, local_dir, prefix):
    """Puts every file of ``local_dir`` at ``s3://bucket/prefix/<name>`` (botocore client ``c``)."""
    for f in sorted(os.listdir(local_dir)):
        with open(os.path.join(local_dir, f), "rb") as fh:
            c.put_object(Bucket=bucket, Key=f"{prefix}/{f}", Body=fh.read())
