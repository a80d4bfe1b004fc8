"""Search by example on RSSCN7 (issue 23): precision@k of a search from 1, 3 and 10 example tiles per class,
against the text query for the class and against random ranking, with the demo model; and the time of a cached
search.

The 140 RSSCN7 images (7 classes x 20) are laid out as one mosaic GeoTIFF of 400 px tiles (14 x 10, the images
in class order, shuffled with the seed); the mosaic is embedded once (the cache), then each class is searched by
example points on N random tiles of that class (seeds 0..R-1) and by text ("a satellite image of {class}").
precision@k counts the class's tiles among the k best, the example tiles left out of the ranking (they are
known). Random ranking: the class's share of the tiles left.

    python scripts/measure_search_like.py --data ../shared/data [--k 10] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CLASSES = {"aGrass": "grass", "bField": "field", "cIndustry": "industry", "dRiverLake": "river or lake",
           "eForest": "forest", "fResident": "residential area", "gParking": "parking lot"}
TILE = 400
COLS = 14


def mosaic(data: str, out: str, seed: int) -> list[str]:
    """The mosaic GeoTIFF and each tile's class, in grid order (row by row)."""
    from osgeo import gdal, osr
    from PIL import Image

    items = [(c, os.path.join(data, "scenes", "rsscn7", c, f)) for c in CLASSES
             for f in sorted(os.listdir(os.path.join(data, "scenes", "rsscn7", c)))]
    order = np.random.default_rng(seed).permutation(len(items))
    items = [items[i] for i in order]
    rows = -(-len(items) // COLS)
    ds = gdal.GetDriverByName("GTiff").Create(out, COLS * TILE, rows * TILE, 3, gdal.GDT_Byte)
    ds.SetGeoTransform((0.0, 1.0, 0.0, rows * TILE, 0.0, -1.0))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(3857)
    ds.SetProjection(srs.ExportToWkt())
    for k, (_, path) in enumerate(items):
        img = np.asarray(Image.open(path).convert("RGB").resize((TILE, TILE)))
        r, c = divmod(k, COLS)
        for b in range(3):
            ds.GetRasterBand(b + 1).WriteArray(img[:, :, b], c * TILE, r * TILE)
    ds = None
    return [c for c, _ in items]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("REMOTECLIP_DATA", "../shared/data"))
    ap.add_argument("--model", default="models/remoteclip-demo")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from core.examples import Examples
    from core.pipeline import Job, RunOptions, TileSpec, run_job
    from core.tasks import EmbedTask, SearchTask

    work = tempfile.mkdtemp(prefix="search_like_")
    raster = os.path.join(work, "rsscn7_mosaic.tif")
    labels = mosaic(args.data, raster, args.seed)
    run = RunOptions(model=args.model, cache_dir=os.path.join(work, "cache"))
    tiles = TileSpec(size=TILE)
    run_job(Job(raster=raster, task=EmbedTask(), run=run, tiles=tiles))

    def centre(k):
        r, c = divmod(k, COLS)
        return f"POINT ({(c + 0.5) * TILE} {len(labels) // COLS * TILE - (r + 0.5) * TILE})"

    results: dict = {"k": args.k, "repeats": args.repeats, "model": args.model, "classes": {}}
    times = []
    for cls, name in CLASSES.items():
        mine = [k for k, c in enumerate(labels) if c == cls]
        row: dict = {}
        text = run_job(Job(raster=raster, task=SearchTask(f"a satellite image of {name}"), run=run, tiles=tiles))
        row["text"] = _precision(text.records, labels, cls, set(), args.k)
        for n in (1, 3, 10):
            ps, rand = [], []
            for rep in range(args.repeats):
                picks = np.random.default_rng(1000 * rep + n).choice(mine, n, replace=False).tolist()
                ex = Examples([centre(k) for k in picks], "EPSG:3857")
                t = time.perf_counter()
                res = run_job(Job(raster=raster, task=SearchTask(like=ex), run=run, tiles=tiles))
                times.append(time.perf_counter() - t)
                assert res.images_encoded == 0
                ps.append(_precision(res.records, labels, cls, set(picks), args.k))
                rand.append((len(mine) - n) / (len(labels) - n))
            row[f"like_{n}"] = float(np.mean(ps))
            row[f"random_{n}"] = float(np.mean(rand))
        results["classes"][name] = row
    cols = ["text", "like_1", "like_3", "like_10", "random_1"]
    results["mean"] = {c: float(np.mean([r[c] for r in results["classes"].values()])) for c in cols}
    results["cached_search_s"] = {"median": float(np.median(times)), "max": float(np.max(times)),
                                  "tiles": len(labels)}
    print(f"precision@{args.k} ({args.repeats} draws of the examples; example tiles left out of the ranking)")
    print(f"{'class':18} " + " ".join(f"{c:>9}" for c in cols))
    for name, row in [*results["classes"].items(), ("mean", results["mean"])]:
        print(f"{name:18} " + " ".join(f"{row[c]:9.2f}" for c in cols))
    print(f"cached search of {len(labels)} tiles: median {results['cached_search_s']['median']:.3f} s, "
          f"max {results['cached_search_s']['max']:.3f} s")
    print(json.dumps(results))
    return 0


def _precision(records, labels, cls, examples: set, k: int) -> float:
    """The class's share of the k best tiles that are not examples (tile number = row * COLS + col)."""
    ranked = sorted(records, key=lambda r: r["rank"])
    keep = [r["row"] * COLS + r["col"] for r in ranked if r["row"] * COLS + r["col"] not in examples][:k]
    return sum(labels[i] == cls for i in keep) / k


if __name__ == "__main__":
    sys.exit(main())
