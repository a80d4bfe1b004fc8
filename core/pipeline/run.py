"""``run_job``: one straight line for one raster or many.

1. check the job and every file it will write (vector, dense GeoTIFF, report, saved classifier) before
   the model loads or a pixel is read (:func:`core.pipeline.write.check_outputs`);
2. plan every raster (open, CRS, bands, grid: no pixel read; :func:`core.pipeline.plan.plan_rasters`), load
   the model, ``task.prepare`` (e.g. a saved classifier, checked against the model); the tile count of the
   job is shown (``on_plan``) and checked against ``max_tiles``;
3. the text side (``task.prompts``: template ensembles), so a bad prompt fails before any pixel;
4. each raster's tile embeddings, from the cache or read and encoded, in this process
   (:func:`core.pipeline.encode.local_pieces`) or on a Dask cluster (``Job.dask``,
   :mod:`core.pipeline.distributed`) -> one :class:`core.tasks.RasterPart` per raster;
5. ``task.fit`` over every part (classify trains here), ``task.outputs`` (per part, or over all the tiles
   of the job at once for a task whose ``whole_job`` is set: search ranks);
6. write the outputs (:func:`core.pipeline.write.write_outputs`): a collection's tiles as one grid in the
   output CRS with a ``source`` field.

A single raster (a path or a RasterSource) is a collection of one without the ``source`` field, whose errors
are raised as they are (a collection skips an unreadable raster and names it; ``Job.strict`` stops instead);
a job on Dask or into another CRS is a collection. ``progress(fraction, message)`` is called once per batch
and ``is_cancelled()`` is checked once per batch; a cancelled run raises :class:`core.errors.Cancelled` and
writes nothing.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time

import numpy as np

from ..errors import InvalidInput
from ..geodata.crs import crs_name, same_crs
from ..runtime.bundle import load_bundle, precision_warnings
from ..runtime.inference import Encoder, choose_precision
from ..tasks import RasterPart
from .dates import encode_after, plan_after
from .distributed import encode_on_cluster
from .encode import ensemble, job_cache, local_pieces, provider_if_loaded
from .job import Job, JobResult, Plan, check_job, output_layer_name
from .plan import check_tile_limit, known_rate, plan_rasters, record_rate, skip
from .resume import ResumeRecord, fingerprint, resume_path
from .write import (
    CollectionGrid,
    check_outputs,
    collection_outputs,
    out_crs_wkt,
    progress_to,
    stop_if_cancelled,
    tile_ground_size,
    write_outputs,
)


def run_job(job: Job, progress=None, is_cancelled=None, on_plan=None) -> JobResult:
    """Run one job; see the module docstring. Raises RemoteClipError for bad input, Cancelled on cancel.
    ``on_plan(plan)`` is called with the :class:`Plan` once the grids are known, before any pixel is read."""
    t0 = time.perf_counter()
    check_job(job)
    if job.raster_output is not None and len(job.rasters()) > 1:
        raise InvalidInput("--raster-output makes one GeoTIFF on one raster's grid; several rasters were given.",
                           "Leave out --raster-output, or run each raster on its own (or mosaic them in a VRT).",
                           param="raster_output")
    paths = check_outputs(job)   # before any pixel is read or the model loads
    progress_to(progress, 0.0, "planning" if job.many else "preparing")
    plans, state = plan_rasters(job, progress)   # opening reads no pixels: fails before the model loads
    after = None
    try:
        after = plan_after(job, plans)   # a task of two dates (core.tasks.change): AFTER on BEFORE's grid
        return _run(job, plans, state, paths, t0, progress, is_cancelled, on_plan, after)
    finally:
        for p in plans:
            p.close()
        if after is not None:
            after.close()


def _run(job: Job, plans, state, paths, t0, progress, is_cancelled, on_plan, after=None) -> JobResult:
    bundle = load_bundle(job.run.model)
    precision, precision_reason = choose_precision(bundle, job.run.precision, job.run.device)
    if precision != job.run.precision:   # "auto" resolved: the cache key, rates and resume record name the graphs run
        job = copy.copy(job)
        job.run = dataclasses.replace(job.run, precision=precision)
    warnings: list[str] = precision_warnings(bundle, job.run.precision)
    task = job.task
    prepared = task.prepare(bundle, warnings)
    total = sum(len(p.grid) for p in plans)
    plan = Plan(total, plans[0].tile_px, known_rate(job, bundle), rasters=len(plans))
    if on_plan is not None:
        on_plan(plan)
    check_tile_limit(job, plan)
    out_wkt = out_crs_wkt(job, plans[0].crs_wkt)
    if job.raster_output is not None and job.out_crs and not same_crs(plans[0].crs_wkt, out_wkt):
        raise InvalidInput("--raster-output is written in the raster's CRS; --out-crs asks for another.",
                           "Leave out --out-crs, or reproject the GeoTIFF afterwards (gdalwarp).", param="out_crs")
    encoder = Encoder(bundle, device=job.run.device, precision=job.run.precision, batch_size=job.run.batch_size,
                      threads=job.run.threads)
    timings = {"prepare": time.perf_counter() - t0}
    t = time.perf_counter()
    prompts = task.prompts(prepared)   # text first: a bad prompt fails before any pixel is read
    text = ensemble(encoder, prompts, warnings) if prompts else None
    prepared = task.encode_inputs(encoder, prepared, warnings)   # e.g. search's example images: before any pixel
    timings["text"] = time.perf_counter() - t
    cache = job_cache(job)
    record = ResumeRecord(resume_path(paths["vector"], output_layer_name(job)) if paths["vector"] else None,
                          fingerprint(job, bundle), paths["vector"]) if job.many else ResumeRecord(None, "")
    t = time.perf_counter()
    if job.dask:
        # the client's batch size: the workers' batches (and blocks) are the ones a single process makes
        batch = job.run.batch_size or encoder.batch_size
        pieces = encode_on_cluster(job, plans, bundle, batch, cache, progress, is_cancelled, total)
    else:
        pieces = local_pieces(job, plans, bundle, encoder, encoder.plan_batch(), cache, progress, is_cancelled,
                              total, None if job.many else warnings)
    try:
        results = gather(job, plans, pieces, cache, record, state, progress, is_cancelled, total)
    finally:
        pieces.close()   # a cancel or an error: the readers stop, the cluster's futures are cancelled
    timings["tiles"] = time.perf_counter() - t
    stop_if_cancelled(is_cancelled)
    read = sum(len(p.grid) for p in plans if p.index in results and not results[p.index].cache_hit)
    if read and not job.dask:
        record_rate(job, bundle, encoder.provider, read, timings["tiles"])
    t = time.perf_counter()
    parts, ground = [], []
    for p in plans:
        enc = results.get(p.index)
        if enc is None:
            continue
        parts.append(RasterPart(name=p.name, crs_wkt=p.crs_wkt, transform=p.transform, grid=p.grid,
                                index=np.asarray(enc.kept, dtype=np.int64), embeddings=enc.emb, tile_px=p.tile_px,
                                step_px=p.step_px, cache_hit=enc.cache_hit, images_encoded=enc.images_encoded))
        ground.append(tile_ground_size(p))
    if not parts:
        why = "; ".join(f"{os.path.basename(p)}: {w}" for p, w in state.skipped[:3])
        raise InvalidInput(f"No raster gave a tile ({why}).", "Check the rasters (gdalinfo), the extent and "
                           "the bands.")
    if after is not None:   # one raster (plan_after refuses a collection): AFTER's tiles in its grid
        parts = [encode_after(job, after, plans[0], parts[0], bundle, encoder, encoder.plan_batch(), cache,
                              progress, is_cancelled, warnings)]
    encoded = sum(part.images_encoded for part in parts)
    fitted = task.fit(parts, text, bundle, prepared, warnings)
    if job.many:
        whole = None   # every tile of the collection in the output CRS: one grid, the embeddings concatenated once
        if job.raster_output is None or task.whole_job:
            grid = CollectionGrid(parts, out_wkt, ground)
            whole = RasterPart(name=f"{len(parts)} rasters", crs_wkt=out_wkt, transform=parts[0].transform,
                               grid=grid, index=np.arange(len(grid), dtype=np.int64),
                               embeddings=np.concatenate([part.embeddings for part in parts]),
                               tile_px=parts[0].tile_px, step_px=parts[0].step_px,
                               cache_hit=all(part.cache_hit for part in parts), images_encoded=encoded)
        out = collection_outputs(task, parts, text, bundle, fitted, whole)
        out.metadata = {**out.metadata, "crs": crs_name(out_wkt), "rasters": [part.name for part in parts],
                        "skipped": [{"raster": r, "why": w} for r, w in state.skipped]}
        if job.raster_output is not None:   # one raster (checked above), written on its own grid and CRS
            whole = parts[0]
    else:
        whole = parts[0]
        out = task.outputs(whole, text, bundle, fitted)
    stop_if_cancelled(is_cancelled)
    provider = encoder.provider if encoded and not job.dask else (
        "dask" if job.dask else provider_if_loaded(encoder))
    res = write_outputs(job, whole, out, bundle, provider, paths, warnings + state.warnings, t0, progress,
                        is_cancelled, precision_reason)
    timings["results"] = time.perf_counter() - t
    record.remove()
    res.timings = timings
    if job.many:
        res.skipped = list(state.skipped)
        res.sources = [part.name for part in parts]
        res.resumed = record.resumed
    return res


def gather(job: Job, plans, pieces, cache, record, state, progress, is_cancelled, total) -> dict:
    """Each raster's embeddings as they come (from a reader or a worker): saved in the cache and the record;
    a collection's unreadable or all-nodata raster skipped (or, --strict, the run stopped); a single raster's
    all-nodata tiles an error."""
    by_index = {p.index: p for p in plans}
    results: dict = {}
    done = 0
    for enc in pieces:
        stop_if_cancelled(is_cancelled)
        p = by_index[enc.index]
        if enc.error is not None:
            skip(job, state, p.path, enc.error)
            continue
        if cache is not None and p.cache_key is not None and not enc.cache_hit:
            cache.save(p.cache_key, enc.kept, enc.emb)
        if not len(enc.kept):
            if not job.many:
                raise InvalidInput(f"Every tile of {p.name or 'the raster'} is nodata ({len(p.grid)} tiles "
                                   "read, none with a valid pixel).", "Check the raster's nodata value and "
                                   "mask (gdalinfo) and the bands; choose an extent with image data.")
            state.skipped.append((p.path, "every tile is nodata"))
            continue
        if enc.cache_hit and record.was_done(p):
            record.resumed += 1
        record.mark(p)
        results[enc.index] = enc
        done += len(p.grid)
        if progress is not None and job.many:
            progress(0.95 * done / max(total, 1), f"{len(results)}/{len(plans)} rasters")
    return results
