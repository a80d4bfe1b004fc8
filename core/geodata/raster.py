"""Raster sources, band choice and the one stretch to 8 bits per raster.

``RasterSource`` is the one reading interface: :class:`RasterioSource` reads
files (anything GDAL opens: GeoTIFF, VRT, JPEG2000, PNG, ...) in windows, and
the QGIS plugin has its own source over QGIS's raster data provider. rasterio
is imported only when a file is opened, so the plugin can use the rest of this
module (bands, stretch, ``read_rgb``) inside QGIS without it.

Validity (``read`` returns it beside the pixels): where the raster has a
per-dataset mask (an alpha band or a GDAL mask file) that mask decides; else a
pixel is nodata only when *every* band read is nodata (the logical OR of the
band masks, as rasterio's ``dataset_mask``), and NaN counts as nodata in float
rasters.

Stretch (:class:`Stretch`): the model sees 8-bit RGB. One stretch is fixed per
raster before any tile is read, so a tile looks the same whatever the grid and
tiles are comparable across the raster:

* a single band with a colour table (colour interpretation "palette") is
  looked up in its table, so the model sees the colours a map viewer shows;
* uint8 bands pass through unchanged;
* any other type (uint16, int, float) is stretched linearly per band between
  its 2nd and 98th percentiles, computed once from a decimated read of the
  whole raster (at most 1024 pixels on the long side, nearest neighbour),
  ignoring nodata; values outside are clipped to 0 and 255.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from .. import checks
from ..errors import InvalidInput, SourceUnreadable

__all__ = ["RasterSource", "RasterioSource", "open_raster", "default_bands", "check_bands", "Stretch",
           "read_rgb", "is_gdal_uri", "palette_of", "parse_bands", "nodata_valid", "STRETCH_PERCENTILES", "STRETCH_SAMPLE_PX"]

STRETCH_PERCENTILES = (2.0, 98.0)
STRETCH_SAMPLE_PX = 1024  # long side of the decimated read the percentiles come from


@runtime_checkable
class RasterSource(Protocol):
    name: str
    width: int
    height: int
    count: int
    crs_wkt: str
    transform: tuple
    nodata: float | None
    dtype: str
    colorinterp: list[str]

    def read(self, bands: Sequence[int], window: tuple[int, int, int, int],
             out_shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]: ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------------------- rasterio

def is_gdal_uri(path: str) -> bool:
    # GDAL virtual file systems, URLs and driver-prefixed connection strings (WMS:, NETCDF:, ...) are not
    # local paths; a single letter before ":" is a Windows drive
    return path.startswith("/vsi") or "://" in path or re.match(r"^[A-Za-z][A-Za-z0-9_]+:", path) is not None


def _why(err: BaseException) -> str:
    """rasterio's message, with GDAL's own reason where rasterio only points at it."""
    parts = [str(err).replace("See previous exception for details.", "").strip().rstrip(".")]
    cause = err.__cause__ or err.__context__
    if cause is not None and str(cause).strip().rstrip(".") not in parts:
        parts.append(str(cause).strip().rstrip("."))
    return "; ".join(p for p in parts if p)


class RasterioSource:
    """A raster file read in windows through rasterio; memory does not grow with the raster's size."""

    def __init__(self, path: str):
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

        path = checks.path_text(path, "raster")
        if not is_gdal_uri(path) and not os.path.exists(path):
            raise SourceUnreadable(f"Raster not found: {path}.", "Check the path.", path=path)
        if os.path.isdir(path):
            raise SourceUnreadable(f"Raster {path} is a folder, not a raster file.",
                                  "Give a GeoTIFF, VRT, JPEG2000 or another file GDAL reads.", path=path)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", NotGeoreferencedWarning)
                self._ds = rasterio.open(path)
        except RasterioIOError as e:
            raise SourceUnreadable(f"Raster {path} cannot be read: {_why(e)}.",
                                  "Give a GeoTIFF, VRT, JPEG2000, PNG or another file GDAL reads "
                                  "(check it with `gdalinfo`).", path=path) from None
        ds = self._ds
        if any(issubclass(w.category, NotGeoreferencedWarning) for w in caught) or (
                ds.transform.is_identity and (ds.gcps[0] or ds.rpcs)):
            err = _not_georeferenced(path, ds)
            ds.close()
            raise err
        self.path = os.path.abspath(path) if not is_gdal_uri(path) else path
        self.name = self.path
        self.width, self.height, self.count = int(ds.width), int(ds.height), int(ds.count)
        self.crs_wkt = ds.crs.to_wkt() if ds.crs is not None else ""
        self.transform = tuple(float(v) for v in tuple(ds.transform)[:6])
        self.nodatavals = [None if v is None else float(v) for v in ds.nodatavals]
        self.nodata = self.nodatavals[0] if self.nodatavals else None
        self.dtype = str(ds.dtypes[0])
        self.colorinterp = [ci.name for ci in ds.colorinterp]
        self.mask_flags = [[f.name for f in flags] for flags in ds.mask_flag_enums]

    def read(self, bands, window, out_shape=None):
        from rasterio.enums import Resampling
        from rasterio.errors import RasterioError
        from rasterio.windows import Window

        bands = [int(b) for b in bands]
        uniq = sorted(set(bands))
        c, r, w, h = (int(v) for v in window)
        if c < 0 or r < 0 or c + w > self.width or r + h > self.height or w < 1 or h < 1:
            raise ValueError(f"window {window} is outside the raster ({self.width} x {self.height})")
        win = Window(c, r, w, h)
        shape = None if out_shape is None else (len(uniq), int(out_shape[0]), int(out_shape[1]))
        try:
            data = self._ds.read(uniq, window=win, out_shape=shape, resampling=Resampling.nearest)
            valid = self._valid(uniq, data, win, shape)
        except RasterioError as e:
            raise SourceUnreadable(f"Reading {self.name} failed at pixel window {window}: {_why(e)}.",
                                  "The file may be damaged or incomplete; check it with `gdalinfo -checksum`.",
                                  path=self.path) from None
        if uniq != bands:
            data = data[[uniq.index(b) for b in bands]]
        return data, valid

    def _valid(self, uniq, data, win, shape):
        flags = self.mask_flags[uniq[0] - 1]
        if "per_dataset" in flags:  # alpha band or a mask file: one mask for every band
            m = self._ds.read_masks(uniq[0], window=win, out_shape=None if shape is None else shape[1:])
            return m > 0
        return nodata_valid(data, [self.nodatavals[b - 1] for b in uniq])

    def colormap(self, band: int) -> dict[int, tuple[int, int, int]] | None:
        """The band's colour table {index: (r, g, b)}, or None when it has none."""
        try:
            table = self._ds.colormap(int(band))
        except ValueError:
            return None
        return {int(i): tuple(int(v) for v in rgba[:3]) for i, rgba in table.items()} or None

    def close(self):
        self._ds.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"RasterioSource({self.name!r}, {self.width}x{self.height}x{self.count} {self.dtype})"


