"""Planning: each raster's grid, bands and CRS (no pixel read), the tile limit, and the time estimate from the
tile rate an earlier run measured here."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field

from ..errors import RemoteClipError
from ..tiles import grid_step, make_grid, require_crs
from .job import Job, Plan, check_job
from .sources import open_source

log = logging.getLogger(__name__)

NO_TILE = "no tile in the extent"


@dataclass
class RasterPlan:
    """One raster of the job, planned on the client (no pixel read yet)."""
    index: int
    path: object                 # the raster as the job gives it: a path or URI, or a RasterSource
    grid: object                 # core.tiles.TileGrid
    bands: list[int]
    crs_wkt: str
    transform: tuple
    tile_px: tuple[int, int]
    step_px: tuple[int, int]
    stretch: object = None       # core.raster.Stretch, set when the raster is prepared for encoding
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
    from ..raster import check_bands, default_bands

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


def skip(job: Job, state: Skipped, path: str, why: str) -> None:
    """A collection's raster left out (``Job.strict``: the run stops instead)."""
    if job.strict:
        raise RemoteClipError(f"Raster {path} was not processed: {why}",
                              "Fix or remove it, or leave out --strict to skip unreadable rasters.")
    log.info("skipping %s: %s", path, why)
    state.skipped.append((path, why))


def plan_rasters(job: Job, progress=None) -> tuple[list[RasterPlan], Skipped]:
    """The plans of the job's rasters. One raster (not ``Job.many``): its errors raised as they are, no tile in
    the extent an error, its source kept open. A collection: an unreadable raster skipped and named (``strict``:
    the run stops), one without a tile in the extent skipped; none left is an error."""
    state = Skipped()
    if not job.many:
        plan = plan_raster(job, 0, job.raster, keep_open=True)
        plan.name = str(getattr(plan.src, "name", ""))
        if not len(plan.grid):
            plan.close()
            raise RemoteClipError("No tiles: the extent does not overlap the raster.",
                                  "Choose an extent (bbox or polygons) inside the raster.")
        return [plan], state
    rasters = job.rasters()
    plans = []
    for i, path in enumerate(rasters):
        if progress is not None and len(rasters) > 20 and i % 20 == 0:
            progress(0.0, f"planning {i}/{len(rasters)} rasters")
        try:
            p = plan_raster(job, i, path)
        except RemoteClipError as e:
            skip(job, state, path, str(e))
            continue
        except Exception as e:   # a damaged header: GDAL/rasterio raise their own types
            skip(job, state, path, f"{type(e).__name__}: {e}")
            continue
        if not len(p.grid):
            state.skipped.append((path, NO_TILE))   # not an error: --strict does not stop for it
            continue
        plans.append(p)
    if not plans:
        why = "; ".join(f"{os.path.basename(p)}: {w}" for p, w in state.skipped[:3])
        raise RemoteClipError(f"None of the {len(rasters)} rasters can be processed ({why}).",
                              "Check the paths (gdalinfo), the extent and the bands.")
    return plans, state


def check_tile_limit(job: Job, plan: Plan) -> None:
    """The one tile limit (``Job.max_tiles``, the command line's --yes): a larger plan is refused."""
    if job.max_tiles is not None and plan.n_tiles > job.max_tiles:
        fewer = ", an extent, or fewer rasters." if plan.rasters > 1 or job.many else ", or an extent."
        raise RemoteClipError(f"The plan is {plan.describe()}, above the {job.max_tiles:,} tiles a run may have "
                              "unless confirmed.", "Confirm it (--yes on the command line), or plan fewer tiles: "
                              "larger tiles, less overlap" + fewer)


def plan_job(job: Job) -> Plan:
    """The plan of ``job`` (tile count and estimated time) without loading the model or reading pixels."""
    from ..bundle import load_bundle

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
    from ..inference import AUTO_BATCH_CPU

    path = _rates_path(job)
    if path is None or n_tiles < 2 * (job.run.batch_size or AUTO_BATCH_CPU) or seconds <= 0:
        return   # a few tiles time the start-up more than the encoder
    from ..cache import _atomic_write

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
