"""The files a job writes besides its vector layer: a classify run's report beside the output and a
trained classifier, each written atomically and checked before the run like the vector output.

The report is ``NAME.LAYER.remoteclip-report.json`` beside a GeoPackage (one per layer),
``NAME.remoteclip-report.json`` beside a Shapefile or a GeoTIFF. It carries ``"format":
"remoteclip-classify-report"``; a file of that name without it is the user's and is never replaced.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import TYPE_CHECKING

from .errors import OutputExists, OutputRefused

if TYPE_CHECKING:
    from .staged import Staged

__all__ = ["REPORT_SUFFIX", "report_path", "check_report_path", "check_file_output", "write_text_file",
           "write_report", "check_distinct", "read_report", "stage_text_file", "stage_report"]

REPORT_SUFFIX = ".remoteclip-report.json"
REPORT_FORMAT = "remoteclip-classify-report"


def report_path(vector_output: str | None, layer_name: str | None, raster_output: str | None = None) -> str | None:
    """Where a report goes: beside the vector output (per GeoPackage layer), else beside the raster output."""
    base = vector_output or raster_output
    if not base:
        return None
    base = os.fspath(base)
    stem, ext = os.path.splitext(base)
    if vector_output and ext.lower() == ".gpkg" and layer_name:
        return f"{stem}.{layer_name}{REPORT_SUFFIX}"
    return stem + REPORT_SUFFIX


def _ours(path: str) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and data.get("format") == REPORT_FORMAT


def read_report(path) -> dict:
    """A report RemoteCLIP wrote ({} for anything else)."""
    if not path or not os.path.isfile(path) or not _ours(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def check_report_path(path: str) -> str:
    """A report may replace only a report of ours."""
    from .geodata.vector_checks import _temp_pattern, remove_dead_temps

    if os.path.lexists(path) and not _ours(path):
        raise OutputExists(f"{path} exists and was not written by RemoteCLIP.",
                              "Move that file away or give the output another name.", path=path)
    remove_dead_temps(os.path.dirname(os.path.abspath(path)),
                      _temp_pattern(os.path.splitext(os.path.basename(path))[0]))
    return path


def check_file_output(path, what: str, overwrite: bool = False, inputs=(), temp_pattern=None,
                      example: str = "classifier.json", other: str = "another name") -> str:
    """A plain file the user asked for (a saved classifier, a dense GeoTIFF): its folder takes files, it is
    not an input, and an existing one is replaced only with ``overwrite``. ``temp_pattern(stem)`` matches the
    temporary files a killed run of this writer left (removed here)."""
    from .checks import path_text
    from .geodata.vector_checks import (
        _check_writable_file,
        _temp_pattern,
        check_folder_writable,
        check_not_input,
        remove_dead_temps,
    )

    path = path_text(path, what)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise OutputRefused(f"The folder of the {what} {folder} does not exist.", "Create it or choose another.", path=folder)
    if os.path.isdir(path):
        raise OutputRefused(f"The {what} {path} is a folder.", f"Give a file name, e.g. {example}.", path=path)
    check_not_input(path, inputs)
    stem = os.path.splitext(os.path.basename(path))[0]
    check_folder_writable(folder, stem)
    remove_dead_temps(folder, (temp_pattern or _temp_pattern)(stem))
    if os.path.lexists(path):
        if not overwrite:
            raise OutputExists(f"The {what} {path} already exists.", "Replace it with --overwrite "
                                  f"(Job(overwrite=True) in Python), or choose {other}.", path=path)
        _check_writable_file(path)
    return path


def check_distinct(paths: list[tuple[str, str]]) -> None:
    """No two outputs of one job may be one file."""
    from .geodata.vectors import same_file

    for i, (a, wa) in enumerate(paths):
        for b, wb in paths[i + 1:]:
            if same_file(a, b):
                raise OutputRefused(f"The {wa} and the {wb} are the same file ({a}).", "Give them different names.", path=a)


def stage_text_file(path: str, text: str, overwrite: bool = True) -> Staged:
    """``text`` written to a temporary beside ``path``, every write, the flush to disk and the close checked
    (else :class:`WriteFailed`, nothing left); :meth:`Staged.publish` renames it into place."""
    from .geodata.vectors import _new_temp, _publish, _temp_prefix, _write_synced, write_failed
    from .staged import Staged

    folder = os.path.dirname(os.path.abspath(path))
    tmp = _new_temp(folder, _temp_prefix(os.path.splitext(os.path.basename(path))[0]))

    def discard():
        with contextlib.suppress(OSError):
            os.unlink(tmp)

    try:
        try:
            _write_synced(tmp, text)
        except OSError as e:
            raise write_failed(path, e) from None
    except BaseException:
        discard()
        raise
    return Staged(path, lambda: _publish(tmp, path, overwrite), discard)


def write_text_file(path: str, text: str, overwrite: bool = True) -> str:
    """Write ``text`` to ``path`` through a temporary beside it, renamed into place only when every write, the
    flush to disk and the close succeeded (else :class:`WriteFailed`, the old file kept)."""
    return stage_text_file(path, text, overwrite).commit()


def stage_report(path: str, report: dict) -> Staged:
    """A classify report as JSON for ``path`` (checked before the run by ``check_report_path``), staged."""
    return stage_text_file(path, json.dumps(report, indent=1, ensure_ascii=False, default=str) + "\n", True)


def write_report(path: str, report: dict) -> str:
    """A classify report as JSON at ``path`` (checked before the run by ``check_report_path``)."""
    return stage_report(path, report).commit()
