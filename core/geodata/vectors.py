"""Safe GeoPackage / Shapefile writing through GDAL's OGR (present in every QGIS).

``write_vector(path, records, fields, crs_wkt, ...)`` writes one polygon (or point) per
record (``record["geometry"]`` is WKT in ``crs_wkt``) with the given fields
(types ``str``, ``int``, ``float``).

Nothing of the user's is lost (``check_output`` makes every check before a
job reads a pixel; ``write_vector`` makes them again):

* A new file is written into a temporary beside it (``.NAME.tmp-PID-XXXXXXXX``,
  PID the writer's process) and renamed into place when complete; temporaries
  whose process is gone are removed before the next write of that output.
* An existing GeoPackage keeps its other layers: the layer is written (and an
  old one of the same name deleted) inside one SQLite transaction of the file
  itself, so a failure or a kill leaves the file as it was (SQLite rolls the
  transaction back), and QGIS may keep the file open meanwhile.
* An existing output (a Shapefile, or a GeoPackage layer of that name) is only
  replaced with ``overwrite=True``. Names of GeoPackage system tables
  (``gpkg_*``, ``rtree_*``, ``sqlite_*``) are refused.
* The output must not be an input of the job (``inputs``: the raster, the samples, the extent polygons,
  a labels file...), whatever the spelling (relative, symlink, hard link, ``GPKG:file:table``,
  ``/vsizip/file.zip/...``); a Shapefile's parts count as one file. A vector input named with its layer
  (``file.gpkg|layername=samples``) is that layer only: another layer of its GeoPackage may be written.
* The folder must really take a new file (a temporary is created and removed),
  and an existing output must be writable.

A Shapefile's files are renamed one by one, the ``.shp`` last; replacing one
replaces its own parts (``.shp .shx .dbf .prj .cpg``) and removes its stale
spatial index (``.qix .sbn .sbx``), nothing else.

Metadata: a GeoPackage layer carries the JSON of ``metadata`` (plus the field
map and the dissolve field) as its GDAL metadata item ``REMOTECLIP`` (stored in
the GeoPackage's metadata tables; ``layer.GetMetadataItem("REMOTECLIP")``).
A Shapefile gets the same JSON in a sidecar ``NAME.remoteclip.json`` marked
``"format": "remoteclip-vector-metadata"``; a file of that name without the
marker is the user's and is never replaced. Shapefile field names are cut to
10 characters (made unique); ``field_names`` in that JSON maps each written
name to the given one.

Dissolve (``dissolve_by="label"``): tiles with the same value of that field
are merged, one feature per connected group (tiles sharing an edge or
overlapping; a common corner alone does not connect). A group's attributes
are the dissolve field, ``n_tiles`` and, for every float field (score,
probabilities, similarity, confidence), the mean over its tiles; other fields
(row, col, rank, top labels) describe single tiles and are dropped.

The checks (``check_output``, ``check_not_input``, the temporaries, reading the sidecar) live in
:mod:`core.geodata.vector_checks` and are re-exported here.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import (
    InvalidInput,
    MissingDependency,
    OutputExists,
    WriteFailed,
    gdal_return_codes,
)
from .crs import srs_from
from .vector_checks import (  # the output checks, re-exported (one module for the writer's users)
    _OVERWRITE_FIX,
    _SHP_DATASET,
    _SHP_INDEX,
    DRIVERS,
    SIDECAR_FORMAT,
    _is_our_sidecar,
    _temp_prefix,
    check_folder_writable,
    check_not_input,
    check_output,
    check_output_path,
    input_files,
    input_layer,
    output_exists,
    read_sidecar,
    remove_dead_temps,
    same_file,
    sidecar_path,
)

__all__ = ["Field", "write_vector", "stage_vector", "dissolve", "DRIVERS", "FIELD_TYPES", "shapefile_names", "check_output_path",
           "check_output", "output_exists", "input_files", "sidecar_path", "read_sidecar", "write_sidecar",
           "remove_dead_temps", "same_file", "check_not_input", "input_layer",
           "check_folder_writable", "SIDECAR_FORMAT"]

FIELD_TYPES = ("str", "int", "float")
_INT32 = 2 ** 31 - 1


@dataclass(frozen=True)
class Field:
    name: str
    type: str   # "str", "int" or "float"


def _ogr():
    try:
        from osgeo import gdal, ogr, osr
    except ImportError:
        raise MissingDependency("GDAL's Python bindings (osgeo) are needed to write vector files.",
                              "Install python3-gdal (QGIS always has them).") from None
    return gdal, ogr, osr


def _fail(what: str, fix: str = "Check the output folder is writable and has free space.", path=None):
    gdal, _, _ = _ogr()
    msg = gdal.GetLastErrorMsg()
    raise WriteFailed(f"{what}{': ' + msg if msg else ''}.", fix, path=path)


def write_failed(path, reason) -> WriteFailed:
    """The error of a write of ``path`` that failed (``reason``: an OSError or GDAL's message); the file that
    was there before is kept."""
    if isinstance(reason, OSError):
        reason = reason.strerror or str(reason)
    return WriteFailed(f"Writing {path} failed: {reason}; the file that was there (if any) is kept.",
                       "Free space on its disk (or check it is writable) and run again.", path=path)


@contextlib.contextmanager
def gdal_errors():
    """Inside, GDAL's failures (CE_Failure, CE_Fatal) are collected, not printed: yields their messages. GDAL
    before 3.7 reports a failed write while closing or flushing a dataset in no return value, only here."""
    gdal, _, _ = _ogr()
    messages: list[str] = []

    def handler(cls, _no, msg):
        if cls >= gdal.CE_Failure:
            messages.append(str(msg))

    gdal.PushErrorHandler(handler)
    try:
        yield messages
    finally:
        gdal.PopErrorHandler()


def _new_temp(folder: str, prefix: str, suffix: str = "") -> str:
    """A new empty file in ``folder`` named ``prefix`` + 8 characters of [a-z0-9_] + ``suffix`` (like mkstemp),
    created with the permissions of any new file (0666 less the umask), not mkstemp's 0600: the output the
    temporary becomes gets the same permissions as a vector output."""
    for _ in range(100):
        name = os.path.join(folder, prefix + secrets.token_hex(4) + suffix)
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return name
    raise FileExistsError(f"no free temporary name in {folder}")


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


def write_sidecar(path, meta: dict) -> str:
    """Write ``meta`` as the sidecar of the Shapefile ``path`` (atomically); refuses to replace a file of the
    same name that RemoteCLIP did not write."""
    side = sidecar_path(path)
    if os.path.lexists(side) and not _is_our_sidecar(side):
        raise OutputExists(f"{side} exists and was not written by RemoteCLIP.",
                              "Move that file away or give the output another name.", path=side)
    folder = os.path.dirname(os.path.abspath(side))
    tmp = _new_temp(folder, _temp_prefix(Path(path).stem))
    try:
        try:
            _write_synced(tmp, _sidecar_text(meta))
        except OSError as e:
            raise write_failed(side, e) from None
        _replace(tmp, side)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return side


def _write_synced(path: str, text: str) -> None:
    """Write ``text`` to ``path`` and make sure it reached the disk (every write, flush and close checked)."""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _sidecar_text(meta: dict) -> str:
    return json.dumps({**meta, "format": SIDECAR_FORMAT}, indent=1, ensure_ascii=False, default=str) + "\n"


# ---------------------------------------------------------------------------------------- writing

def _check(path, records, fields, dissolve_by):
    names = [f.name for f in fields]
    if len({n.lower() for n in names}) != len(names):
        raise InvalidInput(f"Field names repeat: {names}.", "Give each field once.")
    for f in fields:
        if f.type not in FIELD_TYPES:
            raise ValueError(f"field {f.name!r} has type {f.type!r}, not one of {FIELD_TYPES}")
    if dissolve_by is not None and dissolve_by not in names:
        raise ValueError(f"dissolve_by {dissolve_by!r} is not one of the fields {names}")


def write_vector(path, records, fields, crs_wkt: str, layer_name: str | None = None, dissolve_by: str | None = None,
                 metadata: dict | None = None, overwrite: bool = False, inputs=()) -> str:
    """Write ``records`` as polygons to ``path`` (.gpkg or .shp) safely; see the module docstring."""
    return stage_vector(path, records, fields, crs_wkt, layer_name, dissolve_by, metadata, overwrite,
                        inputs).commit()


def stage_vector(path, records, fields, crs_wkt: str, layer_name: str | None = None, dissolve_by: str | None = None,
                 metadata: dict | None = None, overwrite: bool = False, inputs=()):
    """:func:`write_vector` up to complete, checked temporaries (a :class:`core.staged.Staged`: publish
    renames them into place, discard removes them). A layer of a GeoPackage that exists is written when
    published, inside one SQLite transaction of that file (``Staged.writes``: it may still fail, changing
    nothing)."""
    with _quiet_gdal(path):
        return _stage_vector(path, records, fields, crs_wkt, layer_name, dissolve_by, metadata, overwrite, inputs)


@contextlib.contextmanager
def _quiet_gdal(path):
    """GDAL's messages stay off stderr; a failure is raised as a RemoteClipError quoting the message (a
    WriteFailed without a path gets ``path``)."""
    gdal, _, _ = _ogr()
    with gdal_return_codes():
        gdal.PushErrorHandler("CPLQuietErrorHandler")
        try:
            yield
        except WriteFailed as e:
            if e.path is None:
                e.path = os.fspath(path)
            raise
        finally:
            gdal.PopErrorHandler()


def _stage_vector(path, records, fields, crs_wkt, layer_name, dissolve_by, metadata, overwrite, inputs):
    from ..staged import Staged

    gdal, ogr, _ = _ogr()
    fields = [f if isinstance(f, Field) else Field(*f) for f in fields]
    _check(path, records, fields, dissolve_by)
    path = check_output(path, layer_name, overwrite, inputs)
    ext = os.path.splitext(path)[1].lower()
    folder = os.path.dirname(os.path.abspath(path))
    stem = os.path.splitext(os.path.basename(path))[0]
    layer_name = layer_name or stem
    if dissolve_by is not None:
        records, fields = dissolve(records, fields, dissolve_by)
    srs = srs_from(crs_wkt, "output CRS") if crs_wkt else None
    names = [f.name for f in fields]
    written = shapefile_names(names) if ext == ".shp" else names
    meta = dict(metadata or {})
    meta.update(layer=layer_name, dissolved_by=dissolve_by, field_names=dict(zip(written, names, strict=True)))
    meta_json = json.dumps(meta, ensure_ascii=False, sort_keys=True, default=str)
    content = (records, fields, written, srs, meta_json)

    if ext == ".gpkg" and os.path.isfile(path) and os.path.getsize(path) > 0:
        def write_into():
            with _quiet_gdal(path):
                _write_into_gpkg(path, layer_name, content, overwrite)

        return Staged(path, write_into, writes=True)
    if ext == ".gpkg":
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=_temp_prefix(stem), suffix=".gpkg")
        os.close(fd)
        os.unlink(tmp)  # OGR creates the file itself

        def discard():
            for p in (tmp, tmp + "-journal", tmp + "-wal", tmp + "-shm"):
                with contextlib.suppress(OSError):
                    os.unlink(p)

        try:
            ds = _create(tmp, "GPKG")
            try:
                _fill(ds, tmp, "GPKG", layer_name, *content)
            finally:
                with gdal_errors() as closing:
                    ds = None  # closes the file
            if closing:
                raise write_failed(path, closing[0])
        except BaseException:
            discard()
            raise
        return Staged(path, lambda: _publish(tmp, path, overwrite), discard)

    tmpdir = tempfile.mkdtemp(dir=folder, prefix=_temp_prefix(stem))

    def discard():
        shutil.rmtree(tmpdir, ignore_errors=True)

    try:
        shp = os.path.join(tmpdir, stem + ".shp")
        ds = _create(shp, "ESRI Shapefile")
        try:
            _fill(ds, shp, "ESRI Shapefile", stem, *content)
        finally:
            with gdal_errors() as closing:
                ds = None  # writes the headers of .shp, .shx, .dbf
        if closing:
            raise write_failed(path, closing[0])
        try:
            _write_synced(sidecar_path(shp), _sidecar_text(json.loads(meta_json)))
        except OSError as e:
            raise write_failed(path, e) from None
    except BaseException:
        discard()
        raise

    def publish():
        new = {n[len(stem):].lower(): n for n in os.listdir(tmpdir)}   # ".shp", ".dbf", ..., ".remoteclip.json"
        base = os.path.join(folder, stem)
        try:
            for part in _SHP_DATASET + _SHP_INDEX:  # an old spatial index would describe the old features
                if part not in new and os.path.lexists(base + part):
                    os.unlink(base + part)
            for part in sorted(new, key=lambda p: p == ".shp"):
                _replace(os.path.join(tmpdir, new[part]), base + part)
        finally:
            discard()

    return Staged(path, publish, discard)


def _publish(tmp: str, path: str, overwrite: bool) -> None:
    """Rename ``tmp`` to ``path``; without ``overwrite`` a file that appeared there meanwhile is kept."""
    if overwrite:
        _replace(tmp, path)
        return
    try:
        os.link(tmp, path)   # fails, atomically, if path exists
    except FileExistsError:
        raise OutputExists(f"The output {path} appeared while the job ran.", _OVERWRITE_FIX + "-o.", path=path) from None
    except OSError:   # no hard links on this file system
        if os.path.lexists(path):
            raise OutputExists(f"The output {path} appeared while the job ran.",
                                  _OVERWRITE_FIX + "-o.", path=path) from None
        _replace(tmp, path)
        return
    os.unlink(tmp)


def _replace(tmp: str, path: str) -> None:
    try:
        os.replace(tmp, path)
    except OSError as e:
        raise WriteFailed(f"Cannot replace {path}: {e.strerror or e}.",
                          "Close it in other programs (in QGIS remove its layer) or choose another name.",
                          path=path) from None


def _create(path, driver_name):
    gdal, ogr, _ = _ogr()
    drv = ogr.GetDriverByName(driver_name)
    if drv is None:
        raise InvalidInput(f"This GDAL has no {driver_name} driver.", "Write a GeoPackage (.gpkg) instead.", param="output")
    gdal.ErrorReset()
    ds = drv.CreateDataSource(path)
    if ds is None:
        _fail(f"Cannot create {path}")
    return ds


def _write_into_gpkg(path, layer_name, content, overwrite) -> None:
    """Write the layer into an existing GeoPackage in one SQLite transaction: all of it or nothing."""
    gdal, _, _ = _ogr()
    gdal.ErrorReset()
    ds = gdal.OpenEx(path, gdal.OF_VECTOR | gdal.OF_UPDATE, allowed_drivers=["GPKG"])
    if ds is None:
        _fail(f"Cannot open {path} for writing", "Close it in other programs or choose another output.")
    try:
        if ds.StartTransaction() != 0:
            _fail(f"Cannot write to {path}", "Close it in other programs or choose another output.")
        try:
            old = [i for i in range(ds.GetLayerCount()) if ds.GetLayer(i).GetName().lower() == layer_name.lower()]
            if old and not overwrite:
                raise OutputExists(f"The output {path} already has a layer {layer_name!r}.",
                                      _OVERWRITE_FIX + "--layer or -o.", path=path)
            if old and ds.DeleteLayer(old[0]) != 0:
                _fail(f"Cannot replace the layer {layer_name} in {path}")
            _fill(ds, path, "GPKG", layer_name, *content, layer_transaction=False)
            if ds.CommitTransaction() != 0:
                _fail(f"Cannot write to {path}")
        except BaseException:
            with contextlib.suppress(Exception):
                ds.RollbackTransaction()
            raise
    finally:
        ds = None  # closes the file


_CHUNK = 65536   # records converted to Python values at a time


def _columnar(records) -> bool:
    """Records held as columns (core.records.Records) with their tiles: written without a dict per record."""
    return callable(getattr(records, "chunks", None)) and getattr(records, "grid", None) is not None


def _record_chunks(records, fields, geoms=None):
    """(values {field: list}, geometries [OGR geometry]) of ``records``, _CHUNK at a time; records held as
    dicts come with their parsed ``geoms`` (:func:`_wkt_geometries`)."""
    _, ogr, _ = _ogr()
    if _columnar(records):
        for start, _stop, values, wkbs in records.chunks(_CHUNK):
            geoms = [ogr.CreateGeometryFromWkb(w) for w in wkbs]
            if any(g is None for g in geoms):
                raise InvalidInput(f"A tile polygon near record {start} is not valid.", "Report this as a bug.")
            yield values, geoms
        return
    for start in range(0, len(records), _CHUNK):
        part = records[start:start + _CHUNK]
        yield {f.name: [r.get(f.name) for r in part] for f in fields}, geoms[start:start + _CHUNK]


def _wkt_geometries(records) -> list:
    """The OGR geometries of records held as dicts (``"geometry"``: WKT), each parsed once."""
    _, ogr, _ = _ogr()
    geoms = []
    for i, r in enumerate(records):
        g = ogr.CreateGeometryFromWkt(r["geometry"]) if r.get("geometry") else None
        if g is None:
            raise InvalidInput(f"Record {i} has no valid WKT geometry.", "Give every record a polygon.")
        geoms.append(g)
    return geoms


def _column_values(records, name: str):
    """Every value of one field, in order, without holding the records' dicts."""
    if _columnar(records):
        for start in range(0, len(records), _CHUNK):
            yield from records.column(name, start, min(len(records), start + _CHUNK))
    else:
        for r in records:
            yield r.get(name)


