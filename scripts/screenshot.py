"""Screenshot of the plugin at work: a real QgsApplication, a main window with a map canvas
and a layer tree, the plugin loaded through qgis.utils from its packaged folder, the Kampala
orthomosaic labelled by a real run of the dock (a QgsTask), the styled result on the map.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshot.py docs/screenshot.png

Uses the demo model (models/remoteclip-demo) when it exists, else a tiny random test
bundle (then the labels mean nothing; the picture still shows the workflow).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("REMOTECLIP_DATA", ROOT.parent / "shared" / "data"))
RASTER = DATA / "orthomosaic" / "kampala_oam_z20_mosaic_1536x1024.tif"
LABELS = ["buildings", "road", "trees", "grass", "bare soil"]


def _wait(predicate, limit: float, what: str) -> None:
    from qgis.PyQt.QtCore import QCoreApplication

    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"screenshot: {what} did not happen within {limit:.0f} s")
        QCoreApplication.processEvents()
        time.sleep(0.02)


def _model(work: Path) -> str | None:
    """None: the dock's default, the demo model packaged inside the plugin."""
    if (ROOT / "models" / "remoteclip-demo" / "manifest.json").is_file():
        return None
    print("screenshot: models/remoteclip-demo not found; using a tiny random test bundle", file=sys.stderr)
    sys.path.insert(0, str(ROOT))
    from training.export import export_tiny_test_bundle

    out = work / "tiny"
    export_tiny_test_bundle(out)
    return str(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="PNG to write")
    parser.add_argument("--size", default="1600x1000", help="window size, WxH")
    args = parser.parse_args(argv)
    if not RASTER.is_file():
        raise SystemExit(f"screenshot: {RASTER} not found; set REMOTECLIP_DATA")
    width, height = (int(v) for v in args.size.split("x"))

    work = Path(tempfile.mkdtemp(prefix="remoteclip-screenshot-"))
    os.environ.setdefault("QGIS_CUSTOM_CONFIG_PATH", str(work / "profile"))
    os.environ["REMOTECLIP_CACHE"] = str(work / "cache")
    model = _model(work)

    import subprocess

    subprocess.run([sys.executable, str(ROOT / "scripts" / "package.py"), "--folder-only", "--out",
                    str(work / "plugins")], check=True, stdout=subprocess.DEVNULL)

    from qgis.core import QgsApplication, QgsProject, QgsRasterLayer

    app = QgsApplication([], True)
    app.initQgis()
    import qgis.utils
    from qgis.PyQt.QtCore import QCoreApplication, QSize, Qt

    sys.path.insert(0, str(ROOT / "scripts"))
    from qgis_window import QgisWindow

    win = QgisWindow("RemoteCLIP for QGIS")
    qgis.utils.iface = win
    qgis.utils.plugin_paths[:] = [str(work / "plugins")]
    sys.path.insert(0, str(work / "plugins"))
    qgis.utils.updateAvailablePlugins()
    if not (qgis.utils.loadPlugin("remoteclip_qgis") and qgis.utils.startPlugin("remoteclip_qgis")):
        raise SystemExit("screenshot: the plugin did not start")
    plugin = qgis.utils.plugins["remoteclip_qgis"]

    raster = QgsRasterLayer(str(RASTER), "Kampala orthomosaic")
    QgsProject.instance().addMapLayer(raster)
    win.window.resize(QSize(width, height))
    win.window.show()
    plugin.dock_action.trigger()
    win.window.resizeDocks([win.layers_dock, plugin.dock], [330, 470], Qt.Horizontal)

    dock = plugin.dock
    dock.layer_combo.setLayer(raster)
    if model is not None:
        dock.model_widget.setFilePath(model)
    dock.set_kind("label")
    dock.labels_edit.setPlainText("\n".join(LABELS))
    dock.tile_size.setValue(256)
    dock.tile_unit.setCurrentIndex(dock.tile_unit.findData("px"))
    dock.label_map_labels.setChecked(True)
    dock.output_widget.setFilePath(str(work / "kampala_labels.gpkg"))
    if dock.run() is None:
        raise SystemExit(f"screenshot: the dock refused to run: {dock.status.text()}")
    _wait(lambda: dock.task is None, 600, "the label task")
    if dock.last_layer is None:
        raise SystemExit(f"screenshot: the run failed: {dock.status.text()}")

    win.setActiveLayer(dock.last_layer)
    win.tree.expandAll()
    canvas = win.canvas
    canvas.setDestinationCrs(raster.crs())
    canvas.setExtent(raster.extent().buffered(raster.extent().width() * 0.02))
    rendered = []
    canvas.mapCanvasRefreshed.connect(lambda: rendered.append(True))
    canvas.refreshAllLayers()
    _wait(lambda: bool(rendered) and not canvas.isDrawing(), 120, "the map render")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not win.window.grab().save(str(args.out), "PNG"):
        raise SystemExit(f"screenshot: could not write {args.out}")
    print(f"{args.out}: {dock.status.text()}")
    qgis.utils.unloadPlugin("remoteclip_qgis")
    QgsProject.instance().removeAllMapLayers()
    win.close()
    QCoreApplication.processEvents()
    app.exitQgis()
    return 0


if __name__ == "__main__":
    sys.exit(main())
