"""End-to-end pipeline benchmark: core's run_job (ONNX) against the reference (PIL + open_clip + torch).

Same ViT-B-32 random weights (exported as a bundle), same tiles, same run, on
this machine's CPU. Rasters: the real Kampala orthomosaic and a 20,000 x 20,000
pixel VRT that tiles it (the large run is limited to a fixed block of tiles by
a bbox so it ends in minutes). Peak memory: one subprocess per raster size
runs a whole-raster job and reports its peak RSS (VmHWM; ru_maxrss would
inherit the forking parent's peak); the two should be about the same, because
reading is windowed and batches are bounded.

Writes bench-results/pipeline.json and prints a table. Figures are ratios
against the reference measured in the same run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = Path(os.environ.get("REMOTECLIP_DATA", ROOT.parent / "shared" / "data")).resolve()
MOSAIC = DATA / "orthomosaic" / "kampala_oam_z21_mosaic_3072x2048.tif"
OUT = ROOT / "bench-results"
MODEL_DIR = OUT / "models" / "ViT-B-32-random-0"
LABELS = ["buildings", "road", "trees", "grass", "bare soil", "water", "cars", "roofs"]
BIG = 20000
LARGE_TILES = (12, 10)  # columns x rows of 224 px tiles in the large raster's bbox run
# peak memory runs: a small batch, so the 6 tiles of the small raster fill the pipeline (2 batches queued)
# as the 400 of the large one do; with 32 the small run would never hold full batches and the
# difference would measure the batch, not the raster
PEAK_BATCH = 4


def big_vrt(path: Path, src: Path = MOSAIC, size: int = BIG) -> Path:
    """A size x size VRT repeating the mosaic, same origin and pixel size (reads real pixels everywhere)."""
    from osgeo import gdal

    ds = gdal.Open(str(src))
    w, h, n = ds.RasterXSize, ds.RasterYSize, ds.RasterCount
    gt = ds.GetGeoTransform()
    srs = ds.GetProjection()
    interps = [gdal.GetColorInterpretationName(ds.GetRasterBand(b + 1).GetColorInterpretation()) for b in range(n)]
    ds = None
    bands = []
    for b in range(1, n + 1):
        sources = []
        for r0 in range(0, size, h):
            for c0 in range(0, size, w):
                cw, ch = min(w, size - c0), min(h, size - r0)
                sources.append(
                    f'<SimpleSource><SourceFilename relativeToVRT="0">{src}</SourceFilename>'
                    f"<SourceBand>{b}</SourceBand>"
                    f'<SrcRect xOff="0" yOff="0" xSize="{cw}" ySize="{ch}"/>'
                    f'<DstRect xOff="{c0}" yOff="{r0}" xSize="{cw}" ySize="{ch}"/></SimpleSource>')
        bands.append(f'<VRTRasterBand dataType="Byte" band="{b}"><ColorInterp>{interps[b - 1]}</ColorInterp>'
                     + "".join(sources) + "</VRTRasterBand>")
    xml = (f'<VRTDataset rasterXSize="{size}" rasterYSize="{size}"><SRS>{srs}</SRS>'
           f"<GeoTransform>{', '.join(repr(v) for v in gt)}</GeoTransform>" + "".join(bands) + "</VRTDataset>")
    path.write_text(xml)
    return path


def center_bbox(raster: Path, cols: int, rows: int, tile: int = 224):
    """A BBox covering cols x rows whole tiles in the middle of the raster (pixel-aligned)."""
    import rasterio

    from core.tiles import BBox

    with rasterio.open(raster) as ds:
        t = ds.transform
        c0 = (ds.width // 2 // tile) * tile
        r0 = (ds.height // 2 // tile) * tile
    x0, y0 = t * (c0, r0)
    x1, y1 = t * (c0 + cols * tile, r0 + rows * tile)
    # shrink by a quarter pixel so no neighbour tile touches the box
    dx, dy = abs(t.a) / 4, abs(t.e) / 4
    return BBox(min(x0, x1) + dx, min(y0, y1) + dy, max(x0, x1) - dx, max(y0, y1) - dy, None)


def time_core(raster, tiles, bundle, batch_size=32):
    from core.jobs import Job, LabelTask, RunOptions, run_job

    job = Job(raster=str(raster), task=LabelTask(LABELS), tiles=tiles,
              run=RunOptions(model=str(bundle), device="auto", batch_size=batch_size, cache_dir=""))
    t0 = time.perf_counter()
    res = run_job(job)
    return time.perf_counter() - t0, res


def time_reference(raster, tiles, model, pp, batch_size=32):
    from training.reference_pipeline import reference_labels

    t0 = time.perf_counter()
    labels = reference_labels(str(raster), model, pp, LABELS, tiles=tiles, batch_size=batch_size,
                              logit_scale=100.0)
    return time.perf_counter() - t0, labels


def time_relabel_from_cache(raster, tiles, bundle, cache_dir):
    from core.jobs import Job, LabelTask, RunOptions, run_job

    run = RunOptions(model=str(bundle), cache_dir=str(cache_dir))
    run_job(Job(raster=str(raster), task=LabelTask(LABELS), tiles=tiles, run=run))
    t0 = time.perf_counter()
    res = run_job(Job(raster=str(raster), task=LabelTask(LABELS[::-1][:5]), tiles=tiles, run=run))
    assert res.cache_hit
    return time.perf_counter() - t0, res


_PEAK_CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from core.jobs import Job, LabelTask, RunOptions, TileSpec, run_job
t0 = time.perf_counter()
res = run_job(Job(raster=sys.argv[2], task=LabelTask(["buildings", "trees", "road", "water"]),
                  tiles=TileSpec(size=float(sys.argv[4])),
                  run=RunOptions(model=sys.argv[3], cache_dir="", batch_size=int(sys.argv[5]))))
# VmHWM: this process image's own peak (ru_maxrss would carry the forking parent's peak across exec)
try:
    peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024
except OSError:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"peak_rss_mb": peak, "tiles": res.n_tiles, "seconds": time.perf_counter() - t0}))
"""


