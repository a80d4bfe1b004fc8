"""Where a vector output may be written: the checks of an output before anything is written
(:func:`check_output`: its format, its folder, GeoPackage layers and Shapefile parts that exist, the
overwrite rule), the rule that no output is an input of its job (:func:`check_not_input`, whatever the
spelling of either), the temporaries of dead writers, and reading the Shapefile metadata sidecar.
:mod:`core.geodata.vectors` writes (and re-exports these names); see its docstring for the rules."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sqlite3
import tempfile
from pathlib import Path

from ..errors import InvalidInput, OutputExists, OutputIsInput, OutputRefused, WriteFailed

DRIVERS = {".gpkg": "GPKG", ".shp": "ESRI Shapefile"}
SIDECAR = ".remoteclip.json"
SIDECAR_FORMAT = "remoteclip-vector-metadata"
_SHP_DATASET = (".shp", ".shx", ".dbf", ".prj", ".cpg")   # a Shapefile's own parts
_SHP_INDEX = (".qix", ".sbn", ".sbx")                     # spatial indexes: stale once the .shp changes
_GPKG_RESERVED = ("gpkg_", "rtree_", "sqlite_")
_OVERWRITE_FIX = "Replace it with --overwrite (Job(overwrite=True) in Python), or choose another "


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
    parts = [os.path.basename(base + p) for p in _SHP_DATASET if os.path.lexists(base + p)]
    if not parts:
        return None
    if os.path.lexists(path):   # the files named: a Shapefile's parts are several
        return Replaced(f"the Shapefile {path} ({', '.join(parts)})")
    # only other parts (a user's out.cpg): not "the Shapefile out.shp", which does not exist
    return Replaced(f"{' and '.join(parts)} in {os.path.dirname(os.path.abspath(path))} "
                    f"({os.path.basename(path)} itself does not exist)")


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
