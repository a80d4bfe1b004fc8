"""The dock as an analyst first sees it: QGIS opens docks 300 px wide. At QGIS's font and at 1.5 times
it, with every group open, each task's page, the missing-packages banner, the demo banner and a long
message in the status line, nothing is cut off: every widget lies inside the panel and every label's
text fits (tests/layout_check.py measures it). Checked in the test QGIS and in the real QGIS
application on a fresh profile, where the toolbar button must be visible too."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import require

ROOT = Path(__file__).resolve().parents[1]
QGIS_FONT_PT = 9.0     # QGIS's own font size on Linux (the test QGIS starts at 12 pt)
DOCK_WIDTH = 300       # QGIS's default dock width
LONG_PATH = ("/home/analyst/projects/kampala_2024_field_campaign/remoteclip_results/"
             "kampala_oam_z20_mosaic_1536x1024_label_20240101_120000.gpkg")


@pytest.fixture
def window(rc, qgis_new_project, monkeypatch):
    import qgis.utils

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from qgis_window import QgisWindow
    finally:
        sys.path.pop(0)
    win = QgisWindow()
    monkeypatch.setattr(qgis.utils, "iface", win)
    win.window.resize(1400, 900)
    yield win
    win.close()


def _settle():
    from qgis.PyQt.QtCore import QCoreApplication

    for _ in range(5):
        QCoreApplication.processEvents()


@pytest.fixture(params=[1.0, 1.5], ids=["font-1x", "font-1.5x"])
def narrow_dock(request, window, monkeypatch):
    from qgis.core import QgsSettings
    from qgis.gui import QgsCollapsibleGroupBox
    from qgis.PyQt.QtCore import Qt
    from qgis.PyQt.QtWidgets import QApplication

    from remoteclip_qgis import deps
    from remoteclip_qgis.dock import RemoteClipDock

    app = QApplication.instance()
    font = app.font()
    scaled = app.font()
    scaled.setPointSizeF(QGIS_FONT_PT * request.param)
    app.setFont(scaled)
    QgsSettings().remove("RemoteCLIP")
    # a first start: the packages are missing (the banner with its command shows) and the demo model is chosen
    monkeypatch.setattr(deps, "missing_modules", lambda: ["onnxruntime", "ftfy", "regex"])
    dock = RemoteClipDock(window.window)
    window.window.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
    window.window.show()
    window.window.resizeDocks([dock], [DOCK_WIDTH], Qt.Orientation.Horizontal)
    for box in dock.findChildren(QgsCollapsibleGroupBox):
        box.setCollapsed(False)
    _settle()
    yield dock
    dock.unload()
    window.window.removeDockWidget(dock)
    dock.deleteLater()
    app.setFont(font)
    QgsSettings().remove("RemoteCLIP")


def test_nothing_is_cut_off_at_300_px(narrow_dock):
    from layout_check import clipped

    dock = narrow_dock
    assert dock.width() == DOCK_WIDTH
    assert dock.banner.isVisible() and " -m pip install " in dock.manual_edit.text()
    assert dock.demo_banner.isVisible(), "the demo model is the default and says so"
    from remoteclip_qgis.core.summary import SummaryRow

    dock.show_summary("label", [SummaryRow("dense residential area with courtyards", 1234, 5.6e6),
                                SummaryRow("parking lot", 7, 1234.0)])
    dock.result_title.setText("kampala_oam_z20_mosaic_1536x1024 · labels · land-cover · 256 px: 1,241 tiles")
    assert dock.result_box.isVisibleTo(dock)
    problems = []
    for i in range(dock.tabs.count()):
        dock.tabs.setCurrentIndex(i)
        dock._report_error(f"The output {LONG_PATH} is shown in this project by the layer “kampala · labels”.",
                           "Remove that layer from the Layers panel first, or choose another output file.")
        dock.output_widget.setFilePath(LONG_PATH)
        _settle()
        problems += [f"{dock.tabs.tabText(i)}: {p}" for p in clipped(dock.widget(), dock.scroll.viewport())]
    assert problems == [], "\n".join(problems)


def test_the_checker_sees_what_is_cut_off(narrow_dock):
    """The measure itself: a label that cannot wrap, a button wider than the panel, a too-long form row."""
    from layout_check import clipped
    from qgis.PyQt.QtWidgets import QLabel, QPushButton

    dock = narrow_dock
    body = dock.scroll.widget()
    label = QLabel("a label that does not wrap and is far too long for a dock three hundred pixels wide", body)
    body.layout().insertWidget(0, label)
    button = QPushButton("Install dependencies into the profile's python folder now", body)
    button.setMinimumWidth(400)
    body.layout().insertWidget(0, button)
    _settle()
    problems = clipped(dock.widget(), dock.scroll.viewport())
    assert any("does not wrap" in p for p in problems)
    assert any("Install dependencies into" in p for p in problems)


def test_long_paths_are_elided_in_the_middle_and_whole_in_the_tooltip(narrow_dock):
    from remoteclip_qgis.dock import results_folder

    dock = narrow_dock
    dock.set_results_folder(str(Path(LONG_PATH).parent))
    _settle()
    shown = dock.folder_label.text()
    assert "…" in shown and shown.startswith("/home") and shown.endswith("results")
    assert dock.folder_label.fontMetrics().horizontalAdvance(shown) <= dock.folder_label.contentsRect().width()
    assert str(results_folder()) in dock.folder_label.toolTip() == dock.folder_label.toolTip()


# --------------------------------------------------------------------------------- in the QGIS program

REAL_CODE = """
    from qgis.PyQt.QtCore import Qt
    from qgis.PyQt.QtWidgets import QApplication, QToolBar
    from qgis.gui import QgsCollapsibleGroupBox
    from layout_check import clipped
    window = iface.mainWindow()
    action = plugin.dock_action
    toolbars = [w for w in action.associatedWidgets() if isinstance(w, QToolBar)]
    report(toolbars=[(t.objectName(), t.isVisible()) for t in toolbars],
           raster_toolbar=window.findChild(QToolBar, "mRasterToolBar").isVisible())
    action.trigger()
    dock = plugin.dock
    # the first start's banner, whatever this machine has installed (the longest content the dock shows)
    from remoteclip_qgis import deps
    deps.missing_modules = lambda: ["onnxruntime", "ftfy", "regex"]
    dock.refresh_dependencies()
    window.resizeDocks([dock], [300], Qt.Orientation.Horizontal)
    for box in dock.findChildren(QgsCollapsibleGroupBox):
        box.setCollapsed(False)
    problems = []
    for i in range(dock.tabs.count()):
        dock.tabs.setCurrentIndex(i)
        for _ in range(10):
            QCoreApplication.processEvents()
        problems += [dock.tabs.tabText(i) + ": " + p for p in clipped(dock.widget(), dock.scroll.viewport())]
    report(width=dock.width(), font=dock.font().pointSizeF(), problems=problems,
           banner=dock.banner.isVisible(), demo=dock.demo_banner.isVisible())
