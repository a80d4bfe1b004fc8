"""What QGIS's start costs the plugin: only what draws the toolbar button and registers the Processing
provider is imported by classFactory + initGui (scripts/plugin_load.py, a fresh Python with a real
QgsApplication, qgis.utils.loadPlugin/startPlugin as QGIS calls them). The time itself is measured by
bench/bench_plugin_load.py; tests never time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "remoteclip_qgis"

# the plugin's own modules QGIS's start may import: the entry, the dependency check, the Processing provider
AT_START = {"", ".plugin", ".deps", ".processing", ".processing.provider", ".processing.base",
            ".processing.parameters", ".processing.destination", ".processing.assessment"}
# imported on the first click of the toolbar button, a run or an algorithm's run, never at start
HEAVY = ("numpy", "osgeo.gdal_array", "onnxruntime", "rasterio", "PIL", "torch")
HEAVY_CORE = ("pipeline", "cache", "assess", "geodata.raster", "geodata.vectors", "runtime.inference",
              "runtime.tokenizer", "runtime.preprocess", "runtime.models", "runtime.download")


def _start(plugins: Path, tmp_path: Path) -> dict:
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", QGIS_CUSTOM_CONFIG_PATH=str(tmp_path / "profile"))
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "plugin_load.py"), str(plugins)],
                          capture_output=True, text=True, env=env, timeout=300)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_qgis_start_imports_neither_the_dock_nor_numpy_nor_the_run_path(built_plugin, tmp_path):
    out = _start(built_plugin, tmp_path)
    assert out["started"]
    ours = {m[len(PLUGIN):] for m in out["modules"] if m == PLUGIN or m.startswith(PLUGIN + ".")}
    gui = {m for m in ours if not m.startswith(".core")}
    assert gui == AT_START, f"imported at start beyond the button and Processing: {sorted(gui - AT_START)}"
    core = {m[len(".core."):] for m in ours if m.startswith(".core.")}
    assert "tasks" in core, "the Processing provider's algorithms come from core's task registry"
    assert not {m for m in core if any(m == h or m.startswith(h + ".") for h in HEAVY_CORE)}, sorted(core)
    heavy = [m for m in out["modules"] if m.split(".")[0] in HEAVY or m in HEAVY]
    assert heavy == [], heavy
