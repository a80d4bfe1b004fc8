"""Search by example: the example tiles an analyst points at, and example image files.

Examples on the map (:class:`Examples`: points or polygons in any CRS, from a vector file or a layer) pick
tiles by the rule of classify's samples (:func:`core.samples.match_tiles`): a point picks the tile that contains
it, a polygon the tiles it shares area with. Their embeddings are the job's own tiles' embeddings (the cache of
the raster they fall on), so a search by example after ``embed`` reads no pixel.

Example image files (PNG, JPEG or a GeoTIFF chip) are read whole (:func:`read_image`: the RGB bands by colour
interpretation, a colour table expanded, other data types stretched from their 2nd to 98th percentile as a
raster's tiles are, :data:`core.geodata.raster.STRETCH_PERCENTILES`), preprocessed as a tile is
(:func:`core.runtime.preprocess.preprocess`) and encoded with the job's encoder.
"""

from __future__ import annotations

import os
import warnings as _warnings
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

from .errors import InvalidInput, SourceUnreadable, gdal_return_codes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


@dataclass
class Examples:
    """Example geometries (WKT points or polygons) in ``crs`` (None: the raster's)."""
    wkts: list[str]
    crs: str | int | None = None
    ids: list = field(default_factory=list)   # feature ids, for messages (default: 1, 2, ...)
    source: str = ""                          # the layer or file they came from, for messages
    origin: str = ""                          # the file read (``FILE|layername=NAME``): no output may be it
    param: str = "like"                       # the input they were given as (like / unlike), for errors

    def __post_init__(self):
        if isinstance(self.wkts, str):
            raise InvalidInput("Examples need a list of geometries.", "Give Examples(wkts=[...]).", param=self.param)
        self.wkts = list(self.wkts)
        self.ids = list(self.ids) if self.ids else list(range(1, len(self.wkts) + 1))
        if not self.wkts:
            where = f" {self.source}" if self.source else ""
            raise InvalidInput(f"The example layer{where} is empty (no point or polygon).",
                               "Draw or select at least one example point or polygon (or untick 'selected only').",
                               path=self.origin.partition("|")[0] or None, param=self.param)

    def samples(self):
        """As core.samples.Samples of one class (what match_tiles takes)."""
        from .samples import Samples

        return Samples(self.wkts, ["example"] * len(self.wkts), self.crs, self.ids, self.source, self.origin)


def is_image_file(path) -> bool:
    return os.fspath(path).lower().endswith(IMAGE_SUFFIXES)


@gdal_return_codes()
def read_examples(path, param: str = "like") -> Examples:
    """Example points or polygons from a vector file OGR reads (its first layer)."""
    from osgeo import ogr

    from .checks import path_text
    from .samples import gdal_quiet

    path = path_text(path, "examples file")
    if not os.path.exists(path):
        raise SourceUnreadable(f"Examples file not found: {path}.", "Check the path.", path=path)
    with gdal_quiet():
        try:
            ds = ogr.Open(path)
        except RuntimeError:
            ds = None
    if ds is None:
        raise InvalidInput(f"{path} is not a vector file OGR can open.", "Give a GeoPackage, Shapefile or GeoJSON "
                           "of points or polygons, or image files (PNG, JPEG, GeoTIFF chips).", path=path, param=param)
    lyr = ds.GetLayer(0)
    srs = lyr.GetSpatialRef()
    wkts, ids = [], []
    for f in lyr:
        g = f.GetGeometryRef()
        if g is None or g.IsEmpty():
            continue
        wkts.append(g.ExportToWkt())
        ids.append(f.GetFID())
    return Examples(wkts, srs.ExportToWkt() if srs is not None else None, ids, os.path.basename(path),
                    f"{path}|layername={lyr.GetName()}", param)