def _fill(ds, path, driver_name, layer_name, records, fields, written, srs, meta_json, layer_transaction=True):
    _, ogr, _ = _ogr()
    geoms = None if _columnar(records) else _wkt_geometries(records)   # tile windows: one polygon each
    kinds = {ogr.wkbPolygon} if geoms is None else {ogr.GT_Flatten(g.GetGeometryType()) for g in geoms}
    points = kinds == {ogr.wkbPoint}   # a reference sample (core.assess_cli)
    multi = not points and kinds != {ogr.wkbPolygon}
    gtype = ogr.wkbPoint if points else ogr.wkbMultiPolygon if multi else ogr.wkbPolygon
    opts = ["ENCODING=UTF-8"] if driver_name == "ESRI Shapefile" else ["FID=fid", "GEOMETRY_NAME=geom"]
    lyr = ds.CreateLayer(layer_name, srs, gtype, options=opts)
    if lyr is None:
        _fail(f"Cannot create layer {layer_name} in {path}")
    for f, name in zip(fields, written, strict=True):
        fd = ogr.FieldDefn(name, _ogr_type(f, records, ogr))
        if f.type == "str" and driver_name == "ESRI Shapefile":
            width = max([len(str(v or "").encode()) for v in _column_values(records, f.name)] + [1])
            fd.SetWidth(min(254, width))
        if lyr.CreateField(fd) != 0:
            _fail(f"Cannot create field {name} in {path}")
    if driver_name == "GPKG":
        lyr.SetMetadataItem("REMOTECLIP", meta_json)
    defn = lyr.GetLayerDefn()
    if layer_transaction and lyr.StartTransaction() != 0:
        _fail(f"Cannot write to {path}")
    setters, set_null = _field_setters(fields, ogr)
    for values, chunk_geoms in _record_chunks(records, fields, geoms):
        plan = [(i, setter, conv, values[f.name]) for (i, setter, conv), f in zip(setters, fields, strict=True)]
        for j, g in enumerate(chunk_geoms):
            feat = ogr.Feature(defn)
            for i, setter, conv, col in plan:
                v = col[j]
                if v is None:
                    set_null(feat, i)
                else:
                    setter(feat, i, conv(v))
            feat.SetGeometryDirectly(ogr.ForceToMultiPolygon(g) if multi else g)
            if lyr.CreateFeature(feat) != 0:
                _fail(f"Cannot write a feature to {path}")
    if layer_transaction and lyr.CommitTransaction() != 0:
        _fail(f"Cannot write to {path}")
    if ds.FlushCache() not in (None, 0):
        _fail(f"Cannot write {path}")


