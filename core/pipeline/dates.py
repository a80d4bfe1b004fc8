"""A task of two dates (core.tasks.change): the second raster (AFTER) planned beside the job's raster (BEFORE) and
its tiles encoded in BEFORE's grid, on the one run path.

:func:`plan_after` (before the model loads, no pixel of BEFORE read): AFTER opened, its CRS checked against
BEFORE's (a transformation must exist), the overlap checked, its bands chosen (the task's ``after_bands``, else
its RGB bands), and, when it is not already on BEFORE's grid, a warped VRT of it on that grid made in a
temporary folder (core.tasks.change.warp_vrt). :func:`encode_after` (once BEFORE's tiles are encoded): AFTER's tiles
at BEFORE's kept tiles read and encoded (or taken from the cache), the part kept to the tiles both dates
cover with data, AFTER's embeddings handed to the task in ``RasterPart.dates["after"]``.

AFTER's cache entry is keyed by both rasters (each by core.cache.raster_identity), the warp (resampling, or
none on the same grid), the grid, AFTER's bands and stretch (with the histogram matching's tables) and the
model; BEFORE's entry is the one a single-raster run makes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field

import numpy as np

from ..errors import InvalidInput
from ..tasks import RasterPart
from .job import Job


@dataclass
class AfterPlan:
    path: str
    src: object                 # AFTER as read in BEFORE's grid (the file itself, or the warped VRT)
    bands: list[int]
    warped: bool
    resampling: str | None
    folder: str | None = None   # the temporary folder of the warped VRT
    warnings: list[str] = field(default_factory=list)

    def close(self) -> None:
        if self.src is not None:
            self.src.close()
            self.src = None
        if self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


def plan_after(job: Job, plans) -> AfterPlan | None:
    """AFTER opened and put on BEFORE's grid (None for a task of one date). Raises for a collection, rasters
    that do not overlap or whose CRSs have no transformation, and bands AFTER lacks."""
    task = job.task
    after = getattr(task, "after", None)
    if task.kind != "change" or not after:
        return None
    if job.many:
        raise InvalidInput("The change task compares two rasters: one BEFORE and one AFTER (no collection, Dask "
                           "or --out-crs).", "Give one BEFORE raster and one AFTER raster.", param="raster")
    from ..geodata.crs import require_crs
    from ..geodata.raster import check_bands, default_bands, open_raster
    from ..tasks.change import footprint_overlap, same_grid, warp_vrt

    before = plans[0].src
    src = open_raster(after)
    folder = None
    try:
        require_crs(src)
        footprint_overlap(before, src, after)
        bands = check_bands(src, task.after_bands) if task.after_bands else default_bands(src)
        plan = AfterPlan(after, src, bands, False, None)
        if os.path.abspath(after) == os.path.abspath(str(getattr(before, "path", ""))):
            plan.warnings.append("AFTER is the BEFORE raster: every tile's change is 0.")
        if not same_grid(before, src):
            folder = tempfile.mkdtemp(prefix="remoteclip-change-")
            vrt = warp_vrt(src.path, before, folder, task.resampling)
            plan.src, plan.warped, plan.resampling, plan.folder = open_raster(vrt), True, task.resampling, folder
            src.close()
        return plan
    except BaseException:
        src.close()
        if folder:
            shutil.rmtree(folder, ignore_errors=True)
        raise


class _Subgrid:
    """The tiles of ``grid`` at ``index``, as a grid the reader takes (len, windows)."""

    def __init__(self, grid, index):
        self.grid, self.index = grid, np.asarray(index, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def windows(self, idx):
        return self.grid.windows(self.index[np.asarray(idx, dtype=np.int64)])


def _stretch(job: Job, after: AfterPlan, before_src, before_bands, before_stretch):
    """AFTER's stretch (its own, from a decimated read of it in BEFORE's grid), with the histogram matching to
    BEFORE's when the task asks for it."""
    from ..geodata.raster import Stretch
    from ..tasks.change import MatchedStretch, match_luts

    stretch = Stretch.from_source(after.src, after.bands)
    if not job.task.match_histograms:
        return stretch
    scale = min(1.0, 1024 / max(before_src.width, before_src.height))
    shape = (max(1, int(before_src.height * scale)), max(1, int(before_src.width * scale)))
    whole = (0, 0, before_src.width, before_src.height)
    db, vb = before_src.read(before_bands, whole, out_shape=shape)
    da, va = after.src.read(after.bands, whole, out_shape=shape)
    ok = np.ones(shape, bool) if vb is None else np.asarray(vb, bool)
    if va is not None:
        ok = ok & np.asarray(va, bool)
    return MatchedStretch(stretch, match_luts(before_stretch.apply(db), stretch.apply(da), ok))


