"""Dense maps: a task's per-tile values (class probabilities, search similarity) as a GeoTIFF at tile
resolution, for a smooth heat map in QGIS.

The map's cells are the tile grid's steps: a cell is ``step_x x step_y`` raster pixels (the tile size
times ``1 - overlap``), anchored at the raster's top-left pixel like the grid; the map never reaches past
the raster (a padded or shifted last tile would take it there): where the raster ends inside a cell, that
axis's cells shrink evenly so the map's extent is the raster's. A cell's value is the
mean over the tiles that cover its centre; cells no tile covers are nodata (NaN). Without overlap a
cell is a tile; with overlap each cell averages the tiles that share it, so the map is smoother than
the tiles. One float32 band per value (its description is the class name, or ``similarity``).

Written like the vector outputs (core.geodata.vectors): into a temporary beside the file (its name carries the
writer's pid; dead ones are removed) and renamed into place when complete; an existing file is
replaced only with ``overwrite`` (its stale ``.aux.xml`` statistics go with it); never the input.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re

import numpy as np

from ..errors import InvalidInput, gdal_return_codes

__all__ = ["RASTER_EXTENSIONS", "check_raster_output", "dense_grid", "raster_size", "write_dense", "stage_dense"]

RASTER_EXTENSIONS = (".tif", ".tiff")


def _temp_pattern(stem: str) -> str:
    return r"\." + re.escape(stem) + r"\.tmp-(\d+)-[a-z0-9_]{8}\.tif(?:\.aux\.xml)?"


def check_raster_output(path, overwrite: bool = False, inputs=()) -> str:
    """``path`` if a dense GeoTIFF can be written there without losing anything, else the error saying why."""
    from ..checks import path_text
    from ..outputs import check_file_output

    path = path_text(path, "raster output")
    if os.path.splitext(path)[1].lower() not in RASTER_EXTENSIONS:
        raise InvalidInput(f"The raster output {path} is not a GeoTIFF.", "Name it .tif.", path=path, param="raster_output")
    return check_file_output(path, "raster output", overwrite, inputs, temp_pattern=_temp_pattern,
                             example="map.tif", other="another --raster-output")


def raster_size(raster) -> tuple[int, int] | None:
    """(width, height) in pixels of ``raster``: a RasterSource (or anything with ``width`` and ``height``),
    a (width, height) pair, a path GDAL opens, or a list holding one of these; None when unknown."""
    if isinstance(raster, list | tuple) and len(raster) == 2 and all(isinstance(v, int | np.integer) for v in raster):
        return int(raster[0]), int(raster[1])
    if isinstance(raster, list | tuple):
        return raster_size(raster[0]) if len(raster) == 1 else None
    if hasattr(raster, "width") and hasattr(raster, "height"):
        return int(raster.width), int(raster.height)
    if isinstance(raster, str | os.PathLike):
        from osgeo import gdal

        from .vectors import gdal_errors

        with gdal_errors():
            try:
                ds = gdal.Open(os.fspath(raster))
            except RuntimeError:
                ds = None
        if ds is not None:
            return int(ds.RasterXSize), int(ds.RasterYSize)
    return None


def _axis(starts, sizes, step: int, length: int | None):
    """One axis of the map: (origin px, cell size px, cells, first cell, end cell per tile). Cells are
    ``step`` pixels, anchored on the grid; where the raster ends inside the last cell (a padded or shifted
    last tile) the cells of that axis shrink evenly so that the map ends where the raster does."""
    lo = min(math.ceil(s / step - 0.5) for s in starts) * step
    hi = max(max(math.ceil((s + w) / step - 0.5), math.ceil(s / step - 0.5) + 1) for s, w in zip(starts, sizes, strict=True)) * step
    if length is not None:
        lo, hi = max(lo, 0), min(hi, int(length))
    n = max(1, math.ceil((hi - lo) / step))
    cell = (hi - lo) / n if hi > lo else float(step)
    spans = []
    for s, w in zip(starts, sizes, strict=True):
        a = min(max(math.ceil((s - lo) / cell - 0.5), 0), n - 1)
        b = min(max(math.ceil((s + w - lo) / cell - 0.5), a + 1), n)
        spans.append((a, b))
    return lo, cell, n, spans


def dense_grid(tiles, tile_px, step_px, transform, size=None):
    """(cell slices per tile, (height, width) in cells, GDAL geotransform of the map). ``size`` (the
    raster's (width, height) in pixels) clips the map to the raster: tiles past its edge (padded, or the
    grid's last cells) never make it reach over ground the raster does not cover."""
    sx, sy = max(1, int(step_px[0])), max(1, int(step_px[1]))
    windows = [t.window for t in tiles]
    width, height = (None, None) if size is None else size
    x0, cw, nx, cols = _axis([w[0] for w in windows], [w[2] for w in windows], sx, width)
    y0, ch, ny, rows = _axis([w[1] for w in windows], [w[3] for w in windows], sy, height)
    a, b, c, d, e, f = transform[:6]
    gt = (a * x0 + b * y0 + c, a * cw, b * ch, d * x0 + e * y0 + f, d * cw, e * ch)
    slices = [(ra, rb, ca, cb) for (ra, rb), (ca, cb) in zip(rows, cols, strict=True)]
    return slices, (ny, nx), gt


def dense_values(tiles, values, tile_px, step_px, transform, size=None):
    """(bands, height, width) float32 mean per cell (NaN where no tile covers it), and the geotransform."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    slices, (h, w), gt = dense_grid(tiles, tile_px, step_px, transform, size)
    total = np.zeros((values.shape[1], h, w))
    count = np.zeros((h, w))
    for (ra, rb, ca, cb), v in zip(slices, values, strict=True):
        total[:, ra:rb, ca:cb] += v[:, None, None]
        count[ra:rb, ca:cb] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return out.astype(np.float32), gt


def _written_back(tmp: str, data) -> bool:
    """Whether the closed file, on disk and read back (a few kB), holds ``data`` (else GDAL failed silently)."""
    from osgeo import gdal

    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    ds = gdal.Open(tmp)
    ok = ds is not None and (ds.RasterCount, ds.RasterYSize, ds.RasterXSize) == data.shape
    if ok:
        back = np.stack([ds.GetRasterBand(i + 1).ReadAsArray() for i in range(ds.RasterCount)])
        ok = np.array_equal(back, data, equal_nan=True)
    ds = None
    return ok


def write_dense(path, tiles, values, names: list[str], tile_px, step_px, transform, crs_wkt: str,
                overwrite: bool = False, inputs=(), metadata: dict | None = None, raster=None) -> str:
    """Write the dense map of ``values`` (one row per tile, one column per band) to the GeoTIFF ``path``;
    ``raster`` (the tiles' raster: see :func:`raster_size`) clips the map to its extent."""
    return stage_dense(path, tiles, values, names, tile_px, step_px, transform, crs_wkt, overwrite, inputs,
                       metadata, raster).commit()


@gdal_return_codes()
def stage_dense(path, tiles, values, names: list[str], tile_px, step_px, transform, crs_wkt: str,
                overwrite: bool = False, inputs=(), metadata: dict | None = None, raster=None):
    """:func:`write_dense` up to a complete, checked temporary (a :class:`core.staged.Staged`: publish
    renames it into place, discard removes it)."""
    from osgeo import gdal

    from ..staged import Staged
    from .vectors import _new_temp, _publish, _temp_prefix, gdal_errors, write_failed

    path = check_raster_output(path, overwrite, inputs)
    data, gt = dense_values(tiles, values, tile_px, step_px, transform, raster_size(raster))
    folder = os.path.dirname(os.path.abspath(path))
    stem = os.path.splitext(os.path.basename(path))[0]
    tmp = _new_temp(folder, _temp_prefix(stem), ".tif")

    def discard():
        for p in (tmp, tmp + ".aux.xml"):
            with contextlib.suppress(OSError):
                os.unlink(p)

    def publish():
        _publish(tmp, path, overwrite)
        if overwrite:   # statistics of the replaced file would describe other values; kept if it stayed
            with contextlib.suppress(OSError):
                os.unlink(path + ".aux.xml")
        with contextlib.suppress(OSError):
            os.unlink(tmp + ".aux.xml")

    try:
        # every GDAL failure counts: before 3.7 a failed write (a full disk) shows in no return value
        with gdal_errors() as failures:
            try:
                ds = gdal.GetDriverByName("GTiff").Create(
                    tmp, int(data.shape[2]), int(data.shape[1]), int(data.shape[0]), gdal.GDT_Float32,
                    options=["COMPRESS=DEFLATE", "PREDICTOR=3", "TILED=YES"])
            except RuntimeError:
                ds = None
            if ds is None:
                raise write_failed(path, failures[0] if failures else "GDAL refused to create it")
            ds.SetGeoTransform(gt)
            if crs_wkt:
                ds.SetProjection(crs_wkt)
            for i, name in enumerate(names):
                band = ds.GetRasterBand(i + 1)
                band.SetNoDataValue(float("nan"))
                band.SetDescription(str(name))
                band.WriteArray(data[i])
            if metadata:
                ds.SetMetadataItem("REMOTECLIP", json.dumps(metadata, ensure_ascii=False, default=str))
            ds.FlushCache()
            ds = None   # closes the file: the last writes happen here
            if not failures and not _written_back(tmp, data):
                failures.append("the file read back is not what was written")
        if failures:
            raise write_failed(path, failures[0])
    except BaseException:
        discard()
        raise
    return Staged(path, publish, discard)