def _field_setters(fields: list[Field], ogr):
    """[(index, setter(feature, index, value), conversion)] per field, and the null setter. The setters are
    the SWIG functions the ``ogr.Feature`` methods end in: ``Feature.SetField`` tests its arguments' types in
    Python on every call, which was half the time of writing a million 26-field tiles."""
    try:
        from osgeo import _ogr
        set_int, set_float = _ogr.Feature_SetFieldInteger64, _ogr.Feature_SetField
        set_str, set_null = _ogr.Feature_SetFieldString, _ogr.Feature_SetFieldNull
    except (ImportError, AttributeError):   # other bindings: the public methods, same effect
        set_int, set_float = ogr.Feature.SetFieldInteger64, ogr.Feature.SetField
        set_str, set_null = ogr.Feature.SetFieldString, ogr.Feature.SetFieldNull
    kinds = {"int": (set_int, int), "float": (set_float, float)}
    return [(i, *kinds.get(f.type, (set_str, str))) for i, f in enumerate(fields)], set_null


def _ogr_type(f: Field, records, ogr):
    if f.type == "float":
        return ogr.OFTReal
    if f.type == "str":
        return ogr.OFTString
    arr = records.numeric(f.name) if _columnar(records) else None
    if arr is not None:
        big = len(arr) > 0 and int(abs(arr).max()) > _INT32
    else:
        big = any(v is not None and abs(int(v)) > _INT32 for v in _column_values(records, f.name))
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
            raise InvalidInput(f"The tiles labelled {value!r} could not be merged.", "Write without dissolve.")
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
