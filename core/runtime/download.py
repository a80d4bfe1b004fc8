"""Resumable, verified downloads of big files (model checkpoints) over a pluggable transport.

``download(url, dest, ...)`` writes ``dest.part`` and renames it to ``dest`` only after the size and
sha256 are checked, so ``dest`` is always a whole, verified file. An interrupted download keeps its
``.part`` and the next call resumes it with ``Range: bytes=N-`` (a 200 answer restarts from zero, a
206 must start at N). A file whose sha256 or size is wrong is named as such and removed.

The bytes come through a *transport*: ``transport(url, start, headers) -> Response`` with the HTTP
status, the headers (lower-case names) and an iterator of byte chunks (an empty chunk means "no data
yet": the caller gets a chance to check for cancel). ``urllib_transport`` (here) honours the
environment's proxy settings; the QGIS plugin passes one that goes through QGIS's network stack so
the user's proxy and authentication settings apply. ``file://`` URLs and local paths are read directly.

Expected sha256: the caller's (the catalogue's), else Hugging Face's ``X-Linked-Etag`` (the LFS
object's sha256, sent on the redirect to the file store), else an ETag that is a sha256.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import Cancelled, DownloadFailed, SourceUnreadable, VerificationFailed, WriteFailed
from .digest import file_sha256

CHUNK = 1 << 20
READ_TIMEOUT = 30.0     # seconds without a byte before a download is called stalled
_SHA = re.compile(r'^(?:W/)?"?([0-9a-fA-F]{64})"?$')
USER_AGENT = "remoteclip-qgis/0.1 (model download)"


@dataclass
class Response:
    status: int
    headers: dict[str, str]                  # lower-case names
    chunks: Iterable[bytes]
    close: Callable[[], None] = field(default=lambda: None)


Transport = Callable[[str, int, dict], Response]


# ---------------------------------------------------------------------------------------- transports

def urllib_transport(url: str, start: int, headers: dict, timeout: float = 60.0) -> Response:
    """GET with urllib: proxies from the environment (http_proxy, https_proxy, no_proxy), redirects
    followed, and the Hugging Face headers of the redirect responses (X-Linked-Etag/-Size) kept."""
    import urllib.error
    import urllib.request

    seen: list[dict] = []

    class Redirects(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req, fp, code, msg, hdrs, newurl):
            seen.append({k.lower(): v for k, v in hdrs.items()})
            return super().redirect_request(req, fp, code, msg, hdrs, newurl)

    # ProxyHandler() reads the environment at this call, so a changed proxy applies to the next download
    opener = urllib.request.build_opener(urllib.request.ProxyHandler(), Redirects())
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **headers})
    try:
        resp = opener.open(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        hdrs = {}
        for h in seen:   # a 416 after Hugging Face's redirect: its X-Linked-Etag still names the sha256
            hdrs.update({k: v for k, v in h.items() if k.startswith("x-linked-")})
        hdrs.update({k.lower(): v for k, v in e.headers.items()} if e.headers else {})
        e.close()
        return Response(e.code, hdrs, iter(()))
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DownloadFailed(f"Cannot reach {url} ({reason}).",
                              "Check the internet connection and proxy settings (http_proxy/https_proxy), "
                              "or download the file elsewhere and pass it with --url FILE.") from e
    hdrs = {}
    for h in seen:   # the redirect's X-Linked-* survive; the final response's own headers win otherwise
        hdrs.update({k: v for k, v in h.items() if k.startswith("x-linked-")})
    hdrs.update({k.lower(): v for k, v in resp.headers.items()})

    def chunks() -> Iterator[bytes]:
        # read1: what has arrived (up to CHUNK), so progress and cancel follow a slow connection
        read = getattr(resp, "read1", resp.read)
        while True:
            b = read(CHUNK)
            if not b:
                return
            yield b

    return Response(resp.status, hdrs, chunks(), resp.close)


def file_transport(url: str, start: int, headers: dict) -> Response:
    """A local file (path or file:// URL) served like an HTTP server would, Range included."""
    path = local_path(url)
    if path is None or not path.is_file():
        return Response(404, {}, iter(()))
    size = path.stat().st_size
    f = open(path, "rb")  # noqa: SIM115 (closed by the chunk iterator or Response.close)
    f.seek(start)

    def chunks() -> Iterator[bytes]:
        with f:
            while True:
                b = f.read(CHUNK)
                if not b:
                    return
                yield b

    if start:
        return Response(206, {"content-length": str(size - start), "content-range": f"bytes {start}-{size - 1}/{size}"},
                        chunks(), f.close)
    return Response(200, {"content-length": str(size)}, chunks(), f.close)


def local_path(url: str) -> Path | None:
    """The local file a --url names (a path or file:// URL), else None."""
    if url.startswith("file:"):
        from urllib.parse import unquote, urlsplit
        from urllib.request import url2pathname

        return Path(url2pathname(unquote(urlsplit(url).path)))
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", url):
        return None
    return Path(url).expanduser()


# ------------------------------------------------------------------------------------------ helpers

def sha256_of_headers(headers: dict) -> str | None:
    """Hugging Face's X-Linked-Etag (an LFS file's sha256), else an ETag that is a sha256."""
    for key in ("x-linked-etag", "etag"):
        m = _SHA.match(headers.get(key, "").strip())
        if m:
            return m.group(1).lower()
    return None


def _total_size(status: int, headers: dict, start: int) -> int | None:
    if status == 206:
        m = re.match(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", headers.get("content-range", ""))
        if m and m.group(3) != "*":
            return int(m.group(3))
    linked = headers.get("x-linked-size", "")
    if linked.isdigit():
        return int(linked)
    length = headers.get("content-length", "")
    if length.isdigit():
        return int(length) + (start if status == 206 else 0)
    return None


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


# ------------------------------------------------------------------------------------------ download

def download(url: str, dest, *, sha256: str | None = None, size: int | None = None,
             transport: Transport | None = None, progress=None, is_cancelled=None, retries: int = 3,
             retry_wait: float = 1.0, record: dict | None = None, read_timeout: float = READ_TIMEOUT) -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), verify size and sha256, rename into place.

    ``progress(fraction, message)``; ``is_cancelled()`` is checked per chunk: a cancel raises Cancelled
    and keeps ``dest.part`` for the next call to resume. A dropped connection is resumed up to
    ``retries`` times; a server that sends nothing for ``read_timeout`` seconds (urllib transport; a
    transport raises TimeoutError) ends the download with DownloadFailed at once, the part kept; a write
    that fails (a full disk) is a WriteFailed at once (``path``: the part, kept for the next call).
    ``record`` (a dict) is written beside the file as ``dest.json`` with the URL, size and sha256.
    Returns ``dest``.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if transport is None and local_path(url) is not None:
        transport = file_transport
    elif transport is None:
        def transport(u, start, headers):
            return urllib_transport(u, start, headers, timeout=read_timeout)
    expected_sha = sha256.lower() if sha256 else None
    expected_size = size
    attempt = 0
    while True:
        start = part.stat().st_size if part.exists() else 0
        if expected_size is not None and start > expected_size:
            part.unlink()   # longer than the file: not a prefix of it
            start = 0
        if expected_sha and expected_size is not None and start == expected_size and start > 0:
            break           # all bytes are here: verify below
        headers = {"Range": f"bytes={start}-"} if start else {}
        resp = transport(url, start, headers)
        try:
            if resp.status == 416 and start:
                # the part already reaches the end of the file, or the file changed: verify, or restart once
                m = re.match(r"bytes\s+\*/(\d+)", resp.headers.get("content-range", ""))
                if m and int(m.group(1)) == start:
                    expected_size = expected_size or start
                    expected_sha = expected_sha or sha256_of_headers(resp.headers)   # checked below
                    break
                part.unlink()
                attempt += 1
                if attempt > retries:
                    raise DownloadFailed(f"{url}: the server refuses to resume the download.",
                                          "Try again later, or download the file elsewhere and pass it with --url FILE.")
                continue
            if 300 <= resp.status < 400:   # urllib follows redirects: one left over is a loop (or too many)
                raise DownloadFailed(f"Download of {url} failed: the server redirects in a loop (HTTP "
                                     f"{resp.status}, {resp.headers.get('location', 'no Location')!r}).",
                                     "Check the mirror or the URL (--url, the catalogue's urls); the server "
                                     "is misconfigured, trying again will not help.")
            if resp.status not in (200, 206):
                raise DownloadFailed(f"Download of {url} failed: the server answered HTTP {resp.status}.",
                                      _status_fix(resp.status))
            expected_sha = expected_sha or sha256_of_headers(resp.headers)
            total = _total_size(resp.status, resp.headers, start)
            if expected_size is not None and total is not None and total != expected_size:
                what = "truncated" if total < expected_size else "larger than expected"
                raise VerificationFailed(
                    f"{url} is {what}: the server offers {total} bytes, the catalogue says {expected_size}.",
                    "Use the publisher's URL, or a mirror holding the same file.")
            expected_size = expected_size or total
            if resp.status == 206:
                m = re.match(r"bytes\s+(\d+)-", resp.headers.get("content-range", ""))
                if not m or int(m.group(1)) != start:
                    raise DownloadFailed(f"{url}: the server resumed at the wrong offset "
                                          f"({resp.headers.get('content-range')!r} for {start}).",
                                          "Delete the .part file and download again.")
                mode, done = "ab", start
            else:
                mode, done = "wb", 0    # a full answer (no Range support, or the file changed): start over
            # unbuffered: each write is checked as it happens and the part holds exactly the bytes counted
            with open(part, mode, buffering=0) as f:
                try:
                    for chunk in resp.chunks:
                        if is_cancelled is not None and is_cancelled():
                            raise Cancelled()
                        if not chunk:
                            continue
                        done = _write_all(f, chunk, part, done, expected_size)
                        if progress is not None:
                            frac = done / expected_size if expected_size else 0.0
                            progress(min(frac, 1.0), f"downloading {dest.name}: {_mib(done)}"
                                     + (f" of {_mib(expected_size)}" if expected_size else ""))
                except WriteFailed:
                    raise   # the disk, not the connection: retrying would fail the same way
                except TimeoutError as e:
                    interrupted = stalled = e   # the server stopped sending: no point waiting again
                except (OSError, EOFError, ValueError, http.client.HTTPException) as e:
                    interrupted, stalled = e, None     # connection dropped: resume below
                else:
                    interrupted = stalled = None
                try:
                    os.fsync(f.fileno())
                except OSError as e:
                    raise _write_failed(part, e, done, expected_size) from None
        finally:
            resp.close()
        if stalled is not None:
            raise DownloadFailed(
                f"Download of {dest.name} stalled: no data for {read_timeout:g} s from {url} (at {_mib(done)}"
                + (f" of {_mib(expected_size)}" if expected_size else "") + ").",
                f"Check the connection (or proxy) and run the same command again: it resumes from {_mib(done)} "
                f"({part}).", path=part)
        if interrupted is None and (expected_size is None or done >= expected_size):
            break
        attempt += 1
        reason = str(interrupted) if interrupted else "the connection closed early"
        if attempt > retries:
            raise DownloadFailed(
                f"Download of {dest.name} was interrupted at {_mib(done)}"
                + (f" of {_mib(expected_size)}" if expected_size else "") + f" ({reason}).",
                f"Run the same command again: it resumes from {_mib(done)} ({part}).", path=dest)
        time.sleep(retry_wait * attempt)

    got = part.stat().st_size
    if expected_size is not None and got != expected_size:
        part.unlink()
        raise VerificationFailed(f"Downloaded {dest.name} is corrupt: {got} bytes instead of {expected_size}; "
                              "it was removed.", "Download it again.", path=dest)
    if progress is not None:
        progress(1.0, f"checking {dest.name}")
    digest = file_sha256(part, is_cancelled=is_cancelled)
    if expected_sha and digest != expected_sha:
        part.unlink()
        raise VerificationFailed(
            f"Downloaded {dest.name} is corrupt: its sha256 is {digest}, expected {expected_sha}; it was removed.",
            "Download it again; if this repeats, the server or mirror holds a different file than the catalogue "
            "names.", path=dest)
    if record is not None:
        info = dict(record, url=url, size=got, sha256=digest, sha256_verified=bool(expected_sha),
                    downloaded=time.strftime("%Y-%m-%dT%H:%M:%S"))
        tmp = sidecar(dest).with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, sidecar(dest))
    os.replace(part, dest)
    return dest


