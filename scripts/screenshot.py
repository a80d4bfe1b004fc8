"""Screenshots of the plugin at work: a real QgsApplication, a main window with a map canvas
and a layer tree, the plugin loaded through qgis.utils from its packaged folder, the Kampala
orthomosaic labelled, counted and searched by real runs of the dock (QgsTasks), the styled
results on the map with their legends, and the dock at QGIS's default 300 px width.

    xvfb-run -a -s "-screen 0 1600x1600x24" .venv/bin/python scripts/screenshot.py docs/screenshot.png

writes docs/screenshot.png (the label result, the README's picture) and beside it
screenshot_dock.png (the whole dock at 300 px, every group open), screenshot_search.png,
screenshot_search_like.png (tiles picked on the map, the tiles most like them),
screenshot_count.png, screenshot_urban.png (labelled with the "urban" preset),
screenshot_classify.png (a Classify run from samples placed on the data's building outlines, its
report in the dock) and, for docs/assessment.md, screenshot_sample.png (a reference sample of the
Classify result in editing mode, one point's form open on its class list), screenshot_labelled.png
(the points' reference field filled: by the script, from the drawn building outlines) and
screenshot_assess.png (the report of "Assess the map"). Window shots are saved with 256 colours
(Pillow) to keep them small. Uses the demo model (models/remoteclip-demo) when it exists, else a tiny
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
OUTLINES = DATA / "orthomosaic" / "kampala_buildings_z21_chips.geojson"
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
    _save((widget or win.window).grab(), path)


def _save(pixmap, path: Path) -> None:
    """A PNG of 256 colours (a window over the orthomosaic is 1.1 MB in true colour, a third of it so)."""
    from qgis.PyQt.QtCore import QBuffer, QIODevice

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import io

        from PIL import Image
    except ImportError:
        if not pixmap.save(str(path), "PNG"):
            raise SystemExit(f"screenshot: could not write {path}") from None
    else:
        buf = QBuffer()
        buf.open(QIODevice.OpenModeFlag.WriteOnly)
        pixmap.save(buf, "PNG")
        image = Image.open(io.BytesIO(bytes(buf.data()))).convert("RGB")
        image.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
    print(path)


def _grab_screen(app, win, canvas, path: Path) -> None:
    """The main window with what is open over it (a dialog, a combo's list), as the screen shows it."""
    from qgis.PyQt.QtCore import QCoreApplication

    rendered = []
    canvas.mapCanvasRefreshed.connect(lambda: rendered.append(True))
    canvas.refreshAllLayers()
    _wait(lambda: bool(rendered) and not canvas.isDrawing(), 120, "the map render")
    for _ in range(10):
        QCoreApplication.processEvents()
        time.sleep(0.02)
    g = win.window.frameGeometry()
    _save(app.primaryScreen().grabWindow(0, g.x(), g.y(), g.width(), g.height()), path)


def _outlines():
    """The data's 215 drawn building outlines (CRS84, the mosaic's degrees)."""
    from qgis.core import QgsVectorLayer

    layer = QgsVectorLayer(str(OUTLINES), "building outlines", "ogr")
    if not layer.isValid():
        raise SystemExit(f"screenshot: cannot read {OUTLINES}")
    return [f.geometry() for f in layer.getFeatures()]


def _samples(raster, outlines):
    """Classify's samples, as an analyst would place them: points on 8 drawn buildings ("building") and 8
    points at least 3 m from any outline ("other"), spread over the mosaic (a fixed seed)."""
    import random

    from qgis.core import (
        QgsFeature,
        QgsGeometry,
        QgsMarkerSymbol,
        QgsPointXY,
        QgsSingleSymbolRenderer,
        QgsVectorLayer,
    )

    layer = QgsVectorLayer("Point?crs=EPSG:4326&field=class:string", "samples", "memory")
    rng = random.Random(3)
    feats = []
    for g in rng.sample(sorted(outlines, key=lambda g: -g.area())[:60], 8):
        feats.append((g.pointOnSurface(), "building"))
    ext = raster.extent()
    union = QgsGeometry.unaryUnion(outlines).buffer(3e-5, 4)   # about 3 m
    while len(feats) < 16:
        p = QgsGeometry.fromPointXY(QgsPointXY(rng.uniform(ext.xMinimum(), ext.xMaximum()),
                                               rng.uniform(ext.yMinimum(), ext.yMaximum())))
        if not union.contains(p):
            feats.append((p, "other"))
    out = []
    for geom, cls in feats:
        f = QgsFeature(layer.fields())
        f.setGeometry(geom)
        f.setAttributes([cls])
        out.append(f)
    layer.dataProvider().addFeatures(out)
    layer.updateExtents()
    layer.setRenderer(QgsSingleSymbolRenderer(QgsMarkerSymbol.createSimple(
        {"name": "triangle", "color": "white", "outline_color": "black", "outline_width": "0.4", "size": "3.4"})))
    return layer


def _reference(points, field: str, outlines) -> dict:
    """What the analyst picks by looking at the imagery, here filled by the script from the data's drawn
    outlines: "building" where a point falls in one, else "other". Returns the counts."""
    from qgis.core import QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsGeometry, QgsProject

    union = QgsGeometry.unaryUnion(outlines)
    ct = QgsCoordinateTransform(points.crs(), QgsCoordinateReferenceSystem("EPSG:4326"), QgsProject.instance())
    idx = points.fields().indexOf(field)
    counts: dict = {}
    for f in points.getFeatures():
        g = QgsGeometry(f.geometry())
        g.transform(ct)
        value = "building" if union.contains(g) else "other"
        if not points.changeAttributeValue(f.id(), idx, value):
            raise SystemExit("screenshot: could not fill a reference point")
        counts[value] = counts.get(value, 0) + 1
    return counts


def _assessment(app, win, canvas, dock, classified, samples, outlines, stem) -> None:
    """docs/assessment.md's pictures, on the Classify result (classes building and other, which the drawn
    outlines can check): a reference sample made in the dock's "Accuracy and areas" box, one point's form
    open on the class list; the points labelled (here by the script, from the outlines); "Assess the map"'s
    report."""
    from qgis.core import (
        QgsFillSymbol,
        QgsMarkerSymbol,
        QgsProject,
        QgsRasterLayer,
        QgsSingleSymbolRenderer,
        QgsVectorLayer,
    )
    from qgis.gui import QgsAttributeEditorContext, QgsAttributeForm, QgsDualView
    from qgis.PyQt.QtCore import QCoreApplication, Qt
    from qgis.PyQt.QtWidgets import QComboBox, QDockWidget

    project = QgsProject.instance()
    for layer in list(project.mapLayers().values()):   # the map, its imagery and (soon) its points
        if layer is not classified and not isinstance(layer, QgsRasterLayer) and layer is not samples:
            project.removeMapLayer(layer.id())
    project.layerTreeRoot().findLayer(samples.id()).setItemVisibilityChecked(False)
    box = dock.assess_box
    box.setCollapsed(False)
    box.map_combo.setLayer(classified)   # a finished run's polygons are already chosen
    box.map_field.setField("label")
    box.per_class.setValue(8)
    box.seed.setValue(1)
    points = box.make_sample()
    if points is None:
        raise SystemExit(f"screenshot: the dock made no sample: {dock.status.text()}")
    # QGIS gives a new layer a random colour (dark red on the red tiles here): white points stand out
    points.setRenderer(QgsSingleSymbolRenderer(QgsMarkerSymbol.createSimple(
        {"name": "circle", "color": "white", "outline_color": "black", "outline_width": "0.4", "size": "3"})))
    for _ in range(5):
        QCoreApplication.processEvents()
    dock.scroll.ensureWidgetVisible(box.assess_button, 0, 10)
    win.tree.expandAll()
    win.setActiveLayer(points)

    # one point's form (as Identify shows it) in a panel under the layers, its reference list open
    feature = next(points.getFeatures())
    points.selectByIds([feature.id()])
    panel = QDockWidget(f"Feature attributes: point {feature['sample_id']}", win.window)
    panel.setObjectName("feature_form")
    context = QgsAttributeEditorContext()
    context.setMapCanvas(canvas)
    form = QgsAttributeForm(points, feature, context, panel)
    panel.setWidget(form)
    win.window.addDockWidget(Qt.DockWidgetArea.LeftDockWidgetArea, panel)
    win.window.splitDockWidget(win.layers_dock, panel, Qt.Orientation.Vertical)
    win.window.resizeDocks([win.layers_dock, panel], [360, 420], Qt.Orientation.Vertical)
    win.window.resizeDocks([win.layers_dock], [330], Qt.Orientation.Horizontal)
    for _ in range(10):
        QCoreApplication.processEvents()
    combos = [c for c in form.findChildren(QComboBox) if c.isVisible() and c.count() > 1]
    if not combos:
        raise SystemExit("screenshot: the sample's form shows no class list")
    combos[-1].showPopup()
    _grab_screen(app, win, canvas, Path(f"{stem}_sample.png"))
    combos[-1].hidePopup()
    points.removeSelection()

    # the labelling, done here by the script (an analyst looks at the imagery): the attribute table
    counts = _reference(points, box.ref_field.currentField(), outlines)
    print(f"screenshot: reference filled: {counts}")
    form.deleteLater()
    table = QgsDualView(panel)
    table.init(points, canvas)
    table.setView(QgsDualView.ViewMode.AttributeTable)
    panel.setWidget(table)
    panel.setWindowTitle(f"Attribute table: {points.name()}, {points.featureCount()} points")
    for _ in range(10):
        QCoreApplication.processEvents()
    table.tableView().resizeColumnsToContents()
    drawn = QgsVectorLayer(str(OUTLINES), "building outlines (the data's)", "ogr")
    drawn.setRenderer(QgsSingleSymbolRenderer(QgsFillSymbol.createSimple(
        {"style": "no", "outline_color": "#00e5ff", "outline_width": "0.5"})))
    project.addMapLayer(drawn)
    win.tree.expandAll()
    win.setActiveLayer(points)
    _grab_screen(app, win, canvas, Path(f"{stem}_labelled.png"))
    project.removeMapLayer(drawn.id())
    win.window.removeDockWidget(panel)
    panel.deleteLater()

    report = box.assess()
    if report is None:
        raise SystemExit(f"screenshot: the dock did not assess: {dock.status.text()}")
    dialog = box.dialog
    for _ in range(10):
        QCoreApplication.processEvents()
    grown = 0
    while dialog.table.verticalScrollBar().maximum() > 0 and grown < 400:   # rows hidden: taller, as by hand
        grown += 10
        dialog.resize(dialog.width(), dialog.height() + 10)
        for _ in range(3):
            QCoreApplication.processEvents()
    if grown:
        print(f"screenshot: the report dialog hid rows of its table; made {grown} px taller", file=sys.stderr)
    _save(dialog.grab(), Path(f"{stem}_assess.png"))
    print(f"screenshot: {dock.status.text()}")
    dialog.close()
    if not points.commitChanges():   # as the analyst saves the labels
        raise SystemExit(f"screenshot: the labels were not saved: {points.commitErrors()}")


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
    from qgis.PyQt.QtCore import QCoreApplication, QPoint, QSize, Qt

    sys.path.insert(0, str(ROOT / "scripts"))
    from qgis_window import QgisWindow

    win = QgisWindow("RemoteCLIP for QGIS")
    qgis.utils.iface = win
    from qgis.gui import QgsGui

    QgsGui.editorWidgetRegistry().initEditors(win.canvas)   # as QGIS does: the Value Map and other editors
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

    canvas = win.canvas
    canvas.setDestinationCrs(raster.crs())
    canvas.setExtent(raster.extent().buffered(raster.extent().width() * 0.02))
    results = []

    def shoot(layer, path: Path, report=None, shown=()) -> None:
        """The window right after the run that made ``layer``: its status line, plan and legend."""
        size = dock.tile_size.value()   # the dock shows the tile size that made the map, and its plan
        dock.update_plan()
        _wait(lambda: not dock._plan_timer.isActive() and "counting" not in dock.plan_label.text()
              and dock.plan is not None and dock.plan.tile_px[0] == size, 60, "the plan")
        results.append(layer)
        _show_only(win, layer, results)
        for other in shown:
            QgsProject.instance().layerTreeRoot().findLayer(other.id()).setItemVisibilityChecked(True)
        win.tree.expandAll()
        if report is not None:   # the dock scrolled down to the run's report, its table whole
            for _ in range(10):
                QCoreApplication.processEvents()
            body = dock.scroll.widget()
            bottom = report.mapTo(body, QPoint(0, report.height())).y()
            dock.scroll.verticalScrollBar().setValue(bottom + 8 - dock.scroll.viewport().height())
        _grab(win, canvas, path)
        dock.scroll.verticalScrollBar().setValue(0)

    dock.set_kind("label")
    dock.labels_edit.setPlainText("\n".join(LABELS))
    dock.label_map_labels.setChecked(True)
    dock.output_widget.setFilePath(str(work / "kampala.gpkg"))
    _run(dock, "label")
    labels = dock.last_layer
    shoot(labels, args.out)

    dock.set_kind("count")
    dock.count_object.setText("building")
    dock.count_max.setValue(10)
    dock.tile_size.setValue(128)
    _run(dock, "count")
    shoot(dock.last_layer, Path(f"{stem}_count.png"))

    dock.set_kind("search")
    dock.search_query.setText("a red roof")
    dock.search_topk.setValue(5)
    dock.tile_size.setValue(128)
    _run(dock, "search")
    shoot(dock.last_layer, Path(f"{stem}_search.png"))

    # find more like this: three building tiles picked on the map with the Pick like tool, no text
    form = dock.forms["search"]
    form.widgets["query"].setText("")
    picks = form.map_picks
    for outline in sorted(_outlines(), key=lambda g: -g.area()):
        before = len(picks.picks)
        picks.click(outline.centroid().asPoint(), "like")   # the canvas is in the mosaic's CRS
        if len(picks.picks) < before:   # a second building on a picked tile un-picks it: pick it again
            picks.click(outline.centroid().asPoint(), "like")
        if len(picks.picks) == 3:
            break
    dock.output_widget.setFilePath(str(work / "kampala_like.gpkg"))
    _run(dock, "search by example")
    shoot(dock.last_layer, Path(f"{stem}_search_like.png"))
    picks.clear()

    # the "urban" preset on the label tiles (their embeddings come from the cache)
    from remoteclip_qgis.core.prompts import PRESETS

    dock.set_kind("label")
    dock.tile_size.setValue(256)
    dock.labels_edit.setPlainText("\n".join(PRESETS["urban"]))   # as picking "urban" in the preset list does
    dock.output_widget.setFilePath(str(work / "kampala_urban.gpkg"))
    _run(dock, "urban label")
    shoot(dock.last_layer, Path(f"{stem}_urban.png"))

    # Classify from samples on the drawn building outlines (128 px tiles: the count's cached embeddings),
    # the samples over their classes
    outlines = _outlines()
    samples = _samples(raster, outlines)
    QgsProject.instance().addMapLayer(samples)
    results.append(samples)
    dock.set_kind("classify")
    form = dock.forms["classify"]
    form.widgets["samples"].setLayer(samples)
    form.widgets["class_field"].setField("class")
    dock.tile_size.setValue(128)
    dock.output_widget.setFilePath(str(work / "kampala_classify.gpkg"))
    _run(dock, "classify")
    classified = dock.last_layer
    shoot(classified, Path(f"{stem}_classify.png"), report=form.report_table, shown=[samples])

    _assessment(app, win, canvas, dock, classified, samples, outlines, stem)

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
