"""Accuracy and areas an analyst can report: a stratified reference sample and the estimators of
Olofsson et al. (2014), "Good practices for estimating area and assessing accuracy of land change",
Remote Sensing of Environment 148: 42-57 (their equations 1-10).

The strata are the map's classes. The map (any polygon layer with a class field: label, classify, a
change map's from/to field) is measured on a raster of itself in an equal-area projection (Lambert
azimuthal equal-area centred on the map), so each place is counted once: where features overlap (tiles
with ``--overlap``) a place belongs to the feature written last. Its cells are ``cell`` metres wide,
about 1/2000 of the map's extent, so the areas are exact to a fraction of a tile.

``sample_points`` draws points uniformly inside each stratum (a random cell of the stratum, then a random
place in the cell), reproducibly from a seed. ``estimate`` turns an error matrix of sample counts and the
map's class areas into the estimates and their 95 % confidence half-widths (1.96 standard errors).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from .errors import InvalidInput, OutputExists, SourceUnreadable, gdal_return_codes
from .geodata.crs import gis_order, laea, to_lonlat, transformation

__all__ = ["MapStrata", "read_map", "sample_points", "estimate", "assess", "read_reference",
           "REPORT_FORMAT", "Z95", "Sample", "write_sample", "report_rows", "report_notes", "csv_text",
           "check_report_outputs", "write_report_files", "report_beside", "is_report"]

REPORT_FORMAT = "remoteclip-accuracy-report"
Z95 = 1.96
_MAX_CELLS = 4_000_000
_NONE = -1
SAMPLE_FIELDS = ("sample_id", "map_class")   # the sample's own fields, beside the reference field
SAMPLE_LAYER = "reference_sample"            # its layer in a GeoPackage, unless named


@dataclass
class MapStrata:
    """The map as a raster of class codes (``_NONE`` off the map) in an equal-area ``srs_wkt``."""
    classes: list[str]
    codes: np.ndarray          # (rows, cols) int32
    x0: float                  # west edge
    y0: float                  # north edge
    cell: float                # cell width and height, metres
    srs_wkt: str
    map_crs_wkt: str | None    # the map layer's CRS
    path: str
    field: str
    layer: str = ""            # the map's layer in its file

    @property
    def cell_area(self) -> float:
        return self.cell * self.cell

    def areas(self) -> np.ndarray:
        """Map area of each class, m²."""
        counts = np.bincount(self.codes[self.codes >= 0].ravel(), minlength=len(self.classes))
        return counts.astype(np.float64) * self.cell_area

    def class_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The class code at equal-area coordinates (``_NONE`` off the map)."""
        col = np.floor((np.asarray(x) - self.x0) / self.cell).astype(np.int64)
        row = np.floor((self.y0 - np.asarray(y)) / self.cell).astype(np.int64)
        rows, cols = self.codes.shape
        inside = (row >= 0) & (row < rows) & (col >= 0) & (col < cols)
        out = np.full(len(col), _NONE, dtype=np.int64)
        out[inside] = self.codes[row[inside], col[inside]]
        return out


def _open_layer(path, layer: str | None, what: str):
    from osgeo import ogr

    from .checks import path_text
    from .samples import gdal_quiet

    path = path_text(path, what)
    if not os.path.exists(path):
        raise SourceUnreadable(f"The {what} {path} does not exist.", "Check the path.", path=path)
    with gdal_quiet():
        try:
            ds = ogr.Open(path)
        except RuntimeError:
            ds = None
    if ds is None:
        raise SourceUnreadable(f"The {what} {path} cannot be read as a vector layer.",
                               "Give a GeoPackage, Shapefile or GeoJSON.", path=path)
    lyr = ds.GetLayerByName(layer) if layer else ds.GetLayer(0)
    if lyr is None:
        names = [ds.GetLayer(i).GetName() for i in range(ds.GetLayerCount())]
        raise InvalidInput(f"The {what} {path} has no layer {layer!r} (layers: {', '.join(names) or 'none'}).",
                           "Give one of its layers (--layer).", path=path, param="layer")
    return ds, lyr, path


