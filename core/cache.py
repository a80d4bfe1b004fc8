"""Embedding cache: a raster's tile embeddings, so another task on the same tiles reads no pixels.

Key: the SHA-256 of a JSON identity made of

* the raster: for a file its absolute path, size in bytes and modification
  time (so an edited file is a new entry), for other sources their ``name``;
  plus width, height, band count, transform and CRS;
* the grid: tile size, unit, overlap, edge mode and extent (``tiles.spec_params``);
* the bands and the stretch (``Stretch.key()``);
* the model: the bundle's sha256 and the precision;
* this format's version.

Format (format_version 1): one entry per key in ``cache_dir``:

* ``<key>.npz``: ``kept`` (int64, indices into the grid of the tiles that were
  not all nodata) and ``emb`` (float32 (len(kept), D), unit vectors);
* ``<key>.json``: the identity above in plain words (raster, grid, bands,
  stretch, model), the number of tiles and the embedding size, the date.

Both files are written to a temporary name in the cache folder and renamed
into place (``os.replace``), the sidecar first: an ``.npz`` is only ever seen
complete. A damaged or unreadable entry counts as a miss. Nothing is evicted:
delete the folder (default ``~/.cache/remoteclip/embeddings``, or
``$REMOTECLIP_CACHE``) to reclaim space. A VRT is keyed by the VRT file itself,
so editing one of its source files without touching the VRT is not noticed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time

import numpy as np

from .errors import gdal_return_codes

__all__ = ["EmbeddingCache", "FORMAT_VERSION", "raster_identity"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


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
        st = os.stat(name)
        return [os.path.abspath(name), st.st_size, st.st_mtime_ns]
    low = name.lower()
    if low.startswith(_ARCHIVES):
        archive = _archive_of(name)
        if archive is None:
            return None
        st = os.stat(archive)
        return [name, os.path.abspath(archive), st.st_size, st.st_mtime_ns]
    if low.startswith(_REMOTE) or low.startswith(("http://", "https://")):
        validators = _remote_validators(name)
        return None if validators is None else [name, validators]
    return None


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

    def __init__(self, cache_dir):
        self.dir = os.fspath(cache_dir)
        self._identities: dict[str, dict] = {}

    def key(self, src, spec, bands, stretch, model_id: str) -> str | None:
        """The entry's key, or None when the raster cannot be cached (see raster_identity)."""
        from .tiles import spec_params

        raster = raster_identity(src)
        if raster is None:
            return None
        ident = {"format_version": FORMAT_VERSION, "raster": raster, "grid": spec_params(spec),
                 "bands": [int(b) for b in bands], "stretch": stretch.key(), "model": str(model_id)}
        text = json.dumps(ident, sort_keys=True)
        key = hashlib.sha256(text.encode()).hexdigest()
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
        except Exception as e:  # a damaged file is a miss, recomputed and rewritten
            log.warning("embedding cache entry %s is unreadable (%s); recomputing", npz, e)
            return None
        why = _entry_problem(kept, emb, n_grid, embed_dim)
        if why:
            log.warning("embedding cache entry %s is not usable (%s); recomputing", npz, why)
            return None
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
        try:
            os.makedirs(self.dir, exist_ok=True)
            _atomic_write(sidecar, lambda f: f.write(json.dumps(meta, indent=1).encode()))
            _atomic_write(npz, lambda f: np.savez(f, kept=kept, emb=emb))
        except OSError as e:
            log.warning("could not write the embedding cache entry %s: %s", npz, e)


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


def _atomic_write(path: str, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=os.path.basename(path)[-5:])
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
