"""The job's rasters: what a user typed made into raster paths (files, globs, folders, list files, URLs), and
opening one."""

from __future__ import annotations

import glob
import os

from ..errors import InvalidInput, SourceUnreadable

RASTER_EXTENSIONS = (".tif", ".tiff", ".vrt", ".jp2", ".img", ".ecw", ".sid", ".png", ".jpg", ".jpeg")


def open_source(raster):
    """(source, owned): a path or URI opened (owned: the caller closes it), a RasterSource as it is."""
    from ..geodata.raster import open_raster

    if isinstance(raster, str | os.PathLike):
        return open_raster(os.fspath(raster)), True
    return raster, False


def has_magic(text: str) -> bool:
    """A glob pattern (``*``, ``?`` or ``[``)."""
    return any(c in text for c in "*?[")


def expand_rasters(items) -> list[str]:
    """Raster paths from what a user typed: files, globs (``'sheets/*.tif'``), folders (their raster files,
    sorted), text files of paths (``.txt``/``.lst``, one a line, ``#`` comments, relative to the file) and
    URLs (``https://...`` read through GDAL's /vsicurl/). A VRT is one raster (a mosaic of its sources)."""
    from ..geodata.raster import is_gdal_uri

    out: list[str] = []
    for item in [items] if isinstance(items, str | os.PathLike) else items:
        item = os.fspath(item)
        if item.startswith(("http://", "https://")):
            out.append("/vsicurl/" + item)
        elif is_gdal_uri(item):
            out.append(item)
        elif os.path.isdir(item):
            found = sorted(os.path.join(item, n) for n in os.listdir(item)
                           if n.lower().endswith(RASTER_EXTENSIONS) and os.path.isfile(os.path.join(item, n)))
            if not found:
                raise InvalidInput(f"The folder {item} holds no raster file ({', '.join(RASTER_EXTENSIONS)}).",
                                      "Give a folder with rasters, a glob such as 'sheets/*.tif', or the files.", path=item)
            out += found
        elif has_magic(item) and not os.path.exists(item):
            found = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not found:
                raise SourceUnreadable(f"No file matches {item!r}.", "Check the pattern (quote it so the shell "
                                      "does not expand it, e.g. 'sheets/*.tif').", path=item)
            out += found
        elif item.lower().endswith((".txt", ".lst")) and os.path.isfile(item):
            out += _list_file(item)
        else:
            out.append(item)
    seen, unique = set(), []
    for p in out:
        k = p if is_gdal_uri(p) else os.path.abspath(p)   # the source field names files by absolute path
        if k not in seen:
            seen.add(k)
            unique.append(k)
    if not unique:
        raise InvalidInput("No raster was given.", "Give raster files, a glob, a folder or a list of paths.", param="raster")
    return unique


def _list_file(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = [ln.strip() for ln in f]
    except (OSError, UnicodeDecodeError) as e:
        raise SourceUnreadable(f"The list of rasters {path} cannot be read ({e}).",
                              "Give a UTF-8 text file with one raster path or URL a line.", path=path) from None
    base = os.path.dirname(os.path.abspath(path))
    from ..geodata.raster import is_gdal_uri

    out = []
    for ln in lines:
        if not ln or ln.startswith("#"):
            continue
        if ln.startswith(("http://", "https://")):
            out.append("/vsicurl/" + ln)
        elif is_gdal_uri(ln) or os.path.isabs(ln):
            out.append(ln)
        else:
            out.append(os.path.join(base, ln))
    if not out:
        raise InvalidInput(f"The list of rasters {path} holds no path.", "Write one raster path a line.", path=path)
    return out