def verify_file(path, *, sha256: str | None = None, size: int | None = None, progress=None,
                is_cancelled=None) -> str:
    """Check a local checkpoint (an air-gapped copy) against the catalogue; returns its sha256.
    The file is the user's: it is never removed, only named."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise SourceUnreadable(f"{path} is not a regular file (it leads to {path.resolve()}), so it is not a "
                               "checkpoint.", "Give the path of the downloaded .pt file.", path=path)
    if not path.is_file():
        raise SourceUnreadable(f"Checkpoint not found: {path}.", "Give the path of the downloaded .pt file.", path=path)
    got = path.stat().st_size
    if size is not None and got != size:
        what = "truncated" if got < size else "not the catalogue's file (larger)"
        raise VerificationFailed(f"{path} is {what}: {got} bytes, the catalogue says {size}.",
                              "Copy the whole file again from the publisher's URL.", path=path)
    digest = file_sha256(path, progress=progress, is_cancelled=is_cancelled, total=got)
    if sha256 and digest != sha256.lower():
        raise VerificationFailed(f"{path} is corrupt or a different file: its sha256 is {digest}, "
                              f"the catalogue says {sha256}.", "Copy the file again from the publisher's URL.", path=path)
    return digest


def _write_all(f, chunk: bytes, part: Path, done: int, expected_size: int | None) -> int:
    """Write ``chunk`` to the unbuffered ``f`` (a short write continued); a failed write (a full disk) is a
    WriteFailed at once. Returns the bytes in the part."""
    view = memoryview(chunk)
    while view:
        try:
            n = f.write(view)
        except OSError as e:
            raise _write_failed(part, e, done, expected_size) from None
        if not n:
            raise _write_failed(part, OSError("nothing was written"), done, expected_size)
        done += n
        view = view[n:]
    return done


def _write_failed(part: Path, e: OSError, done: int, expected_size: int | None) -> WriteFailed:
    need = f" (the whole file is {_mib(expected_size)})" if expected_size else ""
    return WriteFailed(f"Writing the download {part} failed at {_mib(done)}: {e.strerror or e}.",
                       f"Free space on its disk{need} and run the same command again: it resumes from "
                       f"{_mib(done)}.", path=part)


def _status_fix(status: int) -> str:
    if status in (401, 403):
        return "The server refused access: check the URL, or sign in / configure authentication for it."
    if status == 404:
        return "The file is not there: check the URL (--url) or update the plugin's catalogue."
    if status == 407:
        return "The proxy wants authentication: set it in http_proxy/https_proxy (or QGIS's network settings)."
    return "Try again later, or download the file elsewhere and pass it with --url FILE."


def remove_quietly(*paths: Path) -> None:
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
