"""Embedding cache: a raster's tile embeddings, so another task on the same tiles reads no pixels.

Key: the SHA-256 of a JSON identity made of

* the raster: every file GDAL reads for it (the file itself, a VRT's sources,
  ``.aux.xml``, ``.msk``), each by absolute path, size in bytes, modification
  time, change time and inode (so an edited file is a new entry, even one whose
  modification time was set back); for other sources their ``name``; plus
  width, height, band count, transform and CRS;
* the grid: tile size, unit, overlap, edge mode and extent (``tiles.spec_params``);
* the bands and the stretch (``Stretch.key()``);
* the model: the bundle's sha256 and the precision;
* this format's version.

Format (format_version 2): one entry per key in ``cache_dir``:

* ``<key>.npz``: ``kept`` (int64, indices into the grid of the tiles that were
  not all nodata), ``emb`` (float32 (len(kept), D), unit vectors) and ``check``
  (the SHA-256 of both in order: rows moved inside the file are a miss);
* ``<key>.json``: the identity above in plain words (raster, grid, bands,
  stretch, model), the number of tiles and the embedding size, the date.

Both files are written to a temporary name in the cache folder and renamed
into place (``os.replace``), the sidecar first: an ``.npz`` is only ever seen
complete. A damaged or unreadable entry counts as a miss. An entry that cannot
be written (a full disk) is a warning, never a failed run, and leaves nothing
behind; temporaries of writers killed mid-write (``.tmp-PID-*``, the process
gone) are removed when the cache is opened or pruned.

Size: the folder (default ``~/.cache/remoteclip/embeddings``, or
``$REMOTECLIP_CACHE``) holds at most ``max_bytes`` of entries (default 2 GiB,
or ``$REMOTECLIP_CACHE_MAX`` such as ``500M``, ``5G``, ``none``). After each
write the entries used longest ago go first (a hit marks its entry used), never
the one just written. ``clear()`` removes every entry; only files named like
entries are touched, nothing else in the folder. ``remoteclip cache`` shows,
prunes and clears it from the command line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from .errors import gdal_return_codes

__all__ = ["EmbeddingCache", "FORMAT_VERSION", "raster_identity", "default_cache_dir", "default_max_bytes",
           "parse_size", "format_size", "CacheEntry", "DEFAULT_MAX_BYTES"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
DEFAULT_MAX_BYTES = 2 * 1024 ** 3
_KEY = re.compile(r"^[0-9a-f]{64}$")
_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "KIB": 1024, "M": 1024 ** 2, "MB": 1024 ** 2, "MIB": 1024 ** 2,
          "G": 1024 ** 3, "GB": 1024 ** 3, "GIB": 1024 ** 3, "T": 1024 ** 4, "TB": 1024 ** 4, "TIB": 1024 ** 4}


def default_cache_dir() -> str:
    """``$REMOTECLIP_CACHE``, else ``remoteclip/embeddings`` in ``$XDG_CACHE_HOME`` or ``~/.cache``."""
    if os.environ.get("REMOTECLIP_CACHE"):
        return os.environ["REMOTECLIP_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "remoteclip", "embeddings")


def parse_size(text: str | int | float | None) -> int | None:
    """Bytes from '500M', '2G', '1.5 GB', '4096' (binary units); None for 'none' or 'unlimited' (no limit)."""
    if text is None:
        return None
    if isinstance(text, int | float) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        t = str(text).strip().upper()
        if t in ("NONE", "UNLIMITED", "OFF"):
            return None
        m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*([A-Z]*)", t)
        if m is None or m.group(2) not in _UNITS:
            from .errors import InvalidInput

            raise InvalidInput(f"{text!r} is not a size.", "Give a size such as 500M, 2G or 'none' (no limit).")
        value, unit = float(m.group(1)), m.group(2)
    if value < 0:
        from .errors import InvalidInput

        raise InvalidInput(f"The size {text!r} is negative.", "Give a size such as 500M or 2G.")
    return int(value * _UNITS[unit])


def default_max_bytes() -> int | None:
    """``$REMOTECLIP_CACHE_MAX`` (see parse_size), else DEFAULT_MAX_BYTES."""
    env = os.environ.get("REMOTECLIP_CACHE_MAX")
    return DEFAULT_MAX_BYTES if not env else parse_size(env)


def format_size(n: int | None) -> str:
    if n is None:
        return "no limit"
    for unit, scale in (("GB", 1024 ** 3), ("MB", 1024 ** 2), ("kB", 1024)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


@dataclass
class CacheEntry:
    key: str
    bytes: int            # the .npz and its .json
    last_used: float      # the .npz's modification time: written, or last read by a hit


_ARCHIVES = ("/vsizip/", "/vsitar/", "/vsigzip/", "/vsi7z/", "/vsirar/")
_REMOTE = ("/vsicurl/", "/vsis3/", "/vsigs/", "/vsiaz/", "/vsiadls/", "/vsioss/", "/vsiswift/", "/vsiwebhdfs/")


def raster_identity(src) -> dict | None:
    """What identifies a raster's content, or None when nothing that changes with the content can be
    read (a web map, a URI without validators): such a source is not cached.

    Every file GDAL reads for the dataset counts (a VRT's sources, ``.aux.xml``, ``.msk``), each by
    size and modification time; a file inside an archive by the archive's; a file on a server by its
    validators (ETag, Last-Modified, size)."""
    path = getattr(src, "path", None)
    if not isinstance(path, str) or not path:
        return None
    files = []
    for name in _dataset_files(path):
        stamp = file_stamp(name)
        if stamp is None:
            return None
        files.append(stamp)
    ident: dict = {"path": os.path.abspath(path) if os.path.isfile(path) else path, "files": files}
    ident.update(width=int(src.width), height=int(src.height), count=int(src.count),
                 transform=[float(v) for v in tuple(src.transform)[:6]], crs_wkt=src.crs_wkt or "")
    return ident


@gdal_return_codes()
def _dataset_files(path: str) -> list[str]:
    """The files GDAL reads for the raster at ``path`` (the path itself when GDAL cannot list them)."""
    try:
        from osgeo import gdal
    except ImportError:
        return [path]
    gdal.PushErrorHandler("CPLQuietErrorHandler")
    try:
        ds = gdal.OpenEx(path, gdal.OF_RASTER | gdal.OF_READONLY)
        files = list(ds.GetFileList() or []) if ds is not None else []
    finally:
        gdal.PopErrorHandler()
    ds = None
    return files or [path]


def file_stamp(name: str) -> list | None:
    """[name, size, mtime or validators] of one file the raster is read from, or None when its content
    cannot be checked for changes."""
    if os.path.isfile(name):
        return [os.path.abspath(name), *_stat_stamp(os.stat(name))]
    low = name.lower()
    if low.startswith(_ARCHIVES):
        archive = _archive_of(name)
        if archive is None:
            return None
        return [name, os.path.abspath(archive), *_stat_stamp(os.stat(archive))]
    if low.startswith(_REMOTE) or low.startswith(("http://", "https://")):
        validators = _remote_validators(name)
        return None if validators is None else [name, validators]
    return None


def _stat_stamp(st) -> list[int]:
    """Size, modification time, and what tells an edit whose modification time was set back (``touch -r``,
    tools that keep times): the change time (set by the system on every write or ``utime``, never by hand)
    and the file's identity (device, inode: a file replaced by another). One stat, as cheap as before."""
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_dev, st.st_ino]


