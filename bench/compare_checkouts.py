"""The same command-line jobs on two checkouts of this repository, interleaved in one run (old, new, new, old,
...; the first round warms the disk cache and is not counted), cache off, 2 threads, the CPU; median and all
wall times per job and the ratio new / old. Issue 21 asked that the one-run-path redesign keep the figures
within 5 %:

    git worktree add /tmp/old fd166f0 && ln -s $PWD/.venv /tmp/old/.venv
    .venv/bin/python bench/compare_checkouts.py /tmp/old . 8

Each side runs its own code (``python -m core`` in its folder). Jobs: label, search and count with the demo
model at 64 px on the Kampala mosaics, and label with a random-weight ViT-B-32 at 224 px (made once under
bench-results/models by training.reference_pipeline.random_bundle)."""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OLD, NEW = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
REPEATS = int(sys.argv[3]) if len(sys.argv) > 3 else 5
DATA = Path(os.environ.get("REMOTECLIP_DATA", ROOT.parent / "shared" / "data"))
Z20 = DATA / "orthomosaic/kampala_oam_z20_mosaic_1536x1024.tif"
Z21 = DATA / "orthomosaic/kampala_oam_z21_mosaic_3072x2048.tif"
VIT = ROOT / "bench-results" / "models" / "ViT-B-32-random-0"
DEMO = ROOT / "models" / "remoteclip-demo"
if not (VIT / "manifest.json").is_file():
    sys.path.insert(0, str(ROOT))
    from training.reference_pipeline import random_bundle

    random_bundle("ViT-B-32", VIT, seed=0)
JOBS = {
    "label demo 64px z21": ["label", str(Z21), "--model", str(DEMO), "--tile-size", "64", "--preset", "land-cover"],
    "search demo 64px z21": ["search", str(Z21), "--model", str(DEMO), "--tile-size", "64", "--query", "buildings"],
    "count demo 64px z20": ["count", str(Z20), "--model", str(DEMO), "--tile-size", "64", "--object", "cars"],
    "label ViT-B-32 224px z20": ["label", str(Z20), "--model", str(VIT), "--tile-size", "224", "--preset", "land-cover"],
}
env = dict(os.environ, OMP_NUM_THREADS="2", REMOTECLIP_DATA=str(DATA))
times = {j: {"old": [], "new": []} for j in JOBS}
load0 = os.getloadavg()
with tempfile.TemporaryDirectory() as tmp:
    for r in range(REPEATS + 1):
        for job, args in JOBS.items():
            for side, root in (("old", OLD), ("new", NEW)) if r % 2 == 0 else (("new", NEW), ("old", OLD)):
                out = Path(tmp) / f"{side}.gpkg"
                cmd = [str(root / ".venv/bin/python"), "-m", "core", *args, "-o", str(out), "--overwrite",
                       "--no-cache", "-y", "-q", "--device", "cpu"]
                t0 = time.perf_counter()
                p = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
                dt = time.perf_counter() - t0
                if p.returncode:
                    sys.exit(f"{side} {job} failed: {p.stderr[-2000:]}")
                if r:  # the first round warms the disk cache and is not counted
                    times[job][side].append(dt)
        print(f"round {r} done", flush=True)
res = {"repeats": REPEATS, "load_avg_start": load0, "load_avg_end": os.getloadavg(), "jobs": {}}
for job, t in times.items():
    o, n = statistics.median(t["old"]), statistics.median(t["new"])
    res["jobs"][job] = {"old_s": round(o, 2), "new_s": round(n, 2), "new_over_old": round(n / o, 3),
                        "old_all": [round(x, 2) for x in t["old"]], "new_all": [round(x, 2) for x in t["new"]]}
print(json.dumps(res, indent=1))
(ROOT / "bench-results").mkdir(exist_ok=True)
(ROOT / "bench-results" / "compare_checkouts.json").write_text(json.dumps(res, indent=1))
