"""Servers on loopback for the remote-source tests: the real nginx (started by the tests
themselves, skipped with a reason where it is not installed unless
FLASHTENSORS_REQUIRE_SERVERS=1, as in CI), and a small HTTP server of our own that
serves a directory with range requests and injects faults on demand; moto's S3 server
(the ``s3`` fixtures in conftest.py), recording the requests it answers."""

from __future__ import annotations

import os
import re
import socket
import threading
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
        self.stall_big = False     # big reads get no answer at all
        self.status_big = None     # big reads answer this status (403, 404, ...)
        self.ignore_range = False  # answer 200 with the whole object
        self.redirect_all = False  # every request to /r/<name> is a 302 to /<name>
        self.seen: dict = {}
        self.requests = 0
        self.stop = threading.Event()

    def count(self, name: str) -> int:
        with self.lock:
            self.requests += 1
            self.seen[name] = self.seen.get(name, 0) + 1
            return self.seen[name]


class FaultServer:
    """Serves ``root`` at ``.url`` (HTTP/1.1, keep-alive, ranges), with ``.faults``."""

    def __init__(self, root):
        self.root = os.fspath(root)
        self.faults = Faults()
        handler = _handler(self.root, self.faults)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FaultServer:
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.faults.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


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
            if big and faults.stall_big:
                faults.stop.wait(120)
                return
            if big and faults.status_big:
                return self._status(faults.status_big)
            if big and n <= faults.fail_5xx:
                return self._status(503)
            with open(file, "rb") as f:
                if faults.ignore_range or m is None:
                    start, end = 0, size - 1
                    self.send_response(200)
                else:
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                f.seek(start)
                body = f.read(end - start + 1)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("ETag", f'"{int(os.path.getmtime(file) * 1e9):x}-{size:x}"')
            self.end_headers()
            if big and n == 1 and faults.reset_after is not None:
                self.wfile.write(body[:faults.reset_after])
                self.wfile.flush()
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                self.connection.close()
                self.close_connection = True
                return
            self.wfile.write(body)

        def _status(self, code: int):
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


class MotoServer:
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

        self.server = make_server("127.0.0.1", 0, recorded, threaded=True, request_handler=Quiet)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> MotoServer:
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def upload(c, bucket, local_dir, prefix):
    """Puts every file of ``local_dir`` at ``s3://bucket/prefix/<name>`` (botocore client ``c``)."""
    for f in sorted(os.listdir(local_dir)):
        with open(os.path.join(local_dir, f), "rb") as fh:
            c.put_object(Bucket=bucket, Key=f"{prefix}/{f}", Body=fh.read())
