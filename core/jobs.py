"""The pipeline: a Job (what to do, on which raster, with which model) -> run_job -> JobResult.

Reading and preprocessing run in a reader thread that fills a bounded queue of
ready batches while the calling thread runs the image encoder, so the disk,
the stretch and Pillow overlap with onnxruntime. ``progress(fraction, message)``
is called once per batch and ``is_cancelled()`` is checked once per batch; a
cancelled run raises :class:`core.errors.Cancelled` and writes nothing.

Tiles whose pixels are all nodata are dropped after reading (pixels are read
once). A raster's tile embeddings are cached under a key of (raster, grid,
bands, stretch, model, precision): a second run with another task reads no
pixels and runs no image encoder (``JobResult.cache_hit``).

Tasks:

* labels: class text embeddings are template ensembles (normalised, averaged,
  renormalised, as clip_benchmark does); probabilities are
  ``softmax(logit_scale * cos)``; a tile whose best probability is under
  ``threshold`` is labelled ``unknown``.
* count: one caption per count 1..max_count (RemoteCount); count = best match,
  ``count_conf`` its softmax probability over the counts.
* search: cosine similarity of every tile to the query, ``rank`` 1 = best;
  every tile is kept, and ``selected`` is 1 for tiles within ``top_k`` and at or
  above ``threshold`` (both optional; neither given selects all).
* embed: fills the cache; the output holds the tile polygons.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from .bundle import load_bundle
from .errors import Cancelled, RemoteClipError
from .inference import Encoder
from .preprocess import output_size, preprocess
from .prompts import check_labels, count_captions, label_prompts
from .tiles import BBox, Polygons, TileSpec, make_grid, require_crs
from .vectors import check_output, shapefile_names

__all__ = ["Job", "RunOptions", "LabelTask", "CountTask", "SearchTask", "EmbedTask", "run_job", "JobResult",
           "TileSpec", "BBox", "Polygons", "UNKNOWN", "output_layer_name"]

log = logging.getLogger(__name__)

UNKNOWN = "unknown"
_QUEUE_BATCHES = 2  # batches read ahead: overlap without holding the raster in memory


@dataclass
class RunOptions:
    model: str
    device: str = "auto"
    precision: str = "fp32"
    batch_size: int = 32
    cache_dir: str | None = None   # None: default cache folder; "" disables the cache


@dataclass
class LabelTask:
    labels: list[str]
    templates: list[str] | None = None
    top_k: int = 3
    threshold: float | None = None


@dataclass
class CountTask:
    object_name: str
    max_count: int = 10
    templates: list[str] | None = None


@dataclass
class SearchTask:
    query: str
    top_k: int | None = None
    threshold: float | None = None


@dataclass
class EmbedTask:
    pass


@dataclass
class Job:
    raster: object                 # path/URI (str) or a RasterSource
    task: LabelTask | CountTask | SearchTask | EmbedTask
    run: RunOptions
    tiles: TileSpec = field(default_factory=TileSpec)
    output: str | None = None      # .gpkg or .shp; written atomically
    layer_name: str | None = None
    dissolve: bool = False
    overwrite: bool = False        # replace an existing output (a GeoPackage's other layers are always kept)


@dataclass
class JobResult:
    output: str | None
    layer_name: str | None
    crs_wkt: str
    records: list[dict]
    fields: list[str]
    provider: str
    n_tiles: int
    cache_hit: bool
    seconds: float
    warnings: list[str] = field(default_factory=list)   # e.g. prompts cut at the context length
    field_map: dict[str, str] = field(default_factory=dict)  # p_<slug> field -> class name
    embeddings: np.ndarray | None = None                 # (n_tiles, D), row order of records
    images_encoded: int = 0                              # tiles that went through the image encoder


# ---------------------------------------------------------------------------------------------- tasks

def _check_task(task) -> None:
    if isinstance(task, LabelTask):
        task.labels = check_labels(task.labels)
        if len(task.labels) < 2:
            raise RemoteClipError(f"Only one label was given ({task.labels[0]!r}); softmax over one class "
                                  "always says 100%.", "Give at least two class names.")
        if task.top_k is None or int(task.top_k) < 1:
            raise RemoteClipError(f"top_k must be at least 1, not {task.top_k}.", "Use e.g. --top-k 3.")
        if task.threshold is not None and not 0.0 <= float(task.threshold) <= 1.0:
            raise RemoteClipError(f"The label threshold {task.threshold} is not a probability.",
                                  "Use a value between 0 and 1, e.g. --threshold 0.4.")
    elif isinstance(task, CountTask):
        if not (task.object_name or "").strip():
            raise RemoteClipError("The object to count is empty.", "Give an object name, e.g. --object car.")
        if not 1 <= int(task.max_count) <= 100:
            raise RemoteClipError(f"max_count {task.max_count} is out of range.", "Use 1 to 100 (default 10).")
    elif isinstance(task, SearchTask):
        if not (task.query or "").strip():
            raise RemoteClipError("The search query is empty.", "Give a query, e.g. --query 'a swimming pool'.")
        if task.top_k is not None and int(task.top_k) < 1:
            raise RemoteClipError(f"top_k must be at least 1, not {task.top_k}.", "Use e.g. --top-k 20.")
        if task.threshold is not None and not -1.0 <= float(task.threshold) <= 1.0:
            raise RemoteClipError(f"The similarity threshold {task.threshold} is not a cosine similarity.",
                                  "Use a value between -1 and 1, e.g. --threshold 0.25.")
    elif not isinstance(task, EmbedTask):
        raise RemoteClipError(f"Unknown task {type(task).__name__}.", "Use LabelTask, CountTask, SearchTask "
                              "or EmbedTask.")


def _ensemble(encoder: Encoder, prompt_groups: list[list[str]], warnings: list[str]) -> np.ndarray:
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


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def slug_fields(names: list[str], prefix: str = "p_", width: int = 10) -> list[str]:
    """Shapefile-safe unique field names (<= width chars) for class names."""
    slugs = [prefix + (re.sub(r"[^a-z0-9]+", "_", n.lower()).strip("_") or "class") for n in names]
    return shapefile_names(slugs, width)


def label_records(emb: np.ndarray, text: np.ndarray, labels: list[str], logit_scale: float, top_k: int,
                  threshold: float | None) -> tuple[list[dict], list[tuple[str, str]], dict[str, str]]:
    probs = softmax(logit_scale * (emb @ text.T))
    k = min(int(top_k), len(labels))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    pnames = slug_fields(labels)
    recs = []
    for i in range(len(emb)):
        top = order[i]
        best = float(probs[i, top[0]])
        label = labels[top[0]] if threshold is None or best >= float(threshold) else UNKNOWN
        r = {"label": label, "score": round(best, 6),
             "top_labels": "|".join(labels[j] for j in top),
             "top_scores": "|".join(f"{probs[i, j]:.4f}" for j in top)}
        for f, j in zip(pnames, range(len(labels)), strict=True):
            r[f] = round(float(probs[i, j]), 6)
        recs.append(r)
    fields = [("label", "str"), ("score", "float"), ("top_labels", "str"), ("top_scores", "str")]
    fields += [(f, "float") for f in pnames]
    return recs, fields, dict(zip(pnames, labels, strict=True))


def count_records(emb: np.ndarray, text: np.ndarray, logit_scale: float) -> tuple[list[dict], list]:
    probs = softmax(logit_scale * (emb @ text.T))
    best = probs.argmax(axis=1)
    recs = [{"count": int(b) + 1, "count_conf": round(float(probs[i, b]), 6)} for i, b in enumerate(best)]
    return recs, [("count", "int"), ("count_conf", "float")]


def search_records(emb: np.ndarray, query: np.ndarray, top_k: int | None,
                   threshold: float | None) -> tuple[list[dict], list]:
    sim = emb @ query
    order = np.argsort(-sim, kind="stable")
    rank = np.empty(len(sim), dtype=np.int64)
    rank[order] = np.arange(1, len(sim) + 1)
    sel = np.ones(len(sim), dtype=bool)
    if top_k is not None:
        sel &= rank <= int(top_k)
    if threshold is not None:
        sel &= sim >= float(threshold)
    recs = [{"similarity": round(float(s), 6), "rank": int(r), "selected": int(x)}
            for s, r, x in zip(sim, rank, sel, strict=True)]
    return recs, [("similarity", "float"), ("rank", "int"), ("selected", "int")]


# ------------------------------------------------------------------------------------------- reading

def _open(raster):
    from .raster import open_raster

    if isinstance(raster, str | os.PathLike):
        return open_raster(os.fspath(raster)), True
    return raster, False


class _Reader(threading.Thread):
    """Reads, stretches and preprocesses batches of tiles into a bounded queue."""

    def __init__(self, src, bands, stretch, tiles, image_cfg, batch_size):
        super().__init__(name="remoteclip-reader", daemon=True)
        self.src, self.bands, self.stretch = src, bands, stretch
        self.tiles, self.image_cfg, self.batch_size = tiles, image_cfg, batch_size
        self.q: queue.Queue = queue.Queue(maxsize=_QUEUE_BATCHES)
        self.stop = threading.Event()

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run(self):
        from .raster import read_rgb

        try:
            h, w = output_size(self.image_cfg)
            for start in range(0, len(self.tiles), self.batch_size):
                if self.stop.is_set():
                    return
                chunk = self.tiles[start:start + self.batch_size]
                kept, arrays = [], []
                for idx, tile in chunk:
                    rgb, valid = read_rgb(self.src, self.bands, tile.window, self.stretch)
                    if valid is not None and not valid.any():
                        continue  # all nodata
                    arrays.append(preprocess(rgb, self.image_cfg, valid))
                    kept.append(idx)
                x = np.stack(arrays) if arrays else np.zeros((0, 3, h, w), np.float32)
                if not self._put(("batch", len(chunk), kept, x)):
                    return
            self._put(("done", 0, None, None))
        except BaseException as e:  # handed to the main thread
            self._put(("error", 0, None, e))


def _encode_tiles(encoder, src, bands, stretch, grid, progress, is_cancelled, batch_size):
    """Embeddings of the tiles that are not all nodata: (indices into grid, (n, D) float32)."""
    reader = _Reader(src, bands, stretch, list(enumerate(grid)), encoder.bundle.image, batch_size)
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


# ------------------------------------------------------------------------------------------ run_job

def _default_cache_dir() -> str:
    base = os.environ.get("REMOTECLIP_CACHE") or os.environ.get("XDG_CACHE_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache")
    return os.environ.get("REMOTECLIP_CACHE") or os.path.join(base, "remoteclip", "embeddings")




def run_job(job: Job, progress=None, is_cancelled=None) -> JobResult:
    """Run one job; see the module docstring. Raises RemoteClipError for bad input, Cancelled on cancel."""
    t0 = time.perf_counter()
    _check_task(job.task)
    if job.output is not None:  # before any pixel is read or the model loads
        check_output(job.output, output_layer_name(job), job.overwrite, _raster_names(job.raster))
    # opening reads no pixels: a missing raster, or one without a CRS, fails before the model loads
    src, owned = _open(job.raster)
    try:
        require_crs(src)
        return _run(job, src, t0, progress, is_cancelled)
    finally:
        if owned:
            src.close()


def _run(job: Job, src, t0: float, progress, is_cancelled) -> JobResult:
    bundle = load_bundle(job.run.model)
    encoder = Encoder(bundle, device=job.run.device, precision=job.run.precision,
                      batch_size=job.run.batch_size)
    warnings: list[str] = []
    if progress is not None:
        progress(0.0, "preparing")

    # text side first: a bad prompt fails before any pixel is read
    task = job.task
    text = None
    if isinstance(task, LabelTask):
        text = _ensemble(encoder, label_prompts(task.labels, task.templates), warnings)
    elif isinstance(task, CountTask):
        text = _ensemble(encoder, count_captions(task.object_name, int(task.max_count), task.templates), warnings)
    elif isinstance(task, SearchTask):
        text = _ensemble(encoder, [[task.query.strip()]], warnings)

    from .raster import Stretch, check_bands, default_bands

    spec = job.tiles
    bands = check_bands(src, spec.bands) if spec.bands else default_bands(src)
    grid = make_grid(src, spec)
    if not grid:
        raise RemoteClipError("No tiles: the extent does not overlap the raster.",
                              "Choose an extent (bbox or polygons) inside the raster.")
    stretch = Stretch.from_source(src, bands)
    cache, key, cached = _cache_lookup(job, src, spec, bands, stretch, bundle, len(grid))
    if cached is not None:
        kept, emb = cached
        cache_hit = True
        if progress is not None:
            progress(0.95, f"{len(kept)} tile embeddings from the cache")
    else:
        cache_hit = False
        kept, emb = _encode_tiles(encoder, src, bands, stretch, grid, progress, is_cancelled,
                                  encoder.batch_size)
        if cache is not None:
            cache.save(key, kept, emb)
    crs_wkt = src.crs_wkt

    if is_cancelled is not None and is_cancelled():
        raise Cancelled("cancelled")

    tiles = [grid[i] for i in kept]
    field_map: dict[str, str] = {}
    if isinstance(task, LabelTask):
        recs, fields, field_map = label_records(emb, text, task.labels, bundle.logit_scale, task.top_k,
                                                task.threshold)
        dissolve_by = "label"
    elif isinstance(task, CountTask):
        recs, fields = count_records(emb, text, bundle.logit_scale)
        dissolve_by = "count"
    elif isinstance(task, SearchTask):
        recs, fields = search_records(emb, text[0], task.top_k, task.threshold)
        dissolve_by = "selected"
    else:
        recs, fields = [{} for _ in tiles], []
        dissolve_by = None
    records = []
    for t, r in zip(tiles, recs, strict=True):
        records.append({"row": int(t.row), "col": int(t.col), **r, "geometry": t.polygon_wkt})
    fields = [("row", "int"), ("col", "int"), *fields]

    provider = encoder.provider if not cache_hit else _provider_if_loaded(encoder)
    layer_name = output_layer_name(job)
    out = None
    if job.output:
        if is_cancelled is not None and is_cancelled():
            raise Cancelled("cancelled")
        if progress is not None:
            progress(0.97, f"writing {job.output}")
        from .vectors import Field, write_vector

        metadata = {"task": type(task).__name__, "model": bundle.name, "raster": getattr(src, "name", ""),
                    "fields": field_map, "provider": provider}
        write_vector(job.output, records, [Field(n, t) for n, t in fields], crs_wkt, layer_name=layer_name,
                     dissolve_by=dissolve_by if job.dissolve else None, metadata=metadata,
                     overwrite=job.overwrite, inputs=_raster_names(job.raster))
        out = job.output
    if progress is not None:
        progress(1.0, f"{len(records)} tiles done")
    return JobResult(output=out, layer_name=layer_name, crs_wkt=crs_wkt, records=records,
                     fields=[n for n, _ in fields], provider=provider, n_tiles=len(records), cache_hit=cache_hit,
                     seconds=time.perf_counter() - t0, warnings=warnings, field_map=field_map, embeddings=emb,
                     images_encoded=0 if cache_hit else len(emb))


def _provider_if_loaded(encoder: Encoder) -> str:
    # a cache hit runs only the text graph (if any); report what that ran on
    if "text" in encoder._sessions:
        return encoder.session("text").get_providers()[0]
    return encoder.providers[0]


def output_layer_name(job: Job) -> str:
    """The layer the job writes: ``job.layer_name``, else one named after the task."""
    return job.layer_name or _layer_name(job)


def _raster_names(raster) -> list[str]:
    # a path or URI, or a RasterSource's file (QgisRasterSource.path) and source string (its name)
    if isinstance(raster, str | os.PathLike):
        return [os.fspath(raster)]
    return [n for n in (getattr(raster, "path", None), getattr(raster, "name", None)) if isinstance(n, str) and n]


def _layer_name(job: Job) -> str:
    t = job.task
    if isinstance(t, LabelTask):
        return "labels"
    if isinstance(t, CountTask):
        return f"count_{re.sub(r'[^a-z0-9]+', '_', t.object_name.lower()).strip('_')}"
    if isinstance(t, SearchTask):
        return "search"
    return "tiles"


def _cache_lookup(job, src, spec, bands, stretch, bundle, n_grid):
    cache_dir = job.run.cache_dir
    if cache_dir == "":
        return None, None, None
    from .cache import EmbeddingCache

    cache = EmbeddingCache(cache_dir or _default_cache_dir())
    key = cache.key(src, spec, bands, stretch, bundle.sha256 + ":" + job.run.precision)
    got = cache.load(key)
    if got is None:
        return cache, key, None
    kept, emb = got
    if len(kept) and (int(np.max(kept)) >= n_grid):
        return cache, key, None  # stale entry: recompute
    return cache, key, (np.asarray(kept, dtype=np.int64), np.asarray(emb, dtype=np.float32))
