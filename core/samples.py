"""An analyst's samples (points or polygons with a class) and the tiles they claim.

A tile takes a sample's class when it shares area with the sample polygon (a common edge or corner
is not enough) or contains the sample point (its edge included). A tile claimed by two classes is
left out; a tile claimed by two samples of one class joins them into one group, so cross-validation
never splits them. Samples may be in any CRS; they are transformed to the raster's.

Class values are text (a number in the class field becomes its digits: 3, not 3.0). Class names
follow :func:`core.prompts.check_labels` (no '|', no duplicates ignoring case) and are sorted, so a
run's class order depends only on the class values.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field

import numpy as np

from .errors import InvalidInput, SourceUnreadable, gdal_return_codes

__all__ = ["Samples", "SampleTiles", "read_samples", "class_text", "match_tiles"]


@dataclass
class Samples:
    """Sample geometries (WKT) with their class, in ``crs`` (None: the raster's)."""
    wkts: list[str]
    classes: list[str]
    crs: str | int | None = None
    ids: list = field(default_factory=list)   # feature ids, for messages (default: 1, 2, ...)
    source: str = ""                          # the layer or file they came from, for messages
    origin: str = ""                          # the file read (``FILE|layername=NAME``): no output may be it

    def __post_init__(self):
        from .prompts import check_text

        if isinstance(self.wkts, str) or isinstance(self.classes, str):
            raise InvalidInput("Samples need a list of geometries and a list of classes.",
                                  "Give Samples(wkts=[...], classes=[...]).")
        self.wkts = list(self.wkts)
        self.classes = [class_text(c) for c in self.classes]
        self.ids = list(self.ids) if self.ids else list(range(1, len(self.wkts) + 1))
        where = f" of {self.source}" if self.source else ""
        if len(self.wkts) != len(self.classes) or len(self.ids) != len(self.wkts):
            raise InvalidInput(f"The samples{where} have {len(self.wkts)} geometries and {len(self.classes)} "
                                  "classes.", "Give one class per geometry.")
        if not self.wkts:
            raise InvalidInput(f"The samples{where} are empty.", "Draw at least one point or polygon per class "
                                  "(or, with 'selected only', select them).")
        for fid, c in zip(self.ids, self.classes, strict=True):
            if not check_text(c, "sample class"):
                raise InvalidInput(f"Sample feature {fid}{where} has no class (its class field is empty or "
                                      "NULL).", "Fill in the class of every sample, or leave that sample out.")

    def class_names(self) -> list[str]:
        """The distinct classes, sorted (case-insensitively, then exactly), checked as label lists are."""
        from .prompts import check_labels

        names = sorted(set(self.classes), key=lambda c: (c.casefold(), c))
        lower: dict[str, str] = {}
        for n in names:
            if n.casefold() in lower:
                raise InvalidInput(f"The sample classes {lower[n.casefold()]!r} and {n!r} differ only in case.",
                                      "Write each class the same way in every sample.")
            lower[n.casefold()] = n
        names = check_labels(names)
        if len(names) < 2:
            raise InvalidInput(f"All samples are of one class ({names[0]!r}); a classifier needs two or more.",
                                  "Draw samples of at least two classes.")
        return names


def class_text(value) -> str:
    """A class field's value as text: 3 and 3.0 are "3"; None stays "" (refused by Samples)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return str(int(value)) if value == int(value) else repr(value)
    return str(value).strip()


@gdal_return_codes()
def read_samples(path, class_field: str, layer: str | None = None) -> Samples:
    """Samples from a vector file OGR reads (GeoPackage, Shapefile, GeoJSON, ...): its first layer (or
    ``layer``), the class from ``class_field``."""
    from .checks import path_text

    path = path_text(path, "samples file")
    if not os.path.exists(path):
        raise SourceUnreadable(f"Samples file not found: {path}.", "Check the path (--samples).", path=path)
    if not class_field:
        raise InvalidInput("No class field was given for the samples.",
                              "Name the attribute that holds each sample's class (--class-field).", param="class_field")
    from osgeo import ogr

    with gdal_quiet():
        try:
            ds = ogr.Open(path)
        except RuntimeError:   # GDAL's exceptions on (QGIS 3.40+ Processing turns them on)
            ds = None
    if ds is None:
        _check_readable(path)
        raise InvalidInput(f"{path} is not a vector file OGR can open.",
                           "Give a GeoPackage, Shapefile or GeoJSON with points or polygons.", path=path)
    lyr = ds.GetLayerByName(layer) if layer else ds.GetLayer(0)
    if lyr is None:
        raise InvalidInput(f"{path} has no layer {layer!r}.", "Check the layer name.", path=path, param="layer")
    if lyr.GetFeatureCount() == 0:
        raise InvalidInput(f"The samples file {path} has no features.", "Draw sample points or polygons with their "
                           "class in it, or give the file that holds them (--samples).", path=path)
    defn = lyr.GetLayerDefn()
    names = [defn.GetFieldDefn(i).GetName() for i in range(defn.GetFieldCount())]
    if class_field not in names:
        match = [n for n in names if n.lower() == class_field.lower()]
        if not match:
            raise InvalidInput(f"The samples {path} have no field {class_field!r} (fields: "
                                  f"{', '.join(names) or 'none'}).", "Give the field that holds the class "
                                  "(--class-field).", path=path, param="class_field")
        class_field = match[0]
    srs = lyr.GetSpatialRef()
    wkts, classes, ids = [], [], []
    for f in lyr:
        g = f.GetGeometryRef()
        if g is None or g.IsEmpty():
            continue
        wkts.append(g.ExportToWkt())
        classes.append(_decoded(f.GetField(class_field)))
        ids.append(f.GetFID())
    if not wkts:
        raise InvalidInput(f"The samples {path} hold no geometries.", "Draw points or polygons with a class.",
                           path=path)
    return Samples(wkts, classes, srs.ExportToWkt() if srs is not None else None, ids, os.path.basename(path),
                   f"{path}|layername={lyr.GetName()}")


def _check_readable(path: str) -> None:
    """A file OGR could not open: SourceUnreadable when its bytes cannot be read (permissions, I/O error),
    so that is not reported as a file of the wrong format."""
    if not os.path.isfile(path):
        return
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise SourceUnreadable(f"The samples file {path} cannot be read ({e.strerror or e}).",
                               "Check that it is readable (its permissions, the disk), or copy it somewhere "
                               "readable.", path=path) from None


def _decoded(value):
    """A text value read from a file that does not say its encoding (a Shapefile without .cpg): GDAL hands
    bytes that are not UTF-8 over as surrogates, which nothing can write. They are read as Windows-1252 (the
    usual encoding of such .dbf files; Latin-1 where that has no character)."""
    if not isinstance(value, str):
        return value
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        raw = value.encode("utf-8", "surrogateescape")
    try:
        return raw.decode("cp1252")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


@dataclass
class SampleTiles:
    """What the samples say about the tiles: ``index`` (tiles that are samples), ``y`` (their class),
    ``group`` (samples joined by a shared tile)."""
    index: np.ndarray
    y: np.ndarray
    group: np.ndarray
    classes: list[str]
    conflicts: int = 0
    tiles_per_class: dict = field(default_factory=dict)
    samples_per_class: dict = field(default_factory=dict)
    outside: int = 0          # samples that claimed no tile (outside the raster or the extent)
    places: np.ndarray | None = None   # (n, 2) the sample tiles' centres in tile widths (spatial folds)
    tile_m: float | None = None        # metres per tile width (None: a CRS not in linear units)
    per_sample: list = field(default_factory=list)   # tiles each sample claimed (in the order of the samples)


@gdal_return_codes()
def match_tiles(samples: Samples, tiles, crs_wkt: str, classes: list[str] | None = None) -> SampleTiles:
    """The sample tiles among ``tiles`` (Tile objects with ``polygon_wkt`` in ``crs_wkt``)."""
    from osgeo import ogr, osr

    from .geodata.crs import srs_from

    classes = classes or samples.class_names()
    cls_index = {c: i for i, c in enumerate(classes)}
    ct = None
    if samples.crs is not None and crs_wkt:
        with gdal_quiet():
            ssrs = srs_from(samples.crs, "samples' CRS", param="samples")
            rsrs = srs_from(crs_wkt, "raster's CRS")
            if not ssrs.IsSame(rsrs):
                ct = osr.CoordinateTransformation(ssrs, rsrs)
    tiles = list(tiles)
    env = np.array([_wkt_envelope(t.polygon_wkt) for t in tiles], dtype=np.float64).reshape(-1, 4)
    claims: dict[int, set] = {}      # tile -> classes
    members: dict[int, list] = {}    # tile -> samples
    per_sample_tiles: list[int] = []
    with gdal_quiet():
        for s, (wkt, cls, fid) in enumerate(zip(samples.wkts, samples.classes, samples.ids, strict=True)):
            g = ogr.CreateGeometryFromWkt(wkt) if isinstance(wkt, str) else None
            if g is None:
                raise InvalidInput(f"Sample feature {fid} has no valid geometry.", "Fix or delete it.")
            kind = ogr.GT_Flatten(g.GetGeometryType())
            if kind in (ogr.wkbPoint, ogr.wkbMultiPoint):
                area = False
            elif kind in (ogr.wkbPolygon, ogr.wkbMultiPolygon):
                area = True
            else:
                raise InvalidInput(f"Sample feature {fid} is a {ogr.GeometryTypeToName(kind).lower()}; samples "
                                      "are points or polygons.", "Use a point or polygon layer for the samples.")
            try:
                moved = ct is None or g.Transform(ct) == 0
            except RuntimeError:
                moved = False
            if not moved:
                raise InvalidInput(f"Sample feature {fid} cannot be transformed to the raster's CRS.",
                                      "Check the samples' CRS.")
            if area and not g.IsValid():
                g = g.MakeValid() or g
            x0, x1, y0, y1 = g.GetEnvelope()
            if not all(math.isfinite(v) for v in (x0, x1, y0, y1)):
                raise InvalidInput(f"Sample feature {fid} lies outside the area of the raster's CRS.",
                                      "Check the samples' CRS.")
            cand = ((env[:, 0] <= x1) & (env[:, 1] >= x0) & (env[:, 2] <= y1) & (env[:, 3] >= y0)).nonzero()[0]
            n = 0
            for i in cand:
                tile = ogr.CreateGeometryFromWkt(tiles[i].polygon_wkt)
                hit = (g.Intersects(tile) and not g.Touches(tile)) if area else tile.Intersects(g)
                if hit:
                    claims.setdefault(int(i), set()).add(cls_index[cls])
                    members.setdefault(int(i), []).append(s)
                    n += 1
            per_sample_tiles.append(n)
    keep = sorted(i for i, c in claims.items() if len(c) == 1)
    conflicts = sum(1 for c in claims.values() if len(c) > 1)
    # samples sharing a kept tile form one group (union-find)
    parent = list(range(len(samples.wkts)))

    def root(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i in keep:
        first = members[i][0]
        for other in members[i][1:]:
            parent[root(other)] = root(first)
    index = np.asarray(keep, dtype=np.int64)
    y = np.asarray([next(iter(claims[i])) for i in keep], dtype=np.int64)
    group = np.asarray([root(members[i][0]) for i in keep], dtype=np.int64)
    tiles_per_class = {c: int(np.sum(y == k)) for k, c in enumerate(classes)}
    samples_per_class = {c: 0 for c in classes}
    for cls, n in zip(samples.classes, per_sample_tiles, strict=True):
        samples_per_class[cls] += 1 if n else 0
    places, tile_m = _tile_places([tiles[i].polygon_wkt for i in keep], crs_wkt)
    return SampleTiles(index, y, group, list(classes), conflicts, tiles_per_class, samples_per_class,
                       outside=sum(1 for n in per_sample_tiles if n == 0), places=places, tile_m=tile_m,
                       per_sample=per_sample_tiles)


def _tile_places(wkts: list[str], crs_wkt: str) -> tuple[np.ndarray, float | None]:
    """Tile centres in tile widths (the median length of a tile's first edge) and metres per tile width
    (None when the CRS is not known). In a geographic CRS, longitudes are scaled by the cosine of the
    latitude and a degree of latitude is taken as 111,195 m (a sphere), so distances are on the ground."""
    corners = np.array([[[float(v) for v in pt.split()] for pt in w[w.index("((") + 2:w.rindex("))")].split(",")[:4]]
                        for w in wkts], dtype=np.float64).reshape(-1, 4, 2)
    if not len(corners):
        return np.zeros((0, 2)), None
    unit_m = None
    if crs_wkt:
        from .geodata.crs import srs_from

        with gdal_quiet(), contextlib.suppress(ValueError, RuntimeError):
            srs = srs_from(crs_wkt, "raster's CRS")
            if srs.IsGeographic():
                corners[..., 0] *= math.cos(math.radians(float(np.clip(np.mean(corners[..., 1]), -89.0, 89.0))))
                unit_m = 6371008.8 * math.pi / 180.0
            elif srs.IsProjected():
                unit_m = float(srs.GetLinearUnits())
    width = float(np.median(np.hypot(*(corners[:, 1] - corners[:, 0]).T)))
    if not width > 0:
        return np.zeros((len(corners), 2)), None
    return corners.mean(axis=1) / width, None if unit_m is None else width * unit_m


@contextlib.contextmanager
def gdal_quiet():
    """GDAL's messages kept off stderr: failures become RemoteClipErrors instead."""
    from osgeo import gdal

    gdal.PushErrorHandler("CPLQuietErrorHandler")
    try:
        yield
    finally:
        gdal.PopErrorHandler()


def _wkt_envelope(wkt: str) -> tuple[float, float, float, float]:
    """(xmin, xmax, ymin, ymax) of a tile polygon's WKT (its corner coordinates, no OGR)."""
    body = wkt[wkt.index("((") + 2:wkt.rindex("))")]
    xs, ys = [], []
    for pt in body.split(","):
        x, y = pt.split()
        xs.append(float(x))
        ys.append(float(y))
    return min(xs), max(xs), min(ys), max(ys)
