"""Scale benchmark: planning a 10-million-tile grid, relabelling a million cached tiles, writing a million
polygons. Sizes are made synthetically (a VRT as large as needed over the real Kampala mosaic, unit-vector
embeddings put into the embedding cache), each measurement in its own process for a clean peak memory.

    python bench/bench_scale.py

* plan: ``plan_job`` on a 708,400 x 708,400 px VRT with 224 px tiles (10,004,569 tiles): seconds and the
  peak memory it adds to the process (targets < 10 s, < 1 GB);
* labels: 1,000,000 tiles x 20 classes, 512-d embeddings: core.records.label_columns (the pipeline's path)
  against the per-tile label_records it replaced (tests/record_loops.py), same inputs, same run (target < 1 s);
* relabel: run_job on a 224,000 x 224,000 px VRT (1,000,000 tiles of 224 px) whose embeddings are in the
  cache, 20 classes, written to a GeoPackage: seconds per phase (target for the writing < 60 s);
* writing: write_vector of 100,000 records as columns against the same records as dicts (the former path).

Writes bench-results/scale.json and prints a table with the targets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = Path(os.environ.get("REMOTECLIP_DATA", ROOT.parent / "shared" / "data")).resolve()
MOSAIC = DATA / "orthomosaic" / "kampala_oam_z21_mosaic_3072x2048.tif"
OUT = ROOT / "bench-results"
DEMO = ROOT / "models" / "remoteclip-demo"
CLASSES = ["buildings", "road", "trees", "grass", "bare soil", "water", "farmland", "parking lot",
           "dense residential area", "sparse residential area", "commercial area", "industrial area", "park",
           "construction site", "river", "forest", "beach", "airport", "railway", "bridge"]
TARGETS = {"plan_s": 10.0, "plan_mb": 1024.0, "labels_s": 1.0, "write_s": 60.0}


def huge_vrt(path: Path, size: int) -> Path:
    """A size x size VRT with the mosaic's origin, pixel size and bands; the mosaic fills its top-left corner."""
    from osgeo import gdal

    ds = gdal.Open(str(MOSAIC))
    w, h, n = ds.RasterXSize, ds.RasterYSize, ds.RasterCount
    gt, srs = ds.GetGeoTransform(), ds.GetProjection()
    interps = [gdal.GetColorInterpretationName(ds.GetRasterBand(b + 1).GetColorInterpretation()) for b in range(n)]
    ds = None
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}"><ColorInterp>{interps[b - 1]}</ColorInterp>'
        f'<SimpleSource><SourceFilename relativeToVRT="0">{MOSAIC}</SourceFilename><SourceBand>{b}</SourceBand>'
        f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/><DstRect xOff="0" yOff="0" xSize="{w}" '
        f'ySize="{h}"/></SimpleSource></VRTRasterBand>' for b in range(1, n + 1))
    path.write_text(f'<VRTDataset rasterXSize="{size}" rasterYSize="{size}"><SRS>{srs}</SRS>'
                    f"<GeoTransform>{', '.join(repr(v) for v in gt)}</GeoTransform>{bands}</VRTDataset>")
    return path


_PRELUDE = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
def mem(key):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key)) / 1024
import numpy as np
from core.pipeline import Job, LabelTask, RunOptions, TileSpec, plan_job, run_job
from core.records import label_columns
from core.tasks import slug_fields
sys.path.insert(0, sys.argv[1] + '/tests')
from record_loops import label_records
from core.geodata.vectors import write_vector
"""

_PLAN = _PRELUDE + r"""
base = mem("VmRSS:")
t0 = time.perf_counter()
plan = plan_job(Job(raster=sys.argv[2], task=LabelTask(["a", "b"]), run=RunOptions(model=sys.argv[3]),
                    tiles=TileSpec(size=224), max_tiles=None))
