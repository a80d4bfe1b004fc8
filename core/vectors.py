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
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import (
    InvalidInput,
    MissingDependency,
    OutputExists,
    OutputIsInput,
    OutputRefused,
    WriteFailed,
    gdal_return_codes,
)

__all__ = ["Field", "write_vector", "dissolve", "DRIVERS", "FIELD_TYPES", "shapefile_names", "check_output_path",
           "check_output", "output_exists", "input_files", "sidecar_path", "read_sidecar", "write_sidecar",
           "remove_dead_temps", "same_file", "check_not_input", "input_layer",
           "check_folder_writable", "SIDECAR_FORMAT"]

DRIVERS = {".gpkg": "GPKG", ".shp": "ESRI Shapefile"}
FIELD_TYPES = ("str", "int", "float")
SIDECAR = ".remoteclip.json"
SIDECAR_FORMAT = "remoteclip-vector-metadata"
_SHP_DATASET = (".shp", ".shx", ".dbf", ".prj", ".cpg")   # a Shapefile's own parts
_SHP_INDEX = (".qix", ".sbn", ".sbx")                     # spatial indexes: stale once the .shp changes
_GPKG_RESERVED = ("gpkg_", "rtree_", "sqlite_")
_INT32 = 2 ** 31 - 1
_OVERWRITE_FIX = "Replace it with --overwrite (Job(overwrite=True) in Python), or choose another "


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


