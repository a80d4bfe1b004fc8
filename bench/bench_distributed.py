"""Many rasters on Dask: one process against a LocalCluster of 1 and of 2 worker processes.

Eight rasters (sheets cut from the real Kampala z21 orthomosaic, 768 x 1024 px each), the same label job
(ViT-B-32 random weights exported as a bundle, 112 px tiles, no cache), warm: each worker (and the single
process) has encoded a raster before the timed run, so the figures are the steady rate, not the start-up.

Reported: tiles/s and the speed-up against the one-process run measured in the same run, the scaling
efficiency (rate with N workers / (N x rate with 1 worker)), the peak memory (VmHWM) of each worker process,
and the bytes a tile sends to the client (the pickled result a worker returns: indices and embeddings, no
pixels). Writes bench-results/distributed.json and prints a table.

On a machine with few cores, workers share them with each other and with onnxruntime's own threads: the
scaling measured here is a floor. ``--model demo`` runs the small demo bundle instead (quick).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = Path(os.environ.get("REMOTECLIP_DATA", ROOT.parent / "shared" / "data")).resolve()
MOSAIC = DATA / "orthomosaic" / "kampala_oam_z21_mosaic_3072x2048.tif"
OUT = ROOT / "bench-results"
LABELS = ["buildings", "road", "trees", "grass", "bare soil", "water", "cars", "roofs"]


def sheets(folder: Path) -> list[Path]:
    sys.path.insert(0, str(ROOT / "tests"))
    from test_collection import cut_sheets

    return cut_sheets(MOSAIC, folder, rows=2, cols=4)


def run(rasters, bundle, tile_px: int, dask: str | None, threads: int | None = None):
    from core.pipeline import Job, LabelTask, RunOptions, TileSpec, run_job

    job = Job(raster=[str(r) for r in rasters], task=LabelTask(LABELS), tiles=TileSpec(size=tile_px),
              run=RunOptions(model=str(bundle), cache_dir="", threads=threads), dask=dask)
    t0 = time.perf_counter()
    res = run_job(job)
    return res, time.perf_counter() - t0


def _vm_hwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def result_bytes_per_tile(res, rasters) -> float:
    """What the workers sent back for this job: one pickled core.pipeline.encode.Encoded per raster (the indices
    and embeddings of its kept tiles), divided by the tiles."""
    from core.pipeline.encode import Encoded

    total = 0
    start = 0
    for name in res.sources:
        n = sum(1 for r in res.records if r["source"] == name)
        emb = res.embeddings[start:start + n]
        import numpy as np

        total += len(pickle.dumps(Encoded(0, np.arange(n, dtype=np.int64), emb, images_encoded=n, block=(0, n)),
                                  protocol=5))
        start += n
    return total / max(res.n_tiles, 1)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="vit-b-32", help="vit-b-32 (random weights, exported once) or demo")
    ap.add_argument("--tile", type=int, default=112)
    args = ap.parse_args()
    import distributed

    OUT.mkdir(exist_ok=True)
    if args.model == "demo":
        bundle = ROOT / "models" / "remoteclip-demo"
    else:
        from training.reference_pipeline import random_bundle

        bundle = random_bundle("ViT-B-32", OUT / "models" / "ViT-B-32-random-0", seed=0)
    results: dict = {"machine": {"cpus": os.cpu_count(), "load_average_before": os.getloadavg()[0],
                                 "note": "cores shared with other developers' jobs"},
                     "model": str(bundle), "tile_px": args.tile, "rasters": 8}
    with tempfile.TemporaryDirectory() as tmp:
        rasters = sheets(Path(tmp) / "sheets")
        run(rasters[:1], bundle, args.tile, None)                       # warm: sessions loaded
        res1, s1 = run(rasters, bundle, args.tile, None)
        results["one_process"] = {"tiles": res1.n_tiles, "seconds": round(s1, 2),
                                  "tiles_per_s": round(res1.n_tiles / s1, 2), "peak_rss_mb": round(_vm_hwm_mb(), 1)}
        ref = [{k: v for k, v in r.items()} for r in res1.records]
        for n in (1, 2):
            with distributed.LocalCluster(n_workers=n, threads_per_worker=2, processes=True, host="127.0.0.1",
                                          dashboard_address=None, silence_logs=logging.ERROR) as lc, \
                    distributed.Client(lc) as client:
                # as --dask local:N does: two tasks a worker, onnxruntime threads = cores / N
                threads = max(1, (os.cpu_count() or 1) // n)
                run(rasters[:n], bundle, args.tile, lc.scheduler_address, threads)   # warm: the bundle loaded
                res, s = run(rasters, bundle, args.tile, lc.scheduler_address, threads)
                mem = client.run(_vm_hwm_mb)
                results[f"workers_{n}"] = {
                    "tiles": res.n_tiles, "seconds": round(s, 2), "onnxruntime_threads": threads, "tiles_per_s": round(res.n_tiles / s, 2),
                    "speedup_vs_one_process": round(s1 / s, 3), "peak_rss_mb_per_worker":
                        sorted(round(v, 1) for v in mem.values()),
                    "bytes_to_client_per_tile": round(result_bytes_per_tile(res, rasters), 1),
                    "identical_to_one_process": [dict(r) for r in res.records] == ref}
        r1, r2 = results["workers_1"]["tiles_per_s"], results["workers_2"]["tiles_per_s"]
        results["scaling_efficiency_2_workers"] = round(r2 / (2 * r1), 3)
    (OUT / "distributed.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"{'run':<14}{'tiles/s':>9}{'x 1 proc':>10}{'peak MB/worker':>18}{'B/tile':>9}")
    print(f"{'one process':<14}{results['one_process']['tiles_per_s']:>9}{1.0:>10}"
          f"{results['one_process']['peak_rss_mb']:>18}{'-':>9}")
    for n in (1, 2):
        r = results[f"workers_{n}"]
        print(f"{f'{n} worker(s)':<14}{r['tiles_per_s']:>9}{r['speedup_vs_one_process']:>10}"
              f"{str(r['peak_rss_mb_per_worker']):>18}{r['bytes_to_client_per_tile']:>9}")
    print(f"scaling efficiency, 2 workers: {results['scaling_efficiency_2_workers']}  "
          f"(this machine: {os.cpu_count()} cores, shared)")
    print(f"written {OUT / 'distributed.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