print(json.dumps({"tiles": plan.n_tiles, "seconds": time.perf_counter() - t0, "added_mb": mem("VmHWM:") - base}))
"""

_LABELS = _PRELUDE + r"""
n, d, c = int(sys.argv[2]), 512, 20
rng = np.random.default_rng(0)
emb = rng.standard_normal((n, d), dtype=np.float32)
emb /= np.linalg.norm(emb, axis=1, keepdims=True)
text = rng.standard_normal((c, d), dtype=np.float32)
text /= np.linalg.norm(text, axis=1, keepdims=True)
labels = [f"class {i}" for i in range(c)]
pnames = slug_fields(labels)
times, cpu = [], []
for _ in range(3):
    t0, c0 = time.perf_counter(), time.process_time()
    label_columns(emb, text, labels, 100.0, 3, None, pnames)
    times.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
t0 = time.perf_counter()
label_records(emb, text, labels, 100.0, 3, None)
ref = time.perf_counter() - t0
# CPU seconds (all threads): what the wall time would be on one idle core, whatever the load was
print(json.dumps({"tiles": n, "classes": c, "dim": d, "columns_s": sorted(times)[1], "columns_all_s": times,
                  "columns_cpu_s": sorted(cpu)[1], "per_tile_records_s": ref}))
"""

_RELABEL = _PRELUDE + r"""
raster, bundle, cache_dir, out, classes = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], json.loads(sys.argv[6])
run = RunOptions(model=bundle, cache_dir=cache_dir, device="cpu")
base = mem("VmRSS:")
t0, c0 = time.perf_counter(), time.process_time()
res = run_job(Job(raster=raster, task=LabelTask(classes), run=run, tiles=TileSpec(size=224), output=out,
                  max_tiles=None))
print(json.dumps({"tiles": res.n_tiles, "cache_hit": res.cache_hit, "seconds": time.perf_counter() - t0,
                  "cpu_s": time.process_time() - c0,
                  "phases_s": res.timings, "added_mb": mem("VmHWM:") - base,
                  "gpkg_mb": __import__("os").path.getsize(out) / 2**20}))
"""

_WRITE = _PRELUDE + r"""
from core.records import Records, count_columns
from core.geodata.tiles import make_grid
from types import SimpleNamespace
n, folder = int(sys.argv[2]), sys.argv[3]
side = int(np.ceil(np.sqrt(n)))
src = SimpleNamespace(name="s", width=side * 224, height=side * 224, crs_wkt="",
                      transform=(0.5, 0.0, 400000.0, 0.0, -0.5, 5000000.0))