def _field(lyr, name: str, path: str, what: str, option: str) -> str:
    defn = lyr.GetLayerDefn()
    names = [defn.GetFieldDefn(i).GetName() for i in range(defn.GetFieldCount())]
    if name in names:
        return name
    match = [n for n in names if n.lower() == str(name).lower()]
    if match:
        return match[0]
    raise InvalidInput(f"The {what} {path} has no field {name!r} (fields: {', '.join(names) or 'none'}).",
                       f"Name the field that holds the class ({option}).", path=path, param=option.lstrip("-").replace("-", "_"))


@gdal_return_codes()
def read_map(path, field: str = "label", layer: str | None = None, max_cells: int = _MAX_CELLS) -> MapStrata:
    """The map layer at ``path`` as strata: its features rasterised by class in an equal-area projection."""
    from osgeo import gdal, ogr

    from .samples import class_text, gdal_quiet

    ds, lyr, path = _open_layer(path, layer, "map")
    field = _field(lyr, field, path, "map", "--map-field")
    map_srs = lyr.GetSpatialRef()
    if map_srs is None:
        raise InvalidInput(f"The map {path} has no CRS, so its areas cannot be measured.",
                           "Set the layer's CRS (QGIS: Layer Properties > Source) and save it.", path=path)
    map_srs = gis_order(map_srs.Clone())
    geoms, names = [], []
    for f in lyr:
        g = f.GetGeometryRef()
        name = class_text(f.GetField(field))
        if g is None or g.IsEmpty() or not name:
            continue
        if ogr.GT_Flatten(g.GetGeometryType()) not in (ogr.wkbPolygon, ogr.wkbMultiPolygon):
            continue
        geoms.append(g.Clone())
        names.append(name)
    if not geoms:
        raise InvalidInput(f"The map {path} has no polygons with a value in {field!r}.",
                           "Give a map layer (tiles or polygons) with a class field.", path=path)
    classes = sorted(set(names), key=lambda c: (c.casefold(), c))
    code = {c: i for i, c in enumerate(classes)}
    xmin, xmax, ymin, ymax = lyr.GetExtent()
    ea = laea(*to_lonlat(map_srs, (xmin + xmax) / 2, (ymin + ymax) / 2))
    to_ea = transformation(map_srs, ea)
    mem = ogr.GetDriverByName("Memory").CreateDataSource("")
    out = mem.CreateLayer("map", ea, ogr.wkbMultiPolygon)
    out.CreateField(ogr.FieldDefn("code", ogr.OFTInteger))
    defn = out.GetLayerDefn()
    bounds = [math.inf, math.inf, -math.inf, -math.inf]
    for g, name in zip(geoms, names, strict=True):
        if g.Transform(to_ea) != 0:
            raise InvalidInput(f"A map feature of class {name!r} cannot be put in an equal-area projection.",
                               "Check the map's CRS.", path=path)
        e = g.GetEnvelope()
        bounds = [min(bounds[0], e[0]), min(bounds[1], e[2]), max(bounds[2], e[1]), max(bounds[3], e[3])]
        feat = ogr.Feature(defn)
        feat.SetField(0, code[name])
        feat.SetGeometry(g)
        out.CreateFeature(feat)
    width, height = bounds[2] - bounds[0], bounds[3] - bounds[1]
    cell = math.sqrt(max(width * height, 1e-12) / max_cells)
    cols, rows = max(1, math.ceil(width / cell)), max(1, math.ceil(height / cell))
    raster = gdal.GetDriverByName("MEM").Create("", cols, rows, 1, gdal.GDT_Int32)
    raster.SetGeoTransform((bounds[0], cell, 0.0, bounds[3], 0.0, -cell))
    raster.SetProjection(ea.ExportToWkt())
    band = raster.GetRasterBand(1)
    band.Fill(_NONE)
    with gdal_quiet():
        if gdal.RasterizeLayer(raster, [1], out, options=["ATTRIBUTE=code"]) != 0:
            raise InvalidInput(f"The map {path} could not be rasterised to measure its areas.",
                               "Check its geometries (QGIS: Vector > Geometry Tools > Check Validity).", path=path)
    codes = band.ReadAsArray().astype(np.int32)
    return MapStrata(classes, codes, bounds[0], bounds[3], cell, ea.ExportToWkt(), map_srs.ExportToWkt(), path,
                     field, lyr.GetName())


