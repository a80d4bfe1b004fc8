"""A file's sha256, read in blocks: the one definition (downloads, conversions, bundles, training's checkpoints)."""

from __future__ import annotations

import hashlib

from ..errors import Cancelled

__all__ = ["CHUNK", "file_sha256", "hash_file"]

CHUNK = 1 << 20   # bytes read at a time


def hash_file(h, path, progress=None, is_cancelled=None, done: int = 0, total: int | None = None) -> int:
    """Feed the bytes of ``path`` to the hash ``h``; returns ``done`` plus the bytes read. ``progress(fraction,
    message)`` hears after each block how far ``done`` is of ``total``; ``is_cancelled()`` stops it (Cancelled)."""
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
            done += len(chunk)
            if is_cancelled is not None and is_cancelled():
                raise Cancelled()
            if progress is not None and total:
                progress(done / total, f"checking {getattr(path, 'name', path)}")
    return done


def file_sha256(path, progress=None, is_cancelled=None, done: int = 0, total: int | None = None) -> str:
    """The sha256 of the file ``path`` as hex (progress and cancel as :func:`hash_file`)."""
    h = hashlib.sha256()
    hash_file(h, path, progress, is_cancelled, done, total)
    return h.hexdigest()