def check_output_path(path) -> tuple[str, str, str]:
    """(path, extension, folder) of an output this module can write, or the error that says why not."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in DRIVERS:
        raise InvalidInput(f"Output {path} is neither a GeoPackage nor a Shapefile.",
                              "Name the output .gpkg or .shp.", path=path, param="output")
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise OutputRefused(f"The output folder {folder} is a file, not a folder.",
                              "Give an output path in an existing folder.", path=folder)
    if not os.path.isdir(folder):
        raise OutputRefused(f"The output folder {folder} does not exist.", "Create it or choose another.", path=folder)
    if os.path.isdir(path):
        raise OutputRefused(f"Output {path} is a folder.", "Give a file name ending in .gpkg or .shp.", path=path)
    return path, ext, folder


# ------------------------------------------------------------------------------------ output checks

def check_output(path, layer_name: str | None = None, overwrite: bool = False, inputs=()) -> str:
    """``path`` if a result can be written there without losing anything, else the RemoteClipError saying why.

    ``layer_name``: the GeoPackage layer (default: the file's stem). ``inputs``: paths or GDAL URIs the job
    reads, which the output must not be. Also removes temporaries of this output whose writer is gone.
    """
    path, ext, folder = check_output_path(path)
    stem = os.path.splitext(os.path.basename(path))[0]
    if ext == ".gpkg":
        _check_layer_name(layer_name or stem)
    check_not_input(path, inputs, (layer_name or stem) if ext == ".gpkg" else None)
    check_folder_writable(folder, stem)
    remove_dead_temps(folder, _temp_pattern(stem))
    if ext == ".gpkg":
        _check_gpkg(path, layer_name or stem, overwrite)
    else:
        _check_shapefile(path, overwrite)
    return path


class Replaced(str):
    """What an output would replace, in words; ``layer`` is True when it is one layer of a GeoPackage (the
    file's other layers are kept)."""

    layer = False


def _replaced_layer(text: str) -> Replaced:
    r = Replaced(text)
    r.layer = True
    return r


def output_exists(path, layer_name: str | None = None) -> Replaced | None:
    """What writing to ``path`` (layer ``layer_name`` of a GeoPackage) would replace, in words, or None."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".gpkg":
        if not os.path.isfile(path):
            return None
        if os.path.getsize(path) == 0:
            return Replaced(f"the empty file {path}")
        hit = (_gpkg_tables(path) or {}).get((layer_name or Path(path).stem).lower())
        return _replaced_layer(f"the layer {hit[0]!r} of {path}") if hit else None
    base = os.path.splitext(path)[0]
    parts = [base + p for p in _SHP_DATASET if os.path.lexists(base + p)]
    return Replaced(f"the Shapefile {path}") if parts else None


def _check_layer_name(name: str) -> None:
    if name.lower().startswith(_GPKG_RESERVED):
        raise InvalidInput(f"The layer name {name!r} is reserved for the GeoPackage's own tables "
                              "(gpkg_*, rtree_*, sqlite_*).",
                              "Choose another layer name (--layer), e.g. labels.", param="layer_name")


def input_files(spec) -> list[str]:
    """The local file a raster path or GDAL URI reads, as a one-item list ([] for URLs and unknowns).

    ``GPKG:/data/x.gpkg:table`` and ``NETCDF:"x.nc":var`` name their file after the driver prefix;
    ``/vsizip//data/x.zip/inner.tif`` (or ``/vsizip/{/data/x.zip}/inner.tif``) the archive: the longest
    leading part that is an existing file is the one.
    """
    if not isinstance(spec, str | os.PathLike):
        return []
    s = os.fspath(spec)
    if not s:
        return []
    if os.path.isfile(s):
        return [s]
    body = s
    m = re.match(r"^[A-Za-z][A-Za-z0-9_]+:(?!//)(.*)$", s)
    if m and not re.match(r"^[A-Za-z]:[\\/]", s):   # a driver prefix, not a Windows drive
        body = m.group(1)
    while body.startswith("/vsi"):
        body = body.split("/", 2)[2] if body.count("/") >= 2 else ""
    if body.startswith("{") and "}" in body:
        body = body[1:body.index("}")]
    ends = {i for i, ch in enumerate(body) if ch in "/\\:\"'"} | {len(body)}
    for end in sorted(ends, reverse=True):
        cand = body[:end].strip("\"'")
        if cand and os.path.isfile(cand):
            return [cand]
    return []


def same_file(a: str, b: str) -> bool:
    """Whether two paths name one file: relative, symlinked, hard-linked or not yet there (then by path)."""
    try:
        return os.path.samefile(a, b)   # symlinks and hard links too
    except OSError:
        return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def input_layer(spec) -> tuple[str, str | None]:
    """(the spec without its layer, the layer) of an input named ``file|layername=NAME`` (QGIS's and
    OGR's spelling of one layer of a vector file); (spec, None) for anything else."""
    s = os.fspath(spec)
    if "|" not in s:
        return s, None
    file, _, rest = s.partition("|")
    m = re.search(r"(?:^|\|)layername=([^|]+)", rest)
    return file, (m.group(1) if m else None)


def _dataset_files(path: str) -> list[str]:
    """The files writing (or reading) ``path`` touches: a Shapefile's parts (whichever part is named), else
    the file itself."""
    base, ext = os.path.splitext(path)
    if ext.lower() in _SHP_DATASET + _SHP_INDEX:
        return [base + p for p in _SHP_DATASET + _SHP_INDEX] + [base + SIDECAR]
    return [path]


def check_not_input(path, inputs, layer: str | None = None) -> None:
    """Raise OutputIsInput if writing ``path`` (any of a Shapefile's files; ``layer`` of a GeoPackage, None
    for the whole file) would write a file of ``inputs``.

    ``inputs``: paths or GDAL URIs of rasters, or ``(spec, what)`` pairs naming what each is ("samples").
    A spec ``file|layername=NAME`` is that layer only: writing another ``layer`` of the file is allowed."""
    path = os.fspath(path)
    targets = _dataset_files(path)
    for item in inputs or ():
        spec, what = item if isinstance(item, tuple) else (item, "input raster's file")
        spec = os.fspath(spec)
        file, in_layer = input_layer(spec)
        for f in input_files(file):
            if not any(same_file(t, g) for g in _dataset_files(f) for t in targets):
                continue
            if in_layer is not None and layer is not None and in_layer.lower() != layer.lower():
                continue   # another layer of the same GeoPackage
            raise OutputIsInput(f"The output {path} is the {what} ({spec}).",
                                "Write the result to another file" + (" or layer" if layer else "")
                                + ": RemoteCLIP never writes over what a job reads.", path=path)


def _marked_read_only(path) -> bool:
    # write permission for nobody: meant read-only, though root may write (POSIX; on Windows a folder's
    # read-only attribute only marks customised folders)
    try:
        return os.name != "nt" and os.stat(path).st_mode & 0o222 == 0
    except OSError:
        return False


def check_folder_writable(folder, stem: str = "remoteclip") -> None:
    """Raise unless a new file can really be created in ``folder`` (and its permissions allow one)."""
    if _marked_read_only(folder):
        raise WriteFailed(f"The output folder {folder} is read-only.", "Choose a folder you can write to.", path=folder)
    # os.access says yes to root and knows nothing of read-only mounts or /proc: really create a file
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=_temp_prefix(stem))
    except OSError as e:
        raise WriteFailed(f"Cannot create a file in the output folder {folder}: {e.strerror or e}.",
                              "Choose a folder you can write to.", path=folder) from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def _check_writable_file(path: str) -> None:
    if not os.access(path, os.W_OK) or _marked_read_only(path):
        raise WriteFailed(f"The output {path} is read-only.", "Make it writable or choose another name.", path=path)


def _check_gpkg(path: str, layer: str, overwrite: bool) -> None:
    if not os.path.lexists(path):
        return
    _check_writable_file(path)
    if os.path.getsize(path) == 0:
        if not overwrite:
            raise OutputExists(f"The output {path} already exists (an empty file).", _OVERWRITE_FIX + "-o.", path=path)
        return
    tables = _gpkg_tables(path)
    if tables is None:
        raise OutputExists(f"The output {path} exists and is not a GeoPackage.",
                              "Choose another output name (RemoteCLIP adds layers to GeoPackages only).", path=path)
    hit = tables.get(layer.lower())
    if hit is None:
        return
    name, kind = hit
    if kind not in ("features", "attributes"):
        raise OutputExists(f"The output {path} already has a {kind} table named {name!r}.",
                              "Choose another layer name (--layer).", path=path)
    if not overwrite:
        raise OutputExists(f"The output {path} already has a layer {name!r}.", _OVERWRITE_FIX + "--layer or -o.", path=path)


def _gpkg_tables(path: str) -> dict[str, tuple[str, str]] | None:
    """lower-case name -> (name, data type) of every table in a GeoPackage; None if it is not one."""
    uri = Path(os.path.abspath(path)).as_uri() + "?mode=ro"
    try:
        con = sqlite3.connect(uri, uri=True)
        try:
            contents = con.execute("SELECT table_name, data_type FROM gpkg_contents").fetchall()
            tables = con.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')").fetchall()
        finally:
            con.close()
    except sqlite3.DatabaseError:   # not SQLite, or no gpkg_contents
        return None
    out = {str(n).lower(): (str(n), "SQLite") for (n,) in tables}
    out.update({str(n).lower(): (str(n), str(k)) for n, k in contents})
    return out


def _check_shapefile(path: str, overwrite: bool) -> None:
    base = os.path.splitext(path)[0]
    side = sidecar_path(path)
    if os.path.lexists(side) and not _is_our_sidecar(side):
        raise OutputExists(f"{side} exists and was not written by RemoteCLIP.",
                              "Move that file away or give the output another name.", path=side)
    parts = [base + p for p in _SHP_DATASET if os.path.lexists(base + p)]
    if parts and not overwrite and not os.path.lexists(base + ".shp"):
        # no .shp: not a Shapefile, only files of the user's under its parts' names
        names = ", ".join(os.path.basename(p) for p in parts)
        one = len(parts) == 1
        raise OutputExists(f"{names} {'exists' if one else 'exist'} beside the output {path} (which does not "
                           f"exist yet); writing it would replace {'that file' if one else 'those files'}.",
                           f"Move {'it' if one else 'them'} away or choose another output name (-o); "
                           "--overwrite replaces them.", path=path)
    if parts and not overwrite:
        raise OutputExists(f"The output {path} already exists.", _OVERWRITE_FIX + "-o.", path=path)
    for p in parts:
        _check_writable_file(p)


# ------------------------------------------------------------------------------------ temporaries

def _temp_prefix(stem: str) -> str:
    return f".{stem}.tmp-{os.getpid()}-"


def _temp_pattern(stem: str) -> str:
    # mkstemp/mkdtemp add 8 characters of [a-z0-9_]; SQLite adds -journal, -wal, -shm
    return r"\." + re.escape(stem) + r"\.tmp-(\d+)-[a-z0-9_]{8}(?:\.gpkg(?:-journal|-wal|-shm)?)?"


def remove_dead_temps(folder, pattern: str) -> list[str]:
    """Remove the files and folders in ``folder`` whose whole name matches ``pattern`` and whose writer (the
    process id in the pattern's first group) is gone; returns what was removed. Nothing else is touched."""
    rx = re.compile(pattern)
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    removed = []
    for name in names:
        m = rx.fullmatch(name)
        if m is None or _pid_alive(int(m.group(1))):
            continue
        p = os.path.join(folder, name)
        try:
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p)
            else:
                os.unlink(p)
        except OSError:
            continue
        removed.append(p)
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name == "nt":   # os.kill(pid, 0) would terminate the process on Windows
        import ctypes

        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        handle = kernel32.OpenProcess(0x1000, False, pid)   # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return ctypes.get_last_error() == 5   # access denied: it exists
        code = ctypes.c_ulong()
        ok = kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        kernel32.CloseHandle(handle)
        return not ok or code.value == 259   # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:   # EPERM: it exists, run by someone else
        return True
    return True


# ---------------------------------------------------------------------------------------- sidecar

def sidecar_path(path) -> str:
    """The metadata sidecar of a Shapefile: ``NAME.remoteclip.json``."""
    return os.path.splitext(os.fspath(path))[0] + SIDECAR


def _load_json(path: str):
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _is_our_sidecar(path: str) -> bool:
    meta = _load_json(path)
    return isinstance(meta, dict) and meta.get("format") == SIDECAR_FORMAT


def read_sidecar(path) -> dict:
    """The metadata RemoteCLIP stored beside the Shapefile ``path``; {} if there is none of ours."""
    meta = _load_json(sidecar_path(path))
    return meta if isinstance(meta, dict) and meta.get("format") == SIDECAR_FORMAT else {}


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


@gdal_return_codes()
def write_vector(path, records, fields, crs_wkt: str, layer_name: str | None = None, dissolve_by: str | None = None,
                 metadata: dict | None = None, overwrite: bool = False, inputs=()) -> str:
    """Write ``records`` as polygons to ``path`` (.gpkg or .shp) safely; see the module docstring."""
    gdal, _, _ = _ogr()
    # GDAL's messages stay off stderr; a failure is raised as a RemoteClipError quoting the message
    gdal.PushErrorHandler("CPLQuietErrorHandler")
    try:
        return _write_vector(path, records, fields, crs_wkt, layer_name, dissolve_by, metadata, overwrite, inputs)
    except WriteFailed as e:
        if e.path is None:
            e.path = os.fspath(path)
        raise
    finally:
        gdal.PopErrorHandler()


def _write_vector(path, records, fields, crs_wkt, layer_name, dissolve_by, metadata, overwrite, inputs) -> str:
    gdal, ogr, osr = _ogr()
    fields = [f if isinstance(f, Field) else Field(*f) for f in fields]
    _check(path, records, fields, dissolve_by)
    path = check_output(path, layer_name, overwrite, inputs)
    ext = os.path.splitext(path)[1].lower()
    folder = os.path.dirname(os.path.abspath(path))
    stem = os.path.splitext(os.path.basename(path))[0]
    layer_name = layer_name or stem
    if dissolve_by is not None:
        records, fields = dissolve(records, fields, dissolve_by)
    srs = None
    if crs_wkt:
        srs = osr.SpatialReference()
        if srs.ImportFromWkt(crs_wkt) != 0:
            raise InvalidInput("The output CRS is not valid WKT.", "Pass the raster's CRS as WKT.")
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    names = [f.name for f in fields]
    written = shapefile_names(names) if ext == ".shp" else names
    meta = dict(metadata or {})
    meta.update(layer=layer_name, dissolved_by=dissolve_by, field_names=dict(zip(written, names, strict=True)))
    meta_json = json.dumps(meta, ensure_ascii=False, sort_keys=True, default=str)
    content = (records, fields, written, srs, meta_json)

    if ext == ".gpkg" and os.path.isfile(path) and os.path.getsize(path) > 0:
        _write_into_gpkg(path, layer_name, content, overwrite)
        return path
    if ext == ".gpkg":
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=_temp_prefix(stem), suffix=".gpkg")
        os.close(fd)
        os.unlink(tmp)  # OGR creates the file itself
        try:
            ds = _create(tmp, "GPKG")
            try:
                _fill(ds, tmp, "GPKG", layer_name, *content)
            finally:
                with gdal_errors() as closing:
                    ds = None  # closes the file
            if closing:
                raise write_failed(path, closing[0])
            _publish(tmp, path, overwrite)
        except BaseException:
            for p in (tmp, tmp + "-journal", tmp + "-wal", tmp + "-shm"):
                with contextlib.suppress(OSError):
                    os.unlink(p)
            raise
        return path

    tmpdir = tempfile.mkdtemp(dir=folder, prefix=_temp_prefix(stem))
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
        new = {n[len(stem):].lower(): n for n in os.listdir(tmpdir)}   # ".shp", ".dbf", ..., ".remoteclip.json"
        base = os.path.join(folder, stem)
        for part in _SHP_DATASET + _SHP_INDEX:  # an old spatial index would describe the old features
            if part not in new and os.path.lexists(base + part):
                os.unlink(base + part)
        for part in sorted(new, key=lambda p: p == ".shp"):
            _replace(os.path.join(tmpdir, new[part]), base + part)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return path


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
