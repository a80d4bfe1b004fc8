"""Encoding: the text side (template ensembles), and each raster's tile embeddings, from the cache or read and
encoded in this process.

Reading and preprocessing run in a reader thread that fills a bounded queue of ready batches while the
calling thread runs the image encoder, so the disk, the stretch and Pillow overlap with onnxruntime; the next
raster of a collection is opened and its reader started while the encoder works on the current one, so many
small files keep the encoder busy. Tiles whose pixels are all nodata are dropped after reading (pixels are
read once). A raster's tile embeddings are cached under a key of (raster, grid, bands, stretch, model,
precision): a second run with another task reads no pixels and runs no image encoder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..errors import Cancelled, RemoteClipError
from ..runtime.preprocess import output_size, preprocess
from .job import Job
from .plan import RasterPlan, default_cache_dir
from .sources import open_source

log = logging.getLogger(__name__)

_QUEUE_BATCHES = 2  # batches read ahead: overlap without holding the raster in memory


def ensemble(encoder, prompt_groups: list[list[str]], warnings: list[str]) -> np.ndarray:
    """One unit vector per group: normalised prompt embeddings, averaged, renormalised."""
    flat = [p for g in prompt_groups for p in g]
    emb, cut = encoder.encode_texts_with_info(flat)
    ctx = encoder.bundle.text.get("context_length", 77)
    for p, c in zip(flat, cut, strict=True):
        if c:
            msg = f"Prompt {p!r} is longer than the model's {ctx} tokens and was cut."
            log.warning(msg)
            warnings.append(msg)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)
    out = []
    i = 0
    for g in prompt_groups:
        m = emb[i:i + len(g)].mean(axis=0)
        out.append(m / max(float(np.linalg.norm(m)), 1e-12))
        i += len(g)
    return np.stack(out).astype(np.float32)


def provider_if_loaded(encoder) -> str:
    """What ran: a cache hit runs only the text graph (if any); report what that ran on."""
    if "text" in encoder._sessions:
        return encoder.session("text").get_providers()[0]
    return encoder.providers[0]


# ------------------------------------------------------------------------------------------ reading

def reader_count(src, on_gpu: bool) -> int:
    """Reader threads for a run: one beside a CPU encoder (it needs the cores); on a GPU several, each with
    its own handle on the file (a GDAL dataset is not shared between threads), where the source can be
    opened again (files through rasterio; QGIS providers stay on one thread)."""
    if not on_gpu or type(src).__name__ != "RasterioSource" or not getattr(src, "path", None):
        return 1
    return max(1, min(8, (os.cpu_count() or 2) // 2))


class Reader(threading.Thread):
    """Reads, stretches and preprocesses batches of tiles into a bounded queue; with ``workers`` > 1 the
    tiles of a batch are read by that many threads, each on its own handle of the raster file."""

    def __init__(self, src, bands, stretch, grid, image_cfg, batch_size, workers: int = 1):
        super().__init__(name="remoteclip-reader", daemon=True)
        self.src, self.bands, self.stretch = src, bands, stretch
        self.grid, self.image_cfg, self.batch_size = grid, image_cfg, batch_size
        self.workers = max(1, int(workers))
        self.q: queue.Queue = queue.Queue(maxsize=_QUEUE_BATCHES)
        self.stop = threading.Event()
        self._local = threading.local()
        self._opened: list = []
        self._lock = threading.Lock()

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _source(self):
        if self.workers == 1:
            return self.src
        src = getattr(self._local, "src", None)
        if src is None:
            from ..geodata.raster import open_raster

            src = self._local.src = open_raster(self.src.path)
            with self._lock:
                self._opened.append(src)
        return src

    def _load(self, window_slot) -> bool:
        """One tile preprocessed into its slot of the batch (no array of its own to allocate and copy);
        False when all its pixels are nodata."""
        from ..geodata.raster import read_rgb

        window, slot = window_slot
        rgb, valid = read_rgb(self._source(), self.bands, tuple(window), self.stretch)
        if valid is not None and not valid.any():
            return False
        preprocess(rgb, self.image_cfg, valid, slot)
        return True

    def run(self):
        pool = None
        try:
            if self.workers > 1:
                pool = ThreadPoolExecutor(self.workers, thread_name_prefix="remoteclip-read")
            h, w = output_size(self.image_cfg)
            for start in range(0, len(self.grid), self.batch_size):
                if self.stop.is_set():
                    return
                stop = min(len(self.grid), start + self.batch_size)
                windows = self.grid.windows(np.arange(start, stop)).tolist()
                x = np.empty((stop - start, 3, h, w), np.float32)
                jobs = zip(windows, x, strict=True)
                loaded = list(pool.map(self._load, jobs) if pool is not None else map(self._load, jobs))
                slots = [i for i, ok in enumerate(loaded) if ok]   # all-nodata tiles are dropped
                if len(slots) < len(loaded):
                    x = x[slots]
                kept = [start + i for i in slots]
                if not self._put(("batch", stop - start, kept, x)):
                    return
            self._put(("done", 0, None, None))
        except BaseException as e:  # handed to the main thread
            self._put(("error", 0, None, e))
        finally:
            if pool is not None:
                pool.shutdown(wait=True)
            for src in self._opened:
                src.close()


def encode_tiles(encoder, src, bands, stretch, grid, progress, is_cancelled, batch_size, readers=None, reader=None):
    """Embeddings of the tiles that are not all nodata: (indices into grid, (n, D) float32). ``reader``: a
    :class:`Reader` already started on ``grid`` (the next raster's starts while this one encodes)."""
    if reader is None:
        workers = readers if readers is not None else reader_count(src, encoder.on_gpu)
        reader = Reader(src, bands, stretch, grid, encoder.bundle.image, batch_size, workers)
        reader.start()
    kept_all: list[int] = []
    embs: list[np.ndarray] = []
    done = 0
    total = len(grid)
    try:
        while True:
            if is_cancelled is not None and is_cancelled():
                raise Cancelled("cancelled")
            try:
                kind, n, kept, x = reader.q.get(timeout=0.2)
            except queue.Empty:
                continue
            if kind == "error":
                raise x
            if kind == "done":
                break
            if len(kept):
                embs.append(encoder.encode_images(x))
                kept_all.extend(kept)
            done += n
            if progress is not None:
                progress(0.95 * done / max(total, 1), f"{done}/{total} tiles")
    finally:
        reader.stop.set()
        reader.join(timeout=30)
    e = np.concatenate(embs) if embs else np.zeros((0, encoder.bundle.embed_dim), np.float32)
    return np.asarray(kept_all, dtype=np.int64), e


# -------------------------------------------------------------------------------------------- cache

def job_cache(job: Job):
    """The job's embedding cache (``RunOptions.cache_dir``; None when it is off)."""
    if job.run.cache_dir == "":
        return None
    from ..cache import EmbeddingCache

    return EmbeddingCache(job.run.cache_dir or default_cache_dir())


def cache_model_id(job: Job, bundle) -> str:
    """The model part of a cache key: the bundle's weights and the precision of the graphs run."""
    return bundle.sha256 + ":" + job.run.precision


def prepare_plan(job: Job, plan: RasterPlan, bundle, cache, warnings: list[str] | None = None):
    """The raster's stretch and cache key (reads a decimated view for a non-8-bit raster's stretch); returns
    the open source (the plan's own, or opened here: see :func:`release`) and the cached (kept, emb) or None.
    ``warnings``: told when the raster cannot be cached."""
    from ..geodata.raster import Stretch

    src = plan.src
    if src is None:
        src, _ = open_source(plan.path)
    plan.stretch = Stretch.from_source(src, plan.bands)
    cached = None
    if cache is not None:
        plan.cache_key = cache.key(src, job.tiles, plan.bands, plan.stretch, cache_model_id(job, bundle))
        if plan.cache_key is not None:
            cached = cache.load(plan.cache_key, n_grid=len(plan.grid), embed_dim=bundle.embed_dim)
        elif warnings is not None:
            warnings.append(f"The tile embeddings of {getattr(src, 'name', 'this raster')} are not cached: nothing "
                            "tells when its content changes (a web layer, or a URI without a modification "
                            "time or ETag).")
    return src, cached


@dataclass
class Encoded:
    """One raster's (or block's) embeddings as they come back from a reader or a worker."""
    index: int
    kept: np.ndarray             # indices into the raster's grid
    emb: np.ndarray
    cache_hit: bool = False
    images_encoded: int = 0
    block: tuple[int, int] | None = None
    error: str | None = None


def part_progress(progress, before: int, n: int, total: int, name: str):
    """One raster's progress (0..0.95 over its tiles) as the collection's."""
    def report(fraction, message):
        if progress is not None:
            progress(0.95 * (before + fraction / 0.95 * n) / max(total, 1), f"{name}: {message}")

    return report


def local_pieces(job: Job, plans, bundle, encoder, batch, cache, progress, is_cancelled, total, warnings=None):
    """Yield each raster's Encoded in one process; the next raster is opened and its reader started while
    the encoder works on the current one. A collection's unreadable raster comes back as an Encoded with its
    ``error``; a single raster's error is raised as it is."""
    many = job.many

    def ready(plan):
        try:
            src, cached = prepare_plan(job, plan, bundle, cache, warnings)
        except Exception as e:   # unreadable: reported by the caller
            if not many:
                raise
            return plan, None, None, None, e if isinstance(e, RemoteClipError) else f"{type(e).__name__}: {e}"
        reader = None
        if cached is None:
            workers = job.run.readers if job.run.readers is not None else reader_count(src, encoder.on_gpu)
            reader = Reader(src, plan.bands, plan.stretch, plan.grid, bundle.image, batch, workers)
            reader.start()
        return plan, src, cached, reader, None

    done_tiles = 0
    nxt = None
    with ThreadPoolExecutor(1, thread_name_prefix="remoteclip-open") as pool:
        try:
            nxt = pool.submit(ready, plans[0]) if plans else None
            for k in range(len(plans)):
                plan, src, cached, reader, err = nxt.result()
                nxt = pool.submit(ready, plans[k + 1]) if k + 1 < len(plans) else None
                report = part_progress(progress, done_tiles, len(plan.grid), total,
                                       os.path.basename(str(plan.path))) if many else progress
                try:
                    if err is not None:
                        yield Encoded(plan.index, None, None, error=str(err))
                    elif cached is not None:
                        if report is not None:
                            report(0.95, f"{len(cached[0])} tile embeddings from the cache")
                        yield Encoded(plan.index, cached[0], cached[1], cache_hit=True)
                    else:
                        yield _encode_one(encoder, batch, plan, src, reader, is_cancelled, report, many)
                finally:
                    release(reader, src if src is not plan.src else None)
                done_tiles += len(plan.grid)
        finally:
            if nxt is not None:   # stopped before the last raster: stop the reader already started
                with contextlib.suppress(Exception):
                    _, s, _, r, _ = nxt.result()
                    release(r, s)


def _encode_one(encoder, batch, plan, src, reader, is_cancelled, progress, skip_errors: bool) -> Encoded:
    try:
        kept, emb = encode_tiles(encoder, src, plan.bands, plan.stretch, plan.grid, progress, is_cancelled,
                                 batch, reader=reader)
    except (Cancelled, KeyboardInterrupt):
        raise
    except RemoteClipError as e:
        if not skip_errors:
            raise
        return Encoded(plan.index, None, None, error=str(e))
    except Exception as e:   # a damaged block: GDAL/rasterio raise their own types
        if not skip_errors:
            raise
        return Encoded(plan.index, None, None, error=f"{type(e).__name__}: {e}")
    return Encoded(plan.index, kept, emb, images_encoded=len(emb))


def release(reader, src) -> None:
    """Stop a reader and close its raster once it no longer reads from it."""
    if reader is not None:
        reader.stop.set()
        reader.join(timeout=30)
    if src is not None:
        src.close()