def _not_georeferenced(path: str, ds) -> InvalidInput:
    """Tiles need a geotransform: without one, pixel coordinates would be written as map coordinates.
    Ground control points and RPCs are a recipe for warping, which is gdalwarp's job, not ours."""
    gcps, gcp_crs = ds.gcps
    if gcps or ds.rpcs:
        what = f"{len(gcps)} ground control points" if gcps else "RPC coefficients"
        target = _utm_for(gcps, gcp_crs) if gcps else "EPSG:XXXX"
        rpc = " -rpc" if not gcps else ""
        return InvalidInput(
            f"Raster {path} is georeferenced only by {what}, not by a geotransform, so its tiles cannot be "
            "placed on the map as they are.",
            f"Warp it first, e.g. `gdalwarp{rpc} -t_srs {target} -r bilinear {path} warped.tif` (a projected CRS "
            "such as the local UTM zone), then use warped.tif.", path=path)
    return InvalidInput(
        f"Raster {path} has no geotransform: its pixels have no place on the map"
        + (" (it has a CRS, but no pixel size or origin)." if ds.crs else "."),
        "Georeference it first (QGIS: Raster > Georeferencer), or use the original GeoTIFF with its "
        "georeferencing.", path=path)


def _utm_for(gcps, crs) -> str:
    """The UTM zone (as EPSG:326xx/327xx) at the centre of GCPs given in longitude/latitude."""
    if crs is None or not crs.is_geographic:
        return crs.to_string() if crs is not None and crs.is_projected else "EPSG:XXXX"
    lon = sum(g.x for g in gcps) / len(gcps)
    lat = sum(g.y for g in gcps) / len(gcps)
    zone = min(60, max(1, int((lon + 180) // 6) + 1))
    return f"EPSG:{(32600 if lat >= 0 else 32700) + zone}"


def nodata_valid(data: np.ndarray, nodatavals) -> np.ndarray:
    """(H, W) validity of (C, H, W) bands by their nodata values: a pixel is nodata only where every band
    is (NaN counts as nodata in float bands); a band without a nodata value makes every pixel valid.
    Every RasterSource without a dataset mask uses this rule."""
    valid = np.zeros(data.shape[1:], dtype=bool)
    for band, nd in zip(data, nodatavals, strict=True):
        ok = None
        if nd is not None and not math.isnan(nd):
            # a float32 band holds its nodata value rounded to float32; integers compare exactly
            ok = band != (band.dtype.type(nd) if band.dtype.kind == "f" else nd)
        if band.dtype.kind == "f":
            finite = ~np.isnan(band)
            ok = finite if ok is None else ok & finite
        if ok is None:
            return np.ones(data.shape[1:], dtype=bool)
        valid |= ok
    return valid


def open_raster(path) -> RasterioSource:
    """Open a raster file (or GDAL URI) for windowed reading. Errors name the file and the fix."""
    return RasterioSource(os.fspath(path))


# ------------------------------------------------------------------------------------------ bands

def default_bands(src) -> list[int]:
    """Three 1-based bands: red, green, blue by colour interpretation, else the first three (alpha
    bands skipped), else the one band three times."""
    ci = [str(c).lower() for c in (getattr(src, "colorinterp", None) or [])]
    if all(c in ci for c in ("red", "green", "blue")):
        return [ci.index("red") + 1, ci.index("green") + 1, ci.index("blue") + 1]
    usable = [i + 1 for i in range(src.count) if i >= len(ci) or ci[i] != "alpha"] or [1]
    if len(usable) >= 3:
        return usable[:3]
    return [usable[0]] * 3


def parse_bands(text: str, what: str = "Bands") -> list[int] | None:
    """Band numbers typed by a user ("3,2,1", "3 2 1") -> ints, or None when empty (the default bands).
    Whether they exist is :func:`check_bands`'s question, asked once the raster is open."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        bands = [int(b) for b in re.split(r"[,\s]+", text) if b]
    except ValueError:
        raise InvalidInput(f"{what} {text!r} are not band numbers.",
                           "Write 1-based band numbers, e.g. 3,2,1 (or one band, used as grey).", param="bands") from None
    low = next((b for b in bands if b < 1), None)
    if low is not None:
        raise InvalidInput(f"{what} {text!r} holds band {low}: bands are numbered from 1.",
                           "Write positive band numbers, 1 for the first band, e.g. 3,2,1.", param="bands")
    return bands


def check_bands(src, bands) -> list[int]:
    """1 or 3 band numbers inside the raster -> three band numbers."""
    try:
        bands = [int(b) for b in bands]
    except (TypeError, ValueError):
        raise InvalidInput(f"Bands {bands!r} are not band numbers.", "Give 1-based band numbers, e.g. 3,2,1.", param="bands") \
            from None
    if len(bands) == 1:
        bands = bands * 3
    if len(bands) != 3:
        raise InvalidInput(f"{len(bands)} bands were given ({bands}); the model sees three (RGB).",
                              "Give three band numbers, e.g. --bands 4,3,2 (or one, used as grey).", param="bands")
    bad = [b for b in bands if not 1 <= b <= src.count]
    if bad:
        raise InvalidInput(f"Band {bad[0]} does not exist: {src.name} has {src.count} band(s).",
                              f"Use band numbers from 1 to {src.count}.", param="bands")
    return bands


# ---------------------------------------------------------------------------------------- stretch

def palette_of(src, bands) -> tuple[tuple[int, int, int], ...] | None:
    """The colour table as an index -> RGB lookup when the bands are one palette band, else None."""
    bands = list(bands)
    if len(set(bands)) != 1 or np.dtype(src.dtype).kind not in "ui" or np.dtype(src.dtype).itemsize > 2:
        return None
    ci = [str(c).lower() for c in (getattr(src, "colorinterp", None) or [])]
    colormap = getattr(src, "colormap", None)
    if bands[0] > len(ci) or ci[bands[0] - 1] != "palette" or colormap is None:
        return None
    table = colormap(bands[0])
    if not table:
        return None
    size = max(table) + 1
    return tuple(table.get(i, (0, 0, 0)) for i in range(size))


@dataclass(frozen=True)
class Stretch:
    """Linear stretch to uint8, fixed per raster. ``lo``/``hi`` per band; both None = identity (uint8)."""

    lo: tuple[float, ...] | None = None
    hi: tuple[float, ...] | None = None
    palette: tuple[tuple[int, int, int], ...] | None = None   # index -> RGB, for one colour-table band

    @classmethod
    def from_source(cls, src, bands, percentiles=STRETCH_PERCENTILES, sample_px=STRETCH_SAMPLE_PX) -> Stretch:
        bands = check_bands(src, bands)
        table = palette_of(src, bands)
        if table is not None:
            return cls(palette=table)
        if np.dtype(src.dtype) == np.uint8:
            return cls()
        scale = min(1.0, sample_px / max(src.width, src.height))
        shape = (max(1, math.ceil(src.height * scale)), max(1, math.ceil(src.width * scale)))
        data, valid = src.read(bands, (0, 0, src.width, src.height), out_shape=shape)
        lo, hi = [], []
        for band in data:
            v = band[valid].astype(np.float64)
            v = v[np.isfinite(v)]
            if v.size == 0:  # nothing valid: every tile is dropped anyway
                a, b = 0.0, 1.0
            else:
                a, b = (float(x) for x in np.percentile(v, percentiles))
                if not b > a:  # a flat band: map its value to mid-grey-ish instead of dividing by 0
                    a, b = a - 0.5, a + 0.5
            lo.append(a)
            hi.append(b)
        return cls(tuple(lo), tuple(hi))

    @property
    def identity(self) -> bool:
        return self.lo is None and self.palette is None

    @property
    def params(self) -> dict:
        if self.palette is not None:
            return {"kind": "palette", "table": [list(c) for c in self.palette]}
        if self.identity:
            return {"kind": "identity"}
        return {"kind": "linear", "percentiles": list(STRETCH_PERCENTILES), "lo": list(self.lo),
                "hi": list(self.hi)}

    def key(self) -> str:
        """Deterministic text for the embedding cache key (floats written exactly)."""
        return json.dumps(self.params, sort_keys=True)

    def apply(self, data: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """(C, H, W) band data -> (C, H, W) uint8; invalid pixels become 0."""
        data = np.asarray(data)
        if self.palette is not None:
            lut = np.asarray(self.palette, dtype=np.uint8)
            idx = np.clip(data[0].astype(np.int64), 0, len(lut) - 1)
            out = np.ascontiguousarray(np.moveaxis(lut[idx], -1, 0))
        elif self.identity:
            out = data.astype(np.uint8, copy=True) if data.dtype != np.uint8 else data.copy()
        else:
            if len(self.lo) != data.shape[0]:
                raise ValueError(f"stretch has {len(self.lo)} bands, data {data.shape[0]}")
            lo = np.asarray(self.lo, dtype=np.float64)[:, None, None]
            span = (np.asarray(self.hi, dtype=np.float64) - np.asarray(self.lo, dtype=np.float64))[:, None, None]
            x = (data.astype(np.float64) - lo) * (255.0 / span)
            x = np.nan_to_num(x, nan=0.0, posinf=255.0, neginf=0.0)
            out = np.floor(np.clip(x, 0.0, 255.0) + 0.5).astype(np.uint8)
        if valid is not None:
            out[:, ~valid] = 0
        return out


# -------------------------------------------------------------------------------------- read_rgb

def read_rgb(src, bands, window, stretch: Stretch) -> tuple[np.ndarray, np.ndarray | None]:
    """One tile as (H, W, 3) uint8 and its validity (H, W) bool, or None when every pixel is valid.

    A window reaching past the raster (edge mode "pad") is read where it overlaps and the rest is
    invalid, so sources only ever see windows inside the raster.
    """
    bands = list(bands) * 3 if len(bands) == 1 else list(bands)
    c, r, w, h = (int(v) for v in window)
    c0, r0 = max(c, 0), max(r, 0)
    c1, r1 = min(c + w, src.width), min(r + h, src.height)
    if c0 == c and r0 == r and c1 == c + w and r1 == r + h:
        data, valid = src.read(bands, (c, r, w, h))
        rgb = stretch.apply(data, valid)
    else:
        rgb = np.zeros((len(bands), h, w), dtype=np.uint8)
        valid = np.zeros((h, w), dtype=bool)
        if c1 > c0 and r1 > r0:
            d, v = src.read(bands, (c0, r0, c1 - c0, r1 - r0))
            rgb[:, r0 - r:r1 - r, c0 - c:c1 - c] = stretch.apply(d, v)
            valid[r0 - r:r1 - r, c0 - c:c1 - c] = v
    rgb = np.ascontiguousarray(np.moveaxis(rgb, 0, -1))
    if valid is not None and valid.all():
        valid = None
    return rgb, valid
