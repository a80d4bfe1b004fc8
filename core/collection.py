"""Many rasters, one job: a collection of rasters (files, globs, folders, lists of paths) labelled,
counted, searched or embedded into one output layer with a ``source`` field.

The collection runs on run_job's pieces, per raster:

1. plan every raster (open, CRS, bands, grid: no pixel read); an unreadable raster is skipped and named
   in the summary (``Job.strict``: the run stops instead); the tile count of the whole collection is
   shown and checked against ``max_tiles``;
2. encode each raster (:func:`core.jobs.encode_tiles`; cached embeddings are read instead). In one
   process the next raster is opened and its reader started while the encoder works on the current
   one, so many small files keep the encoder busy; with ``Job.dask`` the rasters (and blocks of large
   ones) are tasks on a Dask cluster (core.distributed) and only embeddings come back;
3. ``task.fit`` over the parts, ``task.outputs`` (search ranks over the whole collection), polygons
   reprojected exactly (edges densified, then OGR's transform) into one output CRS (``Job.out_crs``,
   default the first raster's), and one atomic write (:func:`core.jobs.write_outputs`).

A rerun after a crash or Ctrl+C skips the rasters already done: their embeddings are in the cache, and
a small record beside the output (``OUT[.LAYER].remoteclip-resume.json``, removed once the output is
written) says which rasters were done, so the rerun can say what it resumed.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np

from .errors import Cancelled, InvalidInput, OutputExists, RemoteClipError, SourceUnreadable

log = logging.getLogger(__name__)

RASTER_EXTENSIONS = (".tif", ".tiff", ".vrt", ".jp2", ".img", ".ecw", ".sid", ".png", ".jpg", ".jpeg")
RESUME_SUFFIX = ".remoteclip-resume.json"
RESUME_FORMAT = "remoteclip-resume"
_DENSIFY = 8   # points per tile edge when the output CRS differs: tiles stay exact under curved transforms

__all__ = ["expand_rasters", "run_collection", "resume_path", "RasterPlan"]


# ------------------------------------------------------------------------------------------- inputs

def _has_magic(text: str) -> bool:
    return any(c in text for c in "*?[")


def expand_rasters(items) -> list[str]:
    """Raster paths from what a user typed: files, globs (``'sheets/*.tif'``), folders (their raster files,
    sorted), text files of paths (``.txt``/``.lst``, one a line, ``#`` comments, relative to the file) and
    URLs (``https://...`` read through GDAL's /vsicurl/). A VRT is one raster (a mosaic of its sources)."""
    from .raster import is_gdal_uri

    out: list[str] = []
    for item in [items] if isinstance(items, str | os.PathLike) else items:
        item = os.fspath(item)
        if item.startswith(("http://", "https://")):
            out.append("/vsicurl/" + item)
        elif is_gdal_uri(item):
            out.append(item)
        elif os.path.isdir(item):
            found = sorted(os.path.join(item, n) for n in os.listdir(item)
                           if n.lower().endswith(RASTER_EXTENSIONS) and os.path.isfile(os.path.join(item, n)))
            if not found:
                raise InvalidInput(f"The folder {item} holds no raster file ({', '.join(RASTER_EXTENSIONS)}).",
                                      "Give a folder with rasters, a glob such as 'sheets/*.tif', or the files.", path=item)
            out += found
        elif _has_magic(item) and not os.path.exists(item):
            found = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not found:
                raise SourceUnreadable(f"No file matches {item!r}.", "Check the pattern (quote it so the shell "
                                      "does not expand it, e.g. 'sheets/*.tif').", path=item)
            out += found
        elif item.lower().endswith((".txt", ".lst")) and os.path.isfile(item):
            out += _list_file(item)
        else:
            out.append(item)
    seen, unique = set(), []
    for p in out:
        k = p if is_gdal_uri(p) else os.path.abspath(p)   # the source field names files by absolute path
        if k not in seen:
            seen.add(k)
            unique.append(k)
    if not unique:
        raise InvalidInput("No raster was given.", "Give raster files, a glob, a folder or a list of paths.", param="raster")
    return unique


def _list_file(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = [ln.strip() for ln in f]
    except (OSError, UnicodeDecodeError) as e:
        raise SourceUnreadable(f"The list of rasters {path} cannot be read ({e}).",
                              "Give a UTF-8 text file with one raster path or URL a line.", path=path) from None
    base = os.path.dirname(os.path.abspath(path))
    from .raster import is_gdal_uri

    out = []
    for ln in lines:
        if not ln or ln.startswith("#"):
            continue
        if ln.startswith(("http://", "https://")):
            out.append("/vsicurl/" + ln)
        elif is_gdal_uri(ln) or os.path.isabs(ln):
            out.append(ln)
        else:
            out.append(os.path.join(base, ln))
    if not out:
        raise InvalidInput(f"The list of rasters {path} holds no path.", "Write one raster path a line.", path=path)
    return out


# ------------------------------------------------------------------------------------------- planning

@dataclass
class RasterPlan:
    """One raster of the collection, planned on the client (no pixel read yet)."""
    index: int
    path: str
    grid: object                 # core.tiles.TileGrid
    bands: list[int]
    crs_wkt: str
    transform: tuple
    tile_px: tuple[int, int]
    step_px: tuple[int, int]
    stretch: object = None       # core.raster.Stretch, set when the raster is prepared for encoding
    cache_key: str | None = None


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


@dataclass
class _State:
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _plan_one(job, index: int, path: str) -> RasterPlan | str:
    """The raster's plan, or why it cannot be read (a one-line reason).

    Only a raster that cannot be opened or read (SourceUnreadable, or GDAL's own error on a damaged header)
    gives a reason: plan_collection skips it (``Job.strict``: stops). An InvalidInput is raised, whether it
    is a parameter alone (a band list of two bands) or a parameter that does not fit this raster (a band it
    lacks, no CRS, smaller than a tile); plan_collection tells them apart over the whole collection. Any
    other kind (a missing package) propagates."""
    from .jobs import _open
    from .raster import check_bands, default_bands
    from .tiles import grid_step, make_grid, require_crs

    try:
        src, owned = _open(path)
    except SourceUnreadable as e:
        return str(e)
    try:
        require_crs(src)
        spec = job.tiles
        bands = check_bands(src, spec.bands) if spec.bands else default_bands(src)
        grid = make_grid(src, spec)
        if not len(grid):
            return "no tile in the extent"
        return RasterPlan(index, path, grid, bands, src.crs_wkt, tuple(src.transform), grid.tile_px,
                          grid_step(grid.tile_px, spec.overlap))
    except SourceUnreadable as e:
        return str(e)
    except RemoteClipError:
        raise
    except Exception as e:   # a damaged header: GDAL/rasterio raise their own types
        return f"{type(e).__name__}: {e}"
    finally:
        if owned:
            src.close()


def _shown(path: str) -> str:
    """A raster's name as text that can be printed and written (bytes that are not UTF-8 as U+FFFD)."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        try:
            return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        except UnicodeEncodeError:   # a surrogate that is no escaped byte
            return path.encode("utf-8", "replace").decode("utf-8")


def _skip(job, state: _State, path: str, why: str, kind: type[RemoteClipError] = SourceUnreadable) -> None:
    path = _shown(path)
    if job.strict:
        raise kind(f"Raster {path} was not processed: {why}",
                              "Fix or remove it, or leave out --strict to skip unreadable rasters.", path=path)
    log.info("skipping %s: %s", path, why)
    state.skipped.append((path, why))


def plan_collection(job, progress=None) -> tuple[list[RasterPlan], _State]:
    """Every raster's plan, and the rasters skipped with why.

    A raster that cannot be read is skipped (``Job.strict``: the run stops). A raster that does not fit the
    job's parameters (an InvalidInput: a band it lacks, no CRS, smaller than a tile) is skipped only when
    another raster of the collection fits them: then the misfit is that raster's data (a mixed collection).
    When no raster fits, the parameters are what is wrong, and the first raster's error propagates with its
    kind and ``param`` (a band list beyond every raster's bands is a bad --bands, not N rasters to skip)."""
    rasters = job.raster if isinstance(job.raster, list) else [job.raster]
    state = _State()
    plans = []
    misfits: list[tuple[str, InvalidInput]] = []
    for i, path in enumerate(rasters):
        if progress is not None and len(rasters) > 20 and i % 20 == 0:
            progress(0.0, f"planning {i}/{len(rasters)} rasters")
        try:
            p = _plan_one(job, i, path)
        except InvalidInput as e:
            misfits.append((path, e))
            continue
        if isinstance(p, str):
            if p == "no tile in the extent":
                state.skipped.append((path, p))   # not an error: --strict does not stop for it
            else:
                _skip(job, state, path, p)
        else:
            plans.append(p)
    if misfits and not plans:
        raise misfits[0][1]
    for path, e in misfits:
        _skip(job, state, path, str(e), InvalidInput)
    if not plans:
        why = "; ".join(f"{os.path.basename(p)}: {w}" for p, w in state.skipped[:3])
        raise (InvalidInput if all(w == "no tile in the extent" for _, w in state.skipped) else SourceUnreadable)(f"None of the {len(rasters)} rasters can be processed ({why}).",
                              "Check the paths (gdalinfo), the extent and the bands.")
    return plans, state


# -------------------------------------------------------------------------------------------- resume

def resume_path(output: str, layer_name: str | None) -> str:
    """The record of a collection run in progress, beside its output: ``OUT.LAYER.remoteclip-resume.json``
    for a GeoPackage layer, ``OUT.remoteclip-resume.json`` else."""
    stem, ext = os.path.splitext(os.fspath(output))
    if ext.lower() == ".gpkg" and layer_name:
        return f"{stem}.{layer_name}{RESUME_SUFFIX}"
    return stem + RESUME_SUFFIX


def _fingerprint(job, bundle) -> str:
    from .tiles import spec_params

    ident = {"task": job.task.kind, "model": bundle.sha256, "precision": job.run.precision,
             "grid": spec_params(job.tiles), "rasters": [str(r) for r in job.raster]}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


class _Record:
    """The small record beside the output: which rasters are done (their embeddings are in the cache)."""

    def __init__(self, path: str | None, fingerprint: str, output: str | None = None):
        self.path, self.fingerprint = path, fingerprint
        # its temporary is named as the output's own (the stem, this process's id): a run killed while writing
        # the record leaves one that the next run's output check recognises and removes
        from .vectors import _temp_prefix

        self.temp_prefix = _temp_prefix(os.path.splitext(os.path.basename(output))[0]) if output else ".tmp-"
        self.done: dict[str, str] = {}
        self.resumed = 0
        if path and os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    data = json.load(f)
            except (OSError, ValueError, UnicodeDecodeError):
                data = None
            if not isinstance(data, dict) or data.get("format") != RESUME_FORMAT:   # the user's: never replaced
                raise OutputExists(f"{path} exists and is not a file RemoteCLIP wrote.",
                                      "Move it away or give the output another name.", path=path)
            if data.get("job") == fingerprint and isinstance(data.get("done"), dict):
                self.done = {str(k): str(v) for k, v in data["done"].items()}
        elif path and os.path.lexists(path):
            raise OutputExists(f"{path} exists and is not a file RemoteCLIP wrote.",
                                  "Move it away or give the output another name.", path=path)

    def was_done(self, plan: RasterPlan) -> bool:
        return plan.cache_key is not None and self.done.get(plan.path) == plan.cache_key

    def mark(self, plan: RasterPlan) -> None:
        if self.path is None or plan.cache_key is None:
            return
        self.done[plan.path] = plan.cache_key
        from .cache import _atomic_write

        data = {"format": RESUME_FORMAT, "job": self.fingerprint, "done": self.done,
                "note": "RemoteCLIP's record of a run over many rasters; removed when the output is written."}
        try:
            _atomic_write(self.path, lambda f: f.write(json.dumps(data, indent=1).encode()), self.temp_prefix, "")
        except OSError as e:
            log.warning("could not write the resume record %s: %s", self.path, e)

    def remove(self) -> None:
        if self.path:
            with contextlib.suppress(OSError):
                os.unlink(self.path)


# ---------------------------------------------------------------------------------------- encoding

def prepare_plan(job, plan: RasterPlan, bundle, cache, src=None) -> tuple[object, tuple | None]:
    """The raster's stretch and cache key (reads a decimated view for a non-8-bit raster's stretch);
    returns the open source and the cached (kept, emb) or None."""
    from .jobs import _open, cache_model_id
    from .raster import Stretch

    owned = src is None
    if owned:
        src, _ = _open(plan.path)
    plan.stretch = Stretch.from_source(src, plan.bands)
    cached = None
    if cache is not None:
        plan.cache_key = cache.key(src, job.tiles, plan.bands, plan.stretch, cache_model_id(job, bundle))
        if plan.cache_key is not None:
            cached = cache.load(plan.cache_key, n_grid=len(plan.grid), embed_dim=bundle.embed_dim)
    return src, cached


def _part_progress(progress, before: int, n: int, total: int, name: str):
    """One raster's progress (core.jobs' 0..0.95 over its tiles) as the collection's."""
    def report(fraction, message):
        if progress is not None:
            progress(0.95 * (before + fraction / 0.95 * n) / max(total, 1), f"{name}: {message}")

    return report


def _local_pieces(job, plans, bundle, encoder, batch, cache, progress, is_cancelled, total):
    """Yield each raster's Encoded in one process; the next raster is opened and its reader started while
    the encoder works on the current one."""
    from .jobs import _Reader, reader_count

    def ready(plan):
        try:
            src, cached = prepare_plan(job, plan, bundle, cache)
        except Exception as e:   # unreadable: reported by the caller
            return plan, None, None, None, e if isinstance(e, RemoteClipError) else f"{type(e).__name__}: {e}"
        reader = None
        if cached is None:
            workers = job.run.readers if job.run.readers is not None else reader_count(src, encoder.on_gpu)
            reader = _Reader(src, plan.bands, plan.stretch, plan.grid, bundle.image, batch, workers)
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
                try:
                    if err is not None:
                        yield Encoded(plan.index, None, None, error=str(err))
                    elif cached is not None:
                        yield Encoded(plan.index, cached[0], cached[1], cache_hit=True)
                    else:
                        yield _encode_one(encoder, batch, plan, src, reader, is_cancelled,
                                          _part_progress(progress, done_tiles, len(plan.grid), total,
                                                         os.path.basename(plan.path)))
                finally:
                    _release(reader, src)
                done_tiles += len(plan.grid)
        finally:
            if nxt is not None:   # stopped before the last raster: stop the reader already started
                with contextlib.suppress(Exception):
                    _, s, _, r, _ = nxt.result()
                    _release(r, s)


def _encode_one(encoder, batch, plan, src, reader, is_cancelled, progress) -> Encoded:
    from .jobs import _encode_tiles

    try:
        kept, emb = _encode_tiles(encoder, src, plan.bands, plan.stretch, plan.grid, progress, is_cancelled,
                                  batch, reader=reader)
    except RemoteClipError as e:
        return Encoded(plan.index, None, None, error=str(e))
    except (Cancelled, KeyboardInterrupt):
        raise
    except Exception as e:   # a damaged block: GDAL/rasterio raise their own types
        return Encoded(plan.index, None, None, error=f"{type(e).__name__}: {e}")
    return Encoded(plan.index, kept, emb, images_encoded=len(emb))


def _release(reader, src) -> None:
    """Stop a reader and close its raster once it no longer reads from it."""
    if reader is not None:
        reader.stop.set()
        reader.join(timeout=30)
    if src is not None:
        src.close()


# ------------------------------------------------------------------------------------------ geometry

class CollectionGrid:
    """The kept tiles of several rasters as one grid for core.records.Records (row and col from each raster's
    grid, polygons in the output CRS): what ``write_outputs`` writes for a collection."""

    def __init__(self, parts: list, out_wkt: str, ground: list[float]):
        self.parts, self.out_wkt, self.ground = parts, out_wkt, ground
        self.offsets = np.cumsum([0] + [len(p.index) for p in parts])
        self.tile_px = parts[0].tile_px
        self.transform = parts[0].transform
        self._wkb: dict[int, list[bytes]] = {}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _split(self, idx):
        """(part number, positions in ``idx``, that part's own positions) for the parts ``idx`` touches."""
        idx = np.arange(len(self)) if idx is None else np.asarray(idx, dtype=np.int64)
        which = np.searchsorted(self.offsets, idx, side="right") - 1
        for k in np.unique(which).tolist():
            at = np.flatnonzero(which == k)
            yield k, at, idx[at] - self.offsets[k]

    def rows_cols(self, idx=None):
        n = len(self) if idx is None else len(idx)
        rows, cols = np.empty(n, np.int64), np.empty(n, np.int64)
        for k, at, local in self._split(idx):
            part = self.parts[k]
            rows[at], cols[at] = part.grid.rows_cols(part.index[local])
        return rows, cols

    def windows(self, idx=None):
        n = len(self) if idx is None else len(idx)
        out = np.empty((n, 4), np.int64)
        for k, at, local in self._split(idx):
            part = self.parts[k]
            out[at] = part.grid.windows(part.index[local])
        return out

    def _part_wkb(self, k: int) -> list[bytes]:
        if k not in self._wkb:
            part = self.parts[k]
            self._wkb[k] = reproject_wkb(part.grid.polygon_wkb(part.index), part.crs_wkt, self.out_wkt,
                                         self.ground[k])
        return self._wkb[k]

    def polygon_wkb(self, idx=None) -> list[bytes]:
        n = len(self) if idx is None else len(idx)
        out: list = [None] * n
        for k, at, local in self._split(idx):
            wkb = self._part_wkb(k)
            for a, i in zip(at.tolist(), local.tolist(), strict=True):
                out[a] = wkb[i]
        return out

    def __getitem__(self, i):
        from osgeo import ogr

        from .tiles import Tile

        (r,), (c,) = self.rows_cols([i])
        wkb = self.polygon_wkb([i])[0]
        return Tile(int(r), int(c), tuple(self.windows([i])[0].tolist()),
                    polygon_wkt=ogr.CreateGeometryFromWkb(wkb).ExportToWkt())


def reproject_wkb(wkbs: list[bytes], src_wkt: str, dst_wkt: str, tile_size: float) -> list[bytes]:
    """Polygons from ``src_wkt`` to ``dst_wkt``: each edge densified (``_DENSIFY`` points) then transformed by
    OGR, so a tile stays exact under a curved transform (UTM <-> degrees). The same CRS: unchanged."""
    from osgeo import ogr, osr

    from .tiles import srs_from

    s, d = srs_from(src_wkt, "raster's CRS"), srs_from(dst_wkt, "output CRS")
    if s.IsSame(d):
        return wkbs
    ct = osr.CoordinateTransformation(s, d)
    out = []
    for wkb in wkbs:
        g = ogr.CreateGeometryFromWkb(wkb)
        g.Segmentize(tile_size / _DENSIFY)
        if g.Transform(ct) != 0:
            raise InvalidInput("A tile cannot be put in the output CRS.",
                                  "Choose an output CRS that covers every raster (--out-crs).", param="out_crs")
        out.append(bytes(g.ExportToWkb(ogr.wkbNDR)))
    return out


def _tile_ground_size(plan: RasterPlan) -> float:
    a, b, _, d, e, _ = plan.transform[:6]
    return min(abs(a) + abs(b), abs(d) + abs(e)) * min(plan.tile_px)


def crs_name(wkt: str) -> str:
    from .tiles import srs_from

    srs = srs_from(wkt, "output CRS")
    srs.AutoIdentifyEPSG()
    auth, code = srs.GetAuthorityName(None), srs.GetAuthorityCode(None)
    return f"{auth}:{code}" if auth and code else (srs.GetName() or "custom CRS")


# ---------------------------------------------------------------------------------------------- run

def run_collection(job, progress=None, is_cancelled=None, on_plan=None):
    """``run_job`` for a job whose ``raster`` is a list (or that runs on Dask); see the module docstring."""
    from .bundle import load_bundle, precision_warnings
    from .inference import Encoder
    from .jobs import (
        JobResult,
        Plan,
        _check,
        _ensemble,
        _progress,
        _provider_if_loaded,
        _stop_if_cancelled,
        check_outputs,
        job_cache,
        known_rate,
        output_layer_name,
        record_rate,
        write_outputs,
    )
    from .tasks import RasterPart

    t0 = time.perf_counter()
    _check(job)
    if not isinstance(job.raster, list):
        job = replace(job, raster=[job.raster])
    if job.raster_output is not None and len(job.raster) > 1:
        raise InvalidInput("--raster-output makes one GeoTIFF on one raster's grid; several rasters were given.",
                              "Leave out --raster-output, or run each raster on its own (or mosaic them in a VRT).", param="raster_output")
    paths = check_outputs(job)
    bundle = load_bundle(job.run.model)
    warnings: list[str] = precision_warnings(bundle, job.run.precision)
    _progress(progress, 0.0, "planning")
    task = job.task
    prepared = task.prepare(bundle, warnings)
    plans, state = plan_collection(job, progress)
    total = sum(len(p.grid) for p in plans)
    plan = Plan(total, plans[0].tile_px, known_rate(job, bundle), rasters=len(plans))
    if on_plan is not None:
        on_plan(plan)
    if job.max_tiles is not None and total > job.max_tiles:
        raise InvalidInput(f"The plan is {plan.describe()}, above the {job.max_tiles:,} tiles a run may have "
                              "unless confirmed.", "Confirm it (--yes on the command line), or plan fewer tiles: "
                              "larger tiles, less overlap, an extent, or fewer rasters.", param="max_tiles")
    out_wkt = _out_crs(job, plans[0])
    if job.raster_output is not None and not _same_crs(plans[0].crs_wkt, out_wkt):
        raise InvalidInput("--raster-output is written in the raster's CRS; --out-crs asks for another.",
                              "Leave out --out-crs, or reproject the GeoTIFF afterwards (gdalwarp).", param="out_crs")
    encoder = Encoder(bundle, device=job.run.device, precision=job.run.precision, batch_size=job.run.batch_size,
                      threads=job.run.threads)
    prompts = task.prompts(prepared)
    text = _ensemble(encoder, prompts, warnings) if prompts else None
    cache = job_cache(job)
    record = _Record(resume_path(paths["vector"], output_layer_name(job)) if paths["vector"] else None,
                     _fingerprint(job, bundle), paths["vector"])
    t_enc = time.perf_counter()
    if job.dask:
        from .distributed import encode_on_cluster

        # the client's batch size: the workers' batches (and blocks) are the ones a single process makes
        batch = job.run.batch_size or encoder.batch_size
        pieces = encode_on_cluster(job, plans, bundle, batch, cache, progress, is_cancelled, total)
    else:
        pieces = _local_pieces(job, plans, bundle, encoder, encoder.plan_batch(), cache, progress, is_cancelled,
                               total)
    try:
        results = _gather(job, plans, pieces, cache, record, state, progress, is_cancelled, total)
    finally:
        pieces.close()   # a cancel or an error: the readers stop, the cluster's futures are cancelled
    _stop_if_cancelled(is_cancelled)
    encoded = sum(e.images_encoded for e in results.values())
    if encoded and not job.dask:
        record_rate(job, bundle, encoder.provider, encoded, time.perf_counter() - t_enc)
    parts, ground = [], []
    for p in plans:
        enc = results.get(p.index)
        if enc is None:
            continue
        parts.append(RasterPart(name=p.path, crs_wkt=p.crs_wkt, transform=p.transform, grid=p.grid,
                                index=np.asarray(enc.kept, dtype=np.int64), embeddings=enc.emb, tile_px=p.tile_px,
                                step_px=p.step_px, cache_hit=enc.cache_hit, images_encoded=enc.images_encoded))
        ground.append(_tile_ground_size(p))
    if not parts:
        why = "; ".join(f"{os.path.basename(p)}: {w}" for p, w in state.skipped[:3])
        raise InvalidInput(f"No raster gave a tile ({why}).", "Check the rasters (gdalinfo), the extent and "
                              "the bands.")
    fitted = task.fit(parts, text, bundle, prepared, warnings)
    whole = None   # every tile of the collection in the output CRS: one grid, the embeddings concatenated once
    if job.raster_output is None or task.kind == "search":
        grid = CollectionGrid(parts, out_wkt, ground)
        whole = RasterPart(name=f"{len(parts)} rasters", crs_wkt=out_wkt, transform=parts[0].transform, grid=grid,
                           index=np.arange(len(grid), dtype=np.int64),
                           embeddings=np.concatenate([part.embeddings for part in parts]), tile_px=parts[0].tile_px,
                           step_px=parts[0].step_px, cache_hit=all(part.cache_hit for part in parts),
                           images_encoded=encoded)
    out = _outputs(task, parts, text, bundle, fitted, whole)
    _stop_if_cancelled(is_cancelled)
    out.metadata = {**out.metadata, "crs": crs_name(out_wkt), "rasters": [part.name for part in parts],
                    "skipped": [{"raster": r, "why": w} for r, w in state.skipped]}
    if job.raster_output is not None:   # one raster (checked above), written on its own grid and CRS
        whole = parts[0]
    provider = encoder.provider if encoded and not job.dask else (
        "dask" if job.dask else _provider_if_loaded(encoder))
    res: JobResult = write_outputs(job, whole, out, bundle, provider, paths, warnings + state.warnings, t0, progress)
    record.remove()
    res.skipped = list(state.skipped)
    res.sources = [part.name for part in parts]
    res.resumed = record.resumed
    return res


def _gather(job, plans, pieces, cache, record, state, progress, is_cancelled, total) -> dict:
    """Each raster's embeddings as they come (from a reader or a worker): saved in the cache and the record;
    an unreadable raster skipped (or, --strict, the run stopped)."""
    from .jobs import _stop_if_cancelled

    by_index = {p.index: p for p in plans}
    results: dict[int, Encoded] = {}
    done = 0
    for enc in pieces:
        _stop_if_cancelled(is_cancelled)
        p = by_index[enc.index]
        if enc.error is not None:
            _skip(job, state, p.path, enc.error)
            continue
        if not len(enc.kept):
            state.skipped.append((p.path, "every tile is nodata"))
            continue
        if cache is not None and p.cache_key is not None and not enc.cache_hit:
            cache.save(p.cache_key, enc.kept, enc.emb)
        if enc.cache_hit and record.was_done(p):
            record.resumed += 1
        record.mark(p)
        results[enc.index] = enc
        done += len(p.grid)
        if progress is not None:
            progress(0.95 * done / max(total, 1), f"{len(results)}/{len(plans)} rasters")
    return results


def _out_crs(job, first: RasterPlan) -> str:
    if not job.out_crs:
        return first.crs_wkt
    from .tiles import srs_from

    return srs_from(job.out_crs, "output CRS (--out-crs)").ExportToWkt()


def _same_crs(a: str, b: str) -> bool:
    from .tiles import srs_from

    return bool(srs_from(a, "raster's CRS").IsSame(srs_from(b, "output CRS")))


def _outputs(task, parts, text, bundle, fitted, whole):
    """One TaskOutput over the collection with a ``source`` field. Per-tile results are computed per raster (a
    raster's records are those of a run on it alone, to the bit); search sees every tile at once (``whole``),
    so its ranks and top K are over the whole collection."""
    from .jobs import output_columns
    from .records import Categorical

    if task.kind != "search":
        outs = [task.outputs(part, text, bundle, fitted) for part in parts]
        out = outs[0]
        sizes = [len(part.index) for part in parts]
        columns = [output_columns(o) for o in outs]
        out.columns = {name: _concat([c[name] for c in columns], sizes, kind) for name, kind in out.fields}
        out.records = None
        if out.dense is not None:
            out.dense = np.concatenate([o.dense for o in outs])
    else:
        out = task.outputs(whole, text, bundle, fitted)
        out.columns = dict(output_columns(out))
        out.records = None
    codes = np.concatenate([np.full(len(part.index), k, dtype=np.int64) for k, part in enumerate(parts)])
    out.columns["source"] = Categorical(codes, [part.name for part in parts])
    out.fields = [("source", "str"), *out.fields]
    return out


def _concat(cols: list, sizes: list[int], kind: str):
    """One column from the parts' columns (core.records: arrays, categorical codes, or values made on read)."""
    from .records import Categorical, Lazy, _python_values

    if all(isinstance(c, np.ndarray) for c in cols):
        return np.concatenate(cols)
    if all(isinstance(c, Categorical) for c in cols):
        values: list = []
        where: dict = {}
        codes = []
        for c in cols:
            remap = np.array([where.setdefault(v, len(where)) for v in c.values], dtype=np.int64)
            codes.append(remap[c.codes] if len(c.values) else np.asarray(c.codes, dtype=np.int64))
        values = list(where)
        return Categorical(np.concatenate(codes) if codes else np.zeros(0, np.int64), values)
    offsets = np.cumsum([0, *sizes])

    def values_of(start, stop):
        got = []
        for k, c in enumerate(cols):
            a, b = max(start, offsets[k]), min(stop, offsets[k + 1])
            if a < b:
                got += _python_values(c, int(a - offsets[k]), int(b - offsets[k]), kind)
        return got

    return Lazy(int(offsets[-1]), values_of)
