"""Change between two dates: the ``change`` task (:class:`ChangeTask`, registered in core.tasks.TASKS) and what
it needs to read the second raster in the first one's grid.

The job's raster is BEFORE; the task carries AFTER (a ``raster`` input). The tile grid is BEFORE's (tile size in
px or m, overlap, extent as usual); AFTER is read in BEFORE's grid whatever its CRS, resolution and extent:
:func:`align` makes a GDAL warped VRT of AFTER on BEFORE's pixel grid (bilinear by default, ``nearest`` for a
categorical raster, or ``cubic``), with an alpha band, so pixels AFTER does not cover, and its nodata, are nodata.
An AFTER already on BEFORE's grid (same CRS, geotransform and size) is read as it is. A tile is compared when
both dates have data in it (its other pixels are masked as for one raster). The pipeline
(core.pipeline.dates) encodes AFTER's tiles and hands them to the task in ``RasterPart.dates["after"]``.

Per tile: ``change`` = 1 - the cosine similarity of the two dates' image embeddings (0: the same, up to 2),
``change_rank`` (1 = most changed), ``selected`` (the stand-out rule by default: change at least the mean plus
1 standard deviation of this raster's tiles; or the top K, or at least a threshold), ``label_before`` and
``label_after`` with their scores (from the class names, zero-shot, or a saved classifier) and
``class_changed``. The report (beside the output, and printed) holds the from/to table in tiles and in
equal-area square metres (overlapping tiles counted once: each pixel belongs to the tile whose centre is
nearest), the share of the area that changed class and the most changed tiles.

``match_histograms``: each band of AFTER (after its stretch to 8 bits) is mapped so that its histogram over
the pixels both dates cover matches BEFORE's (a lookup table per band), before encoding: a change of light or
season that shifts the whole image is taken out, what changed in places stays.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from .. import checks
from ..errors import InvalidInput, gdal_return_codes
from ..prompts import PRESETS, check_labels, check_templates, label_prompts
from .base import (
    NAMES_HELP,
    TEMPLATES_HELP,
    Param,
    Style,
    Task,
    TaskOutput,
    register,
    slug_fields,
)
from .search import effective_threshold

if TYPE_CHECKING:   # numpy loads with the first run, not with QGIS (the plugin imports the tasks)
    import numpy as np

RESAMPLING = ("bilinear", "nearest", "cubic")
DEFAULT_PRESET = "land-cover"
DEFAULT_STAND_OUT = 1.0
MOST_CHANGED = 10
UNCHANGED = 1e-6   # a change at most this is float noise: such a tile is not selected


@register
@dataclass
class ChangeTask(Task):
    after: str = ""
    labels: list[str] | None = None
    templates: list[str] | None = None
    head: str | None = None
    top_k: int | None = None
    threshold: float | None = None
    stand_out: float | None = None
    after_bands: list[int] | None = None
    match_histograms: bool = False
    resampling: str = "bilinear"

    kind: ClassVar[str] = "change"
    title: ClassVar[str] = "Change"
    summary: ClassVar[str] = "what changed between two dates: two rasters of the same place compared tile by tile"
    algorithm: ClassVar[str] = "changebetweendates"
    algorithm_title: ClassVar[str] = "Change between dates"
    group: ClassVar[str] = "Change"
    output_title: ClassVar[str] = "Change"
    help: ClassVar[str] = (
        "Compares two rasters of the same place (BEFORE: the raster; AFTER: the second raster) tile by tile. The "
        "tiles are BEFORE's; AFTER is read in BEFORE's grid whatever its CRS, resolution and extent (warped by "
        "GDAL, bilinear unless chosen otherwise), and only tiles both dates cover with data are compared. Each "
        "tile gets change (1 - the cosine similarity of the two dates' image embeddings), change_rank (1 = most "
        "changed), selected (the tiles that stand out by default, or the top K, or at least a threshold), "
        "label_before and label_after (from the class names, or a saved classifier) and class_changed. The "
        "report, beside the output, holds the from/to table in tiles and in area.")
    params: ClassVar[tuple[Param, ...]] = (
        Param("after", "raster", "After (the later raster)", key="AFTER",
              help="the later raster of the same place (any CRS, resolution and extent)"),
        Param("labels", "names", "Class names", optional=True, help=NAMES_HELP + " (default: the land-cover preset)"),
        Param("preset", "preset", "Or a preset class list", optional=True, choices=tuple(PRESETS), fills="labels",
              help="a built-in class list"),
        Param("head", "file", "Or a saved classifier", optional=True, file_filter="Classifier (*.json)",
              help="labels from a classifier saved by classify --head-out (made with the same model)"),
        Param("top_k", "int", "Select the K most changed tiles", optional=True, lo=1, none_text="off",
              help="select the K most changed tiles"),
        Param("threshold", "float", "Select tiles with a change of at least", optional=True, lo=0.0, hi=2.0,
              none_text="none", help="select tiles whose change (1 - cosine) is at least this"),
        Param("stand_out", "float", "Changed tiles must stand out by (sd)", optional=True, lo=0.0, hi=5.0,
              none_text="off", help="select tiles whose change is at least the mean plus this many standard "
                                    "deviations (default 1 when neither top K nor a threshold is given)"),
        Param("after_bands", "text", "Bands of the after raster", optional=True, advanced=True,
              help="three 1-based band numbers of AFTER, e.g. 4,3,2 (default: RGB by colour interpretation)"),
        Param("match_histograms", "flag", "Match the after raster's histograms to before's", default=False,
              advanced=True, help="per-band histogram matching of AFTER to BEFORE before encoding (a change of "
                                  "light or season)"),
        Param("resampling", "choice", "Resampling of the after raster", default="bilinear", choices=RESAMPLING,
              advanced=True, help="how AFTER is warped onto BEFORE's grid: bilinear, nearest (categorical), cubic"),
        Param("templates", "templates", "Prompt templates ({} = class name)", optional=True, advanced=True,
              help=TEMPLATES_HELP),
    )
    style: ClassVar[Style] = Style("graduated", "change",
                                   'if("class_changed" = 1, "label_before" || \' → \' || "label_after", \'\')',
                                   True, "Show from → to labels where the class changed", highlight='"selected" = 1')
    dissolve_field: ClassVar[str | None] = "selected"
    dense: ClassVar[bool] = True
    reports: ClassVar[bool] = True

    def __post_init__(self):
        from ..geodata.raster import parse_bands

        if self.after is None or not isinstance(self.after, str | os.PathLike) or not str(self.after).strip():
            raise InvalidInput("No AFTER raster was given.", "Give the later raster of the same place "
                               "(remoteclip change BEFORE AFTER).", param="after")
        self.after = checks.path_text(os.fspath(self.after), "after raster")
        if self.labels is not None:
            self.labels = check_labels(self.labels)
        if self.head is not None:
            if not isinstance(self.head, str | os.PathLike):
                raise InvalidInput(f"The classifier file {self.head!r} is not a path.", "Give a .json path.",
                                   param="head")
            self.head = checks.path_text(os.fspath(self.head), "classifier file")
            if self.labels is not None:
                raise InvalidInput("Both class names and a saved classifier were given.",
                                   "Give one of them: the classifier brings its own classes.", param="head")
        elif self.labels is None:
            self.labels = list(PRESETS[DEFAULT_PRESET])
        if self.labels is not None and len(self.labels) < 2:
            raise InvalidInput(f"Only one label was given ({self.labels[0]!r}).", "Give at least two class names.",
                               param="labels")
        self.templates = check_templates(self.templates)
        self.top_k = checks.optional(checks.whole, self.top_k, "top_k", 1, example="e.g. 20",
                                     param="top_k")
        self.threshold = checks.optional(checks.number, self.threshold, "The change threshold (1 - cosine)",
                                         0.0, 2.0, example="e.g. 0.1", param="threshold")
        self.stand_out = checks.optional(checks.number, self.stand_out, "stand_out (standard deviations)", 0.0,
                                         5.0, example="e.g. 1", param="stand_out")
        if isinstance(self.after_bands, str):
            self.after_bands = parse_bands(self.after_bands, "--after-bands") if self.after_bands.strip() else None
        self.match_histograms = bool(self.match_histograms)
        self.resampling = checks.choice(self.resampling or "bilinear", "resampling", RESAMPLING, param="resampling")

    @classmethod
    def from_inputs(cls, raw, spell=None):
        spell = spell or (lambda p: p.label)
        labels, preset = raw.get("labels"), raw.get("preset")
        if isinstance(preset, str) and not preset.strip():
            preset = None
        if labels is not None and preset is not None:
            raise InvalidInput(f"Both {spell(cls.param('labels'))} and {spell(cls.param('preset'))} were given.",
                               "Use one of them.", param="preset")
        if preset is not None:
            if preset not in PRESETS:
                raise InvalidInput(f"Unknown preset {preset!r}.", "Choose one of: " + ", ".join(PRESETS) + ".",
                                   param="preset")
            raw = {**raw, "labels": list(PRESETS[preset])}
        return super().from_inputs(raw, spell)

    @property
    def selection(self) -> tuple[int | None, float | None, float | None]:
        """(top_k, threshold, stand_out) as the selection uses them: stand out by 1 sd when none is given."""
        if self.top_k is None and self.threshold is None and self.stand_out is None:
            return None, None, DEFAULT_STAND_OUT
        return self.top_k, self.threshold, self.stand_out

    # -------------------------------------------------------------------------------------- run

    def prepare(self, bundle, warnings):
        if self.head is None:
            return {"classes": list(self.labels)}
        from ..classify import Head

        head = Head.read(self.head)
        head.check_model(bundle, self.head)
        return {"classes": list(head.classes), "head": head}

    def prompts(self, prepared):
        return None if "head" in prepared else label_prompts(prepared["classes"], self.templates)

    def fit(self, parts, text, bundle, prepared, warnings):
        return {**prepared, "text": text}

    def outputs(self, part, text, bundle, fitted):
        import numpy as np

        from ..records import Categorical, class_columns, class_probs, similarity_columns

        after = part.dates.get("after")
        if after is None:
            raise InvalidInput("The change task got no AFTER embeddings.", "Run it through core.pipeline.run_job.")
        before_emb, after_emb = part.embeddings, after["embeddings"]
        cos = np.sum(before_emb.astype(np.float64) * after_emb.astype(np.float64), axis=1)
        change = np.clip(1.0 - cos, 0.0, 2.0).astype(np.float32)   # float noise of the same image: 0, not -1e-8
        top_k, threshold, stand_out = self.selection
        cut = effective_threshold(change, threshold, stand_out)
        _, sel = similarity_columns(change, top_k, cut)
        sel["selected"] = sel["selected"] * (change > UNCHANGED)   # a tile that did not change is never selected
        classes = fitted["classes"]

        def probs(emb):
            if "head" in fitted:
                return fitted["head"].proba(emb)
            return class_probs(emb, fitted["text"], bundle.logit_scale)

        pnames = slug_fields(classes)
        _, b = class_columns(probs(before_emb), classes, 1, None, pnames)
        _, a = class_columns(probs(after_emb), classes, 1, None, pnames)
        codes_b, codes_a = np.asarray(b["label"].codes), np.asarray(a["label"].codes)
        changed = (codes_b != codes_a).astype(np.int64)
        columns = {"change": change, "change_rank": sel["rank"], "selected": sel["selected"],
                   "label_before": Categorical(codes_b, b["label"].values), "score_before": b["score"],
                   "label_after": Categorical(codes_a, a["label"].values), "score_after": a["score"],
                   "class_changed": changed}
        fields_ = [("change", "float"), ("change_rank", "int"), ("selected", "int"), ("label_before", "str"),
                   ("score_before", "float"), ("label_after", "str"), ("score_after", "float"),
                   ("class_changed", "int")]
        report = change_report(part, classes, codes_b, codes_a, change, sel["rank"], sel["selected"], cut)
        report.update(after=self.after, alignment=after.get("alignment"), match_histograms=self.match_histograms,
                      selection={"top_k": top_k, "threshold": threshold, "stand_out": stand_out, "cut": cut},
                      labels_from=self.head or "class names")
        meta = {"after": self.after, "threshold": cut, "stand_out": stand_out, "top_k": top_k,
                "changed_class_share": report["changed_class_share"]}
        return TaskOutput(None, fields_, dense=change[:, None], dense_names=["change"], metadata=meta,
                          report=report, columns=columns)

    # ----------------------------------------------------------------------------------- describing

    def layer_name(self):
        return "change"

    def layer_title(self, raster_name):
        return f"{raster_name} · change to {os.path.basename(self.after)}"

    def files_in(self):
        return [(self.after, "after raster")] + ([(self.head, "saved classifier")] if self.head else [])

    def describe(self, result):
        return report_text(result.report)

    widget_names: ClassVar[dict[str, str]] = {"after": "change_after", "labels": "change_labels",
                                              "preset": "change_preset", "map_labels": "change_map_labels"}

    def value_text(self, value) -> str:
        return "selected" if value else "not selected"


# -------------------------------------------------------------------------------------------- report

def owned_cells(part, max_cells: int = 4_000_000):
    """Each kept tile's share of the area, overlapping tiles counted once: every pixel (on a coarse grid of
    ``f`` x ``f`` pixel cells) belongs to the covering tile whose centre is nearest (Chebyshev distance; the
    first such tile on a tie). Returns (owned fraction of each tile's own area (n,), f)."""
    import numpy as np

    wins = np.asarray(part.grid.windows(part.index), dtype=np.int64).reshape(-1, 4)
    if not len(wins):
        return np.zeros(0), 1
    c0, r0 = wins[:, 0].min(), wins[:, 1].min()
    c1, r1 = (wins[:, 0] + wins[:, 2]).max(), (wins[:, 1] + wins[:, 3]).max()
    f = max(1, int(min(part.tile_px)) // 32)
    while ((c1 - c0) // f + 1) * ((r1 - r0) // f + 1) > max_cells:
        f *= 2
    h, w = int(-(-(r1 - r0) // f)), int(-(-(c1 - c0) // f))
    best = np.full((h, w), np.inf)
    owner = np.full((h, w), -1, dtype=np.int64)
    for i, (c, r, ww, hh) in enumerate(wins.tolist()):
        a0, a1 = (r - r0) // f, -(-(r + hh - r0) // f)
        b0, b1 = (c - c0) // f, -(-(c + ww - c0) // f)
        ys = (np.arange(a0, a1) + 0.5) * f + r0 - (r + hh / 2)
        xs = (np.arange(b0, b1) + 0.5) * f + c0 - (c + ww / 2)
        d = np.maximum(np.abs(ys)[:, None], np.abs(xs)[None, :])
        view_b, view_o = best[a0:a1, b0:b1], owner[a0:a1, b0:b1]
        take = d < view_b
        view_b[take] = d[take]
        view_o[take] = i
    counts = np.bincount(owner[owner >= 0], minlength=len(wins)).astype(np.float64)
    own = np.array([max(1, -(-ww // f)) * max(1, -(-hh // f)) for _, _, ww, hh in wins.tolist()], np.float64)
    return counts / own, f


@gdal_return_codes()   # GDAL's failures by return code, also where QGIS turned exceptions on
def tile_areas(part) -> np.ndarray:
    """Each kept tile's area in square metres, in a Lambert azimuthal equal-area projection centred on the
    raster (core.assess's measure, core.geodata.crs.equal_area_at)."""
    import numpy as np
    from osgeo import ogr

    from ..geodata.crs import equal_area_at, srs_from, to_lonlat

    src = srs_from(part.crs_wkt, "raster's CRS")
    wkbs = part.grid.polygon_wkb(part.index)
    if not wkbs:
        return np.zeros(0)
    env = ogr.CreateGeometryFromWkb(wkbs[len(wkbs) // 2]).Centroid()
    ct = equal_area_at(src, *to_lonlat(src, env.GetX(), env.GetY()))
    out = np.empty(len(wkbs))
    for i, wkb in enumerate(wkbs):
        g = ogr.CreateGeometryFromWkb(wkb)
        g.Segmentize(max(g.GetEnvelope()[1] - g.GetEnvelope()[0], 1e-9) / 8)
        g.Transform(ct)
        out[i] = g.GetArea()
    return out


def change_report(part, classes, codes_b, codes_a, change, rank, selected, cut) -> dict:
    """The from/to table (tiles and equal-area m², overlaps counted once), the share of the area that changed
    class, and the most changed tiles."""
    import numpy as np

    names = [*classes, "unknown"]
    k = len(names)
    share, _ = owned_cells(part)
    area = tile_areas(part) * share
    tiles = np.zeros((k, k), dtype=np.int64)
    m2 = np.zeros((k, k))
    np.add.at(tiles, (codes_b, codes_a), 1)
    np.add.at(m2, (codes_b, codes_a), area)
    used = sorted(set(np.flatnonzero(tiles.sum(1) + tiles.sum(0)).tolist()))
    total = float(area.sum())
    changed_area = float(area[codes_b != codes_a].sum())
    order = np.argsort(rank, kind="stable")[:MOST_CHANGED]
    rows, cols = part.grid.rows_cols(part.index[order]) if len(order) else ([], [])
    most = [{"rank": int(rank[i]), "row": int(r), "col": int(c), "change": round(float(change[i]), 5),
             "from": names[int(codes_b[i])], "to": names[int(codes_a[i])]}
            for i, r, c in zip(order.tolist(), np.asarray(rows).tolist(), np.asarray(cols).tolist(), strict=True)]
    return {"format": "remoteclip-change-report", "classes": [names[i] for i in used],
            "from_to": {"tiles": tiles[np.ix_(used, used)].tolist(),
                        "area_m2": np.round(m2[np.ix_(used, used)], 2).tolist()},
            "tiles": int(len(change)), "area_m2": round(total, 2),
            "changed_class_tiles": int((codes_b != codes_a).sum()),
            "changed_class_share": round(changed_area / total, 6) if total > 0 else 0.0,
            "selected": int(np.sum(selected)),
            "change": {"mean": round(float(np.mean(change)), 6) if len(change) else None,
                       "max": round(float(np.max(change)), 6) if len(change) else None},
            "most_changed": most}


def report_text(report: dict | None) -> list[str]:
    """The change report as lines (the command line prints them)."""
    if not report or report.get("format") != "remoteclip-change-report":
        return []
    names = report["classes"]
    width = max([len("from \\ to")] + [len(n) for n in names])
    cell = max([8] + [len(n) for n in names])
    lines = [f"{report['tiles']} tiles compared, {report['area_m2'] / 1e4:,.2f} ha; class changed on "
             f"{report['changed_class_tiles']} tiles, {report['changed_class_share']:.1%} of the area; "
             f"{report['selected']} tiles selected"
             + (f" (change >= {report['selection']['cut']:.4f})" if report.get("selection", {}).get("cut") is not None
                else ""),
             "from/to (rows: before, columns: after), tiles:",
             "  " + "from \\ to".ljust(width) + " " + " ".join(n.rjust(cell) for n in names)]
    for n, row in zip(names, report["from_to"]["tiles"], strict=True):
        lines.append("  " + n.ljust(width) + " " + " ".join(str(v).rjust(cell) for v in row))
    lines.append("from/to, hectares:")
    for n, row in zip(names, report["from_to"]["area_m2"], strict=True):
        lines.append("  " + n.ljust(width) + " " + " ".join(f"{v / 1e4:.2f}".rjust(cell) for v in row))
    most = report.get("most_changed") or []
    if most:
        lines.append("most changed (row,col change from -> to): " + ", ".join(
            f"({m['row']},{m['col']} {m['change']:.3f} {m['from']} -> {m['to']})" for m in most[:5]))
    return lines


# ------------------------------------------------------------------------------------------ alignment

def same_grid(a, b) -> bool:
    """Two open sources on the same pixel grid: CRS, geotransform and size."""
    import numpy as np

    from ..geodata.crs import same_crs

    return (a.width, a.height) == (b.width, b.height) and \
        np.allclose(tuple(a.transform)[:6], tuple(b.transform)[:6], rtol=0, atol=1e-9) and \
        same_crs(a.crs_wkt, b.crs_wkt)


@gdal_return_codes()   # GDAL's failures by return code, also where QGIS turned exceptions on
def footprint_overlap(before, after, after_path: str) -> None:
    """Refuse an AFTER that does not overlap BEFORE, or whose CRS cannot be transformed to BEFORE's."""
    from osgeo import ogr, osr

    from ..geodata.crs import srs_from

    def box(src):
        a, b, c, d, e, f = tuple(src.transform)[:6]
        pts = [(c + a * x + b * y, f + d * x + e * y) for x, y in ((0, 0), (src.width, 0),
                                                                  (src.width, src.height), (0, src.height))]
        ring = ogr.Geometry(ogr.wkbLinearRing)
        for x, y in [*pts, pts[0]]:
            ring.AddPoint_2D(x, y)
        g = ogr.Geometry(ogr.wkbPolygon)
        g.AddGeometry(ring)
        return g

    s, d = srs_from(after.crs_wkt, "after raster's CRS"), srs_from(before.crs_wkt, "raster's CRS")
    g = box(after)
    if not s.IsSame(d):
        try:
            ct = osr.CreateCoordinateTransformation(s, d)
        except Exception:   # GDAL raises (exceptions on) or returns None: no transformation between them
            ct = None
        g.Segmentize(max(g.GetEnvelope()[1] - g.GetEnvelope()[0], 1e-9) / 16)
        if ct is None or g.Transform(ct) != 0:
            raise InvalidInput(f"The AFTER raster's CRS ({s.GetName()}) cannot be transformed to BEFORE's "
                               f"({d.GetName()}).", "Give an AFTER raster in a CRS that has a transformation to "
                               "BEFORE's (or reproject it with gdalwarp).", path=after_path, param="after")
    if not g.Intersects(box(before)) or g.Intersection(box(before)).GetArea() <= 0:
        raise InvalidInput("The AFTER raster does not overlap BEFORE.", "Give two rasters of the same place "
                           "(check their extents with gdalinfo).", path=after_path, param="after")


@gdal_return_codes()   # GDAL's failures by return code, also where QGIS turned exceptions on
def warp_vrt(after_path: str, before, folder: str, resampling: str) -> str:
    """A warped VRT of AFTER on BEFORE's pixel grid (CRS, geotransform, size) with an alpha band (0 where AFTER
    has no data); written in ``folder``. Returns its path."""
    from osgeo import gdal

    a, b, c, d, e, f = tuple(before.transform)[:6]
    if b or d:
        raise InvalidInput("BEFORE has a rotated geotransform; AFTER cannot be put on its grid.",
                           "Warp BEFORE to a north-up grid first (gdalwarp).", param="raster")
    bounds = (c, f + e * before.height, c + a * before.width, f) if e < 0 else (c, f, c + a * before.width,
                                                                                f + e * before.height)
    out = os.path.join(folder, "after_in_before_grid.vrt")
    opts = gdal.WarpOptions(format="VRT", outputBounds=bounds, width=before.width, height=before.height,
                            dstSRS=before.crs_wkt, resampleAlg=resampling, dstAlpha=True, multithread=False)
    ds = gdal.Warp(out, after_path, options=opts)
    if ds is None:
        raise InvalidInput(f"GDAL could not warp the AFTER raster onto BEFORE's grid: {gdal.GetLastErrorMsg()}",
                           "Check both rasters with gdalinfo.", path=after_path, param="after")
    ds = None
    return out


@dataclass(frozen=True)
class MatchedStretch:
    """A stretch to 8 bits followed by a lookup table per band (histogram matching to another date)."""
    base: object                       # core.geodata.raster.Stretch
    luts: tuple[tuple[int, ...], ...]  # one 256-entry table per band read

    @property
    def identity(self) -> bool:
        return False

    def key(self) -> str:
        return json.dumps({"stretch": json.loads(self.base.key()), "match": [list(t) for t in self.luts]})

    def apply(self, data, valid=None):
        import numpy as np
        out = self.base.apply(data, valid)
        for i in range(out.shape[0]):
            out[i] = np.asarray(self.luts[i % len(self.luts)], dtype=np.uint8)[out[i]]
        if valid is not None:
            out[:, ~valid] = 0
        return out


def match_luts(before_u8: np.ndarray, after_u8: np.ndarray, valid: np.ndarray) -> tuple[tuple[int, ...], ...]:
    """One 256-entry table per band mapping AFTER's 8-bit values to BEFORE's with the same cumulative share of
    the pixels both dates cover (classic histogram matching)."""
    import numpy as np

    luts = []
    for b, a in zip(before_u8, after_u8, strict=True):
        vb, va = b[valid].ravel(), a[valid].ravel()
        if not len(vb):
            luts.append(tuple(range(256)))
            continue
        cb = np.cumsum(np.bincount(vb, minlength=256)) / len(vb)
        ca = np.cumsum(np.bincount(va, minlength=256)) / len(va)
        lut = np.clip(np.searchsorted(cb, ca, side="left"), 0, 255)
        luts.append(tuple(int(v) for v in lut))
    return tuple(luts)
