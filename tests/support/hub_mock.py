"""A Hugging Face Hub on loopback for the Hub tests: the HTTP API huggingface_hub calls and
the Hub's ``resolve`` URLs, with the large files behind a 302 to a second origin (the "CDN")
that serves them with ranges from signed, expiring query strings, as the real Hub does.

What it answers (model repos):

- ``GET /api/models/{repo}`` and ``/api/models/{repo}/revision/{rev}``: ``sha`` (the commit
  the revision names) and ``siblings`` (with ``?blobs=true``: each file's size, blob ID and
  LFS sha256);
- ``GET /api/models/{repo}/tree/{rev}[/{path}]``: the file listing;
- ``HEAD``/``GET /{repo}/resolve/{rev}/{file}``: ``X-Repo-Commit``, ``ETag``; a small file is
  served there (ranges too); an LFS file (weights) answers 302 to the CDN with
  ``X-Linked-Etag`` (its sha256) and ``X-Linked-Size``;
- the CDN: ``GET``/``HEAD /{sha256}?Expires=..&Signature=..``: ranges; 403 for a wrong or
  expired signature, 400 for a request that carries ``Authorization`` besides (presigned
  URLs refuse a second credential).

Errors as the Hub sends them (``X-Error-Code``): a gated repo answers 401 ``GatedRepo``
without the token, a missing repo 401 ``RepoNotFound`` (anonymous) or 404 (with a token), a
missing revision 404 ``RevisionNotFound``, a missing file 404 ``EntryNotFound``;
:meth:`MockHub.throttle` makes the next requests answer 429 with ``Retry-After``. A branch
moves with :meth:`MockHub.commit`. ``.counts`` counts requests by kind ("api", "tree",
"resolve", "cdn"), ``.log`` records each as ``(kind, method, path, range, authorization)``.

Example:
    >>> with MockHub() as hub:                                          # doctest: +SKIP
    ...     sha = hub.commit("org/tiny", {"model.safetensors": data, "config.json": b"{}"})
    ...     os.environ["HF_ENDPOINT"] = hub.url
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from flashtensors.benchmark.hub import git_blob_id, lfs_pointer

TOKEN = "hf_mocktoken0123456789"
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5", ".onnx")
COMMIT_RE = re.compile(r"[0-9a-f]{40}")


def is_lfs(name: str, data: bytes) -> bool:
    return name.endswith(LFS_SUFFIXES) or len(data) > 10 << 20


@dataclass(frozen=True)
class HubFile:
    """A file of a commit, with what the Hub says of it (computed once, at the commit)."""

    data: bytes
    lfs: bool
    sha256: str   # of the bytes
    blob_id: str  # the git blob ID of what git holds: the bytes, or an LFS file's pointer
    pointer_size: int

    @classmethod
    def of(cls, name: str, data: bytes) -> HubFile:
        sha256, lfs = hashlib.sha256(data).hexdigest(), is_lfs(name, data)
        pointer = lfs_pointer(sha256, len(data))
        return cls(data, lfs, sha256, git_blob_id(pointer if lfs else data), len(pointer))


@dataclass
class Repo:
    gated: bool = False
    commits: dict = field(default_factory=dict)  # sha -> {file name: HubFile}
    refs: dict = field(default_factory=dict)      # branch or tag -> sha

    def sha_of(self, revision: str) -> str | None:
        if revision in self.refs:
            return self.refs[revision]
        return revision if revision in self.commits else None


class MockHub:
    """The Hub at ``.url`` and its CDN at ``.cdn_url`` (see the module docstring)."""

    def __init__(self, url_lifetime_s: float = 3600.0):
        self.repos: dict = {}
        self.blobs: dict = {}  # sha256 -> bytes (LFS files: what the CDN serves)
        self.cdn_etags: dict = {}  # sha256 -> the CDN's ETag of the blob
        self.url_lifetime_s = url_lifetime_s
        self.secret = secrets.token_bytes(16)
        self.counts: Counter = Counter()
        self.log: list = []
        self.lock = threading.Lock()
        self._throttle = 0
        self._retry_after = "1"
        self.cdn_status = None  # set: every CDN request answers this status
        self.stall_past = None  # set: CDN reads reaching this offset or past it get no answer until exit
        self.stop = threading.Event()
        self.hub = _server(_hub_handler(self))
        self.cdn = _server(_cdn_handler(self))
        self.url = f"http://127.0.0.1:{self.hub.server_address[1]}"
        self.cdn_url = f"http://127.0.0.1:{self.cdn.server_address[1]}"

    # -- content -------------------------------------------------------------------------

    def commit(self, repo_id: str, files: dict, branch: str = "main", gated: bool | None = None) -> str:
        """Makes a commit holding ``files`` (name -> bytes) the head of ``branch`` of
        ``repo_id`` (created if new); returns its sha."""
        with self.lock:
            repo = self.repos.setdefault(repo_id, Repo())
            if gated is not None:
                repo.gated = gated
            sha = hashlib.sha1(secrets.token_bytes(16)).hexdigest()
            repo.commits[sha] = {name: HubFile.of(name, data) for name, data in files.items()}
            repo.refs[branch] = sha
            for f in repo.commits[sha].values():
                if f.lfs:
                    self.blobs[f.sha256] = f.data
                    self.cdn_etags[f.sha256] = hashlib.md5(f.data).hexdigest()
            return sha

    def tag(self, repo_id: str, tag: str, sha: str) -> None:
        with self.lock:
            self.repos[repo_id].refs[tag] = sha

    def throttle(self, requests: int, retry_after: str = "1") -> None:
        """The next ``requests`` requests to the Hub (not the CDN) answer 429 with ``Retry-After``."""
        with self.lock:
            self._throttle, self._retry_after = requests, retry_after

    def reset_counts(self) -> None:
        with self.lock:
            self.counts.clear()
            self.log.clear()

    def data_requests(self) -> int:
        """Requests that fetched file bytes (the CDN's, and the Hub's resolve GETs)."""
        with self.lock:
            return sum(1 for kind, method, *_ in self.log if method == "GET" and kind in ("resolve", "cdn"))

    # -- signing -------------------------------------------------------------------------

    def sign(self, sha256: str) -> str:
        expires = str(int(time.time() + self.url_lifetime_s))
        return f"{self.cdn_url}/{sha256}?Expires={expires}&Signature={self._signature(sha256, expires)}"

    def _signature(self, sha256: str, expires: str) -> str:
        return hmac.new(self.secret, f"{sha256}:{expires}".encode(), "sha256").hexdigest()

    def signature_ok(self, sha256: str, query: dict) -> bool:
        expires, signature = query.get("Expires", [""])[0], query.get("Signature", [""])[0]
        if not expires.isdigit() or int(expires) < time.time():
            return False
        return hmac.compare_digest(signature, self._signature(sha256, expires))

    # -- bookkeeping ---------------------------------------------------------------------

    def record(self, kind: str, handler) -> bool:
        """Counts the request; True when it must be answered 429."""
        with self.lock:
            self.counts[kind] += 1
            self.log.append((kind, handler.command, handler.path, handler.headers.get("Range"),
                             handler.headers.get("Authorization")))
            if kind != "cdn" and self._throttle > 0:
                self._throttle -= 1
                self.counts["429"] += 1
                return True
            return False

    def __enter__(self) -> MockHub:
        for server in (self.hub, self.cdn):
            threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for server in (self.hub, self.cdn):
            server.shutdown()
            server.server_close()


def _server(handler) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    return server


class _Base(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def error(self, status: int, code: str | None, message: str) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self.answer(status, json.dumps({"error": message}).encode(), headers)

    def serve_bytes(self, data: bytes, headers: dict) -> None:
        """``data`` whole, or the range asked for (206)."""
        size = len(data)
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if m is None:
            return self.answer(200, data, {**headers, "Accept-Ranges": "bytes"})
        start, end = int(m[1]), min(size - 1, int(m[2]) if m[2] else size - 1)
        if start >= size:
            return self.answer(416, b"", {"Content-Range": f"bytes */{size}"})
        self.answer(206, data[start:end + 1], {**headers, "Content-Range": f"bytes {start}-{end}/{size}"})


def _hub_handler(hub: MockHub):
    class Hub(_Base):
        def do_HEAD(self):
            self.do_GET()

        def do_GET(self):
            path, _, query = self.path.partition("?")
            parts = [urllib.parse.unquote(p) for p in path.split("/")[1:]]
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                kind = "tree" if len(parts) >= 6 and parts[4] == "tree" else "api"
                if hub.record(kind, self):
                    return self.answer(429, b"rate limited", {"Retry-After": hub._retry_after})
                return self.api(f"{parts[2]}/{parts[3]}", parts[4:], urllib.parse.parse_qs(query))
            if len(parts) >= 5 and parts[2] == "resolve":
                if hub.record("resolve", self):
                    return self.answer(429, b"rate limited", {"Retry-After": hub._retry_after})
                return self.resolve(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
            hub.record("other", self)
            self.error(404, None, "not found")

        def repo(self, repo_id: str):
            """The repo, or None once the error was answered."""
            authorized = self.headers.get("Authorization") == f"Bearer {TOKEN}"
            repo = hub.repos.get(repo_id)
            if repo is None:
                if authorized:
                    return self.error(404, "RepoNotFound", f"Repository Not Found for url: {self.path}.")
                return self.error(401, "RepoNotFound", f"Repository Not Found for url: {self.path}. "
                                                       "Please make sure you are authenticated.")
            if repo.gated and not authorized:
                return self.error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have "
                                                    "access to it and be authenticated to access it.")
            return repo

        def api(self, repo_id: str, rest: list, query: dict):
            repo = self.repo(repo_id)
            if repo is None:
                return
            tree = len(rest) >= 2 and rest[0] == "tree"
            revision = rest[1] if len(rest) >= 2 else "main"
            sha = repo.sha_of(revision)
            if sha is None:
                return self.error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            files = repo.commits[sha]
            if tree:
                prefix = "/".join(rest[2:])
                entries = [_tree_entry(n, d) for n, d in sorted(files.items())
                           if not prefix or n.startswith(prefix.rstrip("/") + "/")]
                return self.answer(200, json.dumps(entries).encode(), {"Content-Type": "application/json"})
            blobs = query.get("blobs", ["false"])[0].lower() == "true"
            siblings = [_sibling(n, d, blobs) for n, d in sorted(files.items())]
            info = {"_id": repo_id, "id": repo_id, "modelId": repo_id, "sha": sha, "private": False,
                    "gated": "auto" if repo.gated else False, "disabled": False, "downloads": 0, "likes": 0,
                    "tags": [], "lastModified": "2026-01-01T00:00:00.000Z", "siblings": siblings}
            self.answer(200, json.dumps(info).encode(), {"Content-Type": "application/json"})

        def resolve(self, repo_id: str, revision: str, name: str):
            repo = self.repo(repo_id)
            if repo is None:
                return
            sha = repo.sha_of(revision)
            if sha is None:
                return self.error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            f = repo.commits[sha].get(name)
            if f is None:
                return self.error(404, "EntryNotFound", f"{name} does not exist at revision {sha}")
            headers = {"X-Repo-Commit": sha, "ETag": f'"{f.blob_id}"'}
            if not f.lfs:
                return self.serve_bytes(f.data, headers)
            self.answer(302, b"", {**headers, "X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(len(f.data)),
                                   "Location": hub.sign(f.sha256)})

    return Hub


def _cdn_handler(hub: MockHub):
    class Cdn(_Base):
        def do_HEAD(self):
            self.do_GET()

        def do_GET(self):
            hub.record("cdn", self)
            path, _, query = self.path.partition("?")
            sha256 = path.strip("/")
            if hub.cdn_status:
                return self.error(hub.cdn_status, None, "refused by the test")
            if hub.stall_past is not None and _last_byte(self.headers) >= hub.stall_past:
                hub.stop.wait(120)
                return
            if self.headers.get("Authorization"):
                return self.error(400, "InvalidArgument", "Only one auth mechanism allowed")
            if sha256 not in hub.blobs or not hub.signature_ok(sha256, urllib.parse.parse_qs(query)):
                return self.error(403, "AccessDenied", "Request has expired or its signature is wrong")
            # An S3-like ETag, unlike the Hub's (clients must not take it for the file's sha256).
            self.serve_bytes(hub.blobs[sha256], {"ETag": f'"{hub.cdn_etags[sha256]}"'})

    return Cdn


def _last_byte(headers) -> float:
    """The last byte a request asks for (infinity for all of a file)."""
    m = re.fullmatch(r"bytes=\d+-(\d*)", headers.get("Range") or "")
    return int(m[1]) if m and m[1] else float("inf")


def _sibling(name: str, f: HubFile, blobs: bool) -> dict:
    if not blobs:
        return {"rfilename": name}
    entry = {"rfilename": name, "size": len(f.data), "blobId": f.blob_id}
    if f.lfs:
        entry["lfs"] = {"sha256": f.sha256, "size": len(f.data), "pointerSize": f.pointer_size}
    return entry


def _tree_entry(name: str, f: HubFile) -> dict:
    entry = {"type": "file", "path": name, "size": len(f.data), "oid": f.blob_id}
    if f.lfs:
        entry["lfs"] = {"oid": f.sha256, "size": len(f.data), "pointerSize": f.pointer_size}
    return entry
