"""Plugin load time: what QGIS's own timer (Plugins > Manage and Install, qgis.utils.plugin_times) gives the
plugin at start, i.e. the process time of classFactory + initGui, median of several fresh processes.

    python bench/bench_plugin_load.py [--runs 7] [--plugin FOLDER]

Each run is a fresh Python with a real QgsApplication (offscreen) and a small real main window
(scripts/plugin_load.py), loading the plugin as `make package` lays it out (FOLDER holds remoteclip_qgis/;
built from this checkout when not given), byte-compiled first as QGIS leaves it after its first start.
Target (issue 25): under 0.05 s. Results: bench-results/plugin_load.json.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_file import machine, write_json  # noqa: E402  (bench/, beside this script)

TARGET_S = 0.05


def one_start(plugins: Path, profile: Path) -> dict:
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", QGIS_CUSTOM_CONFIG_PATH=str(profile))
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "plugin_load.py"), str(plugins)],
                          capture_output=True, text=True, env=env, timeout=300)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"the plugin did not start:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    out = json.loads(lines[-1][len("RESULT "):])
    if not out["started"]:
        raise RuntimeError("qgis.utils.startPlugin returned False")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--plugin", type=Path, help="folder holding remoteclip_qgis/ (default: built from here)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-results" / "plugin_load.json")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        plugins = args.plugin
        if plugins is None:
            plugins = Path(tmp) / "plugin"
            subprocess.run([sys.executable, str(ROOT / "scripts" / "package.py"), "--folder-only", "--out",
                            str(plugins)], check=True, capture_output=True)
        compileall.compile_dir(str(plugins), quiet=1)
        one_start(plugins, Path(tmp) / "profile")   # untimed: QGIS's own first-start work
        runs = []
        for _ in range(args.runs):
            runs.append(one_start(plugins, Path(tmp) / "profile"))
    seconds = [r["seconds"] for r in runs]
    wall = [r["wall"] for r in runs]
    ours = sorted(m for m in runs[-1]["modules"] if m.startswith("remoteclip_qgis"))
    result = {
        "benchmark": "plugin_load", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": dict(machine(1), load_avg_1min=round(os.getloadavg()[0], 2)),
        "runs": args.runs, "seconds_median": statistics.median(seconds), "seconds": seconds,
        "wall_median": statistics.median(wall), "target_s": TARGET_S,
        "meets_target": statistics.median(seconds) < TARGET_S, "plugin_modules_at_start": ours,
    }
    result["targets"] = [{"target": "plugin load (classFactory + initGui, QGIS's timer) s", "want": f"< {TARGET_S}",
                          "got": round(result["seconds_median"], 3), "met": result["meets_target"]}]
    print(f"classFactory + initGui (QGIS's timer, process time): median {result['seconds_median']:.3f} s "
          f"[{min(seconds):.3f}..{max(seconds):.3f}] over {args.runs} fresh processes; wall median "
          f"{result['wall_median']:.3f} s; target < {TARGET_S} s: {'met' if result['meets_target'] else 'MISSED'}")
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