def example_tiles(examples: Examples, parts) -> tuple[dict[str, np.ndarray], int, int]:
    """The example tiles of each part (``{part.name: positions in the part}``), the number of examples that
    fall outside every raster, and the number that fall on a raster but on no kept tile (nodata, or outside
    the extent)."""
    from .samples import match_tiles

    samples = examples.samples()
    out: dict[str, np.ndarray] = {}
    hits = np.zeros(len(examples.wkts), dtype=np.int64)
    for part in parts:
        m = match_tiles(samples, part.tiles, part.crs_wkt, ["example"])
        out[part.name] = m.index
        hits += np.asarray(m.per_sample, dtype=np.int64)
    missed = np.flatnonzero(hits == 0)
    if not len(missed):
        return out, 0, 0
    # the examples that picked no kept tile: on a raster (its tiles are nodata) or outside every raster?
    sub = type(examples)([examples.wkts[i] for i in missed], examples.crs, [examples.ids[i] for i in missed],
                         examples.source, examples.origin, examples.param).samples()
    on = np.zeros(len(missed), dtype=np.int64)
    for part in parts:
        m = match_tiles(sub, [SimpleNamespace(polygon_wkt=_grid_extent(part))], part.crs_wkt, ["example"])
        on += np.asarray(m.per_sample, dtype=np.int64)
    return out, int(np.sum(on == 0)), int(np.sum(on > 0))


def _grid_extent(part) -> str:
    """The polygon (WKT, the raster's CRS) of every tile of a part's grid, kept or not."""
    g = part.grid
    w, h = g.tile_px
    c0, c1 = int(np.min(g.col_offsets)), int(np.max(g.col_offsets)) + w
    r0, r1 = int(np.min(g.row_offsets)), int(np.max(g.row_offsets)) + h
    a, b, c, d, e, f = part.transform[:6]
    pts = [(a * x + b * y + c, d * x + e * y + f) for x, y in ((c0, r0), (c1, r0), (c1, r1), (c0, r1), (c0, r0))]
    return "POLYGON ((" + ", ".join(f"{x!r} {y!r}" for x, y in pts) + "))"


# ------------------------------------------------------------------------------------------ images

def read_image(path, param: str = "like_images") -> tuple[np.ndarray, np.ndarray | None]:
    """An image file as (H, W, 3) uint8 RGB and its validity (None: every pixel valid)."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    from .checks import path_text
    from .geodata.raster import STRETCH_PERCENTILES, Stretch, default_bands

    path = path_text(path, "example image")
    if not os.path.isfile(path):
        raise SourceUnreadable(f"Example image not found: {path}.", "Check the path.", path=path)
    try:
        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore", NotGeoreferencedWarning)
            ds = rasterio.open(path)
    except RasterioIOError:
        raise SourceUnreadable(f"The example image {path} cannot be read as an image.",
                               "Give a PNG, JPEG or GeoTIFF chip (check it with `gdalinfo`).", path=path) from None
    with ds:
        ci = [c.name for c in ds.colorinterp]
        if ds.count == 1 and ci[0] == "palette":
            table = ds.colormap(1)
            lut = np.zeros((256, 3), dtype=np.uint8)
            for k, rgba in table.items():
                if 0 <= k < 256:
                    lut[k] = rgba[:3]
            data = ds.read(1)
            rgb = lut[np.clip(data.astype(np.int64), 0, 255)]
            valid = ds.dataset_mask() > 0
            return rgb, None if valid.all() else valid
        src = SimpleNamespace(colorinterp=ci, count=ds.count)
        usable = [i for i in range(ds.count) if ci[i] != "alpha"]
        if len(usable) < 3:
            raise InvalidInput(f"The example image {path} is not an RGB image ({ds.count} band"
                               f"{'s' if ds.count != 1 else ''}: {', '.join(ci)}).",
                               "Give a colour image with red, green and blue bands.", path=path, param=param)
        bands = default_bands(src)
        data = ds.read(bands)
        valid = ds.dataset_mask() > 0
        if not valid.any():
            raise InvalidInput(f"Every pixel of the example image {path} is nodata.",
                               "Give an image with data in it.", path=path, param=param)
        if data.dtype != np.uint8:
            lo, hi = [], []
            for band in data:
                v = band[valid].astype(np.float64)
                v = v[np.isfinite(v)]
                a, b = (float(x) for x in np.percentile(v, STRETCH_PERCENTILES)) if v.size else (0.0, 1.0)
                if not b > a:
                    a, b = a - 0.5, a + 0.5
                lo.append(a)
                hi.append(b)
            data = Stretch(tuple(lo), tuple(hi)).apply(data, valid)
        rgb = np.ascontiguousarray(np.moveaxis(data, 0, -1))
        return rgb, None if valid.all() else valid


def encode_images(encoder, paths, param: str = "like_images") -> np.ndarray:
    """The image files' embeddings (n, D), unit vectors: each read whole and preprocessed as a tile is."""
    from .runtime.preprocess import preprocess

    cfg = encoder.bundle.image
    if not paths:
        return np.zeros((0, encoder.bundle.embed_dim), dtype=np.float32)
    x = []
    for p in paths:
        rgb, valid = read_image(p, param)
        x.append(preprocess(rgb, cfg, valid))
    return encoder.encode_images(np.stack(x))


