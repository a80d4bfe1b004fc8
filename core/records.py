"""Per-tile results as columns: what a task computes for a million tiles in a second, written without a
Python dict per tile.

``Records`` is a sequence of dicts on access (``{"row", "col", <fields>..., "geometry": WKT}``, as
``JobResult.records`` always was) over numpy columns and the tile grid; the vector writer takes its
columns in chunks and the polygons as WKB (:meth:`Records.chunks`). The task functions below give the
same values as the per-tile loops they replace: the same float32 arithmetic, the same stable order of
classes, values rounded by Python's ``round`` and formatted by Python when they are read.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .scores import UNKNOWN, class_scores, softmax  # one definition of each, re-exported

__all__ = ["Records", "Categorical", "Lazy", "softmax", "class_scores", "class_probs", "top_k", "class_columns", "label_columns",
           "count_columns", "search_columns", "similarity_columns", "UNKNOWN"]


class Categorical:
    """A text column as codes into a few distinct values (labels, top-label lists)."""

    def __init__(self, codes: np.ndarray, values: list[str]):
        self.codes, self.values = np.asarray(codes), list(values)

    def __len__(self):
        return len(self.codes)

    def values_of(self, start: int, stop: int) -> list[str]:
        v = self.values
        return [v[c] for c in self.codes[start:stop].tolist()]


class Lazy:
    """A column made when it is read: ``fn(start, stop) -> list`` (e.g. formatted scores)."""

    def __init__(self, n: int, fn: Callable[[int, int], list]):
        self.n, self.fn = int(n), fn

    def __len__(self):
        return self.n

    def values_of(self, start: int, stop: int) -> list:
        return self.fn(start, stop)


def python_values(col, start: int, stop: int, kind: str) -> list:
    if isinstance(col, Categorical | Lazy):
        return col.values_of(start, stop)
    part = col[start:stop]
    if kind != "float":
        return part.tolist()
    if part.dtype == np.float32:
        # equal to Python's round(v, 6) for float32 values: v * 1e6 is exact in float64 (24 + 14 bits), so
        # numpy's rint-and-divide rounds the same decimal the same way (tests/test_records.py)
        return np.round(part.astype(np.float64), 6).tolist()
    return [round(v, 6) for v in part.tolist()]   # Python's round, as the per-tile records had it


class Records(Sequence):
    """``fields`` [(name, type)] over ``columns`` {name: ndarray | Categorical | Lazy}, one row per tile; the
    tiles are ``grid`` positions ``index`` (row, col and the polygon come from the grid)."""

    def __init__(self, fields: list[tuple[str, str]], columns: dict, grid=None, index=None, n: int | None = None):
        self.fields = list(fields)
        self.columns = columns
        self.grid = grid
        self.index = None if index is None else np.asarray(index, dtype=np.int64)
        self.n = len(self.index) if self.index is not None else int(n if n is not None else
                                                                     len(next(iter(columns.values()))))
        self._rows_cols = None

    def __len__(self) -> int:
        return self.n

    def _grid_rows_cols(self):
        if self._rows_cols is None and self.grid is not None:
            self._rows_cols = self.grid.rows_cols(self.index)
        return self._rows_cols

    def chunk(self, start: int, stop: int) -> dict[str, list]:
        """Python values of every field (and row, col when the tiles are known) for rows start..stop."""
        out = {}
        rc = self._grid_rows_cols()
        if rc is not None:
            out["row"], out["col"] = rc[0][start:stop].tolist(), rc[1][start:stop].tolist()
        for name, kind in self.fields:
            out[name] = python_values(self.columns[name], start, stop, kind)
        return out

    def column(self, name: str, start: int = 0, stop: int | None = None) -> list:
        """Python values of one field (or row, col) for rows start..stop."""
        stop = self.n if stop is None else stop
        if name in ("row", "col") and name not in self.columns and self.grid is not None:
            return self._grid_rows_cols()[0 if name == "row" else 1][start:stop].tolist()
        kind = dict(self.fields)[name]
        return python_values(self.columns[name], start, stop, kind)

    def numeric(self, name: str):
        """The numpy array behind a numeric field (or row, col), else None."""
        if name in ("row", "col") and name not in self.columns and self.grid is not None:
            return self._grid_rows_cols()[0 if name == "row" else 1]
        col = self.columns.get(name)
        return col if isinstance(col, np.ndarray) else None

    def geometry_wkb(self, start: int, stop: int) -> list[bytes]:
        return self.grid.polygon_wkb(self.index[start:stop])

    def chunks(self, size: int = 65536):
        """(start, stop, {field: values}, [WKB polygons]) in order, ``size`` rows at a time."""
        for start in range(0, self.n, size):
            stop = min(self.n, start + size)
            yield start, stop, self.chunk(start, stop), (self.geometry_wkb(start, stop) if self.grid is not None
                                                          else None)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        i = int(i)
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError("record index out of range")
        values = {k: v[0] for k, v in self.chunk(i, i + 1).items()}
        rec = {}
        if "row" in values:
            rec["row"], rec["col"] = values.pop("row"), values.pop("col")
        rec.update(values)
        if self.grid is not None:
            rec["geometry"] = self.grid[int(self.index[i])].polygon_wkt
        return rec

    def __iter__(self):
        for start in range(0, self.n, 4096):
            stop = min(self.n, start + 4096)
            values = self.chunk(start, stop)
            names = list(values)
            for j in range(stop - start):
                rec = {n: values[n][j] for n in names}
                if self.grid is not None:
                    rec["geometry"] = self.grid[int(self.index[start + j])].polygon_wkt
                yield rec

    def __eq__(self, other):
        if isinstance(other, Records | list | tuple):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None

    def __repr__(self):
        return f"Records({self.n} tiles, fields {[n for n, _ in self.fields]})"


# ------------------------------------------------------------------------------------------ tasks

BLOCK_ROWS = 16384   # rows of class scores worked on at once: a block's few MB stay in the CPU's cache


def _by_blocks(n: int, fn: Callable[[int, int], None], block: int | None = None) -> None:
    """``fn(start, stop)`` over row blocks, on as many threads as cores (up to 8): numpy's ufuncs, ``argmax``
    and copies release the GIL, so the blocks of a million-tile relabel run side by side."""
    block = block or BLOCK_ROWS
    starts = range(0, n, block)
    workers = min(len(starts), os.cpu_count() or 1, 8)
    if workers <= 1:
        for s in starts:
            fn(s, min(s + block, n))
        return
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(lambda s: fn(s, min(s + block, n)), starts):
            pass   # re-raises a block's error


def class_probs(emb: np.ndarray, text: np.ndarray, logit_scale: float, block: int | None = None) -> np.ndarray:
    """softmax(logit_scale * emb @ text.T) per tile, with the same operations as ``softmax`` (so the same
    values), done in place on the fresh scores by row blocks: at a million tiles each temporary is a pass over
    memory saved, and a block's passes run in cache."""
    x = class_scores(emb, text)
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    scale = x.dtype.type(logit_scale)
    xt = x.T   # (c, n): a block of tiles is a slice of columns; reductions over the classes run along rows

    def softmax_block(a, b):
        v = xt[:, a:b]
        v *= scale
        v -= v.max(axis=0, keepdims=True)
        np.exp(v, out=v)
        v /= v.sum(axis=0, keepdims=True)

    _by_blocks(len(x), softmax_block, block)
    return x


