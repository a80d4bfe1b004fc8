"""int8 against fp32 on real rasters: speed of the image encoder and agreement of labels, search and counts.

    python bench/bench_int8.py                 # ViT-B-32, RN50 (random weights) and the demo model
    python bench/bench_int8.py --models demo   # one of them
    python bench/bench_int8.py --static        # also static QDQ graphs calibrated on real tiles
    python bench/bench_int8.py --int8-text     # also the text graph quantised (not what bundles use)
    python bench/bench_int8.py --methods dynamic static static-ends static-ends-linear   # image methods

Models: ViT-B-32 and RN50 with random weights that look trained (training.reference_pipeline.
trained_looking; no pretrained weights exist on these machines), converted by core.runtime.convert, and the demo
model (trained here on the real data). Each gets int8 graphs from core.runtime.quantize: dynamic image graph with
the fp32 text graph (what the bundles use); with --int8-text the same with the text graph quantised too, and
with --static a QDQ image graph calibrated on 64 tiles of the Kampala z20 mosaic (a raster the agreement is
not measured on). Both are options because each variant costs a full pass over the rasters (make bench runs
the default). Every job runs through core's run_job, fp32 and int8, on the same tiles of three real rasters
(Kampala z21 mosaic, Landsat RGB with nodata, SpaceNet panchromatic uint16):

* labels: top-1 agreement (land-cover preset, default templates);
* search: Spearman rank correlation of the tiles' similarities (3 queries, mean), top-10 overlap;
* count: share of tiles with the same count (cars, 1..10).

Speed: image-encoder tiles/s on 32 real tiles, 3 repeats, median, with the session's thread count
recorded; fp32 and every int8 variant are timed interleaved (fp32, variant 1, variant 2, ... per repeat), so a
change of the machine's load falls on all of them alike. Writes bench-results/int8.json and prints the table that docs/bundles.md carries.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = Path(os.environ.get("REMOTECLIP_DATA", ROOT.parent / "shared" / "data")).resolve()
OUT = ROOT / "bench-results"
RASTERS = {  # name -> (file, tile px for 224-px models; the 64-px demo model takes a quarter of the side)
    "kampala_z21": ("orthomosaic/kampala_oam_z21_mosaic_3072x2048.tif", 128),
    "landsat_rgb": ("geotiff/rasterio_RGB.byte.tif", 64),
    "spacenet_pan": ("geotiff/solaris_sample_geotiff.tif", 100),
}
CALIBRATION = "orthomosaic/kampala_oam_z20_mosaic_1536x1024.tif"
QUERIES = ["a swimming pool", "a road with cars", "a large building with a flat roof"]
THREADS = 2


def trained_looking_bundle(arch: str, work: Path) -> Path:
    """Convert (core.runtime.convert, fp32) a trained-looking random checkpoint of ``arch``; reused between runs."""
    import open_clip
    import torch

    from core.runtime.convert import convert_checkpoint
    from training.reference_pipeline import text_tokens_dynamic, trained_looking

    out = work / f"{arch}-trained-looking"
    if (out / "manifest.json").is_file() and text_tokens_dynamic(out):
        return out
    ckpt = work / f"{arch}-trained-looking.pt"
    torch.manual_seed(0)
    torch.save(trained_looking(open_clip.create_model(arch, pretrained=None).state_dict()), ckpt)
    convert_checkpoint(ckpt, out, overwrite=True)
    ckpt.unlink()
    return out


def real_tiles(rel: str, image_cfg: dict, tile: int, n: int):
    """(n, 3, H, W) preprocessed tiles of a real raster, read as the pipeline reads them."""
    import numpy as np

    from core.geodata.raster import Stretch, default_bands, open_raster, read_rgb
    from core.geodata.tiles import TileSpec, make_grid
    from core.runtime.preprocess import preprocess

    src = open_raster(DATA / rel)
    try:
        bands = default_bands(src)
        stretch = Stretch.from_source(src, bands)
        grid = make_grid(src, TileSpec(size=tile))
        step = max(1, len(grid) // n)
        out = []
        for w in grid.windows()[::step][:n].tolist():
            rgb, valid = read_rgb(src, bands, tuple(w), stretch)
            out.append(preprocess(rgb, image_cfg, valid))
        return np.stack(out)
    finally:
        src.close()


def encoder_rates(runs: dict, pixels, repeats: int = 3) -> dict:
    """Tiles/s of each (bundle, precision) in ``runs`` (name -> pair), median of ``repeats``, interleaved."""
    from core.runtime.inference import Encoder

    encs = {}
    for name, (bundle, precision) in runs.items():
        encs[name] = Encoder(bundle, device="cpu", precision=precision, batch_size=len(pixels), threads=THREADS)
        encs[name].encode_images(pixels[:4])  # load, warm up
    rates = {name: [] for name in runs}
    for _ in range(repeats):
        for name, enc in encs.items():
            t0 = time.perf_counter()
            enc.encode_images(pixels)
            rates[name].append(len(pixels) / (time.perf_counter() - t0))
    return {name: statistics.median(r) for name, r in rates.items()}


def _ranks(x):
    import numpy as np

    r = np.empty(len(x))
    r[np.argsort(x, kind="stable")] = np.arange(len(x))
    return r


def spearman(a, b) -> float:
    import numpy as np

    return float(np.corrcoef(_ranks(np.asarray(a)), _ranks(np.asarray(b)))[0, 1])


def run_tasks(bundle, precision: str, raster: Path, tile: int, cache: Path) -> dict:
    """Label, search (per query) and count results by (row, col) for one precision."""
    from core.pipeline import CountTask, Job, LabelTask, RunOptions, SearchTask, TileSpec, run_job
    from core.prompts import PRESETS

    run = RunOptions(model=str(bundle), device="cpu", precision=precision, cache_dir=str(cache))
    spec = TileSpec(size=tile)

    def job(task):
        return run_job(Job(raster=str(raster), task=task, run=run, tiles=spec, max_tiles=None))

    out = {"labels": {(r["row"], r["col"]): r["label"] for r in job(LabelTask(PRESETS["land-cover"])).records}}
    out["search"] = [{(r["row"], r["col"]): r["similarity"] for r in job(SearchTask(q)).records} for q in QUERIES]
    out["count"] = {(r["row"], r["col"]): r["count"] for r in job(CountTask("car")).records}
    return out


def agreement(ref: dict, got: dict) -> dict:
    keys = sorted(ref["labels"])
    assert keys == sorted(got["labels"])
    labels = sum(ref["labels"][k] == got["labels"][k] for k in keys) / len(keys)
    rho, top10 = [], []

    def best(sims):
        return set(sorted(keys, key=lambda k: -sims[k])[:10])

    for a, b in zip(ref["search"], got["search"], strict=True):
        rho.append(spearman([a[k] for k in keys], [b[k] for k in keys]))
        top10.append(len(best(a) & best(b)) / 10)
    count = sum(ref["count"][k] == got["count"][k] for k in keys) / len(keys)
    return {"tiles": len(keys), "label_top1": round(labels, 4), "search_spearman": round(statistics.mean(rho), 4),
            "search_top10_overlap": round(statistics.mean(top10), 3), "count_agree": round(count, 4)}


def bench_model(name: str, bundle: Path, work: Path, static: bool, int8_text: bool = False,
                methods=("dynamic",), reuse: bool = False) -> dict:
    from core.runtime.bundle import load_bundle
    from core.runtime.quantize import quantize_bundle

    b = load_bundle(bundle)
    size = b.image["size"][0]
    scale = 1 if size >= 224 else 4   # the demo model sees 64 px: tiles a quarter of the side
    calib = real_tiles(CALIBRATION, b.image, 160 // scale, 64)
    variants = {}
    if static and "static" not in methods:
        methods = (*methods, "static")
    for method in methods:
        out = work / f"{name}-int8-{method}"
        vname = "int8 dynamic" if method == "dynamic" else f"int8 {method} QDQ"
        if reuse and (out / "manifest.json").is_file() and \
                load_bundle(out).manifest["quantization"]["int8"]["image"]["method"] == method:
            variants[vname] = out   # made by an earlier run of this bench (--reuse)
        elif method == "dynamic":
            variants[vname] = quantize_bundle(bundle, out, overwrite=True)
        else:
            variants[vname] = quantize_bundle(bundle, out, method=method, calibration=calib,
                                              images_note="64 Kampala z20 tiles", overwrite=True)
    if int8_text:
        variants["int8 dynamic, int8 text"] = quantize_bundle(bundle, work / f"{name}-int8-dynamic-text",
                                                              text="dynamic", overwrite=True)
    speed_pixels = real_tiles(RASTERS["kampala_z21"][0], b.image, RASTERS["kampala_z21"][1] // scale, 32)
    speed = encoder_rates({"fp32": (bundle, "fp32"), **{v: (vb, "int8") for v, vb in variants.items()}},
                          speed_pixels)
    fp32_rate = speed["fp32"]
    rows = {}
    per_raster_ref = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rname, (rel, tile) in RASTERS.items():
            per_raster_ref[rname] = run_tasks(bundle, "fp32", DATA / rel, tile // scale, Path(tmp) / "fp32")
        for vname, vbundle in variants.items():
            vb = load_bundle(vbundle)
            rate = speed[vname]
            per = {}
            for rname, (rel, tile) in RASTERS.items():
                got = run_tasks(vbundle, "int8", DATA / rel, tile // scale, Path(tmp) / vname.replace(" ", "_"))
                per[rname] = agreement(per_raster_ref[rname], got)
            tiles = sum(p["tiles"] for p in per.values())
            total = {k: round(sum(p[k] * p["tiles"] for p in per.values()) / tiles, 4)
                     for k in ("label_top1", "search_spearman", "search_top10_overlap", "count_agree")}
            rows[vname] = {"fp32_tiles_per_s": round(fp32_rate, 2), "int8_tiles_per_s": round(rate, 2),
                           "speedup": round(rate / fp32_rate, 2), "tiles": tiles, **total, "per_raster": per,
                           "size_mb": {p: round(sum((vb.path / f).stat().st_size
                                                    for f in vb.manifest["graphs"][p].values()) / 2**20, 1)
                                       for p in ("fp32", "int8")},
                           "manifest_record": vb.manifest["quantization"]["int8"]["agreement_vs_fp32"]}
    return {"model": name, "architecture": b.architecture, "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["ViT-B-32", "RN50", "demo"])
    ap.add_argument("--static", action="store_true", help="also static QDQ graphs calibrated on real tiles")
    ap.add_argument("--int8-text", action="store_true", help="also the dynamic graphs with the text graph int8")
    ap.add_argument("--reuse", action="store_true", help="reuse int8 bundles an earlier run made")
    ap.add_argument("--methods", nargs="+", default=["dynamic"], help="image graph methods (core.runtime.quantize.METHODS)")
    args = ap.parse_args(argv)
    if not (DATA / CALIBRATION).is_file():
        print(f"bench_int8: real data not found at {DATA}; set REMOTECLIP_DATA", file=sys.stderr)
        return 1
    import onnxruntime

    work = OUT / "int8"
    work.mkdir(parents=True, exist_ok=True)
    results = {"machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                           "threads": THREADS, "onnxruntime": onnxruntime.__version__,
                           "load_avg_1min": round(os.getloadavg()[0], 2)}, "models": []}
    for name in args.models:
        t0 = time.perf_counter()
        bundle = ROOT / "models" / "remoteclip-demo" if name == "demo" else trained_looking_bundle(name, work)
        r = bench_model(name, bundle, work, args.static, args.int8_text, tuple(args.methods), args.reuse)
        r["seconds"] = round(time.perf_counter() - t0, 1)
        results["models"].append(r)
        r["load_avg_1min_end"] = round(os.getloadavg()[0], 2)
        (OUT / "int8.json").write_text(json.dumps(results, indent=2) + "\n")   # each model as it is done
        print(f"{name}: done in {r['seconds']} s", flush=True)
    results["machine"]["load_avg_1min_end"] = round(os.getloadavg()[0], 2)
    (OUT / "int8.json").write_text(json.dumps(results, indent=2) + "\n")
    print()
    print("| model | method | tiles | label top-1 | search Spearman | search top-10 | count agree | "
          "fp32 tiles/s | int8 tiles/s | speed-up | size fp32 / int8 MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for m in results["models"]:
        label = f"{m['model']} (random)" if m["model"] != "demo" else "demo (trained here)"
        for method, r in m["rows"].items():
            print(f"| {label} | {method.replace('int8 ', '')} | {r['tiles']} | {r['label_top1']:.2%} | "
                  f"{r['search_spearman']:.4f} | {r['search_top10_overlap']:.0%} | {r['count_agree']:.2%} | "
                  f"{r['fp32_tiles_per_s']} | {r['int8_tiles_per_s']} | x{r['speedup']} | "
                  f"{r['size_mb']['fp32']} / {r['size_mb']['int8']} |")
    print(f"\nthreads {THREADS}, load average {results['machine']['load_avg_1min']} -> "
          f"{results['machine']['load_avg_1min_end']}; written {OUT / 'int8.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
