"""Search by example on the Kampala buildings (issue 23, docs/search.md): precision@k of building tiles found from
1, 3 and 10 example tiles, against text queries and random ranking.

    .venv/bin/python scripts/measure_search_buildings.py [--data /work/shared/data] [--model models/remoteclip-demo]
        [--random-vit] [--tile 128] [--cover 0.25] [--k 10 20] [--repeats 10]

The Kampala z21 orthomosaic (3072 x 2048 px, 7.5 cm, EPSG:4326) in ``--tile`` px tiles (128: 24 x 16 = 384 tiles,
about 9.6 m); a tile is a building tile when at least ``--cover`` of its area lies under the outlines of
``kampala_buildings_z21_chips.geojson`` (merged first), every other tile (no building, or less) is not. The
mosaic is embedded once per model (the cache); then per n in (1, 3, 10) ``--repeats`` draws (seeds 0..R-1) of n
building tiles are searched by example (their centre points, ``SearchTask(like=...)``, the path of ``--like``),
and the text queries once. precision@k: the building tiles' share of the k best tiles that are not examples.
Random ranking: the building tiles' share of the tiles that are not examples (its expected precision).
``--random-vit`` adds a random-weight ViT-B-32 bundle (training.export of a random open_clip checkpoint; needs
torch) as a floor: what tile similarity alone gives without any training.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TEXTS = ("buildings", "residential")
RASTER = "orthomosaic/kampala_oam_z21_mosaic_3072x2048.tif"
OUTLINES = "orthomosaic/kampala_buildings_z21_chips.geojson"


def building_cover(raster: str, geojson: str, tile: int) -> dict[tuple[int, int], float]:
    """(row, col) -> the share of the tile's area under the building outlines (shapely; both in EPSG:4326)."""
    import rasterio
    from shapely.geometry import box, shape
    from shapely.ops import unary_union

    with open(geojson, encoding="utf-8") as f:
        buildings = unary_union([shape(ft["geometry"]) for ft in json.load(f)["features"]])
    with rasterio.open(raster) as ds:
        t, width, height = ds.transform, ds.width, ds.height
    out = {}
    for row in range(height // tile):
        for col in range(width // tile):
            (x0, y0), (x1, y1) = t * (col * tile, row * tile), t * ((col + 1) * tile, (row + 1) * tile)
            cell = box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
            out[(row, col)] = buildings.intersection(cell).area / cell.area
    return out


def random_vit(work: str) -> str:
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from conftest import save_random_checkpoint

    from training.export import main as export

    ckpt = save_random_checkpoint("ViT-B-32", os.path.join(work, "vit.pt"))
    out = os.path.join(work, "random-vit-b-32")
    export(["--arch", "ViT-B-32", "--checkpoint", str(ckpt), "--out", out])
    return out


def precision(records, building: set, examples: set, k: int) -> float:
    ranked = sorted(records, key=lambda r: r["rank"])
    keep = [(r["row"], r["col"]) for r in ranked if (r["row"], r["col"]) not in examples][:k]
    return sum(t in building for t in keep) / k


def measure(model: str, raster: str, cover: dict, args, work: str) -> dict:
    from core.examples import Examples
    from core.pipeline import Job, RunOptions, TileSpec, run_job
    from core.tasks import EmbedTask, SearchTask

    run = RunOptions(model=model, cache_dir=os.path.join(work, "cache"))
    tiles = TileSpec(size=args.tile)
    t = time.perf_counter()
    embedded = run_job(Job(raster=raster, task=EmbedTask(), run=run, tiles=tiles))
    embed_s = time.perf_counter() - t
    assert len(embedded.records) == len(cover), "the grid is not the one the cover was computed on"
    building = {rc for rc, share in cover.items() if share >= args.cover}
    ordered = sorted(building)

    import rasterio

    with rasterio.open(raster) as ds:
        transform, crs = ds.transform, ds.crs.to_wkt()

    def centre(rc):
        x, y = transform * ((rc[1] + 0.5) * args.tile, (rc[0] + 0.5) * args.tile)
        return f"POINT ({x!r} {y!r})"

    row: dict = {"embed_s": embed_s, "tiles": len(cover), "building_tiles": len(building)}
    for text in TEXTS:
        res = run_job(Job(raster=raster, task=SearchTask(text), run=run, tiles=tiles))
        for k in args.k:
            row[f"text {text} @{k}"] = precision(res.records, building, set(), k)
    for n in (1, 3, 10):
        got = {k: [] for k in args.k}
        rand = []
        for rep in range(args.repeats):
            idx = np.random.default_rng(rep).choice(len(ordered), n, replace=False)
            picks = {ordered[i] for i in idx}
            ex = Examples([centre(rc) for rc in sorted(picks)], crs)
            res = run_job(Job(raster=raster, task=SearchTask(like=ex), run=run, tiles=tiles))
            assert res.images_encoded == 0 and {(r["row"], r["col"]) for r in res.records
                                                if r["is_example"] == 1} == picks
            for k in args.k:
                got[k].append(precision(res.records, building, picks, k))
            rand.append((len(building) - n) / (len(cover) - n))
        for k in args.k:
            row[f"{n} examples @{k}"] = float(np.mean(got[k]))
            row[f"{n} examples @{k} sd"] = float(np.std(got[k]))
        row[f"random {n}"] = float(np.mean(rand))
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("REMOTECLIP_DATA", "/work/shared/data"))
    ap.add_argument("--model", action="append", help="model bundle(s) (default models/remoteclip-demo)")
    ap.add_argument("--random-vit", action="store_true", help="also a random-weight ViT-B-32 (needs torch)")
    ap.add_argument("--tile", type=int, default=128)
    ap.add_argument("--cover", type=float, default=0.25, help="building share of a tile's area (default 0.25)")
    ap.add_argument("--k", type=int, nargs="+", default=[10, 20])
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args(argv)

    work = tempfile.mkdtemp(prefix="search_buildings_")
    raster = os.path.join(args.data, RASTER)
    cover = building_cover(raster, os.path.join(args.data, OUTLINES), args.tile)
    models = list(args.model or [os.path.join(ROOT, "models", "remoteclip-demo")])
    if args.random_vit:
        models.append(random_vit(work))
    results = {"raster": RASTER, "tile": args.tile, "cover": args.cover, "repeats": args.repeats, "models": {}}
    for model in models:
        results["models"][os.path.basename(model.rstrip("/"))] = measure(model, raster, cover, args, work)
    cols = [f"text {t}" for t in TEXTS] + [f"{n} examples" for n in (1, 3, 10)]
    for name, row in results["models"].items():
        print(f"{name}: {row['tiles']} tiles of {args.tile} px, {row['building_tiles']} building tiles "
              f"(>= {args.cover:.0%} under outlines); embedded in {row['embed_s']:.0f} s")
        for k in args.k:
            print(f"  precision@{k}: " + ", ".join(f"{c} {row[f'{c} @{k}']:.2f}" for c in cols)
                  + f", random {row['random 1']:.2f}")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