def _archive_of(name: str) -> str | None:
    """The local archive of a /vsizip/ (/vsitar/, ...) path: /vsizip//data/a.zip/b/c.tif -> /data/a.zip
    (also the /vsizip/{/data/a.zip}/c.tif form); None for an archive that is not a local file."""
    prefix = next(p for p in _ARCHIVES if name.lower().startswith(p))
    rest = name[len(prefix):]
    if rest.startswith("{"):
        end = rest.find("}")
        inner = rest[1:end] if end > 0 else ""
        return inner if os.path.isfile(inner) else None
    parts = rest.split("/")
    for i in range(len(parts), 0, -1):   # the longest prefix that is a file
        cand = "/".join(parts[:i])
        if cand and os.path.isfile(cand):
            return cand
    return None


@gdal_return_codes()
def _remote_validators(name: str) -> dict | None:
    """ETag, Last-Modified and size of a file on a server (GDAL's /vsicurl/ and friends), asked anew
    (GDAL's own cache of them is cleared first), or None when the server gives none of them."""
    try:
        from osgeo import gdal
    except ImportError:
        return None
    url = name if name.lower().startswith("/vsi") else "/vsicurl/" + name
    gdal.PushErrorHandler("CPLQuietErrorHandler")
    try:
        if hasattr(gdal, "VSICurlPartialClearCache"):
            gdal.VSICurlPartialClearCache(url)
        headers = gdal.GetFileMetadata(url, "HEADERS") or {}
        st = gdal.VSIStatL(url)
    finally:
        gdal.PopErrorHandler()
    low = {str(k).lower(): str(v) for k, v in headers.items()}
    out = {k: low[k] for k in ("etag", "last-modified", "content-length") if low.get(k)}
    if st is not None and not out:
        out = {"size": int(st.size), "mtime": int(st.mtime)}
    if not out.get("etag") and not out.get("last-modified") and not out.get("mtime"):
        return None   # a size alone does not change with an edit of the same size
    return out


