"""Atomic GeoPackage / Shapefile writing through GDAL's OGR (present in every QGIS).

``write_vector(path, records, fields, crs_wkt, ...)`` writes one polygon per
record (``record["geometry"]`` is WKT in ``crs_wkt``) with the given fields
(types ``str``, ``int``, ``float``).

Atomic: everything is written into a temporary file (GeoPackage) or folder
(Shapefile) beside the output and renamed into place at the end, so an
existing output is never half overwritten and a failed write leaves no
temporary behind. A Shapefile's files are renamed one by one, the ``.shp``
last, and stale sidecars of an older output (``.qix``, ``.sbn``, ...) are
removed first.

Metadata: a GeoPackage layer carries the JSON of ``metadata`` (plus the field
map and the dissolve field) as its GDAL metadata item ``REMOTECLIP`` (stored in
the GeoPackage's metadata tables; ``layer.GetMetadataItem("REMOTECLIP")``).
A Shapefile gets the same JSON in a sidecar ``NAME.json``. Shapefile field
names are cut to 10 characters (made unique); ``field_names`` in that JSON
maps each written name to the given one.

Dissolve (``dissolve_by="label"``): tiles with the same value of that field
are merged, one feature per connected group (tiles sharing an edge or
overlapping; a common corner alone does not connect). A group's attributes
are the dissolve field, ``n_tiles`` and, for every float field (score,
probabilities, similarity, confidence), the mean over its tiles; other fields
(row, col, rank, top labels) describe single tiles and are dropped.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass

from .errors import RemoteClipError

__all__ = ["Field", "write_vector", "dissolve", "DRIVERS", "FIELD_TYPES", "shapefile_names", "check_output_path"]

DRIVERS = {".gpkg": "GPKG", ".shp": "ESRI Shapefile"}
FIELD_TYPES = ("str", "int", "float")
_SHP_PARTS = (".shp", ".shx", ".dbf", ".prj", ".cpg", ".qix", ".sbn", ".sbx", ".qmd", ".json")
_INT32 = 2 ** 31 - 1


@dataclass(frozen=True)
class Field:
    name: str
    type: str   # "str", "int" or "float"


def _ogr():
    try:
        from osgeo import gdal, ogr, osr
    except ImportError:
        raise RemoteClipError("GDAL's Python bindings (osgeo) are needed to write vector files.",
                              "Install python3-gdal (QGIS always has them).") from None
    return gdal, ogr, osr


def _fail(what: str, fix: str = "Check the output folder is writable and has free space."):
    gdal, _, _ = _ogr()
    msg = gdal.GetLastErrorMsg()
    raise RemoteClipError(f"{what}{': ' + msg if msg else ''}.", fix)


def shapefile_names(names: list[str], width: int = 10) -> list[str]:
    """Unique field names of at most ``width`` characters, in order."""
    out: list[str] = []
    for name in names:
        cand = name[:width]
        k = 1
        while cand.lower() in (o.lower() for o in out):
            tail = str(k)
            cand = name[:width - len(tail)] + tail
            k += 1
        out.append(cand)
    return out


def check_output_path(path) -> tuple[str, str, str]:
    """(path, extension, folder) of an output this module can write, or the error that says why not."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in DRIVERS:
        raise RemoteClipError(f"Output {path} is neither a GeoPackage nor a Shapefile.",
                              "Name the output .gpkg or .shp.")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise RemoteClipError(f"The output folder {folder} does not exist.", "Create it or choose another.")
    if os.path.isdir(path):
        raise RemoteClipError(f"Output {path} is a folder.", "Give a file name ending in .gpkg or .shp.")
    return path, ext, folder


def _check(path, records, fields, dissolve_by):
    path, ext, folder = check_output_path(path)
    names = [f.name for f in fields]
    if len({n.lower() for n in names}) != len(names):
        raise RemoteClipError(f"Field names repeat: {names}.", "Give each field once.")
    for f in fields:
        if f.type not in FIELD_TYPES:
            raise ValueError(f"field {f.name!r} has type {f.type!r}, not one of {FIELD_TYPES}")
    if dissolve_by is not None and dissolve_by not in names:
        raise ValueError(f"dissolve_by {dissolve_by!r} is not one of the fields {names}")
    return path, ext, folder


