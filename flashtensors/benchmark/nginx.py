"""A throwaway nginx serving one directory on loopback: for the remote-source benchmark
and the tests. Runs as a child process in the foreground (``daemon off``) with its own
configuration, logs and temp files in a scratch directory, so it needs no root and
touches nothing of the system's nginx.

Example:
    >>> with Nginx("/models") as server:                      # doctest: +SKIP
    ...     flash.load_dict(server.url + "/m", "cpu")
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time

from ..errors import FlashError

CANDIDATES = ("nginx", "/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")


def nginx_binary() -> str | None:
    """The nginx executable, or None where it is not installed."""
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nginx:
    """nginx serving ``root`` at ``http://127.0.0.1:PORT`` (``.url``) while in a ``with``
    block. ``tls=(cert, key)`` serves HTTPS instead. ``redirect=True`` adds
    ``/redirect/<path>``, a 302 to ``/<path>``. ``access_log=PATH`` logs every request
    there, one line each: ``METHOD URI RANGE STATUS BODY_BYTES`` (``-`` for no range),
    and ``log_connections=True`` appends nginx's serial number of the connection.
    ``limit_rate="100m"`` caps every connection at that many bytes per second (nginx's
    ``limit_rate``), as object stores like S3 do, so a loader must open many connections
    to fill the link."""

    def __init__(self, root, *, tls: tuple | None = None, redirect: bool = False, access_log=None,
                 limit_rate: str | None = None, log_connections: bool = False):
        self.binary = nginx_binary()
        if self.binary is None:
            raise FlashError("nginx is not installed (Debian: apt-get install nginx)")
        self.root = os.path.abspath(os.fspath(root))
        self.tls = tls
        self.redirect = redirect
        self.access_log = None if access_log is None else os.path.abspath(os.fspath(access_log))
        self.limit_rate = limit_rate
        self.log_connections = log_connections
        self.port = free_port()
        self.scheme = "https" if tls else "http"
        self.url = f"{self.scheme}://127.0.0.1:{self.port}"
        self._scratch = None
        self._process = None

    def _config(self, scratch: str) -> str:
        user = "user root root;\n" if os.geteuid() == 0 else ""  # as root, keep the workers as the caller
        listen = f"127.0.0.1:{self.port}" + (" ssl" if self.tls else "")
        tls = f"ssl_certificate {self.tls[0]};\nssl_certificate_key {self.tls[1]};\n" if self.tls else ""
        redirect = "location /redirect/ { rewrite ^/redirect/(.*)$ /$1 redirect; }\n" if self.redirect else ""
        log = "access_log off;\n"
        if self.access_log:
            fields = "$request_method $uri $http_range $status $body_bytes_sent"
            fields += " $connection" if self.log_connections else ""
            log = (f"log_format flashtensors '{fields}';\n"
                   f"access_log {self.access_log} flashtensors;\n")
        cap = f"limit_rate {self.limit_rate};\n" if self.limit_rate else ""
        temp = "".join(f"{name}_temp_path {scratch}/{name};\n"
                       for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        return (f"{user}worker_processes 2;\ndaemon off;\npid {scratch}/nginx.pid;\n"
                f"error_log {scratch}/error.log warn;\nevents {{ worker_connections 1024; }}\n"
                f"http {{\n{temp}{log}{cap}sendfile on;\ntcp_nopush on;\nkeepalive_requests 100000;\n"
                f"types {{ application/json json; }}\ndefault_type application/octet-stream;\n"
                f"server {{\nlisten {listen};\n{tls}root {self.root};\n{redirect}}}\n}}\n")

    def __enter__(self) -> Nginx:
        self._scratch = tempfile.mkdtemp(prefix="flashtensors-nginx-")
        conf = os.path.join(self._scratch, "nginx.conf")
        with open(conf, "w") as f:
            f.write(self._config(self._scratch))
        self._process = subprocess.Popen([self.binary, "-p", self._scratch, "-c", conf, "-e",
                                          os.path.join(self._scratch, "error.log")],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                err = self._process.stderr.read().decode(errors="replace")
                self.__exit__(None, None, None)
                raise FlashError(f"nginx did not start: {err.strip()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.02)
        self.__exit__(None, None, None)
        raise FlashError("nginx did not start listening within 10 s")

    def __exit__(self, *exc) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._process is not None and self._process.stderr:
            self._process.stderr.close()
        if self._scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
