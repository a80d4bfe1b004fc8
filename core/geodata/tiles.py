"""Tile grids over a raster, and the extents (bounding box, polygons) that select tiles from them.

The grid is anchored at the raster's top-left pixel whatever the extent, so a
tile has the same ``row``, ``col`` and pixel window in every run on a raster;
an extent only selects tiles from that grid. Tiles are pixel windows
``(col_off, row_off, width, height)`` and their polygons are those windows'
pixel edges mapped through the raster's affine transform, in the raster's CRS.

Tile size: ``unit="px"`` is pixels (at least :data:`MIN_TILE_PX`). ``unit="m"``
is metres on the ground at the raster's centre, rounded to whole pixels: the
ground length of one pixel step along a row and along a column is measured
there on the CRS's ellipsoid. On a geographic CRS (degrees, e.g. EPSG:4326)
that converts metres to degrees at the centre latitude, so tiles are square on
the ground there (and off by about 0.1% per 10 km north or south of it). On
UTM-like projections it equals the CRS's metres within their scale factor
(0.04%); on Web Mercator (EPSG:3857, XYZ basemaps) it removes the
1/cos(latitude) inflation of its "metres". Feet and other units work alike.

Overlap is the fraction of the tile edge shared with the neighbour: the step
between tiles is ``round(size * (1 - overlap))`` pixels.

Edges (``TileSpec.edge``), when the steps do not end exactly at the raster's
right or bottom edge:

* ``"shift"`` (default): the last tile of each row and column is shifted back
  inside the raster, so every tile is full size and whole raster is covered;
  that tile overlaps its neighbour more than ``overlap`` says.
* ``"pad"``: the last tile keeps its place on the grid and reaches past the
  raster; the part outside is nodata (filled like nodata for the model).
* ``"drop"``: tiles that would reach past the raster are left out, so a strip
  narrower than a tile at the right and bottom is not covered.

A tile larger than the raster is an error in every mode.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import InvalidInput, gdal_return_codes
from .crs import gis_order, require_crs, srs_from

__all__ = ["TileSpec", "BBox", "Polygons", "Tile", "TileGrid", "make_grid", "grid_step", "tile_size_px",
           "spec_params", "EDGE_MODES", "MIN_TILE_PX", "MAX_OVERLAP", "check_overlap", "window_polygon_wkt"]

MIN_TILE_PX = 8
MAX_OVERLAP = 0.95   # the one ceiling (CLI, dock, Processing): a step of 5% of the tile, 400 times the tiles
EDGE_MODES = ("shift", "pad", "drop")


def check_overlap(value, spell: str = "Overlap") -> float:
    """The one overlap rule (TileSpec, the grid, the command line; the dock and Processing offer the same
    range): a fraction of the tile's edge from 0 to :data:`MAX_OVERLAP`. ``spell`` names the input as the
    front-end shows it (``--overlap``)."""
    from .. import checks

    x = checks.number(value or 0.0, spell, example="a fraction of the tile edge, e.g. 0.25", param="overlap")
    if not 0.0 <= x <= MAX_OVERLAP:
        raise InvalidInput(f"{spell} {x:g} is outside 0..{MAX_OVERLAP:g}.",
                           "Use a fraction of the tile's edge, e.g. 0.25.", param="overlap")
    return x
TILE_UNITS = ("px", "m")
_DENSIFY = 32  # points per bbox edge when reprojecting it (edges curve in the target CRS)


@dataclass
class BBox:
    xmin: float
    ymin: float
    xmax: float
    ymax: float
    crs: str | int | None = None   # WKT, "EPSG:4326", 4326 or anything OSR reads; None = the raster's CRS


@dataclass
class Polygons:
    wkts: list[str]
    crs: str | int | None = None   # as BBox.crs
    origin: str = ""               # the file read (``FILE|layername=NAME``): no output may be it


@dataclass
class TileSpec:
    size: float = 224
    unit: str = "px"               # "px" or "m"
    overlap: float = 0.0           # fraction of the tile edge shared with the neighbour, 0 .. MAX_OVERLAP
    extent: BBox | Polygons | None = None
    bands: list[int] | None = None
    edge: str = "shift"            # "shift", "pad" or "drop" (module docstring)

    def __post_init__(self):
        from .. import checks

        self.unit = checks.choice(self.unit or "px", "tile unit", TILE_UNITS, param="unit")
        self.size = checks.number(self.size, "Tile size", 0.0, example="e.g. 224 px or 50 m", param="size")
        if self.size == 0:
            raise InvalidInput("Tile size 0 is not positive.", "Use e.g. 224 (px) or 50 (m).", param="size")
        if self.unit == "px":
            if self.size != int(self.size):
                raise InvalidInput(f"Tile size {self.size:g} px is not a whole number of pixels.",
                                      "Use whole pixels, e.g. 224, or the unit m for metres.", param="size")
            self.size = int(self.size)
        self.overlap = check_overlap(self.overlap)
        self.edge = checks.choice(self.edge or "shift", "edge mode", EDGE_MODES, param="edge")
        if self.bands is not None:
            if isinstance(self.bands, str | bytes) or not hasattr(self.bands, "__iter__"):
                raise InvalidInput(f"Bands {self.bands!r} are not a list of band numbers.",
                                      "Give a list such as [3, 2, 1] (or None for the default bands).", param="bands")
            self.bands = [checks.whole(b, "Band", 1, example="1-based band numbers", param="bands")
                          for b in self.bands] or None
        if self.extent is not None and not isinstance(self.extent, BBox | Polygons):
            raise InvalidInput(f"Unknown extent {type(self.extent).__name__}.", "Use BBox(...) or Polygons(...).", param="extent")


class Tile:
    """One tile: grid ``row`` and ``col``, pixel ``window`` (col_off, row_off, width, height) and its
    outline ``polygon_wkt`` in the raster's CRS (made from the window when first asked for)."""

    __slots__ = ("row", "col", "window", "_wkt", "_transform")

    def __init__(self, row: int, col: int, window, polygon_wkt: str | None = None, transform=None):
        if polygon_wkt is None and transform is None:
            raise TypeError("Tile needs its polygon_wkt or the raster's transform")
        self.row, self.col, self.window = int(row), int(col), tuple(int(v) for v in window)
        self._wkt, self._transform = polygon_wkt, transform

    @property
    def polygon_wkt(self) -> str:
        if self._wkt is None:
            self._wkt = window_polygon_wkt(self._transform, self.window)
        return self._wkt

    def _key(self):
        return self.row, self.col, self.window, self.polygon_wkt

    def __eq__(self, other):
        return isinstance(other, Tile) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        return f"Tile(row={self.row}, col={self.col}, window={self.window})"


