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

__all__ = ["EmbeddingCache", "FORMAT_VERSION", "raster_identity"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


def raster_identity(src) -> dict:
    ident: dict = {}
    path = getattr(src, "path", None)
    if isinstance(path, str) and os.path.isfile(path):
        st = os.stat(path)
        ident.update(path=os.path.abspath(path), bytes=st.st_size, mtime_ns=st.st_mtime_ns)
    else:
        ident["name"] = str(src.name)
    ident.update(width=int(src.width), height=int(src.height), count=int(src.count),
                 transform=[float(v) for v in tuple(src.transform)[:6]], crs_wkt=src.crs_wkt or "")
    return ident


class EmbeddingCache:
    """Tile embeddings on disk, one ``.npz`` + ``.json`` per key (module docstring)."""

    def __init__(self, cache_dir):
        self.dir = os.fspath(cache_dir)
        self._identities: dict[str, dict] = {}

    def key(self, src, spec, bands, stretch, model_id: str) -> str:
        from .tiles import spec_params

        ident = {"format_version": FORMAT_VERSION, "raster": raster_identity(src), "grid": spec_params(spec),
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

    def load(self, key: str):
        """(kept int64 (n,), emb float32 (n, D)) or None (missing or damaged entry)."""
        npz, _ = self._paths(key)
        if not os.path.isfile(npz):
            return None
        try:
            with np.load(npz, allow_pickle=False) as z:
                kept = np.asarray(z["kept"], dtype=np.int64)
                emb = np.asarray(z["emb"], dtype=np.float32)
        except Exception as e:  # a damaged file is a miss, recomputed and rewritten
            log.warning("embedding cache entry %s is unreadable (%s); recomputing", npz, e)
            return None
        if kept.ndim != 1 or emb.ndim != 2 or len(kept) != len(emb):
            log.warning("embedding cache entry %s has inconsistent shapes; recomputing", npz)
            return None
        return kept, emb

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
