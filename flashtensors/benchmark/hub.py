"""A Hugging Face Hub on loopback for ``flashtensors bench --hub``: a small Python resolver
in front of nginx, laid out as the real Hub is. The resolver answers the API calls
huggingface_hub and flashtensors make (``/api/models/{repo}[/revision/{rev}]``, ``/tree/``)
and the ``resolve`` URLs: small files it serves itself, weights (LFS files) it answers with
a 302 to the CDN, signed and expiring as the Hub's are. The CDN is nginx serving the blobs
by sha256, capped per connection (``limit_rate``) as the Hub's CDN caps each connection,
so that only the data path is timed, never a Python server.

Example:
    >>> with BenchHub("bench/model-1g", "/tmp/m", "/tmp/blobs", limit_rate="100m") as hub:  # doctest: +SKIP
    ...     os.environ["HF_ENDPOINT"] = hub.url       # before huggingface_hub is imported
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .nginx import Nginx

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


class BenchHub:
    """Model repo ``repo_id`` holding the files of ``model_dir`` (one commit, on ``main``),
    its Hub at ``.url``; the CDN (nginx over ``blob_dir``, filled with links named by each
    weight file's sha256) at ``.cdn_url``, capped at ``limit_rate`` per connection."""

    def __init__(self, repo_id: str, model_dir: str, blob_dir: str, *, limit_rate: str | None = None):
        self.repo_id = repo_id
        self.files = {}  # name -> (path, size, sha256 or None for a small file)
        for name in sorted(os.listdir(model_dir)):
            path = os.path.join(model_dir, name)
            if os.path.isfile(path) and not name.startswith("."):
                lfs = name.endswith(LFS_SUFFIXES)
                self.files[name] = (path, os.path.getsize(path), _sha256_of(path) if lfs else None)
        os.makedirs(blob_dir, exist_ok=True)
        for path, _, sha in self.files.values():
            if sha and not os.path.lexists(os.path.join(blob_dir, sha)):
                os.symlink(os.path.abspath(path), os.path.join(blob_dir, sha))
        self.commit = hashlib.sha1(json.dumps(sorted((n, s, h) for n, (_, s, h) in self.files.items()))
                                   .encode()).hexdigest()
        self.cdn = Nginx(blob_dir, limit_rate=limit_rate)
        self.resolves = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.cdn_url = self.cdn.url

    def weight_files(self) -> list:
        """``(name, size, sha256)`` of each weight file (LFS file), whose blob the CDN serves at ``/<sha256>``."""
        return [(n, size, sha) for n, (_, size, sha) in self.files.items() if sha]

    def sign(self, sha256: str) -> str:
        expires = int(time.time()) + 3600
        signature = hashlib.sha256(f"{sha256}:{expires}".encode()).hexdigest()
        return f"{self.cdn_url}/{sha256}?Expires={expires}&Signature={signature}"

    def listing(self, blobs: bool) -> dict:
        siblings = []
        for name, (path, size, sha) in self.files.items():
            entry = {"rfilename": name}
            if blobs:
                entry.update(size=size, blobId=git_blob_id(lfs_pointer(sha, size) if sha else _read(path)))
                if sha:
                    entry["lfs"] = {"sha256": sha, "size": size, "pointerSize": len(lfs_pointer(sha, size))}
            siblings.append(entry)
        return {"_id": self.repo_id, "id": self.repo_id, "modelId": self.repo_id, "sha": self.commit,
                "private": False, "gated": False, "disabled": False, "tags": [], "siblings": siblings,
                "lastModified": "2026-01-01T00:00:00.000Z"}

    def tree(self) -> list:
        out = []
        for entry in self.listing(blobs=True)["siblings"]:
            item = {"type": "file", "path": entry["rfilename"], "size": entry["size"], "oid": entry["blobId"]}
            if "lfs" in entry:
                item["lfs"] = {"oid": entry["lfs"]["sha256"], "size": entry["size"],
                               "pointerSize": entry["lfs"]["pointerSize"]}
            out.append(item)
        return out

    def __enter__(self) -> BenchHub:
        self.cdn.__enter__()
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.cdn.__exit__(*exc)


def _handler(hub: BenchHub):
    class Resolver(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_HEAD(self):
            self.do_GET()

        def do_GET(self):
            path, _, query = self.path.partition("?")
            parts = [urllib.parse.unquote(p) for p in path.split("/")[1:]]
            if parts[:2] == ["api", "models"] and "/".join(parts[2:4]) == hub.repo_id:
                if len(parts) >= 6 and parts[4] == "tree":
                    return self.answer(200, json.dumps(hub.tree()).encode(), {"Content-Type": "application/json"})
                blobs = "blobs=true" in query.lower()
                return self.answer(200, json.dumps(hub.listing(blobs)).encode(), {"Content-Type": "application/json"})
            if len(parts) >= 5 and "/".join(parts[:2]) == hub.repo_id and parts[2] == "resolve":
                return self.resolve("/".join(parts[4:]))
            self.answer(404, b'{"error": "not found"}', {"X-Error-Code": "EntryNotFound"})

        def resolve(self, name: str):
            hub.resolves += 1
            if name not in hub.files:
                return self.answer(404, b'{"error": "no such file"}', {"X-Error-Code": "EntryNotFound"})
            path, size, sha = hub.files[name]
            headers = {"X-Repo-Commit": hub.commit}
            if sha is None:
                data = _read(path)
                return self.answer(200, data, {**headers, "ETag": f'"{git_blob_id(data)}"', "Accept-Ranges": "bytes"})
            self.answer(302, b"", {**headers, "ETag": f'"{git_blob_id(lfs_pointer(sha, size))}"',
                                   "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(size), "Location": hub.sign(sha)})

        def answer(self, status: int, body: bytes, headers: dict) -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

    return Resolver


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _sha256_of(path: str) -> str:
    """The file's sha256, kept beside it (``.<name>.sha256``) so a reused model is hashed once."""
    keep = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.sha256")
    if os.path.exists(keep) and os.path.getmtime(keep) >= os.path.getmtime(path):
        return _read(keep).decode().strip()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(16 << 20):
            digest.update(chunk)
    with open(keep, "w") as f:
        f.write(digest.hexdigest())
    return digest.hexdigest()


def git_blob_id(data: bytes) -> str:
    """A file's git object ID (the Hub's ETag of a file kept in git)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git LFS pointer kept in git in place of a weight file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
