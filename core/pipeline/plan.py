"""Planning: each raster's grid, bands and CRS (no pixel read), the tile limit, and the time estimate from the
tile rate an earlier run measured here."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field

from ..errors import InvalidInput, RemoteClipError, SourceUnreadable
from ..geodata.crs import require_crs
from ..geodata.tiles import grid_step, make_grid
from .job import Job, Plan, check_job
from .sources import open_source

log = logging.getLogger(__name__)

NO_TILE = "no tile in the extent"


@dataclass
class RasterPlan:
    """One raster of the job, planned on the client (no pixel read yet)."""
    index: int
    path: object                 # the raster as the job gives it: a path or URI, or a RasterSource
    grid: object                 # core.geodata.tiles.TileGrid
    bands: list[int]
    crs_wkt: str
    transform: tuple
    tile_px: tuple[int, int]
    step_px: tuple[int, int]
    stretch: object = None       # core.geodata.raster.Stretch, set when the raster is prepared for encoding
    cache_key: str | None = None
    name: str = ""               # what the output names it (a collection: the path; one raster: its source's name)
    src: object = None           # the open source, kept from planning to encoding (a single raster)
    owned: bool = False          # ``src`` was opened here and is closed by :meth:`close`

    def close(self) -> None:
        if self.owned and self.src is not None:
            self.src.close()
        self.src, self.owned = None, False


@dataclass
class Skipped:
    """A collection's rasters not in the output, (raster, why), and warnings made on the way."""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def plan_raster(job: Job, index: int, raster, keep_open: bool = False) -> RasterPlan:
    """The raster's plan (opened, its CRS and bands checked, the grid made; its grid may be empty); errors are
    raised as they are. ``keep_open``: the plan holds the open source for encoding."""
    from ..geodata.raster import check_bands, default_bands

    src, owned = open_source(raster)
    try:
        require_crs(src)
        spec = job.tiles
        bands = check_bands(src, spec.bands) if spec.bands else default_bands(src)
        grid = make_grid(src, spec)
        plan = RasterPlan(index, raster, grid, bands, src.crs_wkt, tuple(src.transform), grid.tile_px,
                          grid_step(grid.tile_px, spec.overlap), name=str(raster))
        if keep_open:
            plan.src, plan.owned = src, owned
            owned = False
        return plan
    finally:
        if owned:
            src.close()


def shown(path) -> str:
    """A raster's name as text that can be printed and written (bytes that are not UTF-8 as U+FFFD)."""
    path = str(path)
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        try:
            return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        except UnicodeEncodeError:   # a surrogate that is no escaped byte
            return path.encode("utf-8", "replace").decode("utf-8")


def skip(job: Job, state: Skipped, path: str, why: str, kind: type[RemoteClipError] = SourceUnreadable) -> None:
    """A collection's raster left out (``Job.strict``: the run stops instead)."""
    path = shown(path)
    if job.strict:
        raise kind(f"Raster {path} was not processed: {why}",
                   "Fix or remove it, or leave out --strict to skip unreadable rasters.", path=path)
    log.info("skipping %s: %s", path, why)
    state.skipped.append((path, why))


def plan_rasters(job: Job, progress=None) -> tuple[list[RasterPlan], Skipped]:
    """The plans of the job's rasters.

    One raster (not ``Job.many``): its errors raised as they are, no tile in the extent an error, its source
    kept open. A collection: a raster that cannot be opened or read (SourceUnreadable, or GDAL's own error on
    a damaged header) is skipped and named (``Job.strict``: the run stops); one without a tile in the extent
    is skipped. A raster that does not fit the job's parameters (an InvalidInput: a band it lacks, no CRS,
    smaller than a tile) is skipped only when another raster of the collection fits them: then the misfit is
    that raster's data (a mixed collection). When no raster fits, the parameters are what is wrong, and the
    first raster's error propagates with its kind and ``param``. Any other kind (a missing package)
    propagates."""
    state = Skipped()
    if not job.many:
        plan = plan_raster(job, 0, job.raster, keep_open=True)
        plan.name = str(getattr(plan.src, "name", ""))
        if not len(plan.grid):
            plan.close()
            raise InvalidInput("No tiles: the extent does not overlap the raster.",
                               "Choose an extent (bbox or polygons) inside the raster.", param="extent")
        return [plan], state
    rasters = job.rasters()
    plans = []
    misfits: list[tuple[str, InvalidInput]] = []
    for i, path in enumerate(rasters):
        if progress is not None and len(rasters) > 20 and i % 20 == 0:
            progress(0.0, f"planning {i}/{len(rasters)} rasters")
        try:
            p = plan_raster(job, i, path)
        except SourceUnreadable as e:
            skip(job, state, path, str(e))
            continue
        except InvalidInput as e:
            misfits.append((path, e))
            continue
        except RemoteClipError:
            raise
        except Exception as e:   # a damaged header: GDAL/rasterio raise their own types
            skip(job, state, path, f"{type(e).__name__}: {e}")
            continue
        if not len(p.grid):
            state.skipped.append((path, NO_TILE))   # not an error: --strict does not stop for it
            continue
        plans.append(p)
    if misfits and not plans:
        raise misfits[0][1]
    for path, e in misfits:
        skip(job, state, path, str(e), InvalidInput)
    if not plans:
        why = "; ".join(f"{os.path.basename(p)}: {w}" for p, w in state.skipped[:3])
        kind = InvalidInput if all(w == NO_TILE for _, w in state.skipped) else SourceUnreadable
        raise kind(f"None of the {len(rasters)} rasters can be processed ({why}).",
                   "Check the paths (gdalinfo), the extent and the bands.")
    return plans, state


