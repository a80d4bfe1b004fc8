"""A file server on 127.0.0.1 for tests: serves the files of a folder with Range requests, and with
validators (ETag, Last-Modified) that can be switched off, as static hosts and object stores do.

It runs in a child process: GDAL's /vsicurl/ reads (through rasterio) hold the GIL while they wait
for the server, so a server thread in the reading process would never answer."""

from __future__ import annotations

import email.utils
import hashlib
import http.server
import os
from pathlib import Path


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "loopback/1"

    def log_message(self, *args):   # keep test output clean
        pass

    def _file(self) -> Path | None:
        rel = self.path.split("?", 1)[0].lstrip("/")
        p = (self.server.root / rel).resolve()
        return p if p.is_file() and p.is_relative_to(self.server.root) else None

    def _headers(self, p: Path, length: int, status: int, extra: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        if self.server.validators:
            data = p.read_bytes()
            self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest()[:32] + '"')
            self.send_header("Last-Modified", email.utils.formatdate(os.stat(p).st_mtime, usegmt=True))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()

    def do_HEAD(self):
        self.server.requests.append(("HEAD", self.path, self.headers.get("Range")))
        p = self._file()
        if p is None:
            self.send_error(404)
            return
        self._headers(p, p.stat().st_size, 200)

    def do_GET(self):
        self.server.requests.append(("GET", self.path, self.headers.get("Range")))
        p = self._file()
        if p is None:
            self.send_error(404)
            return
        data = p.read_bytes()
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start_s, _, end_s = rng[6:].partition("-")
            start = int(start_s)
            end = min(int(end_s) if end_s else len(data) - 1, len(data) - 1)
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            body = data[start:end + 1]
            self._headers(p, len(body), 206, {"Content-Range": f"bytes {start}-{end}/{len(data)}"})
        else:
            body = data
            self._headers(p, len(body), 200)
        self.wfile.write(body)


class FileServer:
    """``with FileServer(folder) as srv: srv.url("a.tif")``; ``validators=False`` sends no ETag or
    Last-Modified."""

    def __init__(self, root, validators: bool = True):
        self.root, self.validators = str(root), validators
        self.proc = None
        self.port = None

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def __enter__(self):
        import subprocess
        import sys

        self.proc = subprocess.Popen([sys.executable, __file__, self.root, "1" if self.validators else "0"],
                                     stdout=subprocess.PIPE, text=True)
        self.port = int(self.proc.stdout.readline())
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(10)
        self.proc.stdout.close()


def serve(root: str, validators: bool) -> None:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.root = Path(root).resolve()
    httpd.validators = validators
    httpd.requests = []
    print(httpd.server_address[1], flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    import sys

    serve(sys.argv[1], sys.argv[2] == "1")