# ------------------------------------------------------------------------- picking tiles on a map

def raster_grid(raster, spec) -> tuple:
    """The tile grid of ``raster`` (a path or a RasterSource) for ``spec`` (core.geodata.tiles.TileSpec) over the whole
    raster, and the raster's CRS (WKT): the tiles a job with that tile size and overlap uses (an extent keeps
    some of them, at the same places). No pixel is read."""
    from .geodata.crs import require_crs
    from .geodata.raster import open_raster
    from .geodata.tiles import make_grid

    owned = isinstance(raster, str | os.PathLike)   # a path is opened (and closed) here, a source used as it is
    src = open_raster(os.fspath(raster)) if owned else raster
    try:
        require_crs(src)
        return make_grid(src, spec), src.crs_wkt
    finally:
        if owned:
            src.close()


def tile_at(grid, x: float, y: float) -> int | None:
    """The position in ``grid`` of the tile a click at (x, y) (the raster's CRS) picks: of the tiles whose outline
    holds the point, the one whose centre is nearest (tiles overlap); None off the grid."""
    a, b, c, d, e, f = grid.transform[:6]
    det = a * e - b * d
    if det == 0 or not len(grid):
        return None
    px, py = ((x - c) * e - (y - f) * b) / det, ((y - f) * a - (x - c) * d) / det   # pixel column, row
    win = grid.windows().astype(np.float64)
    inside = (win[:, 0] <= px) & (px <= win[:, 0] + win[:, 2]) & (win[:, 1] <= py) & (py <= win[:, 1] + win[:, 3])
    cand = np.flatnonzero(inside)
    if not len(cand):
        return None
    dist = (win[cand, 0] + win[cand, 2] / 2 - px) ** 2 + (win[cand, 1] + win[cand, 3] / 2 - py) ** 2
    return int(cand[np.argmin(dist)])


def tile_centre_wkt(grid, i: int) -> str:
    """The centre of tile ``i`` of ``grid`` as a WKT point in the raster's CRS: the example a picked tile is."""
    col, row, w, h = (float(v) for v in grid.windows([i])[0])
    a, b, c, d, e, f = grid.transform[:6]
    px, py = col + w / 2, row + h / 2
    return f"POINT ({a * px + b * py + c!r} {d * px + e * py + f!r})"


def tiles_of(examples: Examples, grid, crs_wkt: str) -> np.ndarray:
    """The positions in ``grid`` of the tiles ``examples`` pick, by the rule a search uses
    (:func:`core.samples.match_tiles`: a point on a border or in an overlap picks every tile holding it)."""
    from .samples import match_tiles

    return np.asarray(match_tiles(examples.samples(), grid, crs_wkt, ["example"]).index, dtype=np.int64)