def write_vector(path, records, fields, crs_wkt: str, layer_name: str | None = None, dissolve_by: str | None = None,
                 metadata: dict | None = None) -> str:
    """Write ``records`` as polygons to ``path`` (.gpkg or .shp) atomically; see the module docstring."""
    gdal, _, _ = _ogr()
    # GDAL's messages stay off stderr; a failure is raised as a RemoteClipError quoting the message
    gdal.PushErrorHandler("CPLQuietErrorHandler")
    try:
        return _write_vector(path, records, fields, crs_wkt, layer_name, dissolve_by, metadata)
    finally:
        gdal.PopErrorHandler()


def _write_vector(path, records, fields, crs_wkt, layer_name, dissolve_by, metadata) -> str:
    gdal, ogr, osr = _ogr()
    fields = [f if isinstance(f, Field) else Field(*f) for f in fields]
    path, ext, folder = _check(path, records, fields, dissolve_by)
    stem = os.path.splitext(os.path.basename(path))[0]
    layer_name = layer_name or stem
    if dissolve_by is not None:
        records, fields = dissolve(records, fields, dissolve_by)
    srs = None
    if crs_wkt:
        srs = osr.SpatialReference()
        if srs.ImportFromWkt(crs_wkt) != 0:
            raise RemoteClipError("The output CRS is not valid WKT.", "Pass the raster's CRS as WKT.")
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    names = [f.name for f in fields]
    written = shapefile_names(names) if ext == ".shp" else names
    meta = dict(metadata or {})
    meta.update(layer=layer_name, dissolved_by=dissolve_by, field_names=dict(zip(written, names, strict=True)))
    meta_json = json.dumps(meta, ensure_ascii=False, sort_keys=True, default=str)

    if ext == ".gpkg":
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{stem}.tmp-", suffix=".gpkg")
        os.close(fd)
        os.unlink(tmp)  # OGR creates the file itself
        try:
            _write(tmp, "GPKG", layer_name, records, fields, written, srs, meta_json)
            _replace(tmp, path)
        except BaseException:
            for p in (tmp, tmp + "-journal", tmp + "-wal", tmp + "-shm"):
                with contextlib.suppress(OSError):
                    os.unlink(p)
            raise
        return path

    tmpdir = tempfile.mkdtemp(dir=folder, prefix=f".{stem}.tmp-")
    try:
        shp = os.path.join(tmpdir, stem + ".shp")
        _write(shp, "ESRI Shapefile", stem, records, fields, written, srs, meta_json)
        with open(os.path.join(tmpdir, stem + ".json"), "w", encoding="utf-8") as fh:
            fh.write(json.dumps(json.loads(meta_json), indent=1, ensure_ascii=False) + "\n")
        new = {os.path.splitext(n)[1].lower(): n for n in os.listdir(tmpdir)}
        base = os.path.join(folder, stem)
        for part in _SHP_PARTS:  # an old spatial index would describe the old features
            if part not in new and os.path.exists(base + part):
                os.unlink(base + part)
        for part in sorted(new, key=lambda p: p == ".shp"):
            _replace(os.path.join(tmpdir, new[part]), base + part)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return path


def _replace(tmp: str, path: str) -> None:
    try:
        os.replace(tmp, path)
    except OSError as e:
        raise RemoteClipError(f"Cannot replace {path}: {e.strerror or e}.",
                              "Close it in other programs (in QGIS remove its layer) or choose another name.") \
            from None


