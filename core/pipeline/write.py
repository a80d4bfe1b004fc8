"""Writing: every output checked before the run (:func:`check_outputs`), the task's results as records over the
tiles (a collection's tiles as one grid in the output CRS, polygons reprojected exactly) and the outputs
written as one set: all complete as temporaries before any is published (:func:`write_outputs`)."""

from __future__ import annotations

import os
import time

import numpy as np

from .. import checks
from ..errors import InvalidInput
from ..geodata.vectors import check_not_input, check_output
from ..records import Categorical, Lazy, Records, python_values
from ..tasks import RasterPart, TaskOutput
from .job import Job, JobResult, job_inputs, output_layer_name

_DENSIFY = 8   # points per tile edge when the output CRS differs: tiles stay exact under curved transforms


def stop_if_cancelled(is_cancelled) -> None:
    if is_cancelled is not None and is_cancelled():
        from ..errors import Cancelled

        raise Cancelled("cancelled")


def progress_to(progress, fraction: float, message: str) -> None:
    if progress is not None:
        progress(fraction, message)


def check_outputs(job: Job) -> dict:
    """Every file ``job`` writes, checked (core.geodata.vectors.check_output and alike): {"vector", "raster",
    "report", "head"} -> path or None."""
    from ..geodata.dense import check_raster_output
    from ..outputs import check_distinct, check_file_output, check_report_path, report_path

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
        from ..geodata.vectors import sidecar_path

        named.append((sidecar_path(out["vector"]), "output's sidecar"))
    check_distinct(named)
    return out


def write_outputs(job: Job, part: RasterPart, out: TaskOutput, bundle, provider: str, paths: dict,
                  warnings: list[str], t0: float, progress=None, is_cancelled=None,
                  precision_reason: str = "") -> JobResult:
    """The records of ``part`` with their tiles, written where ``paths`` (:func:`check_outputs`) says, as one
    set: each output is written to its temporary and checked first, then all are published
    (:func:`core.staged.publish_all`); a failure or a cancel before that removes every temporary and leaves
    every old file as it was."""
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
    staged = []   # every output complete and checked as a temporary before any is published
    try:
        if paths["vector"]:
            progress_to(progress, 0.97, f"writing {job.output}")
            from ..geodata.vectors import Field, stage_vector

            metadata = {"task": type(task).__name__, "kind": task.kind, "model": bundle.name, "raster": part.name,
                        "fields": out.field_map, "provider": provider, "precision": job.run.precision,
                        "precision_reason": precision_reason, **out.metadata}
            dissolve_by = task.dissolve_field if job.dissolve else None
            staged.append(stage_vector(job.output, records, [Field(n, t) for n, t in fields_], part.crs_wkt,
                                       layer_name=layer_name, dissolve_by=dissolve_by, metadata=metadata,
                                       overwrite=job.overwrite, inputs=inputs))
            written["vector"] = job.output
        stop_if_cancelled(is_cancelled)
        if paths["raster"]:
            progress_to(progress, 0.98, f"writing {job.raster_output}")
            from ..geodata.dense import stage_dense

            staged.append(stage_dense(paths["raster"], part.tiles, out.dense, out.dense_names, part.tile_px,
                                      part.step_px, part.transform, part.crs_wkt, job.overwrite, inputs,
                                      {"task": task.kind, "model": bundle.name, "bands": out.dense_names},
                                      raster=job.raster))
            written["raster"] = staged[-1].path
        stop_if_cancelled(is_cancelled)
        if paths["head"] and out.head is not None:
            from ..outputs import stage_text_file

            staged.append(stage_text_file(paths["head"], out.head.to_json(), job.overwrite))
            written["head"] = staged[-1].path
        if paths["report"] and report is not None:
            from ..outputs import stage_report

            staged.append(stage_report(paths["report"], report))
            written["report"] = staged[-1].path
        stop_if_cancelled(is_cancelled)
    except BaseException:
        from ..staged import discard_all

        discard_all(staged)
        raise
    from ..staged import publish_all

    publish_all(staged)
    progress_to(progress, 1.0, f"{len(records)} tiles done")
    return JobResult(output=written.get("vector"), layer_name=layer_name, crs_wkt=part.crs_wkt, records=records,
                     fields=[n for n, _ in fields_], provider=provider, n_tiles=len(records),
                     cache_hit=part.cache_hit, seconds=time.perf_counter() - t0, warnings=warnings,
                     field_map=out.field_map, embeddings=part.embeddings, images_encoded=part.images_encoded,
                     raster_output=written.get("raster"), report=report, report_output=written.get("report"),
                     head_output=written.get("head"), model=bundle.name, precision=job.run.precision,
                     precision_reason=precision_reason)


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


# ------------------------------------------------------------------------------------- a collection

def collection_outputs(task, parts, text, bundle, fitted, whole) -> TaskOutput:
    """One TaskOutput over the collection with a ``source`` field. Per-tile results are computed per raster (a
    raster's records are those of a run on it alone, to the bit); a task with ``whole_job`` (search) sees every
    tile at once (``whole``), so its ranks and top K are over the whole collection."""
    if not task.whole_job:
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
                got += python_values(c, int(a - offsets[k]), int(b - offsets[k]), kind)
        return got

    return Lazy(int(offsets[-1]), values_of)


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

        from ..geodata.tiles import Tile

        (r,), (c,) = self.rows_cols([i])
        wkb = self.polygon_wkb([i])[0]
        return Tile(int(r), int(c), tuple(self.windows([i])[0].tolist()),
                    polygon_wkt=ogr.CreateGeometryFromWkb(wkb).ExportToWkt())


def reproject_wkb(wkbs: list[bytes], src_wkt: str, dst_wkt: str, tile_size: float) -> list[bytes]:
    """Polygons from ``src_wkt`` to ``dst_wkt``: each edge densified (``_DENSIFY`` points) then transformed by
    OGR, so a tile stays exact under a curved transform (UTM <-> degrees). The same CRS: unchanged."""
    from osgeo import ogr, osr

    from ..geodata.crs import srs_from

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


def tile_ground_size(plan) -> float:
    a, b, _, d, e, _ = plan.transform[:6]
    return min(abs(a) + abs(b), abs(d) + abs(e)) * min(plan.tile_px)


def out_crs_wkt(job: Job, first_wkt: str) -> str:
    """The output CRS: ``Job.out_crs``, else the first raster's."""
    if not job.out_crs:
        return first_wkt
    from ..geodata.crs import srs_from

    return srs_from(job.out_crs, "output CRS (--out-crs)", param="out_crs").ExportToWkt()