def allocate(areas: np.ndarray, per_class: int | None = None, total: int | None = None,
             allocation: str = "proportional") -> np.ndarray:
    """Points per stratum: ``per_class`` each, or ``total`` shared equally or in proportion to the areas
    (largest remainders, so the counts add up to ``total``)."""
    k = len(areas)
    if (per_class is None) == (total is None):
        raise InvalidInput("Give either points per class or a total number of points.",
                           "Use --per-class N or --total N.", param="per_class")
    if per_class is not None:
        if per_class < 1:
            raise InvalidInput(f"--per-class {per_class} is not a positive number.", "Give 1 or more (50 is common).",
                               param="per_class")
        return np.full(k, int(per_class), dtype=np.int64)
    if total < k:
        raise InvalidInput(f"--total {total} is fewer than the {k} classes of the map.",
                           f"Give at least {k} points (one per class; 50 per class is common).", param="total")
    if allocation == "equal":
        share = np.full(k, total / k)
    elif allocation == "proportional":
        share = total * areas / areas.sum()
    else:
        raise InvalidInput(f"--allocation {allocation!r} is not known.", "Use proportional or equal.",
                           param="allocation")
    n = np.floor(share).astype(np.int64)
    order = np.argsort(-(share - n), kind="stable")
    n[order[: total - int(n.sum())]] += 1
    return n