class TileGrid(Sequence):
    """The tiles of :func:`make_grid` held as arrays, so memory does not grow with a tile's text.

    The grid's pixel offsets (``col_offsets``, ``row_offsets``) and the indices of the rows and columns an
    extent keeps (``row_index``, ``col_index``) describe a block of tiles, row by row; a polygon extent
    also keeps ``keep``, the positions in that block of the tiles it selects. Indexing gives
    :class:`Tile` objects; :meth:`rows_cols`, :meth:`windows` and :meth:`polygon_wkb` give the whole
    grid (or some of its tiles) as arrays for the pipeline and the writers."""

    def __init__(self, transform, tile_px: tuple[int, int], col_offsets, row_offsets, col_index=None,
                 row_index=None, keep=None):
        import numpy as np

        self.transform = tuple(float(v) for v in transform[:6])
        self.tile_px = (int(tile_px[0]), int(tile_px[1]))
        self.col_offsets = np.asarray(col_offsets, dtype=np.int64)
        self.row_offsets = np.asarray(row_offsets, dtype=np.int64)
        self.col_index = np.arange(len(self.col_offsets)) if col_index is None else np.asarray(col_index, np.int64)
        self.row_index = np.arange(len(self.row_offsets)) if row_index is None else np.asarray(row_index, np.int64)
        self.keep = None if keep is None else np.asarray(keep, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.keep) if self.keep is not None else len(self.row_index) * len(self.col_index)

    def _block_positions(self, idx):
        """Positions in the row_index x col_index block of the grid's tiles ``idx`` (array of ints)."""
        return idx if self.keep is None else self.keep[idx]

    def rows_cols(self, idx=None):
        """(row, col) grid indices of tiles ``idx`` (default all) as two int64 arrays."""
        import numpy as np

        idx = np.arange(len(self)) if idx is None else np.asarray(idx, dtype=np.int64)
        pos = self._block_positions(idx)
        n = len(self.col_index)
        return self.row_index[pos // n], self.col_index[pos % n]

    def windows(self, idx=None):
        """(n, 4) int64 windows (col_off, row_off, width, height) of tiles ``idx`` (default all)."""
        return self._windows(*self.rows_cols(idx))

    def block_windows(self, pos):
        """Windows of positions ``pos`` in the row_index x col_index block (before a polygon extent)."""
        import numpy as np

        pos = np.asarray(pos, dtype=np.int64)
        n = len(self.col_index)
        return self._windows(self.row_index[pos // n], self.col_index[pos % n])

    def _windows(self, r, c):
        import numpy as np

        out = np.empty((len(r), 4), dtype=np.int64)
        out[:, 0] = self.col_offsets[c]
        out[:, 1] = self.row_offsets[r]
        out[:, 2], out[:, 3] = self.tile_px
        return out

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("tile index out of range")
        (r,), (c,) = self.rows_cols([i])
        win = (int(self.col_offsets[c]), int(self.row_offsets[r]), *self.tile_px)
        return Tile(int(r), int(c), win, transform=self.transform)

    def __iter__(self):
        step = 65536
        for start in range(0, len(self), step):
            import numpy as np

            idx = np.arange(start, min(len(self), start + step))
            rows, cols = self.rows_cols(idx)
            wins = self.windows(idx)
            for r, c, w in zip(rows.tolist(), cols.tolist(), wins.tolist(), strict=True):
                yield Tile(r, c, w, transform=self.transform)

    def __eq__(self, other):
        if isinstance(other, TileGrid | list | tuple):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None

    def __repr__(self):
        return f"TileGrid({len(self)} tiles of {self.tile_px[0]} x {self.tile_px[1]} px)"

    def polygon_wkb(self, idx=None) -> list[bytes]:
        """The outlines of tiles ``idx`` (default all) as little-endian WKB polygons, the same coordinates
        and ring order as :attr:`Tile.polygon_wkt` (for writers: no text to parse)."""
        import numpy as np

        ring = _rings(self.transform, self.windows(idx))     # (n, 5, 2) float64
        n = len(ring)
        rec = np.zeros(n, dtype=[("order", "u1"), ("type", "<u4"), ("nrings", "<u4"), ("npts", "<u4"),
                                 ("xy", "<f8", (5, 2))])
        rec["order"], rec["type"], rec["nrings"], rec["npts"], rec["xy"] = 1, 3, 1, 5, ring
        raw = rec.tobytes()
        size = rec.dtype.itemsize
        return [raw[i * size:(i + 1) * size] for i in range(n)]


def _rings(transform, windows):
    """Closed rings (n, 5, 2) of pixel windows in map coordinates, counter-clockwise, in the exact
    arithmetic of :func:`window_polygon_wkt` (same corners, same order)."""
    import numpy as np

    a, b, c, d, e, f = transform[:6]
    w = np.asarray(windows, dtype=np.int64)
    c0, r0, ww, hh = (w[:, k].astype(np.float64) for k in range(4))
    c1 = (w[:, 0] + w[:, 2]).astype(np.float64)
    r1 = (w[:, 1] + w[:, 3]).astype(np.float64)
    cx = np.stack([c0, c0, c1, c1], axis=1)
    ry = np.stack([r0, r1, r1, r0], axis=1)
    x = a * cx + b * ry + c
    y = d * cx + e * ry + f
    # twice the signed area of (p0, p1, p2, p3) as window_polygon_wkt sums it (same order of additions)
    xn, yn = np.roll(x, -1, axis=1), np.roll(y, -1, axis=1)
    terms = x * yn - xn * y
    area2 = ((terms[:, 0] + terms[:, 1]) + terms[:, 2]) + terms[:, 3]
    order = np.where((area2 < 0)[:, None], [0, 3, 2, 1], [0, 1, 2, 3])
    x = np.take_along_axis(x, order, axis=1)
    y = np.take_along_axis(y, order, axis=1)
    ring = np.empty((len(w), 5, 2), dtype=np.float64)
    ring[:, :4, 0], ring[:, :4, 1] = x, y
    ring[:, 4] = ring[:, 0]
    return ring


# --------------------------------------------------------------------------------------------- CRS

def _quiet(fn, *args):
    """Call fn with GDAL's messages kept off stderr: failures become RemoteClipErrors instead."""
    from osgeo import gdal

    gdal.PushErrorHandler("CPLQuietErrorHandler")
    try:
        return fn(*args)
    finally:
        gdal.PopErrorHandler()


def _srs_from_quiet(crs, what, param=None):
    return _quiet(srs_from, crs, what, param)


def _raster_srs(src):
    require_crs(src)
    return _srs_from_quiet(src.crs_wkt, "raster's CRS")


# ------------------------------------------------------------------------------------- tile size

def _pixel_size(transform) -> tuple[float, float]:
    a, b, _, d, e, _ = transform[:6]
    return math.hypot(a, d), math.hypot(b, e)


def tile_size_px(src, spec: TileSpec) -> tuple[int, int]:
    """(width, height) of a tile in pixels for ``spec`` on ``src`` (checked, before the edge checks)."""
    unit = (spec.unit or "px").lower()
    size = float(spec.size)
    if not size > 0 or math.isinf(size):
        raise InvalidInput(f"Tile size {spec.size!r} is not positive.", "Use e.g. --tile-size 224.", param="size")
    if unit == "px":
        if size != int(size):
            raise InvalidInput(f"Tile size {size:g} px is not a whole number of pixels.",
                                  "Use whole pixels, e.g. --tile-size 224, or --tile-unit m for metres.", param="size")
        tw = th = int(size)
    elif unit == "m":
        mx, my = _quiet(_metres_per_pixel, src)
        tw, th = max(1, round(size / mx)), max(1, round(size / my))
    else:
        raise InvalidInput(f"Unknown tile unit {spec.unit!r}.", "Use px (pixels) or m (metres).", param="unit")
    if min(tw, th) < MIN_TILE_PX:
        got = f"{size:g} m ({min(tw, th)} px on this raster)" if unit == "m" else f"{size:g} px"
        raise InvalidInput(f"The tile size {got} is below the {MIN_TILE_PX} px minimum: the model would see "
                              "a few blurred pixels.", f"Use tiles of at least {MIN_TILE_PX} px (224 px is what "
                              "CLIP models see).", param="size")
    return tw, th


@gdal_return_codes()
def _metres_per_pixel(src) -> tuple[float, float]:
    """Ground metres of one pixel step along a row and along a column, at the raster's centre."""
    from osgeo import osr

    srs = _raster_srs(src)
    if not (srs.IsGeographic() or srs.IsProjected()):
        if srs.IsLocal():  # an engineering CRS: its own linear unit is all there is
            px, py = _pixel_size(src.transform)
            m = srs.GetLinearUnits() or 1.0
            return px * m, py * m
        raise InvalidInput(f"The CRS of {src.name} is neither projected nor geographic.",
                              "Use --tile-unit px, or reproject the raster.")
    geo = gis_order(srs.CloneGeogCS())
    ct = osr.CoordinateTransformation(srs, geo)
    a, b, c, d, e, f = src.transform[:6]

    def lonlat(col, row):
        p = ct.TransformPoint(a * col + b * row + c, d * col + e * row + f)
        return p[0], p[1]

    cc, rr = src.width / 2, src.height / 2
    try:
        p0, px1, py1 = lonlat(cc, rr), lonlat(cc + 1, rr), lonlat(cc, rr + 1)
    except RuntimeError:
        p0 = None
    if p0 is None or not all(math.isfinite(v) for v in (*p0, *px1, *py1)) or not -90 <= p0[1] <= 90:
        raise InvalidInput(f"The centre of {src.name} has no place on the globe in its CRS, so metres "
                              "cannot be measured.", "Use --tile-unit px, or check the georeferencing.")
    # local radii of curvature of the CRS's ellipsoid: enough for a one-pixel step
    semi = geo.GetSemiMajor()
    inv_f = geo.GetInvFlattening()
    e2 = 0.0 if not inv_f else (2 - 1 / inv_f) / inv_f
    rad = geo.GetAngularUnits()  # radians per degree (or whatever angle unit the CRS uses)
    phi = math.radians(p0[1]) if abs(rad - math.pi / 180) < 1e-12 else p0[1] * rad
    s2 = math.sin(phi) ** 2
    normal = semi / math.sqrt(1 - e2 * s2)
    meridional = semi * (1 - e2) / (1 - e2 * s2) ** 1.5

    def dist(q):
        dlon = (q[0] - p0[0]) * rad
        dlon = (dlon + math.pi) % (2 * math.pi) - math.pi  # across the antimeridian
        return math.hypot(dlon * normal * math.cos(phi), (q[1] - p0[1]) * rad * meridional)

    return dist(px1), dist(py1)


# ------------------------------------------------------------------------------------------ grid

def _offsets(length: int, tile: int, step: int, edge: str):
    import numpy as np

    offs = np.arange(0, length - tile + 1, step, dtype=np.int64)
    last_end = int(offs[-1]) + tile
    if last_end < length:
        if edge == "shift":
            offs = np.append(offs, length - tile)
        elif edge == "pad":
            offs = np.append(offs, offs[-1] + step)
    return offs


def _check_spec(src, spec) -> tuple[int, int, int, int, str]:
    edge = (spec.edge or "shift").lower()
    if edge not in EDGE_MODES:
        raise InvalidInput(f"Unknown edge mode {spec.edge!r}.", "Use shift (default), pad or drop.", param="edge")
    overlap = check_overlap(spec.overlap)
    if min(src.width, src.height) < MIN_TILE_PX:
        raise InvalidInput(f"The raster {src.name} is only {src.width} x {src.height} px: too small to tile "
                              f"(tiles are at least {MIN_TILE_PX} x {MIN_TILE_PX} px).",
                              f"Use a raster of at least {MIN_TILE_PX} px on each side.")
    tw, th = tile_size_px(src, spec)
    if tw > src.width or th > src.height:
        what = f"{spec.size:g} m ({tw} x {th} px)" if (spec.unit or "px") == "m" else f"{tw} px"
        raise InvalidInput(f"The tile size {what} is larger than the raster {src.name} ({src.width} x "
                              f"{src.height} px).", f"Use a tile size of at most {min(src.width, src.height)} px"
                              + (" (or fewer metres)." if (spec.unit or "px") == "m" else "."), param="size")
    sx, sy = grid_step((tw, th), overlap)
    return tw, th, sx, sy, edge


def grid_step(tile_px: tuple[int, int], overlap: float | None) -> tuple[int, int]:
    """The grid's step in pixels (x, y) for tiles of ``tile_px`` overlapping by ``overlap``."""
    overlap = float(overlap or 0.0)
    return max(1, round(tile_px[0] * (1 - overlap))), max(1, round(tile_px[1] * (1 - overlap)))


def make_grid(src, spec: TileSpec) -> TileGrid:
    """Candidate tiles of ``src`` for ``spec``, row by row (all-nodata tiles are dropped later, by the
    pipeline, after reading), as a :class:`TileGrid` (a sequence of :class:`Tile`). An extent that misses
    the raster gives an empty grid."""
    import numpy as np

    tw, th, sx, sy, edge = _check_spec(src, spec)
    cols = _offsets(src.width, tw, sx, edge)
    rows = _offsets(src.height, th, sy, edge)
    ext = spec.extent
    keep_poly = None
    if ext is not None:
        (pc0, pr0, pc1, pr1), keep_poly = _quiet(_extent_pixels, src, ext)
        # tiles whose window overlaps the extent's pixel rectangle (open intervals: touching is not enough)
        cidx = np.flatnonzero((cols < pc1) & (cols + tw > pc0))
        ridx = np.flatnonzero((rows < pr1) & (rows + th > pr0))
    else:
        cidx, ridx = np.arange(len(cols)), np.arange(len(rows))
    grid = TileGrid(src.transform, (tw, th), cols, rows, cidx, ridx)
    if keep_poly is not None and len(grid):
        grid.keep = _quiet(keep_poly.select, grid)
    return grid


def window_polygon_wkt(transform, window) -> str:
    """The pixel window's outline in map coordinates (counter-clockwise ring, exact affine values)."""
    a, b, c, d, e, f = transform[:6]
    c0, r0, w, h = window
    corners = [(c0, r0), (c0, r0 + h), (c0 + w, r0 + h), (c0 + w, r0)]
    pts = [(a * x + b * y + c, d * x + e * y + f) for x, y in corners]
    area2 = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(pts, pts[1:] + pts[:1], strict=True))
    if area2 < 0:
        pts = [pts[0], *pts[:0:-1]]
    pts.append(pts[0])
    return "POLYGON ((" + ", ".join(f"{x!r} {y!r}" for x, y in pts) + "))"


# --------------------------------------------------------------------------------------- extents

def _to_pixels(transform):
    a, b, c, d, e, f = transform[:6]
    det = a * e - b * d
    if det == 0:
        raise InvalidInput("The raster's geotransform cannot be inverted.", "Check its georeferencing.")

    def inv(x, y):
        x, y = x - c, y - f
        return (e * x - b * y) / det, (-d * x + a * y) / det

    return inv


@gdal_return_codes()
def _extent_pixels(src, ext):
    """Pixel rectangle (col0, row0, col1, row1) the extent covers, and the polygons (OGR, raster CRS) to
    test tiles against (None for a bbox)."""
    from osgeo import ogr, osr

    rsrs = _raster_srs(src)
    if isinstance(ext, BBox):
        vals = [float(v) for v in (ext.xmin, ext.ymin, ext.xmax, ext.ymax)]
        if not all(math.isfinite(v) for v in vals) or vals[0] >= vals[2] or vals[1] >= vals[3]:
            raise InvalidInput(f"The bounding box {vals} is empty or not finite.",
                                  "Give xmin < xmax and ymin < ymax.", param="extent")
        xmin, ymin, xmax, ymax = vals
        ring = ogr.Geometry(ogr.wkbLinearRing)
        for x, y in ((xmin, ymin), (xmin, ymax), (xmax, ymax), (xmax, ymin), (xmin, ymin)):
            ring.AddPoint_2D(x, y)
        geom = ogr.Geometry(ogr.wkbPolygon)
        geom.AddGeometry(ring)
        if ext.crs is not None:
            geom.Segmentize(max(xmax - xmin, ymax - ymin) / _DENSIFY)
        keep = None
    elif isinstance(ext, Polygons):
        wkts = [ext.wkts] if isinstance(ext.wkts, str) else list(ext.wkts or [])
        if not wkts:
            raise InvalidInput("The polygon extent holds no polygons.", "Give at least one polygon.", param="extent")
        geom = ogr.Geometry(ogr.wkbMultiPolygon)
        for w in wkts:
            g = ogr.CreateGeometryFromWkt(w) if isinstance(w, str) else None
            if g is None or g.IsEmpty():
                raise InvalidInput(f"Extent polygon {str(w)[:60]!r} is not a valid WKT geometry.",
                                      "Give polygons as WKT, e.g. 'POLYGON ((0 0, 1 0, 1 1, 0 0))'.", param="extent")
            kind = ogr.GT_Flatten(g.GetGeometryType())
            if kind == ogr.wkbPolygon:
                geom.AddGeometry(g.Clone())
            elif kind == ogr.wkbMultiPolygon:
                for i in range(g.GetGeometryCount()):
                    geom.AddGeometry(g.GetGeometryRef(i).Clone())
            else:
                raise InvalidInput(f"Extent geometry {w[:60]!r} is not a polygon.",
                                      "Give polygons or multipolygons.", param="extent")
        geom.FlattenTo2D()
        keep = True
    else:
        raise InvalidInput(f"Unknown extent {type(ext).__name__}.", "Use BBox(...) or Polygons(...).", param="extent")
    if ext.crs is not None:
        esrs = _srs_from_quiet(ext.crs, "extent's CRS", "extent")
        if not esrs.IsSame(rsrs):
            geom.AssignSpatialReference(esrs)
            ct = osr.CoordinateTransformation(esrs, rsrs)
            if keep is not None:
                # reproject densified polygons so their straight edges may curve
                env = geom.GetEnvelope()
                geom.Segmentize(max(env[1] - env[0], env[3] - env[2]) / _DENSIFY)
            if geom.Transform(ct) != 0 or not _finite(geom):
                raise InvalidInput("The extent cannot be transformed into the raster's CRS (it is outside "
                                      "the area where that CRS is defined).", "Give an extent over the raster.", param="extent")
    if keep is not None:
        keep = _PolygonIndex(geom)
    inv = _to_pixels(src.transform)
    pts = _points(geom)
    px = [inv(x, y) for x, y in pts]
    c0, c1 = min(p[0] for p in px), max(p[0] for p in px)
    r0, r1 = min(p[1] for p in px), max(p[1] for p in px)
    return (c0, r0, c1, r1), keep


def _finite(geom) -> bool:
    return all(math.isfinite(v) for p in _points(geom) for v in p)


def _points(geom) -> list[tuple[float, float]]:
    out = []
    n = geom.GetGeometryCount()
    if n:
        for i in range(n):
            out.extend(_points(geom.GetGeometryRef(i)))
    else:
        out.extend((geom.GetX(i), geom.GetY(i)) for i in range(geom.GetPointCount()))
    return out


class _PolygonIndex:
    """The extent's polygons, one by one (no union: drawn polygons often overlap or self-intersect),
    with their envelopes in a numpy array to find the few a tile may meet."""

    def __init__(self, multi):
        import numpy as np

        self.parts = []
        for i in range(multi.GetGeometryCount()):
            g = multi.GetGeometryRef(i).Clone()
            g.AssignSpatialReference(None)
            if not g.IsValid():
                g = g.MakeValid() or g
            self.parts.append(g)
        env = [g.GetEnvelope() for g in self.parts]  # (xmin, xmax, ymin, ymax)
        self.env = np.asarray(env, dtype=np.float64).reshape(-1, 4)

    def select(self, grid: TileGrid, chunk: int = 1 << 20):
        """Positions (in the grid's block) of the tiles that share area with a polygon (a common edge or
        corner alone is not enough). Envelopes are compared on arrays first, so only tiles near a polygon
        become OGR geometries."""
        import numpy as np
        from osgeo import ogr

        n_block = len(grid.row_index) * len(grid.col_index)
        kept = []
        for start in range(0, n_block, chunk):
            wins = grid.block_windows(np.arange(start, min(n_block, start + chunk)))
            ring = _rings(grid.transform, wins)
            x0, x1 = ring[:, :4, 0].min(axis=1), ring[:, :4, 0].max(axis=1)
            y0, y1 = ring[:, :4, 1].min(axis=1), ring[:, :4, 1].max(axis=1)
            order: dict[int, list[int]] = {}   # tile -> the polygons whose envelope meets its envelope
            for i, (ex0, ex1, ey0, ey1) in enumerate(self.env):
                for t in np.flatnonzero((ex0 <= x1) & (ex1 >= x0) & (ey0 <= y1) & (ey1 >= y0)).tolist():
                    order.setdefault(t, []).append(i)
            for t in sorted(order):
                tile = ogr.CreateGeometryFromWkt(window_polygon_wkt(grid.transform, tuple(wins[t].tolist())))
                if any(self.parts[i].Intersects(tile) and not self.parts[i].Touches(tile) for i in order[t]):
                    kept.append(start + t)
        return np.asarray(kept, dtype=np.int64)


# -------------------------------------------------------------------------------------- identity

def spec_params(spec: TileSpec) -> dict:
    """The grid part of a spec as plain JSON values (for the embedding cache's key and sidecar)."""
    ext = spec.extent
    if ext is None:
        e = None
    elif isinstance(ext, BBox):
        e = {"bbox": [float(ext.xmin), float(ext.ymin), float(ext.xmax), float(ext.ymax)],
             "crs": None if ext.crs is None else str(ext.crs)}
    else:
        wkts = [ext.wkts] if isinstance(ext.wkts, str) else list(ext.wkts)
        h = hashlib.sha256("\n".join(wkts).encode()).hexdigest()
        e = {"polygons": len(wkts), "sha256": h, "crs": None if ext.crs is None else str(ext.crs)}
    return {"size": float(spec.size), "unit": spec.unit or "px", "overlap": float(spec.overlap or 0.0),
            "edge": spec.edge or "shift", "extent": e}