def top_k(probs: np.ndarray, k: int, block: int | None = None) -> np.ndarray:
    """(n, k) column indices of each row's k largest values, largest first, ties to the lower index: what
    ``np.argsort(-probs, axis=1, kind="stable")[:, :k]`` gives, in k passes of argmax instead of a sort,
    by row blocks."""
    n = len(probs)
    out = np.empty((n, k), dtype=np.int64)

    def block_top(a, b):
        work = np.array(probs[a:b], order="C", copy=True)
        rows = np.arange(b - a)
        for j in range(k):
            best = work.argmax(axis=1)   # first occurrence of the maximum: the stable order
            out[a:b, j] = best
            work[rows, best] = -np.inf

    _by_blocks(n, block_top, block)
    return out


def _order_codes(order: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's top-label list as a code into the distinct lists, and one row of ``order`` per list; the
    lists sorted as ``np.unique(order, axis=0)`` sorts them. A table of every possible list when that is small
    (no sort of a million keys), else ``np.unique``."""
    n, k = order.shape
    if c ** k <= 1 << 24:
        key = np.zeros(n, dtype=np.int64)
        for j in range(k):
            key *= c
            key += order[:, j]
        seen = np.zeros(c ** k, dtype=bool)
        seen[key] = True
        uniq = np.flatnonzero(seen)
        code_of = np.cumsum(seen) - 1
        lists = np.empty((len(uniq), k), dtype=np.int64)
        rest = uniq.copy()
        for j in reversed(range(k)):
            rest, lists[:, j] = np.divmod(rest, c)
        return code_of[key], lists
    lists, inverse = np.unique(order, axis=0, return_inverse=True)
    return inverse.reshape(-1), lists


def class_columns(probs: np.ndarray, labels: list[str], top_k_: int, threshold: float | None,
                  pnames: list[str]) -> tuple[list[tuple[str, str]], dict]:
    """Fields and columns of a classification: label (or unknown under ``threshold``), score, top labels and
    scores, and one probability column per class (``pnames``)."""
    n, c = probs.shape
    k = min(int(top_k_), len(labels))
    order = top_k(probs, k)
    rows = np.arange(n)
    best = probs[rows, order[:, 0]]
    label_codes = order[:, 0].copy()
    if threshold is not None:   # compared as Python floats were: the float32 value in double precision
        label_codes[best.astype(np.float64) < float(threshold)] = c
    columns = {"label": Categorical(label_codes, [*labels, UNKNOWN]), "score": best}
    # top-label lists: the distinct orders among the tiles, one text each
    codes, lists = _order_codes(order, c)
    texts = ["|".join(labels[j] for j in row) for row in lists.tolist()]
    columns["top_labels"] = Categorical(codes, texts)
    top_probs = np.take_along_axis(probs, order, axis=1)

    def scores(start, stop):
        return ["|".join(f"{v:.4f}" for v in row) for row in top_probs[start:stop].tolist()]

    columns["top_scores"] = Lazy(n, scores)
    fields = [("label", "str"), ("score", "float"), ("top_labels", "str"), ("top_scores", "str")]
    for f, j in zip(pnames, range(c), strict=True):
        columns[f] = probs[:, j]
        fields.append((f, "float"))
    return fields, columns


def label_columns(emb: np.ndarray, text: np.ndarray, labels: list[str], logit_scale: float, top_k_: int,
                  threshold: float | None, pnames: list[str]):
    return class_columns(class_probs(emb, text, logit_scale), labels, top_k_, threshold, pnames)


def count_columns(emb: np.ndarray, text: np.ndarray, logit_scale: float):
    probs = class_probs(emb, text, logit_scale)
    best = top_k(probs, 1)[:, 0]
    return ([("count", "int"), ("count_conf", "float")],
            {"count": best + 1, "count_conf": probs[np.arange(len(best)), best]})


def search_columns(emb: np.ndarray, query: np.ndarray, top_k_: int | None, threshold: float | None):
    return similarity_columns(emb @ query, top_k_, threshold)


def similarity_columns(sim: np.ndarray, top_k_: int | None, threshold: float | None):
    """similarity, rank (1 = best) and selected (within ``top_k_`` and at least ``threshold``) per tile."""
    order = np.argsort(-sim, kind="stable")
    rank = np.empty(len(sim), dtype=np.int64)
    rank[order] = np.arange(1, len(sim) + 1)
    sel = np.ones(len(sim), dtype=bool)
    if top_k_ is not None:
        sel &= rank <= int(top_k_)
    if threshold is not None:
        sel &= sim >= float(threshold)
    return ([("similarity", "float"), ("rank", "int"), ("selected", "int")],
            {"similarity": sim, "rank": rank, "selected": sel.astype(np.int64)})
