"""Dense maps: a task's per-tile values (class probabilities, search similarity) as a GeoTIFF at tile
resolution, for a smooth heat map in QGIS.

The map's cells are the tile grid's steps: a cell is ``step_x x step_y`` raster pixels (the tile size
times ``1 - overlap``), anchored at the raster's top-left pixel like the grid. A cell's value is the
mean over the tiles that cover its centre; cells no tile covers are nodata (NaN). Without overlap a
cell is a tile; with overlap each cell averages the tiles that share it, so the map is smoother than
the tiles. One float32 band per value (its description is the class name, or ``similarity``).

Written like the vector outputs (core.vectors): into a temporary beside the file (its name carries the
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

from .errors import InvalidInput, gdal_return_codes

__all__ = ["RASTER_EXTENSIONS", "check_raster_output", "dense_grid", "write_dense"]

RASTER_EXTENSIONS = (".tif", ".tiff")


def _temp_pattern(stem: str) -> str:
    return r"\." + re.escape(stem) + r"\.tmp-(\d+)-[a-z0-9_]{8}\.tif(?:\.aux\.xml)?"


def check_raster_output(path, overwrite: bool = False, inputs=()) -> str:
    """``path`` if a dense GeoTIFF can be written there without losing anything, else the error saying why."""
    from .checks import path_text
    from .outputs import check_file_output

    path = path_text(path, "raster output")
    if os.path.splitext(path)[1].lower() not in RASTER_EXTENSIONS:
        raise InvalidInput(f"The raster output {path} is not a GeoTIFF.", "Name it .tif.", path=path, param="raster_output")
    return check_file_output(path, "raster output", overwrite, inputs, temp_pattern=_temp_pattern,
                             example="map.tif", other="another --raster-output")


def dense_grid(tiles, tile_px, step_px, transform):
    """(cell slices per tile, (height, width) in cells, GDAL geotransform of the map)."""
    sx, sy = max(1, int(step_px[0])), max(1, int(step_px[1]))
    spans = []
    for t in tiles:
        c0, r0, w, h = t.window
        ca, cb = math.ceil(c0 / sx - 0.5), math.ceil((c0 + w) / sx - 0.5)
        ra, rb = math.ceil(r0 / sy - 0.5), math.ceil((r0 + h) / sy - 0.5)
        spans.append((ra, max(rb, ra + 1), ca, max(cb, ca + 1)))
    rmin = min(s[0] for s in spans)
    cmin = min(s[2] for s in spans)
    rmax = max(s[1] for s in spans)
    cmax = max(s[3] for s in spans)
    a, b, c, d, e, f = transform[:6]
    x0, y0 = cmin * sx, rmin * sy
    gt = (a * x0 + b * y0 + c, a * sx, b * sy, d * x0 + e * y0 + f, d * sx, e * sy)
    slices = [(ra - rmin, rb - rmin, ca - cmin, cb - cmin) for ra, rb, ca, cb in spans]
    return slices, (rmax - rmin, cmax - cmin), gt


def dense_values(tiles, values, tile_px, step_px, transform):
    """(bands, height, width) float32 mean per cell (NaN where no tile covers it), and the geotransform."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    slices, (h, w), gt = dense_grid(tiles, tile_px, step_px, transform)
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


@gdal_return_codes()
def write_dense(path, tiles, values, names: list[str], tile_px, step_px, transform, crs_wkt: str,
                overwrite: bool = False, inputs=(), metadata: dict | None = None) -> str:
    """Write the dense map of ``values`` (one row per tile, one column per band) to the GeoTIFF ``path``."""
    from osgeo import gdal

    from .vectors import _new_temp, _publish, _temp_prefix, gdal_errors, write_failed

    path = check_raster_output(path, overwrite, inputs)
    data, gt = dense_values(tiles, values, tile_px, step_px, transform)
    folder = os.path.dirname(os.path.abspath(path))
    stem = os.path.splitext(os.path.basename(path))[0]
    tmp = _new_temp(folder, _temp_prefix(stem), ".tif")
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
        _publish(tmp, path, overwrite)
        if overwrite:   # statistics of the replaced file would describe other values; kept if it stayed
            with contextlib.suppress(OSError):
                os.unlink(path + ".aux.xml")
    except BaseException:
        for p in (tmp, tmp + ".aux.xml"):
            with contextlib.suppress(OSError):
                os.unlink(p)
        raise
    return path
