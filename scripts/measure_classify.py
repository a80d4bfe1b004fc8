"""Zero-shot labels vs few-shot classify on the real rasters of ../shared/data (docs/classify.md's table).

    python scripts/measure_classify.py --model models/remoteclip-demo [--model OTHER] [--seeds 5] [--out FILE.json]
        [--cases kampala-z21,rsscn7] [--shots 5,10] [--folds spatial|sample|both]

Cases (each raster's tiles get a ground truth; samples come from one part of the raster, the evaluation
tiles from another part, never interleaved):

* kampala-z21 / kampala-z20: the Kampala drone mosaics, 128 / 64 px tiles (about 10 m), classes
  "buildings" (a quarter or more of the tile under the building outlines of
  kampala_buildings_z21_chips.geojson) and "open ground" (no building at all); tiles in between are
  left out. Samples from the western half, evaluation on the eastern half.
* spacenet: the SpaceNet panchromatic tile with its 43 footprints, 32 px tiles (16 m), the same two
  classes with the same thresholds; samples west, evaluation east.
* rsscn7: the 140 RSSCN7 scenes as one mosaic (7 rows of 20 scenes, 400 px tiles, one per scene; a
  made-up georeference), the seven class names; samples from the first 10 scenes of each class by file
  name, evaluation on the last 6 (the demo model's held-out test images).

For each model, each number of samples per class (points at random places inside randomly chosen
tiles of the sample part) and each seed, ``remoteclip classify`` (through core.pipeline.run_job) is
compared with ``remoteclip label`` with the same class names: balanced accuracy (mean per-class
recall) on the evaluation tiles, mean and standard deviation over the seeds, beside the cross-validated
balanced accuracy the report gave. ``--folds`` picks the cross-validation: ``spatial`` (the default: what
classify does), ``sample`` (folds grouped by sample alone, as before spatial folds: each run again with
core.classify.SPATIAL_WIDTHS = 0) or ``both`` (``sample`` rows get the model name + " (by sample)").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core import classify  # noqa: E402
from core.geodata.raster import open_raster  # noqa: E402
from core.geodata.tiles import make_grid  # noqa: E402
from core.pipeline import ClassifyTask, Job, LabelTask, RunOptions, TileSpec, run_job  # noqa: E402
from core.samples import Samples  # noqa: E402

BUILDINGS, GROUND = "buildings", "open ground"
SHOTS = (1, 5, 10)


def data_dir() -> Path:
    return Path(os.environ.get("REMOTECLIP_DATA", ROOT.parent / "shared" / "data")).resolve()


def coverage(grid, outlines: str, crs_wkt: str) -> np.ndarray:
    """Fraction of each tile under the union of the outlines (reprojected to the raster's CRS)."""
    from osgeo import ogr, osr

    from core.geodata.crs import srs_from

    ds = ogr.Open(outlines)
    lyr = ds.GetLayer(0)
    dst = srs_from(crs_wkt)
    src = lyr.GetSpatialRef()
    ct = None
    if src is not None:
        src.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        if not src.IsSame(dst):
            ct = osr.CoordinateTransformation(src, dst)
    multi = ogr.Geometry(ogr.wkbMultiPolygon)
    for f in lyr:
        g = f.GetGeometryRef().Clone()
        if ct is not None:
            g.Transform(ct)
        for i in range(g.GetGeometryCount()) if ogr.GT_Flatten(g.GetGeometryType()) == ogr.wkbMultiPolygon else [None]:
            multi.AddGeometry(g if i is None else g.GetGeometryRef(i))
    union = multi.UnionCascaded()
    out = []
    for t in grid:
        tile = ogr.CreateGeometryFromWkt(t.polygon_wkt)
        inter = tile.Intersection(union)
        out.append(0.0 if inter is None else inter.GetArea() / tile.GetArea())
    return np.asarray(out)


def building_case(name, raster, outlines, tile):
    src = open_raster(raster)
    grid = make_grid(src, TileSpec(size=tile))
    cov = coverage(grid, outlines, src.crs_wkt)
    truth = np.where(cov >= 0.25, 0, np.where(cov == 0, 1, -1))   # -1: neither clearly
    ncols = max(t.col for t in grid) + 1
    west = np.array([t.col < ncols // 2 for t in grid])
    src.close()
    return {"name": name, "raster": raster, "tile": tile, "classes": [BUILDINGS, GROUND], "grid": grid,
            "truth": truth, "pool": west & (truth >= 0), "eval": ~west & (truth >= 0)}


def rsscn7_case(folder: Path, workdir: Path):
    """The 140 scenes as one GeoTIFF: row = class, column = the scene's place in its class by file name."""
    from osgeo import gdal, osr
    from PIL import Image

    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    names = ["grass", "field", "industry", "river lake", "forest", "resident", "parking"]
    path = workdir / "rsscn7_mosaic.tif"
    if not path.is_file():
        per = [sorted((folder / c).glob("*.jpg")) for c in classes]
        w, h = 400 * max(len(p) for p in per), 400 * len(classes)
        ds = gdal.GetDriverByName("GTiff").Create(str(path), w, h, 3, gdal.GDT_Byte, options=["TILED=YES"])
        ds.SetGeoTransform((500000.0, 1.0, 0.0, 4000000.0, 0.0, -1.0))
        srs = osr.SpatialReference()
        srs.ImportFromEPSG(32636)
        ds.SetProjection(srs.ExportToWkt())
        for r, files in enumerate(per):
            for c, f in enumerate(files):
                a = np.asarray(Image.open(f).convert("RGB").resize((400, 400)))
                for b in range(3):
                    ds.GetRasterBand(b + 1).WriteArray(a[:, :, b], c * 400, r * 400)
        ds = None
    src = open_raster(str(path))
    grid = make_grid(src, TileSpec(size=400))
    src.close()
    truth = np.array([t.row for t in grid])
    col = np.array([t.col for t in grid])
    return {"name": "rsscn7", "raster": str(path), "tile": 400, "classes": names, "grid": grid, "truth": truth,
            "pool": col < 10, "eval": col >= 14}


def balanced(truth, pred, n):
    return float(np.mean([np.mean(pred[truth == c] == c) for c in range(n) if np.any(truth == c)]))


def run(case, model, cache, task):
    res = run_job(Job(raster=case["raster"], task=task, tiles=TileSpec(size=case["tile"]),
                      run=RunOptions(model=model, cache_dir=cache, batch_size=32), max_tiles=None))
    pred = {(r["row"], r["col"]): r["label"] for r in res.records}
    return pred, res


def score(case, pred):
    idx = {c: i for i, c in enumerate(case["classes"])}
    ev = np.flatnonzero(case["eval"])
    truth = case["truth"][ev]
    p = np.array([idx.get(pred.get((case["grid"][i].row, case["grid"][i].col)), -1) for i in ev])
    return balanced(truth, p, len(case["classes"]))


def samples_for(case, shots, seed, crs_wkt):
    rng = np.random.default_rng(seed)
    wkts, classes = [], []
    for k, name in enumerate(case["classes"]):
        pool = np.flatnonzero(case["pool"] & (case["truth"] == k))
        for i in rng.choice(pool, size=min(shots, len(pool)), replace=False):
            t = case["grid"][i]
            c0, r0, w, h = t.window
            fx, fy = rng.uniform(0.25, 0.75, 2)
            wkts.append(_point(t.window, case["transform"], c0 + fx * w, r0 + fy * h))
            classes.append(name)
    return Samples(wkts, classes, crs_wkt)


def _point(window, transform, col, row):
    a, b, c, d, e, f = transform[:6]
    return f"POINT ({a * col + b * row + c!r} {d * col + e * row + f!r})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True, help="bundle (repeat for several)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--cases", default="kampala-z21,kampala-z20,spacenet,rsscn7")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--cache-dir", help="embedding cache to use (default: a new temporary folder)")
    ap.add_argument("--shots", default=",".join(map(str, SHOTS)), help="samples per class, e.g. 5,10")
    ap.add_argument("--folds", choices=("spatial", "sample", "both"), default="spatial")
    args = ap.parse_args(argv)
    d = data_dir()
    work = Path(tempfile.mkdtemp(prefix="measure_classify_"))
    cache = args.cache_dir or str(work / "cache")
    makers = {
        "kampala-z21": lambda: building_case("kampala-z21", str(d / "orthomosaic/kampala_oam_z21_mosaic_3072x2048.tif"),
                                             str(d / "orthomosaic/kampala_buildings_z21_chips.geojson"), 128),
        "kampala-z20": lambda: building_case("kampala-z20", str(d / "orthomosaic/kampala_oam_z20_mosaic_1536x1024.tif"),
                                             str(d / "orthomosaic/kampala_buildings_z21_chips.geojson"), 64),
        "spacenet": lambda: building_case("spacenet", str(d / "geotiff/solaris_sample_geotiff.tif"),
                                          str(d / "geotiff/solaris_geotiff_labels.geojson"), 32),
        "rsscn7": lambda: rsscn7_case(d / "scenes/rsscn7", work),
    }
    shots_list = [int(v) for v in args.shots.split(",")]
    groupings = {"spatial": [("spatial", classify.SPATIAL_WIDTHS)], "sample": [("sample", 0.0)],
                 "both": [("spatial", classify.SPATIAL_WIDTHS), ("sample", 0.0)]}[args.folds]
    results = []
    for cname in args.cases.split(","):
        case = makers[cname]()
        src = open_raster(case["raster"])
        case["transform"], crs = src.transform, src.crs_wkt
        src.close()
        n_eval = int(case["eval"].sum())
        per_class = [int((case["pool"] & (case["truth"] == k)).sum()) for k in range(len(case["classes"]))]
        for model, (grouping, widths) in ((m, g) for m in args.model for g in groupings):
            t0 = time.perf_counter()
            classify.SPATIAL_WIDTHS = widths
            zs_pred, _ = run(case, model, cache, LabelTask(case["classes"]))
            name = Path(model).name + (" (by sample)" if args.folds == "both" and grouping == "sample" else "")
            row = {"case": cname, "model": name, "folds": grouping, "eval_tiles": n_eval,
                   "pool_per_class": per_class, "zero_shot": score(case, zs_pred), "classify": {}}
            for shots in shots_list:
                accs, alphas, cvs, by = [], [], [], []
                for seed in range(args.seeds):
                    task = ClassifyTask(samples=samples_for(case, shots, seed, crs), seed=seed)
                    pred, res = run(case, model, cache, task)
                    accs.append(score(case, pred))
                    alphas.append(res.report["alpha"])
                    cv = res.report.get("cv") or {}
                    cvs.append(cv.get("balanced_accuracy"))
                    by.append([cv.get("grouped_by"), cv.get("folds"), (cv.get("group_distance") or {}).get("m")])
                known = [v for v in cvs if v is not None]
                row["classify"][shots] = {"mean": float(np.mean(accs)), "sd": float(np.std(accs)), "runs": accs,
                                          "alpha": alphas, "cv_balanced": cvs, "grouping": by,
                                          "cv_mean": float(np.mean(known)) if known else None}
            row["seconds"] = round(time.perf_counter() - t0, 1)
            results.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "classify"}), flush=True)
            for shots, v in row["classify"].items():
                print(f"  {shots:>2} per class: {v['mean']:.3f} ± {v['sd']:.3f}  alpha {v['alpha']}  "
                      f"cv {v['cv_balanced']}  folds {v['grouping']}", flush=True)
    classify.SPATIAL_WIDTHS = groupings[0][1]
    print()
    print("| raster | model | eval tiles | zero-shot | "
          + " | ".join(f"classify, {s} per class | CV, {s} per class" for s in shots_list) + " |")
    print("|---|---|---|---|" + "---|---|" * len(shots_list))
    for r in results:
        cells = " | ".join(f"{r['classify'][s]['mean']:.1%} ± {r['classify'][s]['sd']:.1%} | "
                           + ("-" if r["classify"][s]["cv_mean"] is None else f"{r['classify'][s]['cv_mean']:.0%}")
                           for s in shots_list)
        print(f"| {r['case']} | {r['model']} | {r['eval_tiles']} | {r['zero_shot']:.1%} | {cells} |")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