def sample_points(strata: MapStrata, n_per_class: np.ndarray, seed: int = 0) -> list[tuple[float, float, str]]:
    """Random points (x, y in the map layer's CRS, class) uniformly inside each stratum, without two in one
    cell. A stratum with too few cells for its points is refused."""
    from osgeo import osr

    rng = np.random.default_rng(seed)
    flat = strata.codes.ravel()
    cols = strata.codes.shape[1]
    xs, ys, names = [], [], []
    for c, name in enumerate(strata.classes):
        cells = np.flatnonzero(flat == c)
        want = int(n_per_class[c])
        if want > len(cells):
            raise InvalidInput(f"The class {name!r} covers {len(cells)} cells of {strata.cell:.3g} m, too few for "
                               f"{want} points.", f"Ask for at most {len(cells)} points of it.", param="per_class")
        pick = np.sort(rng.choice(cells, size=want, replace=False))
        u = rng.random((want, 2))
        xs.append(strata.x0 + (pick % cols + u[:, 0]) * strata.cell)
        ys.append(strata.y0 - (pick // cols + u[:, 1]) * strata.cell)
        names += [name] * want
    x, y = np.concatenate(xs), np.concatenate(ys)
    ea = gis_order(osr.SpatialReference(strata.srs_wkt))
    dst = gis_order(osr.SpatialReference(strata.map_crs_wkt))
    pts = transformation(ea, dst).TransformPoints(np.column_stack([x, y]).tolist())
    return [(p[0], p[1], n) for p, n in zip(pts, names, strict=True)]


def _half(se):
    return None if se is None or not math.isfinite(se) else Z95 * se


def _value(estimate, se):
    return {"estimate": None if estimate is None or not math.isfinite(estimate) else float(estimate),
            "ci95": _half(se)}


def estimate(counts, map_areas, classes: list[str]) -> dict:
    """Olofsson et al. 2014's estimates from ``counts`` (rows: map class, columns: reference class, sample
    points) and the map area of each class (0 for a class found only in the reference).

    Returns overall accuracy, per class user's and producer's accuracy and the error-adjusted area, each
    {"estimate", "ci95"} (ci95: 1.96 standard errors; None where a stratum of fewer than 2 points leaves the
    variance undefined), the error matrix in counts and in estimated area proportions, and ``no_variance``.
    """
    n = np.asarray(counts, dtype=np.float64)
    area = np.asarray(map_areas, dtype=np.float64)
    total = area.sum()
    w = area / total
    n_h = n.sum(axis=1)
    unsampled = [classes[h] for h in range(len(classes)) if area[h] > 0 and n_h[h] == 0]
    if unsampled:
        raise InvalidInput(f"The map classes {', '.join(map(repr, unsampled))} have no reference points with a "
                           "reference value, so their accuracy and area cannot be estimated.",
                           "Label points in every map class (remoteclip sample --per-class N makes them).",
                           param="reference")
    rows = n_h > 0
    frac = np.zeros_like(n)
    frac[rows] = n[rows] / n_h[rows, None]
    p = w[:, None] * frac                                   # eq. 4 / 9: estimated area proportions
    no_var = [classes[h] for h in range(len(classes)) if rows[h] and n_h[h] < 2]
    denom = np.where(n_h > 1, n_h - 1, np.nan)
    # eq. 5: overall accuracy
    ua = np.where(rows, np.diag(frac), np.nan)
    oa = float(np.trace(p))
    v_oa = np.nansum(np.where(rows, w ** 2 * ua * (1 - ua) / denom, 0.0)) if not no_var else np.nan
    # eq. 10: standard error of each class's area proportion
    terms = w[:, None] ** 2 * frac * (1 - frac) / denom[:, None]
    se_p = np.sqrt(np.where(rows[:, None], terms, 0.0).sum(axis=0)) if not no_var else np.full(len(classes), np.nan)
    p_col = p.sum(axis=0)
    # eq. 7: producer's accuracy; N_i. as map areas (the unit cancels)
    n_hat = (area[:, None] * frac).sum(axis=0)
    out_classes = {}
    for j, name in enumerate(classes):
        u = ua[j] if rows[j] else None
        se_u = math.sqrt(ua[j] * (1 - ua[j]) / (n_h[j] - 1)) if rows[j] and n_h[j] > 1 else None
        pa = p[j, j] / p_col[j] if p_col[j] > 0 else None
        se_pa = None
        if pa is not None and not no_var:
            t1 = area[j] ** 2 * (1 - pa) ** 2 * ua[j] * (1 - ua[j]) / (n_h[j] - 1) if rows[j] else 0.0
            t2 = sum(area[i] ** 2 * frac[i, j] * (1 - frac[i, j]) / (n_h[i] - 1)
                     for i in range(len(classes)) if i != j and rows[i])
            se_pa = math.sqrt((t1 + pa ** 2 * t2) / n_hat[j] ** 2)
        out_classes[name] = {
            "map_area": float(area[j]),
            "users_accuracy": _value(u, se_u),
            "producers_accuracy": _value(pa, se_pa),
            "area": _value(total * p_col[j], total * se_p[j] if not no_var else None),
        }
    return {
        "overall_accuracy": _value(oa, math.sqrt(v_oa) if math.isfinite(v_oa) else None),
        "classes": out_classes,
        "error_matrix": {"classes": list(classes), "rows": "map", "columns": "reference",
                         "counts": n.astype(int).tolist(), "proportions": p.tolist()},
        "total_area": float(total),
        "no_variance": no_var,
    }


@gdal_return_codes()
def read_reference(path, field: str, strata: MapStrata, layer: str | None = None):
    """Reference points: (map class code, reference class text) of each point with a reference value on the
    map, and counts of those left out."""
    from osgeo import ogr, osr

    from .samples import class_text

    ds, lyr, path = _open_layer(path, layer, "reference points")
    field = _field(lyr, field, path, "reference points", "--reference-field")
    srs = lyr.GetSpatialRef()
    ea = gis_order(osr.SpatialReference(strata.srs_wkt))
    srs = gis_order(osr.SpatialReference(strata.map_crs_wkt) if srs is None else srs.Clone())
    to_ea = transformation(srs, ea)
    xs, ys, refs = [], [], []
    left = {"no_reference": 0, "outside_map": 0, "not_a_point": 0}
    n_features = 0
    for f in lyr:
        n_features += 1
        g = f.GetGeometryRef()
        if g is None or g.IsEmpty() or ogr.GT_Flatten(g.GetGeometryType()) != ogr.wkbPoint:
            left["not_a_point"] += 1
            continue
        ref = class_text(f.GetField(field))
        if not ref:
            left["no_reference"] += 1
            continue
        x, y, _ = to_ea.TransformPoint(g.GetX(), g.GetY())
        xs.append(x)
        ys.append(y)
        refs.append(ref)
    if n_features == 0:
        raise InvalidInput(f"The reference points {path} hold no features.",
                           "Make a sample (remoteclip sample) and label its points.", path=path)
    if not refs:
        raise InvalidInput(f"The reference field {field!r} of {path} is empty on every point.",
                           "Label the points: type each one's class, as seen in the imagery, into that field.",
                           path=path, param="reference_field")
    codes = strata.class_at(np.array(xs), np.array(ys))
    keep = codes >= 0
    left["outside_map"] = int((~keep).sum())
    return codes[keep], [r for r, k in zip(refs, keep, strict=True) if k], left, path, field


def assess(map_path, reference_path, reference_field: str = "reference", map_field: str = "label",
           map_layer: str | None = None, reference_layer: str | None = None) -> dict:
    """The accuracy report of a map against labelled reference points (see :func:`estimate`)."""
    strata = read_map(map_path, map_field, map_layer)
    codes, refs, left, ref_path, ref_field = read_reference(reference_path, reference_field, strata,
                                                            reference_layer)
    if len(codes) == 0:
        raise InvalidInput(f"None of the labelled reference points of {ref_path} fall on the map {strata.path}.",
                           "Check that the points belong to this map (and their CRS).", path=ref_path)
    extra = sorted({r for r in refs if r not in strata.classes}, key=lambda c: (c.casefold(), c))
    classes = strata.classes + extra
    index = {c: i for i, c in enumerate(classes)}
    k = len(classes)
    counts = np.zeros((k, k), dtype=np.int64)
    np.add.at(counts, (codes, [index[r] for r in refs]), 1)
    areas = np.concatenate([strata.areas(), np.zeros(len(extra))])
    report = estimate(counts, areas, classes)
    used = counts.sum(axis=1)
    report = {
        "format": REPORT_FORMAT,
        "method": "Olofsson et al. 2014, stratified estimators (eq. 1-10); strata: the map classes; "
                  "ci95: 1.96 standard errors; areas in m2 on an equal-area (LAEA) raster of the map",
        "map": os.path.abspath(strata.path), "map_field": strata.field,
        "reference": os.path.abspath(ref_path), "reference_field": ref_field,
        **report,
        "n": {"per_stratum": {c: int(used[i]) for i, c in enumerate(strata.classes)},
              "used": int(used.sum()), "left_out": left},
        "reference_only_classes": extra,
        "cell_size_m": strata.cell,
    }
    return report


def _pm(v, scale=1.0, fmt="{:.3f}"):
    if v["estimate"] is None:
        return "n/a"
    text = fmt.format(v["estimate"] * scale)
    return text + (" +/- " + fmt.format(v["ci95"] * scale) if v["ci95"] is not None else " (no CI)")


REPORT_COLUMNS = ("class", "map area ha", "adjusted area ha", "users acc", "producers acc")


def overall_text(report: dict) -> str:
    """'overall accuracy: 0.947 +/- 0.018 (95 % CI), 640 reference points'."""
    return f"overall accuracy: {_pm(report['overall_accuracy'])} (95 % CI), {report['n']['used']} reference points"


def report_rows(report: dict) -> list[tuple[str, str, str, str, str]]:
    """Per class the texts of REPORT_COLUMNS: map area and error-adjusted area in ha, user's and producer's
    accuracy, each estimate +/- its 95 % half-width ("n/a" where there is none, "(no CI)" without variance)."""
    return [(name, f"{c['map_area'] / 1e4:.2f}", _pm(c["area"], 1e-4, "{:.2f}"), _pm(c["users_accuracy"]),
             _pm(c["producers_accuracy"])) for name, c in report["classes"].items()]


def report_notes(report: dict) -> list[str]:
    """What the table leaves out: points left out, classes without a CI, reference-only classes."""
    notes = []
    left = {k: v for k, v in report["n"]["left_out"].items() if v}
    if left:
        notes.append("left out: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in left.items()))
    if report["no_variance"]:
        notes.append("no confidence interval: fewer than 2 points in " + ", ".join(report["no_variance"]))
    if report["reference_only_classes"]:
        notes.append("reference classes not in the map: " + ", ".join(report["reference_only_classes"]))
    return notes


def report_table(report: dict) -> str:
    """The report as the plain table printed by ``remoteclip assess``."""
    lines = [overall_text(report),
             f"{'class':<24} {'map area ha':>12} {'adjusted area ha':>22} {'users acc':>16} {'producers acc':>16}"]
    for name, map_area, area, ua, pa in report_rows(report):
        lines.append(f"{name[:24]:<24} {map_area:>12} {area:>22} {ua:>16} {pa:>16}")
    return "\n".join(lines + report_notes(report))


def csv_text(report: dict) -> str:
    """The per-class table as CSV (areas in m², accuracies as fractions, each with its 95 % half-width)."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["class", "map_area_m2", "area_m2", "area_ci95_m2", "users_accuracy", "users_ci95",
                "producers_accuracy", "producers_ci95"])
    for name, c in report["classes"].items():
        w.writerow([name, c["map_area"], c["area"]["estimate"], c["area"]["ci95"], c["users_accuracy"]["estimate"],
                    c["users_accuracy"]["ci95"], c["producers_accuracy"]["estimate"], c["producers_accuracy"]["ci95"]])
    return buf.getvalue()


def check_report_outputs(report_json, csv_path, inputs, overwrite: bool = False) -> None:
    """Before anything is read: the report and the CSV (either may be None) can be written, are neither an
    input (``inputs``: (spec, what) pairs, ``file|layername=NAME`` for a GeoPackage layer) nor one file."""
    from .outputs import check_distinct, check_file_output

    outs = []
    if report_json:
        outs.append((check_file_output(report_json, "report", overwrite, inputs, example="report.json"), "report"))
    if csv_path:
        outs.append((check_file_output(csv_path, "CSV table", overwrite, inputs, example="table.csv"), "CSV table"))
    check_distinct(outs)


def report_beside(reference_path, layer: str | None = None) -> str:
    """Where a report of these reference points goes by default: ``STEM.LAYER.accuracy.json`` beside a
    GeoPackage's layer, ``STEM.accuracy.json`` beside another file."""
    stem, ext = os.path.splitext(os.fspath(reference_path))
    return f"{stem}.{layer}.accuracy.json" if layer and ext.lower() == ".gpkg" else f"{stem}.accuracy.json"


def is_report(path) -> bool:
    """``path`` is an accuracy report written by :func:`write_report_files` (one that may be replaced)."""
    import json

    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and data.get("format") == REPORT_FORMAT


def write_report_files(report: dict, report_json=None, csv_path=None) -> None:
    """The report as JSON and its table as CSV (checked first by :func:`check_report_outputs`)."""
    import json

    from .outputs import write_text_file

    if report_json:
        write_text_file(report_json, json.dumps(report, indent=1, ensure_ascii=False) + "\n", True)
    if csv_path:
        write_text_file(csv_path, csv_text(report), True)


@dataclass
class Sample:
    """What :func:`write_sample` wrote."""
    output: str
    layer: str | None          # its layer in a GeoPackage
    strata: MapStrata
    per_class: list[int]       # points in each of ``strata.classes``
    reference_field: str
    seed: int

    @property
    def n_points(self) -> int:
        return sum(self.per_class)


@gdal_return_codes()
def labelled_points(output, layer: str | None, reference_field: str) -> int:
    """How many features of ``output`` (its ``layer``, else its first) have a value in ``reference_field``:
    0 when the file, the layer or the field is not there."""
    from osgeo import ogr

    if not os.path.exists(str(output)):
        return 0
    ds = ogr.Open(str(output))
    lyr = None if ds is None else (ds.GetLayerByName(layer) if layer else ds.GetLayer(0))
    if lyr is None or lyr.GetLayerDefn().GetFieldIndex(reference_field) < 0:
        return 0
    return sum(1 for f in lyr if str(f.GetField(reference_field) or "").strip())


def write_sample(map_path, output, map_field: str = "label", layer: str | None = None, per_class: int | None = None,
                 total: int | None = None, allocation: str = "proportional", seed: int = 0,
                 reference_field: str = "reference", out_layer: str | None = None, overwrite: bool = False,
                 inputs=()) -> Sample:
    """A stratified random sample of the map (:func:`allocate`, :func:`sample_points`) written to ``output``
    (.gpkg, layer ``out_layer`` or SAMPLE_LAYER; .shp) in the map's CRS, with ``sample_id``, ``map_class``
    and the empty ``reference_field`` the analyst fills. It never replaces the map's layer, nor ``inputs``
    ((spec, what) pairs: the layer the map was copied from)."""
    from .geodata.vectors import Field, write_vector

    ref = str(reference_field or "").strip()
    if not ref or ref.lower() in SAMPLE_FIELDS:
        raise InvalidInput(f"The reference field {reference_field!r} is empty or one of the sample's own fields "
                           f"({', '.join(SAMPLE_FIELDS)}).", "Give another name, e.g. reference.",
                           param="reference_field")
    strata = read_map(map_path, map_field, layer)
    n = allocate(strata.areas(), per_class, total, allocation)
    points = sample_points(strata, n, seed)
    records = [{"geometry": f"POINT ({x!r} {y!r})", "sample_id": i, "map_class": name, ref: None}
               for i, (x, y, name) in enumerate(points, start=1)]
    fields = [Field("sample_id", "int"), Field("map_class", "str"), Field(ref, "str")]
    out_layer = out_layer or (SAMPLE_LAYER if str(output).lower().endswith(".gpkg") else None)
    labelled = labelled_points(output, out_layer, ref)
    if labelled:   # hours of an analyst's work: never replaced, --overwrite or not
        raise OutputExists(f"{output} already holds a reference sample, {labelled} of its points labelled in "
                           f"'{ref}'.", "Write the new sample to another file (or layer); delete the labelled "
                           "one yourself if you mean to start again.", path=str(output))
    map_input = f"{strata.path}|layername={strata.layer}" if strata.layer and strata.path.lower().endswith(".gpkg") \
        else strata.path
    out = write_vector(output, records, fields, strata.map_crs_wkt, layer_name=out_layer,
                       metadata={"task": "reference-sample", "map": os.path.abspath(strata.path),
                                 "map_field": strata.field, "seed": seed, "reference_field": ref,
                                 "classes": strata.classes},
                       overwrite=overwrite, inputs=[(map_input, "map"), *inputs])
    return Sample(out, out_layer, strata, n.tolist(), ref, seed)
