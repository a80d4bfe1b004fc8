"""The pipeline: a Job (what to do, on which raster, with which model) -> run_job -> JobResult.

``run_job`` is a straight line; what differs between tasks is the task's (core.tasks):

1. check the job and every file it will write (vector, dense GeoTIFF, report, saved classifier) before
   the model loads or a pixel is read;
2. open the raster, load the model, ``task.prepare`` (e.g. a saved classifier, checked against the
   model), plan the grid (refused above ``max_tiles`` unless confirmed);
3. the text side (``task.prompts``: template ensembles), so a bad prompt fails before any pixel;
4. the raster's tile embeddings (:func:`encode_raster`: from the cache, or read and encoded) -> a
   :class:`core.tasks.RasterPart`;
5. ``task.fit`` over the parts (classify trains here), ``task.outputs`` per part (records, fields,
   dense values, report);
6. write the outputs (:func:`write_outputs`).

Per-raster work (step 4) is separate from fitting and writing, so one job can later span many rasters.

Reading and preprocessing run in a reader thread that fills a bounded queue of ready batches while the
calling thread runs the image encoder, so the disk, the stretch and Pillow overlap with onnxruntime.
``progress(fraction, message)`` is called once per batch and ``is_cancelled()`` is checked once per
batch; a cancelled run raises :class:`core.errors.Cancelled` and writes nothing.

Tiles whose pixels are all nodata are dropped after reading (pixels are read once). A raster's tile
embeddings are cached under a key of (raster, grid, bands, stretch, model, precision): a second run
with another task reads no pixels and runs no image encoder (``JobResult.cache_hit``).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from . import checks
from .bundle import load_bundle, precision_warnings
from .errors import Cancelled, InvalidInput
from .inference import AUTO_BATCH_CPU, Encoder
from .preprocess import output_size, preprocess
from .records import Lazy, Records
from .tasks import (  # noqa: F401 (the task classes and record functions are part of this module's API)
    TASKS,
    UNKNOWN,
    ClassifyTask,
    CountTask,
    EmbedTask,
    LabelTask,
    RasterPart,
    SearchTask,
    Task,
    TaskOutput,
    count_records,
    label_records,
    search_records,
    slug_fields,
    softmax,
)
from .tiles import BBox, Polygons, TileSpec, grid_step, make_grid, require_crs
from .vectors import check_not_input, check_output

__all__ = ["Job", "Plan", "plan_job", "RunOptions", "LabelTask", "CountTask", "SearchTask", "EmbedTask",
           "ClassifyTask", "Task", "run_job", "JobResult", "TileSpec", "BBox", "Polygons", "UNKNOWN",
           "output_layer_name", "encode_raster", "write_outputs", "duration_text"]

log = logging.getLogger(__name__)

MAX_BATCH = 4096
MAX_TILES = 50_000   # about an hour of ViT-B-32 on a laptop CPU: more must be asked for (--yes)
_QUEUE_BATCHES = 2  # batches read ahead: overlap without holding the raster in memory


@dataclass
class RunOptions:
    model: str
    device: str = "auto"
    precision: str = "fp32"
    batch_size: int | None = None  # None: auto (32 on a CPU; on a GPU what its free memory holds)
    cache_dir: str | None = None   # None: default cache folder; "" disables the cache
    threads: int | None = None     # CPU threads onnxruntime may use (None: one per core)
    readers: int | None = None     # tile reader threads (None: 1 beside a CPU encoder, more beside a GPU)

    def __post_init__(self):
        from .bundle import PRECISIONS
        from .inference import DEVICES

        if self.model is not None and not isinstance(self.model, str | os.PathLike) \
                and type(self.model).__name__ != "Bundle":
            raise InvalidInput(f"The model {self.model!r} is not a bundle path.",
                                  "Give the bundle folder or .rclip.zip as a path.", param="model")
        self.device = checks.choice(self.device, "device", DEVICES)
        self.precision = checks.choice(self.precision, "precision", PRECISIONS)
        self.batch_size = checks.optional(checks.whole, self.batch_size, "Batch size", 1, MAX_BATCH, "e.g. 32")
        self.threads = checks.optional(checks.whole, self.threads, "threads", 1, 1024, "e.g. 4")
        self.readers = checks.optional(checks.whole, self.readers, "readers", 1, 64, "e.g. 4")
        if self.cache_dir is not None and not isinstance(self.cache_dir, str | os.PathLike):
            raise InvalidInput(f"The cache folder {self.cache_dir!r} is not a path.",
                                  "Give a folder path, \"\" for no cache, or None for the default.", param="cache_dir")




@dataclass
class Job:
    raster: object                 # path/URI (str), a RasterSource, or a list of paths (core.collection)
    task: Task                     # a core.tasks task (LabelTask, CountTask, SearchTask, EmbedTask, ClassifyTask)
    run: RunOptions
    tiles: TileSpec = field(default_factory=TileSpec)
    output: str | None = None      # .gpkg or .shp; written atomically
    layer_name: str | None = None
    dissolve: bool = False
    overwrite: bool = False        # replace existing outputs (a GeoPackage's other layers are always kept)
    max_tiles: int | None = MAX_TILES   # a larger plan is refused unless this is raised (None: no limit)
    raster_output: str | None = None    # dense GeoTIFF of the task's values (label, search, classify)
    out_crs: str | None = None     # several rasters: the output CRS (EPSG:n or WKT; default the first raster's)
    strict: bool = False           # several rasters: stop at an unreadable one instead of skipping it
    dask: str | None = None        # a Dask scheduler address, or "local:N" (core.distributed)
    inputs: list = field(default_factory=list)   # other files the inputs were read from (a --labels-file):
    #                                              paths, or (path, what) pairs; no output may be one of them

    def __post_init__(self):
        self.max_tiles = checks.optional(checks.whole, self.max_tiles, "max_tiles", 1)
        if isinstance(self.raster, list | tuple):
            # each raster's name is checked when it is planned: one that GDAL cannot open is skipped (--strict: stops)
            self.raster = [os.fsdecode(r) if isinstance(r, bytes) else os.fspath(r) for r in self.raster]
            if not self.raster:
                raise InvalidInput("No raster was given.", "Give one or more raster files.", param="raster")
            for r in self.raster:
                if not r.strip():
                    raise InvalidInput("An empty raster path was given.", "Give raster files (GeoTIFF, VRT, ...).", param="raster")
        if self.raster is None or (isinstance(self.raster, str) and not self.raster.strip()):
            raise InvalidInput("No raster was given.", "Give a raster file (GeoTIFF, VRT, ...) or layer.", param="raster")
        if self.out_crs is not None and not isinstance(self.out_crs, str):
            raise InvalidInput(f"The output CRS {self.out_crs!r} is not text.", "Give e.g. EPSG:3857.", param="out_crs")
        if self.dask is not None and (not isinstance(self.dask, str) or not self.dask.strip()):
            raise InvalidInput(f"The Dask scheduler {self.dask!r} is not an address.",
                                  "Give tcp://HOST:8786, or local:N for N worker processes on this machine.", param="dask")
        if not isinstance(self.raster, str | os.PathLike | list) and not callable(getattr(self.raster, "read", None)):
            raise InvalidInput(f"The raster {self.raster!r} is neither a path nor a raster source.",
                                  "Give a raster file path or a core.raster.RasterSource.", param="raster")
        if not isinstance(self.task, Task):
            raise InvalidInput(f"Unknown task {type(self.task).__name__}.",
                                  "Use one of core.tasks' tasks: " + ", ".join(c.__name__ for c in TASKS.values())
                                  + ".", param="task")
        if not isinstance(self.run, RunOptions):
            raise InvalidInput(f"run is a {type(self.run).__name__}, not RunOptions.",
                                  "Give RunOptions(model=...).", param="run")
        if not isinstance(self.tiles, TileSpec):
            raise InvalidInput(f"tiles is a {type(self.tiles).__name__}, not a TileSpec.",
                                  "Give TileSpec(...) or leave it out for the default.", param="tiles")
        if self.output is not None and not isinstance(self.output, str | os.PathLike):
            raise InvalidInput(f"The output {self.output!r} is not a path.", "Give a .gpkg or .shp path.",
                               param="output")
        if not isinstance(self.inputs, list | tuple):
            raise InvalidInput(f"inputs {self.inputs!r} is not a list.",
                               "Give the files the job's inputs were read from as a list of paths.", param="inputs")
        if self.raster_output is not None:
            if not isinstance(self.raster_output, str | os.PathLike):
                raise InvalidInput(f"The raster output {self.raster_output!r} is not a path.",
                                      "Give a .tif path.", param="raster_output")
            if not self.task.dense:
                raise InvalidInput(f"The {self.task.kind} task has no dense map to write (--raster-output).",
                                      "Leave it out; " + ", ".join(k for k, c in TASKS.items() if c.dense)
                                      + " write one.", param="raster_output")


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
    raster_output: str | None = None                     # the dense GeoTIFF written
    report: dict | None = None                           # classify: cross-validation and the mix
    report_output: str | None = None                     # where the report was saved
    head_output: str | None = None                       # classify: where the trained classifier was saved
    model: str = ""                                      # the bundle's name (core.bundle.DEMO_NAME: the demo)
    timings: dict[str, float] = field(default_factory=dict)  # seconds: prepare, text, tiles (read + encode), results
    sources: list[str] = field(default_factory=list)     # several rasters: those in the output
    skipped: list[tuple[str, str]] = field(default_factory=list)   # several rasters: (raster, why) not in it
    resumed: int = 0                                     # rasters done by an earlier, interrupted run


# ---------------------------------------------------------------------------------------------- tasks

def _check(job: Job) -> None:
    """The checks of construction again: a dataclass's fields may have been changed since."""
    for obj in (job.run, job.tiles, job.task, job):
        post = getattr(obj, "__post_init__", None)
        if post is not None:
            post()


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