"""


@pytest.fixture(scope="module")
def real_qgis(built_plugin, tmp_path_factory):
    """The QGIS program on a fresh profile with the plugin, at QGIS's font size and at 1.5 times it (QGIS's
    Settings > Options > General > Font size)."""
    from qgis_app import qgis_program, run_in_qgis

    require(qgis_program() is not None, "the qgis program is not installed")
    out = {}
    for scale in (1.0, 1.5):
        size = str(QGIS_FONT_PT * scale)
        # Settings > Options > General > Font size: the key moved in QGIS 3.40
        settings = {"qgis": {"stylesheet\\fontPointSize": size}, "app": {"fontPointSize": size}} \
            if scale != 1.0 else None
        out[scale] = run_in_qgis(built_plugin, tmp_path_factory.mktemp(f"qgis-{scale}"), REAL_CODE,
                                 settings=settings)
    return out


def test_in_real_qgis_the_toolbar_button_is_on_a_toolbar_a_fresh_profile_shows(real_qgis):
    out = real_qgis[1.0]
    assert "error" not in out, out["error"]
    assert not out["raster_toolbar"], "QGIS shows the Raster toolbar on a fresh profile now: rethink this test"
    assert out["toolbars"], "the RemoteCLIP action is on no toolbar"
    assert all(visible for _name, visible in out["toolbars"]), out["toolbars"]
    assert ["mPluginToolBar", True] in out["toolbars"]


@pytest.mark.parametrize("scale", [1.0, 1.5])
def test_in_real_qgis_the_dock_lays_out_fully_at_300_px(real_qgis, scale):
    out = real_qgis[scale]
    assert "error" not in out, out["error"]
    assert out["width"] == DOCK_WIDTH and out["font"] == pytest.approx(QGIS_FONT_PT * scale)
    assert out["banner"], "the missing packages' banner did not show"
    assert out["demo"], "a fresh profile has the demo model chosen, and says so"
    assert out["problems"] == []


def test_a_short_task_page_leaves_no_gap_under_it(narrow_dock):
    """The task pages take the shown page's height, not the tallest page's (Classify): no empty band between
    a short page and the Tiles group."""
    dock = narrow_dock
    heights = {}
    for i in range(dock.tabs.count()):
        dock.tabs.setCurrentIndex(i)
        _settle()
        page = dock.tabs.currentWidget()
        need = page.heightForWidth(page.width()) if page.hasHeightForWidth() else page.sizeHint().height()
        heights[dock.tabs.tabText(i)] = (dock.tabs.stack.height(), need)
    assert all(shown <= need + 4 for shown, need in heights.values()), heights
    assert heights["Embed"][0] < max(shown for shown, _ in heights.values()), heights


def test_nothing_is_cut_off_after_each_tasks_run(narrow_dock, tiny_bundle, data_dir, tmp_path, monkeypatch):
    """After a run the dock shows more: the Last result table, the status line, and for classify the report, whose
    per-class table was 422 px wide and widened the page past the 286 px view. Each task run for real at 300 px."""
    import time

    from layout_check import clipped
    from qgis.core import QgsProject, QgsRasterLayer
    from qgis.PyQt.QtCore import QCoreApplication
    from test_classify_jobs import kampala_samples
    from test_classify_qgis import samples_layer

    from remoteclip_qgis import deps

    monkeypatch.setattr(deps, "missing_modules", lambda: [])
    monkeypatch.setenv("REMOTECLIP_CACHE", str(tmp_path / "cache"))
    dock = narrow_dock
    kampala = kampala_samples(data_dir, seed=1)
    raster = QgsRasterLayer(kampala["raster"], "kampala")
    samples = samples_layer(kampala)
    # long class names: the report's table is as wide as its longest name
    for f in samples.getFeatures():
        samples.dataProvider().changeAttributeValues({f.id(): {0: f["kind"] + " with a long descriptive name"}})
    QgsProject.instance().addMapLayers([raster, samples])
    dock.model_widget.setFilePath(str(tiny_bundle))
    dock.layer_combo.setLayer(raster)
    dock.tile_size.setValue(256)
    problems = []
    for kind in ("label", "count", "search", "classify", "embed"):
        dock.set_kind(kind)
        form = dock.forms[kind]
        if kind == "search":
            form.widgets["query"].setText("a swimming pool")
        if kind == "count":
            form.widgets["object_name"].setText("buildings")
        if kind == "classify":
            form.widgets["samples"].setLayer(samples)
            form.widgets["class_field"].setField("kind")
            dock.tile_size.setValue(128)
        dock.output_widget.setFilePath(str(tmp_path / f"{kind}.gpkg"))
        assert dock.run() is not None, dock.status.text()
        deadline = time.monotonic() + 300
        while dock.task is not None:
            assert time.monotonic() < deadline
            QCoreApplication.processEvents()
            time.sleep(0.01)
        _settle()
        assert dock.status.text().startswith("Done"), dock.status.text()
        if kind == "classify":   # the report and its table show, the table as wide as its longest class
            table = form.report_table
            assert table.isVisible() and "long descriptive name" in table.toPlainText()
            widest = max(table.fontMetrics().horizontalAdvance(line) for line in table.toPlainText().split("\n"))
            assert widest > dock.scroll.viewport().width() and table.horizontalScrollBar().maximum() > 0
        problems += [f"{kind}: {p}" for p in clipped(dock.widget(), dock.scroll.viewport())]
        page = dock.scroll.widget()
        assert page.width() <= dock.scroll.viewport().width(), (kind, page.width(), dock.scroll.viewport().width())
    assert problems == [], "\n".join(problems)
