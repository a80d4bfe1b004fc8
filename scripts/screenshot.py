"""Screenshots of the plugin at work: a real QgsApplication, a main window with a map canvas
and a layer tree, the plugin loaded through qgis.utils from its packaged folder, the Kampala
orthomosaic labelled, counted and searched by real runs of the dock (QgsTasks), the styled
results on the map with their legends, and the dock at QGIS's default 300 px width.

    xvfb-run -a -s "-screen 0 1600x1600x24" .venv/bin/python scripts/screenshot.py docs/screenshot.png

writes docs/screenshot.png (the label result, the README's picture) and beside it
screenshot_dock.png (the whole dock at 300 px, every group open), screenshot_search.png and
screenshot_count.png. Uses the demo model (models/remoteclip-demo) when it exists, else a tiny
random test bundle (then the results mean nothing; the pictures still show the workflow).
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


def _run(dock, what: str) -> None:
    if dock.run() is None:
        raise SystemExit(f"screenshot: the dock refused to run {what}: {dock.status.text()}")
    _wait(lambda: dock.task is None, 600, f"the {what} task")
    if dock.last_layer is None:
        raise SystemExit(f"screenshot: the {what} run failed: {dock.status.text()}")


def _show_only(win, layer, others) -> None:
    from qgis.core import QgsProject

    root = QgsProject.instance().layerTreeRoot()
    for other in others:
        node = root.findLayer(other.id())
        if node is not None:
            node.setItemVisibilityChecked(other is layer)
    win.setActiveLayer(layer)


def _grab(win, canvas, path: Path, widget=None) -> None:
    from qgis.PyQt.QtCore import QCoreApplication

    rendered = []
    canvas.mapCanvasRefreshed.connect(lambda: rendered.append(True))
    canvas.refreshAllLayers()
    _wait(lambda: bool(rendered) and not canvas.isDrawing(), 120, "the map render")
    for _ in range(5):
        QCoreApplication.processEvents()
    path.parent.mkdir(parents=True, exist_ok=True)
    if not (widget or win.window).grab().save(str(path), "PNG"):
        raise SystemExit(f"screenshot: could not write {path}")
    print(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="PNG of the label result; the others are written beside it")
    parser.add_argument("--size", default="1600x1000", help="window size, WxH")
    args = parser.parse_args(argv)
    if not RASTER.is_file():
        raise SystemExit(f"screenshot: {RASTER} not found; set REMOTECLIP_DATA")
    width, height = (int(v) for v in args.size.split("x"))
    stem = args.out.with_suffix("")

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
    font = app.font()
    font.setPointSizeF(9.0)   # QGIS's own font size (a bare QgsApplication starts larger)
    app.setFont(font)
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
    win.window.resizeDocks([win.layers_dock, plugin.dock], [330, 300], Qt.Orientation.Horizontal)

    dock = plugin.dock
    dock.layer_combo.setLayer(raster)
    if model is not None:
        dock.model_widget.setFilePath(model)
    dock.tile_size.setValue(256)
    dock.tile_unit.setCurrentIndex(dock.tile_unit.findData("px"))

    dock.set_kind("label")
    dock.labels_edit.setPlainText("\n".join(LABELS))
    dock.label_map_labels.setChecked(True)
    dock.output_widget.setFilePath(str(work / "kampala.gpkg"))
    _run(dock, "label")
    labels = dock.last_layer

    dock.set_kind("count")
    dock.count_object.setText("building")
    dock.count_max.setValue(10)
    dock.tile_size.setValue(128)
    _run(dock, "count")
    counts = dock.last_layer

    dock.set_kind("search")
    dock.search_query.setText("a red roof")
    dock.search_topk.setValue(5)
    dock.tile_size.setValue(128)
    _run(dock, "search")
    search = dock.last_layer

    win.tree.expandAll()
    canvas = win.canvas
    canvas.setDestinationCrs(raster.crs())
    canvas.setExtent(raster.extent().buffered(raster.extent().width() * 0.02))
    results = [labels, counts, search]
    for kind, layer, size, path in (("count", counts, 128, Path(f"{stem}_count.png")),
                                    ("search", search, 128, Path(f"{stem}_search.png")),
                                    ("label", labels, 256, args.out)):
        dock.set_kind(kind)
        dock.tile_size.setValue(size)   # the dock shows the tile size that made the map, and its plan
        dock.update_plan()
        _wait(lambda s=size: not dock._plan_timer.isActive() and "counting" not in dock.plan_label.text()
              and dock.plan is not None and dock.plan.tile_px[0] == s, 60, "the plan")
        _show_only(win, layer, results)
        win.tree.expandAll()
        _grab(win, canvas, path)

    # the whole dock at 300 px: every group open, the window as tall as the dock's content
    from qgis.gui import QgsCollapsibleGroupBox

    for box in dock.findChildren(QgsCollapsibleGroupBox):
        box.setCollapsed(False)
    for _ in range(5):
        QCoreApplication.processEvents()
    body = dock.scroll.widget()
    win.window.resize(QSize(width, max(height, body.sizeHint().height() + 400)))
    win.window.resizeDocks([win.layers_dock, plugin.dock], [330, 300], Qt.Orientation.Horizontal)
    dock.scroll.verticalScrollBar().setValue(0)
    _grab(win, canvas, Path(f"{stem}_dock.png"), widget=dock)
    print(f"{args.out}: {dock.status.text()}")
    qgis.utils.unloadPlugin("remoteclip_qgis")
    QgsProject.instance().removeAllMapLayers()
    win.close()
    QCoreApplication.processEvents()
    app.exitQgis()
    return 0


if __name__ == "__main__":
    sys.exit(main())
