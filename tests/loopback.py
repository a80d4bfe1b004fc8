"""Loopback HTTP servers for the download tests: a file server that behaves like Hugging Face
(Range requests, 206/416, a /resolve/ URL that redirects to a file store with the LFS sha256 in
X-Linked-Etag) with a chosen latency per chunk and connection drops on demand, and a forwarding
HTTP proxy. Both bind 127.0.0.1 on a free port, run in a thread and record every request.
"""

from __future__ import annotations

import hashlib
import http.client
import http.server
import re
import socket
import threading
import time
import urllib.parse
from pathlib import Path


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):   # quiet
        pass

    def do_GET(self):
        srv: FileServer = self.server.owner
        path = urllib.parse.urlsplit(self.path).path
        srv.requests.append({"path": path, "range": self.headers.get("Range"), "headers": dict(self.headers)})
        if path.startswith("/loop/"):          # a mirror misconfigured into a redirect loop
            self.send_response(302)
            self.send_header("Location", path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path.startswith("/resolve/"):
            name = path[len("/resolve/"):]
            if name not in srv.files:
                return self._empty(404)
            self.send_response(302)
            self.send_header("Location", f"/cdn/{name}")
            self.send_header("X-Linked-Etag", f'"{srv.linked_etag.get(name) or srv.sha256(name)}"')
            self.send_header("X-Linked-Size", str(srv.size(name)))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        name = path.rsplit("/", 1)[-1]
        if name not in srv.files:
            return self._empty(404)
        data = srv.data(name)
        size = len(data)
        start, status = 0, 200
        rng = self.headers.get("Range")
        if rng and srv.ranges:
            m = re.match(r"bytes=(\d+)-$", rng)
            if not m:
                return self._empty(400)
            start = int(m.group(1))
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        self.send_response(status)
        self.send_header("Content-Length", str(size - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        if path.startswith("/cdn/"):
            self.send_header("ETag", '"cdn-object-1"')      # a file store's own ETag: not the sha256
        elif srv.etag:
            self.send_header("ETag", f'"{srv.etag_value(name)}"')
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        drop_at = srv.next_drop()
        sent = start
        try:
            while sent < size:
                n = min(srv.chunk, size - sent)
                if drop_at is not None and sent + n > drop_at:
                    n = max(drop_at - sent, 0)
                    self.wfile.write(data[sent:sent + n])
                    self.wfile.flush()
                    srv.dropped.append(sent + n)
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(data[sent:sent + n])
                self.wfile.flush()
                sent += n
                if srv.latency:
                    time.sleep(srv.latency)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _empty(self, status):
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


class FileServer:
    """``files``: name -> path or bytes, served at /files/NAME and /resolve/NAME (-> 302 /cdn/NAME);
    /loop/NAME redirects to itself. ``latency`` seconds pass after each chunk sent."""

    def __init__(self, files: dict, latency: float = 0.0, chunk: int = 64 * 1024, etag: bool = True,
                 ranges: bool = True):
        self.files = dict(files)
        self.latency = latency
        self.chunk = chunk
        self.etag = etag
        self.etag_override: dict[str, str] = {}
        self.linked_etag: dict[str, str] = {}     # X-Linked-Etag values that differ from the served bytes
        self.ranges = ranges
        self.requests: list[dict] = []
        self.dropped: list[int] = []
        self.drops: list[int] = []       # byte offsets at which the next responses close the connection
        self._cache: dict[str, bytes] = {}
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def url(self, name: str, kind: str = "files") -> str:
        return f"http://127.0.0.1:{self.port}/{kind}/{name}"

    def data(self, name: str) -> bytes:
        if name not in self._cache:
            v = self.files[name]
            self._cache[name] = v if isinstance(v, bytes) else Path(v).read_bytes()
        return self._cache[name]

    def size(self, name: str) -> int:
        return len(self.data(name))

    def sha256(self, name: str) -> str:
        return hashlib.sha256(self.data(name)).hexdigest()

    def etag_value(self, name: str) -> str:
        return self.etag_override.get(name) or self.sha256(name)

    def next_drop(self):
        return self.drops.pop(0) if self.drops else None

    def range_starts(self) -> list[int]:
        return [int(r["range"].split("=")[1].rstrip("-")) for r in self.requests if r["range"]]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        proxy: Proxy = self.server.owner
        proxy.requests.append({"url": self.path, "range": self.headers.get("Range")})
        target = urllib.parse.urlsplit(self.path)     # a proxy gets the absolute URL
        conn = http.client.HTTPConnection(target.hostname, target.port or 80, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("proxy-connection", "connection")}
        headers["Via"] = "1.1 test-proxy"
        conn.request("GET", target.path + (f"?{target.query}" if target.query else ""), headers=headers)
        resp = conn.getresponse()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("connection", "transfer-encoding"):
                self.send_header(k, v)
        self.end_headers()
        while True:
            b = resp.read(64 * 1024)
            if not b:
                break
            self.wfile.write(b)
        conn.close()


class Proxy:
    def __init__(self):
        self.requests: list[dict] = []
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ProxyHandler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