def peak_memory(raster, bundle, tile_px: int, batch_size: int = PEAK_BATCH) -> dict:
    out = subprocess.run([sys.executable, "-c", _PEAK_CHILD, str(ROOT), str(raster), str(bundle), str(tile_px),
                          str(batch_size)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def agreement(core_res, ref_labels) -> float:
    ours = {(r["row"], r["col"]): r["label"] for r in core_res.records}
    common = set(ours) & set(ref_labels)
    assert len(common) == len(ours) == len(ref_labels), (len(ours), len(ref_labels))
    return sum(ours[k] == ref_labels[k][0] for k in common) / max(len(common), 1)


def main() -> int:
    import torch

    from core.inference import release_sessions
    from core.tiles import TileSpec
    from training.reference_pipeline import random_bundle, random_model

    if not MOSAIC.is_file():
        print(f"bench_pipeline: real data not found at {DATA}; set REMOTECLIP_DATA", file=sys.stderr)
        return 1
    OUT.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    bundle = random_bundle("ViT-B-32", MODEL_DIR, seed=0)
    export_s = time.perf_counter() - t0
    model, pp, _ = random_model("ViT-B-32", seed=0)
    results: dict = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
                     "model": "ViT-B-32 (random weights, seed 0)", "bundle_export_s": round(export_s, 1), "runs": {}}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        vrt = big_vrt(Path(tmp) / "kampala_20000.vrt")
        cases = {
            "kampala_mosaic_3072x2048": (MOSAIC, TileSpec(size=224)),
            "vrt_20000x20000_bbox": (vrt, TileSpec(size=224, extent=center_bbox(vrt, *LARGE_TILES))),
        }
        for name, (raster, tiles) in cases.items():
            # cold: the run loads the ONNX graphs (a first run in QGIS); warm: the sessions are loaded, as the
            # reference's torch model is (every later run in the same QGIS or process)
            release_sessions()
            cold_s, _ = time_core(raster, tiles, bundle)
            core_s, res = time_core(raster, tiles, bundle)
            ref_s, ref = time_reference(raster, tiles, model, pp)
            n = res.n_tiles
            r = {"raster": str(raster.name), "tiles": n, "core_cold_s": round(cold_s, 2), "core_s": round(core_s, 2),
                 "reference_s": round(ref_s, 2), "core_cold_tiles_per_s": round(n / cold_s, 2),
                 "core_tiles_per_s": round(n / core_s, 2), "reference_tiles_per_s": round(n / ref_s, 2),
                 "speedup_vs_reference": round(ref_s / core_s, 2), "top1_agreement": round(agreement(res, ref), 4),
                 "provider": res.provider}
            results["runs"][name] = r
            rows.append((name, r))
            print(f"{name}: {n} tiles, core {r['core_tiles_per_s']} tiles/s (first run {r['core_cold_tiles_per_s']}), "
                  f"reference {r['reference_tiles_per_s']} tiles/s, x{r['speedup_vs_reference']}, "
                  f"agreement {r['top1_agreement']}", flush=True)
        cache_s, res = time_relabel_from_cache(MOSAIC, TileSpec(size=224), bundle, Path(tmp) / "cache")
        results["relabel_from_cache"] = {"tiles": res.n_tiles, "seconds": round(cache_s, 3),
                                         "tiles_per_s": round(res.n_tiles / cache_s, 1),
                                         "speedup_vs_encoding": round(
                                             results["runs"]["kampala_mosaic_3072x2048"]["core_s"] / cache_s, 1)}
        # whole-raster runs: 1024 px tiles (resized to 224) so the 20,000 px raster is read entirely,
        # in batches of PEAK_BATCH
        small = peak_memory(MOSAIC, bundle, 1024)
        large = peak_memory(vrt, bundle, 1024)
        results["peak_memory"] = {
            "small": {"raster": "3072x2048", **{k: round(v, 1) for k, v in small.items()}},
            "large": {"raster": f"{BIG}x{BIG}", **{k: round(v, 1) for k, v in large.items()}},
            "pixels_ratio": round(BIG * BIG / (3072 * 2048), 1), "batch_size": PEAK_BATCH, "tile_px": 1024,
            "peak_ratio_large_over_small": round(large["peak_rss_mb"] / small["peak_rss_mb"], 3),
        }
    (OUT / "pipeline.json").write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(f"{'run':34} {'tiles':>6} {'core 1st t/s':>12} {'core t/s':>9} {'ref t/s':>8} {'speedup':>8} {'agree':>6}")
    for name, r in rows:
        print(f"{name:34} {r['tiles']:>6} {r['core_cold_tiles_per_s']:>12} {r['core_tiles_per_s']:>9} "
              f"{r['reference_tiles_per_s']:>8} {r['speedup_vs_reference']:>8} {r['top1_agreement']:>6}")
    c = results["relabel_from_cache"]
    print(f"relabel from cache: {c['tiles']} tiles in {c['seconds']} s ({c['speedup_vs_encoding']}x faster "
          "than encoding)")
    m = results["peak_memory"]
    print(f"peak RSS: {m['small']['peak_rss_mb']} MB ({m['small']['raster']}, {m['small']['tiles']:.0f} tiles) vs "
          f"{m['large']['peak_rss_mb']} MB ({m['large']['raster']}, {m['large']['tiles']:.0f} tiles): "
          f"x{m['peak_ratio_large_over_small']} for x{m['pixels_ratio']} pixels")
    print(f"written {OUT / 'pipeline.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