def _write(path, driver_name, layer_name, records, fields, written, srs, meta_json):
    gdal, ogr, _ = _ogr()
    drv = ogr.GetDriverByName(driver_name)
    if drv is None:
        raise RemoteClipError(f"This GDAL has no {driver_name} driver.", "Write a GeoPackage (.gpkg) instead.")
    gdal.ErrorReset()
    ds = drv.CreateDataSource(path)
    if ds is None:
        _fail(f"Cannot create {path}")
    try:
        geoms = []
        for i, r in enumerate(records):
            g = ogr.CreateGeometryFromWkt(r["geometry"]) if r.get("geometry") else None
            if g is None:
                raise RemoteClipError(f"Record {i} has no valid WKT geometry.", "Give every record a polygon.")
            geoms.append(g)
        multi = any(ogr.GT_Flatten(g.GetGeometryType()) != ogr.wkbPolygon for g in geoms)
        gtype = ogr.wkbMultiPolygon if multi else ogr.wkbPolygon
        opts = ["ENCODING=UTF-8"] if driver_name == "ESRI Shapefile" else ["FID=fid", "GEOMETRY_NAME=geom"]
        lyr = ds.CreateLayer(layer_name, srs, gtype, options=opts)
        if lyr is None:
            _fail(f"Cannot create layer {layer_name} in {path}")
        for f, name in zip(fields, written, strict=True):
            fd = ogr.FieldDefn(name, _ogr_type(f, records, ogr))
            if f.type == "str" and driver_name == "ESRI Shapefile":
                width = max([len(str(r.get(f.name) or "").encode()) for r in records] + [1])
                fd.SetWidth(min(254, width))
            if lyr.CreateField(fd) != 0:
                _fail(f"Cannot create field {name} in {path}")
        if driver_name == "GPKG":
            lyr.SetMetadataItem("REMOTECLIP", meta_json)
        defn = lyr.GetLayerDefn()
        if lyr.StartTransaction() != 0:
            _fail(f"Cannot write to {path}")
        for r, g in zip(records, geoms, strict=True):
            feat = ogr.Feature(defn)
            for i, f in enumerate(fields):
                v = r.get(f.name)
                if v is None:
                    feat.SetFieldNull(i)
                elif f.type == "int":
                    feat.SetField(i, int(v))
                elif f.type == "float":
                    feat.SetField(i, float(v))
                else:
                    feat.SetField(i, str(v))
            feat.SetGeometryDirectly(ogr.ForceToMultiPolygon(g) if multi else g)
            if lyr.CreateFeature(feat) != 0:
                _fail(f"Cannot write a feature to {path}")
        if lyr.CommitTransaction() != 0:
            _fail(f"Cannot write to {path}")
        if ds.FlushCache() not in (None, 0):
            _fail(f"Cannot write {path}")
    finally:
        ds = None  # closes the file


def _ogr_type(f: Field, records, ogr):
    if f.type == "float":
        return ogr.OFTReal
    if f.type == "str":
        return ogr.OFTString
    big = any(r.get(f.name) is not None and abs(int(r[f.name])) > _INT32 for r in records)
    return ogr.OFTInteger64 if big else ogr.OFTInteger


# ---------------------------------------------------------------------------------------- dissolve

def dissolve(records: list[dict], fields: list[Field], by: str) -> tuple[list[dict], list[Field]]:
    """Merge records with the same ``by`` value into one record per connected group (module docstring)."""
    _, ogr, _ = _ogr()
    fields = [f if isinstance(f, Field) else Field(*f) for f in fields]
    by_field = next(f for f in fields if f.name == by)
    means = [f for f in fields if f.type == "float" and f.name != by]
    groups: dict = {}
    for r in records:
        groups.setdefault(r.get(by), []).append(r)
    out = []
    for value in sorted(groups, key=lambda v: (v is None, str(v))):
        recs = groups[value]
        multi = ogr.Geometry(ogr.wkbMultiPolygon)
        tiles = []
        for r in recs:
            g = ogr.CreateGeometryFromWkt(r["geometry"])
            tiles.append(g)
            for part in _polygons(g, ogr):
                multi.AddGeometry(part)
        union = multi.UnionCascaded()
        if union is None:
            raise RemoteClipError(f"The tiles labelled {value!r} could not be merged.", "Write without dissolve.")
        parts = _polygons(union, ogr)
        envs = [p.GetEnvelope() for p in parts]
        members: list[list[dict]] = [[] for _ in parts]
        for r, g in zip(recs, tiles, strict=True):
            pt = g.PointOnSurface()
            x, y = pt.GetX(), pt.GetY()
            cands = [i for i, (x0, x1, y0, y1) in enumerate(envs) if x0 <= x <= x1 and y0 <= y <= y1]
            if len(cands) > 1:
                cands = [i for i in cands if parts[i].Intersects(pt)] or cands
            members[cands[0]].append(r)
        for part, mem in zip(parts, members, strict=True):
            if not mem:
                continue
            rec = {by: value, "n_tiles": len(mem), "geometry": part.ExportToWkt()}
            for f in means:
                vals = [float(m[f.name]) for m in mem if m.get(f.name) is not None]
                rec[f.name] = round(sum(vals) / len(vals), 6) if vals else None
            out.append(rec)
    return out, [by_field, Field("n_tiles", "int"), *means]


def _polygons(g, ogr) -> list:
    kind = ogr.GT_Flatten(g.GetGeometryType())
    if kind == ogr.wkbPolygon:
        return [g.Clone()]
    if kind in (ogr.wkbMultiPolygon, ogr.wkbGeometryCollection):
        out = []
        for i in range(g.GetGeometryCount()):
            out.extend(_polygons(g.GetGeometryRef(i), ogr))
        return out
    return []  # points/lines left over by a union of polygons touching at a corner carry no area