class EmbeddingCache:
    """Tile embeddings on disk, one ``.npz`` + ``.json`` per key (module docstring)."""

    def __init__(self, cache_dir=None, max_bytes: int | str | None = "default"):
        self.dir = os.fspath(cache_dir) if cache_dir else default_cache_dir()
        self.max_bytes = default_max_bytes() if max_bytes == "default" else parse_size(max_bytes)
        self._identities: dict[str, dict] = {}
        self.remove_dead_temps()

    def remove_dead_temps(self) -> list[str]:
        """Remove the temporaries that writers killed mid-write left in the folder: those whose process (the
        id in the name) is gone, and those of unnamed writers (earlier versions) older than a day. A live
        writer's temporary stays. Returns the removed paths."""
        from .geodata.vectors import remove_dead_temps

        removed = remove_dead_temps(self.dir, _TEMP_PID.pattern)
        with contextlib.suppress(OSError):
            for name in os.listdir(self.dir):
                path = os.path.join(self.dir, name)
                if _TEMP_OLD.fullmatch(name) and not _TEMP_PID.fullmatch(name) and os.path.isfile(path) \
                        and time.time() - os.lstat(path).st_mtime > _OLD_TEMP_AGE:
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                        removed.append(path)
        return removed

    def key(self, src, spec, bands, stretch, model_id: str) -> str | None:
        """The entry's key, or None when the raster cannot be cached (see raster_identity)."""
        from .geodata.tiles import spec_params

        raster = raster_identity(src)
        if raster is None:
            return None
        ident = {"format_version": FORMAT_VERSION, "raster": raster, "grid": spec_params(spec),
                 "bands": [int(b) for b in bands], "stretch": stretch.key(), "model": str(model_id)}
        text = json.dumps(ident, sort_keys=True)
        key = hashlib.sha256(text.encode()).hexdigest()
        self._identities[key] = ident
        return key

    def key_for(self, ident: dict) -> str | None:
        """The key of an identity made by the caller (a raster read in another raster's grid:
        core.pipeline.dates), with this format's version; None when ``ident`` holds a None (not cacheable)."""
        if any(v is None for v in ident.values()):
            return None
        ident = {"format_version": FORMAT_VERSION, **ident}
        key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()
        self._identities[key] = ident
        return key

    def _paths(self, key: str) -> tuple[str, str]:
        if not key or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"not a cache key: {key!r}")
        base = os.path.join(self.dir, key)
        return base + ".npz", base + ".json"

    def load(self, key: str, n_grid: int | None = None, embed_dim: int | None = None):
        """(kept int64 (n,), emb float32 (n, D)) or None: a missing entry, or one that is damaged or does
        not fit (indices outside the grid of ``n_grid`` tiles, repeated or unsorted, another embedding
        size, values that are not unit vectors). A bad entry is a miss; the run rewrites it."""
        npz, _ = self._paths(key)
        if not os.path.isfile(npz):
            return None
        try:
            with np.load(npz, allow_pickle=False) as z:
                kept = np.asarray(z["kept"])
                emb = np.asarray(z["emb"])
                check = np.asarray(z["check"]) if "check" in z.files else None
        except Exception as e:  # a damaged file is a miss, recomputed and rewritten
            log.warning("embedding cache entry %s is unreadable (%s); recomputing", npz, e)
            return None
        why = _entry_problem(kept, emb, n_grid, embed_dim)
        if why is None and (check is None or check.tobytes() != _rows_digest(kept, emb)):
            why = "its rows do not match their checksum (moved, changed or missing)"
        if why:
            log.warning("embedding cache entry %s is not usable (%s); recomputing", npz, why)
            return None
        with contextlib.suppress(OSError):   # used now: the last to be evicted
            os.utime(npz)
        return kept.astype(np.int64), emb.astype(np.float32)

    def save(self, key: str, kept, emb) -> None:
        """Write the entry atomically. A cache that cannot be written only loses the speed-up."""
        kept = np.asarray(kept, dtype=np.int64)
        emb = np.asarray(emb, dtype=np.float32)
        npz, sidecar = self._paths(key)
        meta = {"format": "remoteclip-embedding-cache", **self._identities.get(key, {"format_version":
                                                                                     FORMAT_VERSION}),
                "key": key, "n_tiles": int(len(kept)), "embed_dim": int(emb.shape[1]) if emb.ndim == 2 else 0,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        check = np.frombuffer(_rows_digest(kept, emb), dtype=np.uint8)
        try:
            os.makedirs(self.dir, exist_ok=True)
            _atomic_write(sidecar, lambda f: f.write(json.dumps(meta, indent=1).encode()))
            _atomic_write(npz, lambda f: _write_npz(f, kept=kept, emb=emb, check=check))
        except OSError as e:   # a full disk: the run goes on without the entry, none of it is left
            with contextlib.suppress(OSError):
                self._remove(key)
            log.warning("could not write the embedding cache entry %s (the run is not affected): %s", npz,
                        e.strerror or e)
            return
        if self.max_bytes is not None:
            self.prune(self.max_bytes, keep=(key,))

    # ------------------------------------------------------------------------------------- size

    def entries(self) -> list[CacheEntry]:
        """The folder's entries, used longest ago first."""
        out = []
        try:
            names = os.listdir(self.dir)
        except OSError:
            return []
        for name in names:
            stem, ext = os.path.splitext(name)
            if ext != ".npz" or not _KEY.match(stem):
                continue
            npz, sidecar = self._paths(stem)
            try:
                st = os.stat(npz)
            except OSError:
                continue
            size = st.st_size + (os.path.getsize(sidecar) if os.path.isfile(sidecar) else 0)
            out.append(CacheEntry(stem, size, st.st_mtime))
        return sorted(out, key=lambda e: (e.last_used, e.key))

    def size(self) -> int:
        return sum(e.bytes for e in self.entries())

    def _remove(self, key: str) -> bool:
        npz, sidecar = self._paths(key)
        removed = False
        for path in (npz, sidecar):   # the .npz first: a sidecar alone is never read
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                removed = True
        return removed

    def prune(self, max_bytes: int | None = None, keep=()) -> list[str]:
        """Remove the entries used longest ago until the folder holds at most ``max_bytes`` (default: this
        cache's limit; None: no limit) of entries, never those in ``keep``, and the temporaries of killed
        writers. Returns the removed keys."""
        self.remove_dead_temps()
        limit = self.max_bytes if max_bytes is None else max_bytes
        if limit is None:
            return []
        entries = self.entries()
        total = sum(e.bytes for e in entries)
        removed = []
        for e in entries:
            if total <= limit:
                break
            if e.key in keep:
                continue
            try:
                self._remove(e.key)
            except OSError as err:   # in use elsewhere (Windows), read-only: the next run tries again
                log.warning("could not remove the cache entry %s: %s", e.key, err)
                continue
            total -= e.bytes
            removed.append(e.key)
        if removed:
            log.info("embedding cache: removed %d entries used longest ago (limit %s)", len(removed),
                     format_size(limit))
        return removed

    def clear(self) -> tuple[int, int]:
        """Remove every entry (only files named like entries). Returns (entries, bytes) removed."""
        n = freed = 0
        for e in self.entries():
            try:
                if self._remove(e.key):
                    n += 1
                    freed += e.bytes
            except OSError as err:
                log.warning("could not remove the cache entry %s: %s", e.key, err)
        with contextlib.suppress(OSError):   # sidecars whose .npz never arrived (a killed write)
            for name in os.listdir(self.dir):
                stem, ext = os.path.splitext(name)
                if ext == ".json" and _KEY.match(stem) and not os.path.exists(os.path.join(self.dir, stem + ".npz")):
                    freed += os.path.getsize(os.path.join(self.dir, name))
                    os.unlink(os.path.join(self.dir, name))
        return n, freed


def _entry_problem(kept, emb, n_grid, embed_dim) -> str | None:
    if kept.ndim != 1 or emb.ndim != 2 or len(kept) != len(emb):
        return "inconsistent shapes"
    if kept.dtype.kind not in "iu" or emb.dtype.kind != "f":
        return "wrong data types"
    if embed_dim is not None and emb.shape[1] != embed_dim:
        return f"embeddings of size {emb.shape[1]}, the model's are {embed_dim}"
    if len(kept):
        if kept.min() < 0 or (n_grid is not None and kept.max() >= n_grid):
            return "tile indices outside the grid"
        if np.any(np.diff(kept) <= 0):
            return "tile indices repeated or out of order"
        if not np.isfinite(emb).all():
            return "values that are not finite"
        if np.abs(np.linalg.norm(emb.astype(np.float64), axis=1) - 1.0).max() > 1e-3:
            return "embeddings that are not unit vectors"
    return None


def _rows_digest(kept, emb) -> bytes:
    """SHA-256 of an entry's rows in their order: rows moved, dropped or changed inside the file show."""
    h = hashlib.sha256(np.ascontiguousarray(kept, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(emb, dtype="<f4").tobytes())
    return h.digest()


def _write_npz(f, **arrays) -> None:
    """``np.savez(f, **arrays)``, the archive closed on a failed write too: np.savez leaves it open, and its
    finaliser then writes into the closed file and prints a traceback ("seek of closed file")."""
    import zipfile

    zf = zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True)
    try:
        for name, value in arrays.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
    except BaseException:
        with contextlib.suppress(Exception):
            zf.close()   # fails again on a full disk, but lets go of the file
        raise
    zf.close()


_TEMP_PID = re.compile(r"\.tmp-(\d+)-[a-z0-9_]{8}.*")   # _atomic_write's temporaries, with the writer's pid
_TEMP_OLD = re.compile(r"\.tmp-[a-z0-9_]{8}.*")          # an earlier version's, without it
_OLD_TEMP_AGE = 24 * 3600


def _atomic_write(path: str, write, prefix: str | None = None, suffix: str | None = None) -> None:
    """Write ``path`` through a temporary file beside it. ``prefix``/``suffix``: the temporary's name, e.g. one a
    later run recognises (with the writer's process id) and removes when a kill left it behind; by default
    ``.tmp-PID-`` (the cache's own, see EmbeddingCache.remove_dead_temps)."""
    if prefix is None:
        prefix = f".tmp-{os.getpid()}-"
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=prefix,
                               suffix=os.path.basename(path)[-5:] if suffix is None else suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