# ------------------------------------------------------------------------------------------- reading

def _open(raster):
    from .raster import open_raster

    if isinstance(raster, str | os.PathLike):
        return open_raster(os.fspath(raster)), True
    return raster, False


def reader_count(src, on_gpu: bool) -> int:
    """Reader threads for a run: one beside a CPU encoder (it needs the cores); on a GPU several, each with
    its own handle on the file (a GDAL dataset is not shared between threads), where the source can be
    opened again (files through rasterio; QGIS providers stay on one thread)."""
    if not on_gpu or type(src).__name__ != "RasterioSource" or not getattr(src, "path", None):
        return 1
    return max(1, min(8, (os.cpu_count() or 2) // 2))


class _Reader(threading.Thread):
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
            from .raster import open_raster

            src = self._local.src = open_raster(self.src.path)
            with self._lock:
                self._opened.append(src)
        return src

    def _load(self, window_slot) -> bool:
        """One tile preprocessed into its slot of the batch (no array of its own to allocate and copy);
        False when all its pixels are nodata."""
        from .raster import read_rgb

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
                from concurrent.futures import ThreadPoolExecutor

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


def _encode_tiles(encoder, src, bands, stretch, grid, progress, is_cancelled, batch_size, readers=None, reader=None):
    """Embeddings of the tiles that are not all nodata: (indices into grid, (n, D) float32). ``reader``: a
    _Reader already started on ``grid`` (core.collection starts the next raster's while this one encodes)."""
    if reader is None:
        workers = readers if readers is not None else reader_count(src, encoder.on_gpu)
        reader = _Reader(src, bands, stretch, grid, encoder.bundle.image, batch_size, workers)
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


# --------------------------------------------------------------------------------------------- plan

@dataclass
class Plan:
    """What a run will do, known before any pixel is read."""
    n_tiles: int
    tile_px: tuple[int, int]
    rate: float | None = None       # tiles per second measured by an earlier run of this model here
    rasters: int = 1

    @property
    def seconds(self) -> float | None:
        return self.n_tiles / self.rate if self.rate else None

    def describe(self) -> str:
        text = f"{self.n_tiles:,} tiles of {self.tile_px[0]} x {self.tile_px[1]} px"
        if self.rasters > 1:
            text += f" in {self.rasters:,} rasters"
        if self.seconds is not None:
            text += f", {duration_text(self.seconds)} at the {self.rate:.1f} tiles/s measured here before"
        return text


def duration_text(seconds: float) -> str:
    """'under 1 s', 'about 40 s', 'about 12 min', 'about 2.5 h': an estimate, said as one."""
    if seconds < 1:
        return "under 1 s"
    if seconds < 90:
        return f"about {seconds:.0f} s"
    if seconds < 5400:
        return f"about {seconds / 60:.0f} min"
    return f"about {seconds / 3600:.1f} h"


def _rates_path(job: Job) -> str | None:
    cache_dir = job.run.cache_dir
    return None if cache_dir == "" else os.path.join(cache_dir or _default_cache_dir(), "rates.json")


def _rate_key(bundle, precision: str, device: str) -> str:
    return f"{bundle.name}|{bundle.architecture}|{precision}|{device}"


def known_rate(job: Job, bundle) -> float | None:
    """Tiles per second of the last run of this model, precision and device (kept beside the cache)."""
    path = _rates_path(job)
    if path is None or not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            rate = json.load(f).get(_rate_key(bundle, job.run.precision, job.run.device))
    except (OSError, ValueError, AttributeError):
        return None
    return float(rate) if isinstance(rate, int | float) and rate > 0 else None


def record_rate(job: Job, bundle, provider: str, n_tiles: int, seconds: float) -> None:
    path = _rates_path(job)
    if path is None or n_tiles < 2 * (job.run.batch_size or AUTO_BATCH_CPU) or seconds <= 0:
        return   # a few tiles time the start-up more than the encoder
    from .cache import _atomic_write

    try:
        rates = {}
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                rates = json.load(f)
        rates[_rate_key(bundle, job.run.precision, job.run.device)] = round(n_tiles / seconds, 3)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _atomic_write(path, lambda f: f.write(json.dumps(rates, indent=1, sort_keys=True).encode()))
    except (OSError, ValueError, AttributeError) as e:
        log.warning("could not record the tile rate in %s: %s", path, e)


def plan_job(job: Job) -> Plan:
    """The plan of ``job`` (tile count and estimated time) without loading the model or reading pixels."""
    _check(job)
    if isinstance(job.raster, list):
        from .collection import plan_collection

        plans, _ = plan_collection(job)
        return Plan(sum(len(p.grid) for p in plans), plans[0].tile_px, known_rate(job, load_bundle(job.run.model)),
                    rasters=len(plans))
    src, owned = _open(job.raster)
    try:
        require_crs(src)
        grid = make_grid(src, job.tiles)
        bundle = load_bundle(job.run.model)
        return Plan(len(grid), grid.tile_px if len(grid) else (0, 0), known_rate(job, bundle))
    finally:
        if owned:
            src.close()


# ------------------------------------------------------------------------------------------ run_job

def _default_cache_dir() -> str:
    from .cache import default_cache_dir

    return default_cache_dir()


def run_job(job: Job, progress=None, is_cancelled=None, on_plan=None) -> JobResult:
    """Run one job; see the module docstring. Raises RemoteClipError for bad input, Cancelled on cancel.
    ``on_plan(plan)`` is called with the :class:`Plan` once the grid is known, before any pixel is read."""
    if isinstance(job.raster, list) or job.dask or job.out_crs:   # one raster in another CRS: the same path
        from .collection import run_collection

        return run_collection(job, progress, is_cancelled, on_plan)
    t0 = time.perf_counter()
    _check(job)
    outputs = check_outputs(job)   # before any pixel is read or the model loads
    # opening reads no pixels: a missing raster, or one without a CRS, fails before the model loads
    src, owned = _open(job.raster)
    try:
        require_crs(src)
        bundle = load_bundle(job.run.model)
        warnings: list[str] = precision_warnings(bundle, job.run.precision)
        _progress(progress, 0.0, "preparing")
        task = job.task
        prepared = task.prepare(bundle, warnings)
        grid, bands, plan = _plan(job, src, bundle, on_plan)
        encoder = Encoder(bundle, device=job.run.device, precision=job.run.precision,
                          batch_size=job.run.batch_size, threads=job.run.threads)
        timings = {"prepare": time.perf_counter() - t0}
        t = time.perf_counter()
        prompts = task.prompts(prepared)   # text first: a bad prompt fails before any pixel is read
        text = _ensemble(encoder, prompts, warnings) if prompts else None
        timings["text"] = time.perf_counter() - t
        t = time.perf_counter()
        part = encode_raster(job, src, grid, bands, bundle, encoder, warnings, progress, is_cancelled)
        timings["tiles"] = time.perf_counter() - t
        _stop_if_cancelled(is_cancelled)
        t = time.perf_counter()
        fitted = task.fit([part], text, bundle, prepared, warnings)
        out = task.outputs(part, text, bundle, fitted)
        _stop_if_cancelled(is_cancelled)
        provider = encoder.provider if not part.cache_hit else _provider_if_loaded(encoder)
        result = write_outputs(job, part, out, bundle, provider, outputs, warnings, t0, progress)
        timings["results"] = time.perf_counter() - t
        result.timings = timings
        return result
    finally:
        if owned:
            src.close()


def _progress(progress, fraction: float, message: str) -> None:
    if progress is not None:
        progress(fraction, message)


def _stop_if_cancelled(is_cancelled) -> None:
    if is_cancelled is not None and is_cancelled():
        raise Cancelled("cancelled")


def check_outputs(job: Job) -> dict:
    """Every file ``job`` writes, checked (core.vectors.check_output and alike): {"vector", "raster",
    "report", "head"} -> path or None."""
    from .dense import check_raster_output
    from .outputs import check_distinct, check_file_output, check_report_path, report_path

    inputs = job_inputs(job)
    out = {"vector": None, "raster": None, "report": None, "head": None}
    if job.output is not None:
        out["vector"] = check_output(checks.path_text(job.output, "output"), output_layer_name(job),
                                     job.overwrite, inputs)
    if job.raster_output is not None:
        out["raster"] = check_raster_output(job.raster_output, job.overwrite, inputs)
    for path, what in job.task.files_out():
        out["head"] = check_file_output(path, what, job.overwrite, inputs)
    if job.task.reports:
        out["report"] = report_path(out["vector"], output_layer_name(job), out["raster"])
        if out["report"]:
            check_not_input(out["report"], inputs)
            check_report_path(out["report"])
    named = [(p, w) for w, p in (("output", out["vector"]), ("raster output", out["raster"]),
                                 ("classifier file", out["head"]), ("report", out["report"])) if p]
    if out["vector"] and os.path.splitext(out["vector"])[1].lower() == ".shp":
        from .vectors import sidecar_path

        named.append((sidecar_path(out["vector"]), "output's sidecar"))
    check_distinct(named)
    return out


def _plan(job: Job, src, bundle, on_plan):
    """The grid, the bands and the plan: known, shown and checked before the model runs or a pixel is read."""
    from .raster import check_bands, default_bands

    spec = job.tiles
    bands = check_bands(src, spec.bands) if spec.bands else default_bands(src)
    grid = make_grid(src, spec)
    if not len(grid):
        raise InvalidInput("No tiles: the extent does not overlap the raster.",
                              "Choose an extent (bbox or polygons) inside the raster.", param="extent")
    plan = Plan(len(grid), grid.tile_px, known_rate(job, bundle))
    if on_plan is not None:
        on_plan(plan)
    if job.max_tiles is not None and plan.n_tiles > job.max_tiles:
        raise InvalidInput(f"The plan is {plan.describe()}, above the {job.max_tiles:,} tiles a run may have "
                              "unless confirmed.", "Confirm it (--yes on the command line), or plan fewer tiles: "
                              "larger tiles, less overlap, or an extent.", param="max_tiles")
    return grid, bands, plan


def encode_raster(job: Job, src, grid, bands, bundle, encoder: Encoder, warnings: list[str], progress=None,
                  is_cancelled=None) -> RasterPart:
    """One raster's kept tiles and their embeddings: from the cache, or read, preprocessed and encoded."""
    from .raster import Stretch

    spec = job.tiles
    stretch = Stretch.from_source(src, bands)
    cache, key, cached = _cache_lookup(job, src, spec, bands, stretch, bundle, len(grid), warnings)
    if cached is not None:
        kept, emb = cached
        cache_hit = True
        _progress(progress, 0.95, f"{len(kept)} tile embeddings from the cache")
    else:
        cache_hit = False
        t_enc = time.perf_counter()
        kept, emb = _encode_tiles(encoder, src, bands, stretch, grid, progress, is_cancelled,
                                  encoder.plan_batch(), job.run.readers)
        if cache is not None:
            cache.save(key, kept, emb)
        record_rate(job, bundle, encoder.provider, len(grid), time.perf_counter() - t_enc)
    if not len(kept):
        raise InvalidInput(f"Every tile of {getattr(src, 'name', 'the raster')} is nodata ({len(grid)} tiles "
                              "read, none with a valid pixel).", "Check the raster's nodata value and mask "
                              "(gdalinfo) and the bands; choose an extent with image data.")
    return RasterPart(name=str(getattr(src, "name", "")), crs_wkt=src.crs_wkt, transform=tuple(src.transform),
                      grid=grid, index=np.asarray(kept, dtype=np.int64), embeddings=emb, tile_px=grid.tile_px,
                      step_px=grid_step(grid.tile_px, spec.overlap), cache_hit=cache_hit,
                      images_encoded=0 if cache_hit else len(emb))


def write_outputs(job: Job, part: RasterPart, out: TaskOutput, bundle, provider: str, paths: dict,
                  warnings: list[str], t0: float, progress=None) -> JobResult:
    """The records of ``part`` with their tiles, written where ``paths`` (:func:`check_outputs`) says."""
    task = job.task
    records = part_records(part, out)
    fields_ = [("row", "int"), ("col", "int"), *out.fields]
    layer_name = output_layer_name(job)
    inputs = job_inputs(job)
    report = dict(out.report) if out.report else None
    if report is not None:
        report.update(raster=part.name, output=paths["vector"], layer=layer_name if paths["vector"] else None,
                      raster_output=paths["raster"], head_output=paths["head"])
    written = {}
    if paths["vector"]:
        _progress(progress, 0.97, f"writing {job.output}")
        from .vectors import Field, write_vector

        metadata = {"task": type(task).__name__, "kind": task.kind, "model": bundle.name, "raster": part.name,
                    "fields": out.field_map, "provider": provider, **out.metadata}
        dissolve_by = task.dissolve_field if job.dissolve else None
        write_vector(job.output, records, [Field(n, t) for n, t in fields_], part.crs_wkt, layer_name=layer_name,
                     dissolve_by=dissolve_by, metadata=metadata, overwrite=job.overwrite, inputs=inputs)
        written["vector"] = job.output
    if paths["raster"]:
        _progress(progress, 0.98, f"writing {job.raster_output}")
        from .dense import write_dense

        written["raster"] = write_dense(paths["raster"], part.tiles, out.dense, out.dense_names, part.tile_px,
                                        part.step_px, part.transform, part.crs_wkt, job.overwrite, inputs,
                                        {"task": task.kind, "model": bundle.name, "bands": out.dense_names},
                                        raster=job.raster)
    if paths["head"] and out.head is not None:
        from .outputs import write_text_file

        written["head"] = write_text_file(paths["head"], out.head.to_json(), job.overwrite)
    if paths["report"] and report is not None:
        from .outputs import write_report

        written["report"] = write_report(paths["report"], report)
    _progress(progress, 1.0, f"{len(records)} tiles done")
    return JobResult(output=written.get("vector"), layer_name=layer_name, crs_wkt=part.crs_wkt, records=records,
                     fields=[n for n, _ in fields_], provider=provider, n_tiles=len(records),
                     cache_hit=part.cache_hit, seconds=time.perf_counter() - t0, warnings=warnings,
                     field_map=out.field_map, embeddings=part.embeddings, images_encoded=part.images_encoded,
                     raster_output=written.get("raster"), report=report, report_output=written.get("report"),
                     head_output=written.get("head"), model=bundle.name)


def _values_column(values: list) -> Lazy:
    return Lazy(len(values), lambda start, stop: values[start:stop])


def part_records(part: RasterPart, out: TaskOutput) -> Records:
    """The task's per-tile values of ``part`` as :class:`core.records.Records` over the part's grid (row, col
    and the polygon come from the grid when they are read or written)."""
    return Records(out.fields, output_columns(out), grid=part.grid, index=part.index)


def output_columns(out: TaskOutput) -> dict:
    """The task's columns; a task that made one dict per tile: its values as they are."""
    if out.columns is not None:
        return out.columns
    return {name: _values_column([r[name] for r in out.records]) for name, _ in out.fields}


def _provider_if_loaded(encoder: Encoder) -> str:
    # a cache hit runs only the text graph (if any); report what that ran on
    if "text" in encoder._sessions:
        return encoder.session("text").get_providers()[0]
    return encoder.providers[0]


def output_layer_name(job: Job) -> str:
    """The layer the job writes: ``job.layer_name``, else the task's (``Task.layer_name``)."""
    return job.layer_name or job.task.layer_name()


def job_inputs(job: Job) -> list:
    """Every file ``job`` reads, as :func:`core.vectors.check_not_input` takes them: the rasters (paths),
    then (spec, what) pairs: the task's files (samples, a saved classifier), the extent polygons' file and
    ``job.inputs`` (a labels or templates file, a list of rasters)."""
    out: list = list(_raster_names(job.raster))
    out += [(p, w) for p, w in job.task.files_in() if p]
    origin = getattr(job.tiles.extent, "origin", "")
    if origin:
        out.append((origin, "extent polygons"))
    model = job.run.model
    model = model if isinstance(model, str | os.PathLike) else getattr(model, "source", None)
    if model is not None and os.path.isdir(model):
        # a bundle's files (manifest, graphs, tokenizer), not outputs someone wrote into its folder
        out += [(os.path.join(model, n), "model bundle's file") for n in sorted(os.listdir(model))
                if not n.lower().endswith((".gpkg", ".shp", ".shx", ".dbf", ".prj", ".cpg", ".tif", ".tiff"))]
    elif model is not None:
        out.append((os.fspath(model), "model bundle"))
    for item in job.inputs or ():
        spec, what = item if isinstance(item, tuple) else (item, "input file")
        if spec:
            out.append((os.fspath(spec), what))
    return out


def _raster_names(raster) -> list[str]:
    # a path or URI, or a RasterSource's file (QgisRasterSource.path) and source string (its name)
    if isinstance(raster, str | os.PathLike):
        return [os.fspath(raster)]
    if isinstance(raster, list):
        return [os.fspath(r) for r in raster]
    return [n for n in (getattr(raster, "path", None), getattr(raster, "name", None)) if isinstance(n, str) and n]


def job_cache(job: Job):
    """The job's embedding cache (``RunOptions.cache_dir``; None when it is off)."""
    if job.run.cache_dir == "":
        return None
    from .cache import EmbeddingCache

    return EmbeddingCache(job.run.cache_dir or _default_cache_dir())


def cache_model_id(job: Job, bundle) -> str:
    """The model part of a cache key: the bundle's weights and the precision of the graphs run."""
    return bundle.sha256 + ":" + job.run.precision


def _cache_lookup(job, src, spec, bands, stretch, bundle, n_grid, warnings):
    cache = job_cache(job)
    if cache is None:
        return None, None, None
    key = cache.key(src, spec, bands, stretch, cache_model_id(job, bundle))
    if key is None:
        warnings.append(f"The tile embeddings of {getattr(src, 'name', 'this raster')} are not cached: nothing "
                        "tells when its content changes (a web layer, or a URI without a modification "
                        "time or ETag).")
        return None, None, None
    return cache, key, cache.load(key, n_grid=n_grid, embed_dim=bundle.embed_dim)
