"""Checks of values given to core's public objects (jobs, tasks, tile specs), with errors that say
what was wrong and what to give instead. Numbers typed into a UI arrive as text, so "5" is 5;
booleans are not numbers here (``True`` as a top-k is a bug upstream, not a request for one)."""

from __future__ import annotations

import math
import re
from numbers import Real

from .errors import InvalidInput

MAX_TILES = 50_000   # the tiles a run may have unless confirmed (--yes): about an hour of ViT-B-32 on a laptop CPU


def _range_text(lo, hi) -> str:
    if lo is not None and hi is not None:
        return f"from {lo:g} to {hi:g}"
    if lo is not None:
        return f"of at least {lo:g}"
    return f"of at most {hi:g}"


def number(value, what: str, lo: float | None = None, hi: float | None = None, *, hi_open: bool = False,
           example: str = "", param: str | None = None) -> float:
    """A finite float within [lo, hi] (or [lo, hi) with ``hi_open``); ``param`` is the InvalidInput's."""
    eg = f" ({example})" if example else ""
    try:
        if isinstance(value, bool) or not isinstance(value, Real | str):
            raise TypeError
        x = float(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"{what} {value!r} is not a number.", f"Give a number{eg}.", param=param) from None
    if not math.isfinite(x):
        raise InvalidInput(f"{what} {value!r} is not a finite number.", f"Give a number{eg}.", param=param)
    if (lo is not None and x < lo) or (hi is not None and (x > hi or (hi_open and x >= hi))):
        rng = _range_text(lo, hi) + (" (excluded)" if hi_open else "")
        raise InvalidInput(f"{what} {value!r} is out of range.", f"Use a value {rng}{eg}.", param=param)
    return x


def whole(value, what: str, lo: int | None = None, hi: int | None = None, example: str = "", *,
          param: str | None = None) -> int:
    """A whole number within [lo, hi]; 3.0 and "3" are 3, 3.5 and "abc" are refused."""
    eg = f" ({example})" if example else ""
    try:
        x = number(value, what)
    except InvalidInput:
        raise InvalidInput(f"{what} {value!r} is not a whole number.", f"Give a whole number{eg}.",
                           param=param) from None
    if x != int(x):
        raise InvalidInput(f"{what} {value!r} is not a whole number.", f"Give a whole number{eg}.", param=param)
    n = int(x)
    if (lo is not None and n < lo) or (hi is not None and n > hi):
        raise InvalidInput(f"{what} {value!r} is out of range.", f"Use a whole number {_range_text(lo, hi)}{eg}.",
                           param=param)
    return n


def optional(fn, value, *args, **kwargs):
    """``fn(value, ...)``, or None when the value is None (an unset optional parameter)."""
    return None if value is None else fn(value, *args, **kwargs)


def choice(value, what: str, options, *, param: str | None = None) -> str:
    text = str(value).strip().lower() if isinstance(value, str) else value
    if text not in options:
        raise InvalidInput(f"Unknown {what} {value!r}.", "Use " + ", ".join(map(str, options)) + ".", param=param)
    return text


def path_text(path, what: str = "file") -> str:
    """A path GDAL and OGR can open: its name must be valid text. On Linux a name may hold bytes that
    are not UTF-8 (Python keeps them as surrogates), and GDAL's API cannot pass such a name."""
    import os

    path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        shown = path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        raise InvalidInput(f"The {what} name {shown!r} contains bytes that are not UTF-8 text, which GDAL "
                              "cannot open.", "Rename it (or its folder) with plain UTF-8 characters.", path=path) from None
    return path


def slug(text: str, default: str = "", lower: bool = True, width: int | None = None) -> str:
    """The one slug rule (field names, layer names, file names): runs of anything but ASCII letters and digits
    become one '_', none at either end; lower case unless ``lower`` is False; at most ``width`` characters;
    ``default`` when nothing is left."""
    s = re.sub(r"[^A-Za-z0-9]+", "_", text.lower() if lower else text).strip("_")
    return (s[:width] if width is not None else s) or default