grid = make_grid(src, TileSpec(size=224))
rng = np.random.default_rng(0)
emb = rng.standard_normal((n, 64), dtype=np.float32); emb /= np.linalg.norm(emb, axis=1, keepdims=True)
text = rng.standard_normal((10, 64), dtype=np.float32); text /= np.linalg.norm(text, axis=1, keepdims=True)
fields, cols = count_columns(emb, text, 100.0)
recs = Records(fields, cols, grid=grid, index=np.arange(n))
fields = [("row", "int"), ("col", "int"), *fields]
crs = "EPSG:32636"
from osgeo import osr
s = osr.SpatialReference(); s.ImportFromEPSG(32636); crs = s.ExportToWkt()
t0 = time.perf_counter()
write_vector(folder + "/columns.gpkg", recs, fields, crs)
columns_s = time.perf_counter() - t0
dicts = list(recs)
t0 = time.perf_counter()
write_vector(folder + "/dicts.gpkg", dicts, fields, crs)
dicts_s = time.perf_counter() - t0
print(json.dumps({"records": n, "columns_s": columns_s, "dicts_s": dicts_s}))
"""


def child(code: str, *args) -> dict:
    out = subprocess.run([sys.executable, "-c", code, str(ROOT), *map(str, args)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def seed_cache(raster: Path, bundle: Path, cache_dir: Path, n: int) -> None:
    """Put n unit-vector embeddings for the raster's 224 px grid into the embedding cache, as `embed` would."""
    import numpy as np

    from core.cache import EmbeddingCache
    from core.geodata.raster import Stretch, default_bands, open_raster
    from core.geodata.tiles import TileSpec
    from core.runtime.bundle import load_bundle

    b = load_bundle(bundle)
    src = open_raster(str(raster))
    try:
        bands = default_bands(src)
        cache = EmbeddingCache(str(cache_dir))
        key = cache.key(src, TileSpec(size=224), bands, Stretch.from_source(src, bands), b.sha256 + ":fp32")
        rng = np.random.default_rng(0)
        emb = rng.standard_normal((n, b.embed_dim), dtype=np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        cache.save(key, np.arange(n, dtype=np.int64), emb)
    finally:
        src.close()


def main() -> int:
    if not MOSAIC.is_file():
        print(f"bench_scale: real data not found at {DATA}; set REMOTECLIP_DATA", file=sys.stderr)
        return 1
    OUT.mkdir(exist_ok=True)
    results = {"machine": {"cpus": os.cpu_count(), "load_avg_1min_start": round(os.getloadavg()[0], 2)}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        plan = child(_PLAN, huge_vrt(tmp / "plan.vrt", 708_400), DEMO)
        results["plan"] = plan
        print(f"plan: {plan['tiles']:,} tiles in {plan['seconds']:.2f} s, +{plan['added_mb']:.0f} MB", flush=True)
        labels = child(_LABELS, 1_000_000)
        results["labels"] = labels
        print(f"labels: {labels['tiles']:,} x {labels['classes']} in {labels['columns_s']:.2f} s, "
          f"{labels['columns_cpu_s']:.2f} CPU s (per-tile records "
              f"{labels['per_tile_records_s']:.1f} s)", flush=True)
        vrt = huge_vrt(tmp / "relabel.vrt", 224_000)
        seed_cache(vrt, DEMO, tmp / "cache", 1_000_000)
        relabel = child(_RELABEL, vrt, DEMO, tmp / "cache", tmp / "relabel.gpkg", json.dumps(CLASSES))
        results["relabel"] = relabel
        print(f"relabel: {relabel['tiles']:,} tiles, phases {relabel['phases_s']}", flush=True)
        write = child(_WRITE, 100_000, tmp)
        results["write_100k"] = write
        print(f"write 100,000: columns {write['columns_s']:.1f} s, dicts {write['dicts_s']:.1f} s", flush=True)
    results["machine"]["load_avg_1min_end"] = round(os.getloadavg()[0], 2)
    rows = [
        ("plan 10M tiles: seconds", f"< {TARGETS['plan_s']:g}", round(plan["seconds"], 2),
         plan["seconds"] < TARGETS["plan_s"]),
        ("plan 10M tiles: added peak memory MB", f"< {TARGETS['plan_mb']:g}", round(plan["added_mb"]),
         plan["added_mb"] < TARGETS["plan_mb"]),
        ("labels 1M x 20 classes: seconds", f"< {TARGETS['labels_s']:g}", round(labels["columns_s"], 2),
         labels["columns_s"] < TARGETS["labels_s"]),
        ("relabel 1M: results phase (labels + GeoPackage) s", f"< {TARGETS['write_s']:g}",
         round(relabel["phases_s"]["results"], 1), relabel["phases_s"]["results"] < TARGETS["write_s"]),
    ]
    results["targets"] = [{"target": t, "want": w, "got": g, "met": m} for t, w, g, m in rows]
    (OUT / "scale.json").write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(f"load average {results['machine']['load_avg_1min_start']} -> {results['machine']['load_avg_1min_end']}; "
          f"labels: x{labels['per_tile_records_s'] / labels['columns_s']:.0f} faster than per-tile records; "
          f"writing: columns x{write['dicts_s'] / write['columns_s']:.2f} the speed of dicts")
    print(f"relabel 1M: {relabel['seconds']:.1f} s in all ({relabel['cpu_s']:.1f} CPU s), "
          f"+{relabel['added_mb']:.0f} MB peak, "
          f"GeoPackage {relabel['gpkg_mb']:.0f} MB")
    print(f"{'target':52} {'want':>7} {'got':>8}  met")
    for t in results["targets"]:
        print(f"{t['target']:52} {t['want']:>7} {t['got']:>8}  {'yes' if t['met'] else 'NO'}")
    print(f"written {OUT / 'scale.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