def check_tile_limit(job: Job, plan: Plan) -> None:
    """The one tile limit (``Job.max_tiles``, the command line's --yes): a larger plan is refused."""
    if job.max_tiles is not None and plan.n_tiles > job.max_tiles:
        fewer = ", an extent, or fewer rasters." if plan.rasters > 1 or job.many else ", or an extent."
        raise InvalidInput(f"The plan is {plan.describe()}, above the {job.max_tiles:,} tiles a run may have "
                           "unless confirmed.", "Confirm it (--yes on the command line), or plan fewer tiles: "
                           "larger tiles, less overlap" + fewer, param="max_tiles")


def plan_job(job: Job) -> Plan:
    """The plan of ``job`` (tile count and estimated time) without loading the model or reading pixels."""
    from ..runtime.bundle import load_bundle

    check_job(job)
    if job.many:
        plans, _ = plan_rasters(job)
        return Plan(sum(len(p.grid) for p in plans), plans[0].tile_px, known_rate(job, load_bundle(job.run.model)),
                    rasters=len(plans))
    plan = plan_raster(job, 0, job.raster)
    grid = plan.grid
    return Plan(len(grid), grid.tile_px if len(grid) else (0, 0), known_rate(job, load_bundle(job.run.model)))


# --------------------------------------------------------------------------------------- tile rates

def default_cache_dir() -> str:
    from ..cache import default_cache_dir

    return default_cache_dir()


def _rates_path(job: Job) -> str | None:
    cache_dir = job.run.cache_dir
    return None if cache_dir == "" else os.path.join(cache_dir or default_cache_dir(), "rates.json")


def _rate_key(bundle, precision: str, device: str) -> str:
    return f"{bundle.name}|{bundle.architecture}|{precision}|{device}"


def _read_rates(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        rates = json.load(f)
    return rates if isinstance(rates, dict) else {}


def _rate_entry(value) -> tuple[float, int] | None:
    """(tiles per second, tiles it was measured on) of a stored rate; a bare number (files of earlier versions)
    counts as measured on many tiles."""
    if isinstance(value, int | float) and value > 0:
        return float(value), 1 << 30
    if isinstance(value, dict) and isinstance(value.get("rate"), int | float) and value["rate"] > 0:
        return float(value["rate"]), int(value.get("tiles") or 0)
    return None


def known_rate(job: Job, bundle) -> float | None:
    """Tiles per second of this model, precision and device measured here (kept beside the cache)."""
    path = _rates_path(job)
    if path is None or not os.path.isfile(path):
        return None
    precision = job.run.precision
    if precision == "auto":   # the rate of the graphs auto will run (record_rate keeps it under those)
        from ..errors import MissingDependency
        from ..runtime.inference import choose_precision

        try:
            precision = choose_precision(bundle, precision, job.run.device)[0]
        except MissingDependency:   # device cuda without CUDA (or no onnxruntime): no estimate; the run says why
            return None
    try:
        entry = _rate_entry(_read_rates(path).get(_rate_key(bundle, precision, job.run.device)))
    except (OSError, ValueError, AttributeError):
        return None
    return entry[0] if entry else None


def record_rate(job: Job, bundle, provider: str, n_tiles: int, seconds: float) -> None:
    """Keep the rate of this run: any run that encoded tiles gives a first estimate (a few tiles time the
    start-up too, so theirs is slow); a run replaces an earlier measurement on as many tiles or more, or on
    two batches or more (enough for the encoder to dominate)."""
    from ..runtime.inference import AUTO_BATCH_CPU

    path = _rates_path(job)
    if path is None or n_tiles < 1 or seconds <= 0:
        return
    from ..cache import _atomic_write

    try:
        rates = _read_rates(path) if os.path.isfile(path) else {}
        key = _rate_key(bundle, job.run.precision, job.run.device)
        old = _rate_entry(rates.get(key))
        if old is not None and n_tiles < min(old[1], 2 * (job.run.batch_size or AUTO_BATCH_CPU)):
            return   # a smaller run would replace a better measurement
        rates[key] = {"rate": round(n_tiles / seconds, 3), "tiles": int(n_tiles)}
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _atomic_write(path, lambda f: f.write(json.dumps(rates, indent=1, sort_keys=True).encode()))
    except (OSError, ValueError, AttributeError) as e:
        log.warning("could not record the tile rate in %s: %s", path, e)