def _cache_key(job: Job, cache, after: AfterPlan, plan, stretch, bundle, before_kept) -> str | None:
    from ..cache import raster_identity
    from ..geodata.tiles import spec_params
    from .encode import cache_model_id

    if cache is None:
        return None
    from ..geodata.raster import open_raster

    with contextlib.closing(open_raster(after.path)) as original:
        after_id = raster_identity(original)
    return cache.key_for({"raster": after_id, "in_grid_of": raster_identity(plan.src), "grid": spec_params(job.tiles),
                          "warp": {"resampling": after.resampling} if after.warped else "none",
                          "bands": [int(b) for b in after.bands], "stretch": stretch.key(),
                          "tiles": hashlib.sha256(np.asarray(before_kept, np.int64).tobytes()).hexdigest(),
                          "model": cache_model_id(job, bundle)})


def encode_after(job: Job, after: AfterPlan, plan, part: RasterPart, bundle, encoder, batch, cache, progress,
                 is_cancelled, warnings: list[str]) -> RasterPart:
    """``part`` (BEFORE) kept to the tiles both dates cover with data, AFTER's embeddings of them in
    ``dates["after"]``."""
    from .encode import encode_tiles

    warnings.extend(after.warnings)
    stretch = _stretch(job, after, plan.src, plan.bands, plan.stretch)
    key = _cache_key(job, cache, after, plan, stretch, bundle, part.index)
    cached = cache.load(key, n_grid=len(plan.grid), embed_dim=bundle.embed_dim) if key is not None else None
    if cached is not None:
        kept, emb = cached
        encoded = 0
    else:
        sub = _Subgrid(plan.grid, part.index)

        def report(fraction, message):
            if progress is not None:
                progress(0.5 + fraction / 2, f"after: {message}")

        pos, emb = encode_tiles(encoder, after.src, after.bands, stretch, sub, report, is_cancelled, batch,
                                readers=1)
        kept = sub.index[pos]
        encoded = len(emb)
        if key is not None:
            cache.save(key, kept, emb)
    if not len(kept):
        raise InvalidInput(f"The AFTER raster has no data in any of BEFORE's {len(part.index)} tiles (every tile "
                           "is nodata or outside it).", "Check AFTER's nodata value and extent (gdalinfo), or "
                           "choose an extent both rasters cover.", path=after.path, param="after")
    both, in_before, in_after = np.intersect1d(part.index, kept, assume_unique=True, return_indices=True)
    out = RasterPart(name=part.name, crs_wkt=part.crs_wkt, transform=part.transform, grid=part.grid, index=both,
                     embeddings=part.embeddings[in_before], tile_px=part.tile_px, step_px=part.step_px,
                     cache_hit=part.cache_hit and cached is not None,
                     images_encoded=part.images_encoded + encoded)
    out.dates["after"] = {"embeddings": emb[in_after], "cache_hit": cached is not None,
                          "alignment": {"warped": after.warped, "resampling": after.resampling,
                                        "bands": [int(b) for b in after.bands],
                                        "dropped_tiles": int(len(part.index) - len(both))}}
    return out
