"""The dock in real QGIS: widgets -> core Job, runs as real QgsTasks on real GeoTIFFs with a real
(tiny) ONNX bundle, styled GeoPackage layers in the RemoteCLIP group, cache reuse, cancel, errors
on the message bar, export to Shapefile/GeoPackage."""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

PLUGIN = "remoteclip_qgis"
KAMPALA = "orthomosaic/kampala_oam_z20_mosaic_1536x1024.tif"
UTM = "geotiff/rasterio_RGB.byte.tif"
WAIT_S = 600   # upper bound for one tiny-model run; a hang fails instead of blocking the suite


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("REMOTECLIP_CACHE", str(folder))
    return folder


@pytest.fixture
def dock(rc, qgis_iface, qgis_new_project, tiny_bundle, cache_dir):
    from qgis.core import QgsSettings

    from remoteclip_qgis.dock import RemoteClipDock

    QgsSettings().remove("RemoteCLIP")   # each test starts from the defaults, not the last test's choices
    d = RemoteClipDock()
    assert d.iface is qgis_iface   # the dock works through qgis.utils.iface, as in QGIS
    d.model_widget.setFilePath(str(tiny_bundle))
    d.batch_size.setValue(8)
    qgis_iface.messageBar().clear_messages()
    yield d
    d.unload()
    if d.task is not None:
        _wait(d)
    d.deleteLater()


def _raster(data_dir: Path, rel: str, name: str):
    from qgis.core import QgsProject, QgsRasterLayer

    layer = QgsRasterLayer(str(data_dir / rel), name)
    assert layer.isValid(), rel
    QgsProject.instance().addMapLayer(layer)
    return layer


def _wait(dock) -> None:
    from qgis.PyQt.QtCore import QCoreApplication

    deadline = time.monotonic() + WAIT_S
    while dock.task is not None:
        assert time.monotonic() < deadline, f"the task did not end within {WAIT_S} s"
        QCoreApplication.processEvents()
        time.sleep(0.01)
    QCoreApplication.processEvents()


def _run(dock):
    task = dock.run()
    assert task is not None, dock.status.text()
    # the last run's device is not shown as this one's
    assert dock.provider_label.text().startswith("ran on: … (running"), dock.provider_label.text()
    _wait(dock)
    return task


def _group_layers(name: str = "RemoteCLIP") -> list:
    from qgis.core import QgsProject

    group = QgsProject.instance().layerTreeRoot().findGroup(name)
    return [] if group is None else [n.layer() for n in group.findLayers()]


def _check_result_layer(layer, raster, gpkg: Path, n_tiles: int) -> None:
    from qgis.core import QgsProject

    assert layer in _group_layers()
    assert QgsProject.instance().mapLayer(layer.id()) is layer
    assert layer.providerType() == "ogr"
    assert layer.source().split("|")[0] == str(gpkg) and gpkg.is_file()
    assert layer.dataProvider().storageType() == "GPKG"
    assert layer.crs() == raster.crs()
    assert layer.featureCount() == n_tiles > 0
    assert raster.extent().buffered(1e-9 * max(raster.extent().width(), 1)).contains(layer.extent())


# ------------------------------------------------------------------------------------------------ runs

def test_label_run_on_the_kampala_mosaic_then_search_reuses_the_cache(dock, data_dir, tmp_path, qgis_iface):
    raster = _raster(data_dir, KAMPALA, "kampala")
    dock.layer_combo.setLayer(raster)
    dock.set_kind("label")
    dock.labels_edit.setPlainText("buildings\ntrees\nroad\nbare soil")
    dock.tile_size.setValue(256)
    dock.tile_unit.setCurrentIndex(dock.tile_unit.findData("px"))
    out = tmp_path / "labels.gpkg"
    dock.output_widget.setFilePath(str(out))
    from qgis.core import QgsProject, QgsVectorLayer

    other_map = QgsVectorLayer("Polygon?crs=EPSG:32636&field=label:string", "other map", "memory")
    QgsProject.instance().addMapLayer(other_map)   # the Accuracy box's map until the run's result comes

    _run(dock)
    result, layer = dock.last_result, dock.last_layer
    assert result is not None and layer is not None, dock.status.text()
    assert result.n_tiles == math.ceil(1536 / 256) * math.ceil(1024 / 256)   # no nodata: every tile
    _check_result_layer(layer, raster, out, result.n_tiles)
    assert not result.cache_hit and "from cache" not in dock.status.text()
    assert dock.provider_label.text() == "ran on: CPU · fp32 (auto: no int8 graphs in this bundle)"   # not CPUExecutionProvider
    assert "on CPU, fp32" in dock.status.text()
    assert f"{result.n_tiles} tiles" in dock.status.text()
    assert dock.progress.value() == 100

    renderer = layer.renderer()
    assert renderer.type() == "categorizedSymbol" and renderer.classAttribute() == "label"
    labels = {f["label"] for f in layer.getFeatures()}
    assert {c.value() for c in renderer.categories()} == labels
    assert labels <= {"buildings", "trees", "road", "bare soil", "unknown"}
    # the Last result table: per class its tiles and ground area, the most tiles first
    table = dock.result_table
    rows = [[table.topLevelItem(i).text(c) for c in range(3)] for i in range(table.topLevelItemCount())]
    assert dock.result_box.isVisibleTo(dock) and table.headerItem().text(0) == "Class"
    assert {r[0] for r in rows} == labels and sum(int(r[1]) for r in rows) == result.n_tiles
    assert [int(r[1]) for r in rows] == sorted((int(r[1]) for r in rows), reverse=True)
    assert all(r[2].endswith(("m²", "ha")) for r in rows)
    # the result is the map the Accuracy and areas box checks (tests/test_assess_qgis.py)
    assert dock.assess_box.map_combo.currentLayer() is layer and dock.assess_box.map_field.currentField() == "label"
    # legend entries name the class and how many tiles it has
    for cat in renderer.categories():
        n = sum(1 for f in layer.getFeatures() if f["label"] == cat.value())
        assert cat.label().startswith(f"{cat.value()} ({n} tile")
    # p_* fields carry the class names core stored with the result
    field = {v: k for k, v in result.field_map.items()}["bare soil"]
    idx = layer.fields().indexOf(field)
    assert field.startswith("p_bare") and idx >= 0 and layer.attributeAlias(idx) == "P(bare soil)"
    from qgis.core import Qgis

    assert any("kampala · labels" in m for m in qgis_iface.messageBar().get_messages(Qgis.Success))

    # same raster, tiles and model: the search reads no pixels
    dock.set_kind("search")
    dock.search_query.setText("a red roof")
    dock.search_topk.setValue(5)
    out2 = tmp_path / "search.gpkg"
    dock.output_widget.setFilePath(str(out2))
    _run(dock)
    result2, layer2 = dock.last_result, dock.last_layer
    assert result2.cache_hit and result2.images_encoded == 0
    assert "from cache" in dock.status.text() and "from cache" in dock.provider_label.text()
    _check_result_layer(layer2, raster, out2, result.n_tiles)
    rules = [r.filterExpression() for r in layer2.renderer().rootRule().children()]
    assert layer2.renderer().type() == "RuleRenderer" and all('"similarity"' in r for r in rules[:-1])
    assert rules[-1] == '"selected" = 1'   # the red outline of the selected tiles, its own legend entry
    # the dock's default: the best 5 of the tiles standing out (similarity >= mean + 1 sd), which the legend says
    feats = list(layer2.getFeatures())
    sims = np.array([f["similarity"] for f in feats])
    cut = sims.mean() + sims.std()
    selected = {(f["row"], f["col"]) for f in feats if f["selected"]}
    assert selected == {(f["row"], f["col"]) for f in feats if f["rank"] <= 5 and f["similarity"] >= cut - 1e-6}
    assert 0 < len(selected) <= 5
    legend = layer2.renderer().rootRule().children()[-1].label()
    assert f"similarity ≥ {cut:.3f} (mean + 1 sd or more)" in legend, legend
    assert _group_layers()[:2] == [layer2, layer], "the newest result goes on top of the group"


def test_count_run_on_a_utm_geotiff_with_tiles_in_metres(dock, data_dir, tmp_path, tiny_bundle):
    raster = _raster(data_dir, UTM, "rgb byte")
    assert raster.crs().authid() == "EPSG:32618"
    dock.layer_combo.setLayer(raster)
    dock.set_kind("count")
    dock.count_object.setText("ship")
    dock.count_max.setValue(5)
    dock.tile_size.setValue(20000)
    dock.tile_unit.setCurrentIndex(dock.tile_unit.findData("m"))
    out = tmp_path / "ships.gpkg"
    dock.output_widget.setFilePath(str(out))

    _run(dock)
    result, layer = dock.last_result, dock.last_layer
    assert layer is not None, dock.status.text()
    _check_result_layer(layer, raster, out, result.n_tiles)
    ext = raster.extent()
    grid = math.ceil(ext.width() / 20000) * math.ceil(ext.height() / 20000)
    assert result.n_tiles < grid, "the all-nodata corner tiles of this scene are dropped"
    # the dock's job is core's: the same tiles and counts straight through run_job
    from remoteclip_qgis.core.pipeline import CountTask, Job, RunOptions, TileSpec, run_job

    direct = run_job(Job(raster=str(data_dir / UTM), task=CountTask("ship", 5), tiles=TileSpec(20000, "m"),
                         run=RunOptions(model=str(tiny_bundle), cache_dir="")))
    assert {(f["row"], f["col"]): f["count"] for f in layer.getFeatures()} == {
        (r["row"], r["col"]): r["count"] for r in direct.records}
    f = next(layer.getFeatures())
    assert abs(f.geometry().boundingBox().width() - 20000) < raster.rasterUnitsPerPixelX() + 1e-6
    assert layer.renderer().type() == "categorizedSymbol" and layer.renderer().classAttribute() == "count"
    counts = {f["count"] for f in layer.getFeatures()}
    assert counts <= set(range(1, 6))
    assert {c.value() for c in layer.renderer().categories()} == counts
    assert layer.labelsEnabled(), "count layers write the count on each tile"
    table = dock.result_table
    texts = [table.topLevelItem(i).text(0) for i in range(table.topLevelItemCount())]
    assert texts and all(t.split()[-1] in ("ship", "ships") for t in texts), texts


def test_cancel_right_after_start_leaves_no_file_and_no_layer(dock, data_dir, tmp_path, qgis_iface):
    from qgis.core import QgsProject

    raster = _raster(data_dir, KAMPALA, "kampala")
    dock.layer_combo.setLayer(raster)
    dock.set_kind("label")
    dock.labels_edit.setPlainText("buildings\ntrees")
    dock.tile_size.setValue(64)          # 384 tiles in 48 batches: far from done when cancelled
    dock.use_cache.setChecked(False)
    out = tmp_path / "cancelled.gpkg"
    dock.output_widget.setFilePath(str(out))
    layers_before = set(QgsProject.instance().mapLayers())

    task = dock.run()
    assert task is not None and dock.cancel_button.isEnabled() and not dock.run_button.isEnabled()
    assert "running" in dock.provider_label.text(), "the last run's device is not this run's"
    dock.cancel()
    _wait(dock)
    assert "Cancelled" in dock.status.text()
    assert "cancelled" in dock.provider_label.text() and "CPU" not in dock.provider_label.text()
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith((".cancelled", "cancelled"))] == []
    assert set(QgsProject.instance().mapLayers()) == layers_before
    assert dock.last_layer is None
    assert dock.run_button.isEnabled() and not dock.cancel_button.isEnabled()


def test_cancel_mid_run_stops_before_the_next_batch(dock, data_dir, tmp_path):
    """Cancel from inside the worker right after a batch's progress report: core checks the flag once
    per batch, so no further batch is encoded and nothing is written."""
    from qgis.PyQt.QtCore import Qt

    raster = _raster(data_dir, KAMPALA, "kampala")
    dock.layer_combo.setLayer(raster)
    dock.set_kind("embed")
    dock.tile_size.setValue(64)
    dock.use_cache.setChecked(False)
    out = tmp_path / "mid.gpkg"
    dock.output_widget.setFilePath(str(out))
    task = dock.run()
    seen: list[str] = []
    cancelled_at: list[str] = []

    def on_status(message: str) -> None:   # runs in the worker thread (direct connection)
        seen.append(message)
        if message.endswith(" tiles") and not cancelled_at:
            cancelled_at.append(message)
            task.cancel()

    task.statusChanged.connect(on_status, Qt.DirectConnection)
    _wait(dock)
    assert cancelled_at, f"no batch was reported before the end: {seen}"
    batches = [m for m in seen if m.endswith(" tiles")]
    assert batches[-1] == cancelled_at[0], f"batches ran after the cancel: {batches}"
    done, total = (int(v) for v in cancelled_at[0].split()[0].split("/"))
    assert done < total == 384
    assert "Cancelled" in dock.status.text() and not out.exists() and dock.last_layer is None


def test_errors_reach_the_message_bar_and_the_log(dock, data_dir, tmp_path, qgis_iface, tiny_bundle):
    from qgis.core import Qgis

    bar = qgis_iface.messageBar()
    raster = _raster(data_dir, KAMPALA, "kampala")
    dock.layer_combo.setLayer(raster)
    dock.output_widget.setFilePath(str(tmp_path / "x.gpkg"))

    # refused before any task: no model
    dock.model_widget.setFilePath("")
    assert dock.run() is None
    assert any("No model bundle" in m for m in bar.get_messages(Qgis.Warning))

    # refused before any task too: one label only, said under the field
    dock.model_widget.setFilePath(str(tiny_bundle))
    dock.set_kind("label")
    dock.labels_edit.setPlainText("buildings")
    assert dock.run() is None
    assert "at least two" in dock.forms["label"].errors["labels"].text()
    assert not bar.get_messages(Qgis.Critical) and not (tmp_path / "x.gpkg").exists()
    assert dock.last_layer is None

    # refused by core inside the task: a bundle whose graph is damaged. The user's to fix: a warning that goes
    # away, its one line in the log panel, no traceback
    from qgis.core import QgsApplication

    logged = []

    def on_log(message, tag, level):
        if tag == "RemoteCLIP":
            logged.append((message, level))

    QgsApplication.messageLog().messageReceived.connect(on_log)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle, broken)
    (broken / "text_fp32.onnx").write_bytes(b"not an onnx graph")
    dock.model_widget.setFilePath(str(broken))
    dock.labels_edit.setPlainText("buildings\ntrees")
    try:
        _run(dock)
    finally:
        QgsApplication.messageLog().messageReceived.disconnect(on_log)
    assert any("text_fp32.onnx" in m for m in bar.get_messages(Qgis.Warning))
    assert not bar.get_messages(Qgis.Critical)
    assert "Failed" in dock.status.text() and not (tmp_path / "x.gpkg").exists()
    assert dock.provider_label.text() == "ran on: – (the last run failed)"
    assert dock.last_layer is None
    assert any("text_fp32.onnx" in m for m, level in logged if level == Qgis.Warning), logged
    assert not [m for m, _ in logged if "Traceback" in m] and not [m for m, lv in logged if lv == Qgis.Critical]


def test_input_mistakes_are_shown_under_their_field_before_any_task(dock, data_dir, tmp_path, qgis_iface):
    """An empty class list, object or query: refused by the panel, next to the field, in the panel's words (no
    command-line flags), no task, no traceback, nothing on the message bar to close."""
    from qgis.core import Qgis, QgsApplication

    bar = qgis_iface.messageBar()
    dock.layer_combo.setLayer(_raster(data_dir, KAMPALA, "kampala"))
    dock.output_widget.setFilePath(str(tmp_path / "x.gpkg"))
    logged = []

    def on_log(message, tag, level):
        if tag == "RemoteCLIP":
            logged.append((message, level))

    QgsApplication.messageLog().messageReceived.connect(on_log)
    cases = [("label", "labels", lambda: dock.labels_edit.setPlainText(" \n, "), "class names"),
             ("label", "labels", lambda: dock.labels_edit.setPlainText("buildings"), "at least two"),
             ("count", "object_name", lambda: dock.count_object.setText("  "), "object to count"),
             ("search", "query", lambda: dock.search_query.setText(""), "query")]
    try:
        for kind, field, make_mistake, words in cases:
            dock.set_kind(kind)
            make_mistake()
            assert dock.run() is None and dock.task is None, kind
            error = dock.forms[kind].errors[field]
            assert error.isVisibleTo(dock) and words in error.text(), (kind, error.text(), dock.status.text())
            assert "--" not in error.text() and "Check the" in dock.status.text()
            dock.forms[kind].widgets[field].setFocus()
            (dock.labels_edit.setPlainText("buildings\ntrees") if kind == "label"
             else dock.forms[kind].widgets[field].setText("car"))
            assert not error.isVisibleTo(dock), "the message goes once the field is edited"
    finally:
        QgsApplication.messageLog().messageReceived.disconnect(on_log)
    assert not bar.get_messages(Qgis.Critical) and not bar.get_messages(Qgis.Warning)
    assert not [m for m, level in logged if level == Qgis.Critical or "Traceback" in m]
    assert not (tmp_path / "x.gpkg").exists() and dock.last_layer is None


def test_classify_says_how_its_inputs_combine_in_the_panels_words(dock, data_dir, tmp_path):
    """Classify with neither samples nor a saved classifier, then with a saved one and a file to save to: the
    form says so naming the panel's fields, no command-line options."""
    dock.layer_combo.setLayer(_raster(data_dir, KAMPALA, "kampala"))
    dock.set_kind("classify")
    form = dock.forms["classify"]
    assert dock.run() is None and dock.task is None
    text = form.form_error.text()
    assert "“Samples (points or polygons)”" in text and "“Apply a saved classifier instead”" in text, text
    assert "--" not in text and "FILE" not in text
    head = tmp_path / "head.json"
    head.write_text("{}")
    form.widgets["head"].setFilePath(str(head))
    form.widgets["head_out"].setFilePath(str(tmp_path / "again.json"))
    assert dock.run() is None
    text = form.form_error.text()
    assert "“Save the classifier to”" in text and "--" not in text, text


def test_layer_names_say_what_tells_runs_apart(dock, data_dir, tmp_path):
    import re

    from remoteclip_qgis.core.prompts import PRESETS

    dock.layer_combo.setLayer(_raster(data_dir, KAMPALA, "kampala"))
    dock.output_widget.setFilePath(str(tmp_path / "x.gpkg"))
    dock.set_kind("label")
    dock.labels_edit.setPlainText("\n".join(PRESETS["land-cover"]))
    dock.tile_size.setValue(224)
    _, _, name = dock.build_job()
    assert re.fullmatch(r"kampala · labels · land-cover · 224 px · \d\d:\d\d", name), name
    dock.labels_edit.setPlainText("buildings\ntrees\nwater")
    dock.tile_size.setValue(50)
    dock.tile_unit.setCurrentIndex(dock.tile_unit.findData("m"))
    _, _, name = dock.build_job()
    assert re.fullmatch(r"kampala · labels · buildings, trees, … · 50 m · \d\d:\d\d", name), name
    dock.set_kind("count")
    dock.count_object.setText("car")
    assert dock.build_job()[2].startswith("kampala · count car · 50 m · ")
    dock.set_kind("search")
    dock.search_query.setText("a pool")
    assert dock.build_job()[2].startswith("kampala · search “a pool” · 50 m · ")


def test_the_preset_combo_names_the_class_list_the_box_holds(dock):
    from remoteclip_qgis.core.prompts import PRESETS

    dock.labels_edit.setPlainText("\n".join(PRESETS["land-cover"]))   # what a first start restores
    assert dock.preset_combo.currentText() == "land-cover"
    dock.labels_edit.setPlainText("buildings, trees")
    assert dock.preset_combo.currentText() == "Custom"
    dock.preset_combo.setCurrentIndex(dock.preset_combo.findText("urban"))
    dock.preset_combo.activated.emit(dock.preset_combo.currentIndex())
    assert dock.labels_edit.toPlainText().splitlines() == PRESETS["urban"]
    assert dock.preset_combo.currentText() == "urban"
    dock.labels_edit.setPlainText(", ".join(PRESETS["rsscn7"]))   # typed the other way
    assert dock.preset_combo.currentText() == "rsscn7"


def test_a_bug_inside_the_task_leaves_its_traceback_in_the_log_panel(dock, tiny_bundle, qgis_iface):
    """Not the user's input but the program: a raster source whose read raises (a plausible bug in a source)."""
    from qgis.core import Qgis, QgsApplication

    from remoteclip_qgis.core.pipeline import EmbedTask, Job, RunOptions, TileSpec
    from remoteclip_qgis.task import RemoteClipTask

    class Broken:
        name, width, height, count, crs_wkt, nodata, dtype = "broken", 256, 256, 3, "EPSG:4326", None, "uint8"
        transform = (1e-5, 0.0, 32.0, 0.0, -1e-5, 0.3)
        colorinterp = ["red", "green", "blue"]

        def read(self, bands, window, out_shape=None):
            raise ZeroDivisionError("a bug in a raster source")

        def close(self):
            pass

    logged = []

    def on_log(message, tag, level):
        if tag == "RemoteCLIP":
            logged.append((message, level))

    QgsApplication.messageLog().messageReceived.connect(on_log)
    task = RemoteClipTask(Job(raster=Broken(), task=EmbedTask(), tiles=TileSpec(size=128),
                              run=RunOptions(model=str(tiny_bundle), cache_dir="")))
    failed = []
    task.failed.connect(lambda error, details: (failed.append((error, details)), dock.runner._failed(error, details)))
    try:
        QgsApplication.taskManager().addTask(task)
        _wait_for(lambda: failed, "the failure")
    finally:
        QgsApplication.messageLog().messageReceived.disconnect(on_log)
    error, details = failed[0]
    assert "ZeroDivisionError" in error and "Traceback" in details
    assert any("Traceback" in m and level == Qgis.Critical for m, level in logged)
    critical = qgis_iface.messageBar().get_messages(Qgis.Critical)
    assert any("error in RemoteCLIP" in m and "Log Messages" in m for m in critical), critical


# ------------------------------------------------------------------------------------- widgets -> Job

def test_widgets_become_the_core_job(dock, data_dir, qgis_iface, tiny_bundle, polygon_layer):
    from qgis.core import QgsProject, QgsRectangle

    from remoteclip_qgis.core.pipeline import BBox, CountTask, LabelTask, Polygons, SearchTask

    raster = _raster(data_dir, KAMPALA, "kampala")
    dock.layer_combo.setLayer(raster)
    dock.set_kind("label")
    dock.preset_combo.setCurrentText("water")
    dock.preset_combo.activated.emit(dock.preset_combo.currentIndex())
    dock.templates_edit.setPlainText("an aerial photo of {}.\n# a comment\n")
    dock.label_topk.setValue(2)
    dock.label_threshold.setValue(0.3)
    dock.tile_size.setValue(100)
    dock.tile_unit.setCurrentIndex(dock.tile_unit.findData("m"))
    dock.overlap.setValue(50)
    dock.bands_edit.setText("3, 2, 1")
    dock.device_combo.setCurrentText("cpu")
    dock.precision_combo.setCurrentText("fp16")
    dock.dissolve.setChecked(True)
    dock.output_widget.setFilePath("")

    job, kind, name = dock.build_job()
    assert kind == "label" and name.startswith("kampala · labels · water · 100 m · ")   # the preset the classes are
    assert isinstance(job.task, LabelTask)
    assert job.task.labels == ["river", "lake", "sea", "harbor", "beach", "land"]
    assert job.task.templates == ["an aerial photo of {}."]
    assert (job.task.top_k, job.task.threshold) == (2, pytest.approx(0.3))
    assert job.raster == str(data_dir / KAMPALA)      # a GDAL file goes to core as its path
    assert (job.tiles.size, job.tiles.unit, job.tiles.overlap, job.tiles.bands) == (100, "m", 0.5, [3, 2, 1])
    assert job.tiles.extent is None
    # the bundle the model row loaded goes to the job as it is: the worker does not read the manifest again
    assert job.run.model is dock.bundle and str(job.run.model.source) == str(tiny_bundle)
    assert (job.run.device, job.run.precision, job.run.batch_size) == ("cpu", "fp16", 8)
    assert job.run.cache_dir is None and job.dissolve
    assert job.output.endswith(".gpkg") and "kampala_label_" in job.output

    dock.set_kind("count")
    dock.count_object.setText("  car ")
    job, kind, _ = dock.build_job()
    assert isinstance(job.task, CountTask) and job.task.object_name == "car" and kind == "count"

    dock.set_kind("search")
    dock.search_query.setText("a swimming pool")
    dock.search_topk.setValue(0)
    job, _, name = dock.build_job()
    assert isinstance(job.task, SearchTask) and job.task.top_k is None and job.task.threshold is None
    assert "a swimming pool" in name
    dock.search_threshold.setValue(0.2)
    assert dock.build_job()[0].task.threshold == pytest.approx(0.2)

    # extent: the map view, in the canvas CRS
    canvas = qgis_iface.mapCanvas()
    canvas.setDestinationCrs(raster.crs())
    canvas.setExtent(QgsRectangle(32.58, 0.33, 32.59, 0.34))
    dock.extent_combo.setCurrentIndex(dock.extent_combo.findData("canvas"))
    ext = dock.build_job()[0].tiles.extent
    assert isinstance(ext, BBox)
    view = canvas.extent()
    assert (ext.xmin, ext.ymin, ext.xmax, ext.ymax) == pytest.approx(
        (view.xMinimum(), view.yMinimum(), view.xMaximum(), view.yMaximum()))

    # extent: the selected polygons of a layer
    polys = polygon_layer(["POLYGON((32.58 0.33, 32.581 0.33, 32.581 0.331, 32.58 0.331, 32.58 0.33))",
                           "POLYGON((32.59 0.34, 32.591 0.34, 32.591 0.341, 32.59 0.341, 32.59 0.34))"], name="areas")
    QgsProject.instance().addMapLayer(polys)
    dock.extent_combo.setCurrentIndex(dock.extent_combo.findData("features"))
    dock.polygon_combo.setLayer(polys)
    dock.selected_only.setChecked(True)
    from remoteclip_qgis.core.errors import InvalidInput

    with pytest.raises(InvalidInput) as err:
        dock.build_job()
    assert err.value.param == "polygons" and "'areas'" in err.value.problem
    polys.selectByIds([next(polys.getFeatures()).id()])
    ext = dock.build_job()[0].tiles.extent
    assert isinstance(ext, Polygons) and len(ext.wkts) == 1

    dock.bands_edit.setText("red")
    with pytest.raises(InvalidInput) as err:
        dock.build_job()
    assert err.value.param == "bands" and "'red'" in err.value.problem


def test_a_web_layer_is_read_over_the_map_view_at_the_map_resolution(dock, qgis_iface):
    """An XYZ basemap has no extent or pixel grid of its own: the dock reads what the map shows.
    (Only the Job is built: no tile is fetched, so no network is needed.)"""
    from qgis.core import QgsCoordinateReferenceSystem, QgsProject, QgsRasterLayer, QgsRectangle

    from remoteclip_qgis.core.pipeline import BBox
    from remoteclip_qgis.layer_source import QgisRasterSource

    xyz = QgsRasterLayer("type=xyz&url=https://tile.openstreetmap.org/{z}/{x}/{y}.png&zmin=0&zmax=19",
                         "OpenStreetMap", "wms")
    assert xyz.isValid()
    QgsProject.instance().addMapLayer(xyz)
    canvas = qgis_iface.mapCanvas()
    canvas.setDestinationCrs(QgsCoordinateReferenceSystem("EPSG:3857"))
    canvas.setExtent(QgsRectangle(3626000, 36000, 3628000, 38000))   # 2 km over Kampala
    dock.layer_combo.setLayer(xyz)
    dock.set_kind("embed")
    job, _, _ = dock.build_job()
    assert isinstance(job.raster, QgisRasterSource) and isinstance(job.tiles.extent, BBox)
    view = canvas.extent()
    assert (job.tiles.extent.xmin, job.tiles.extent.ymax) == pytest.approx((view.xMinimum(), view.yMaximum()))
    resolution = view.width() / canvas.width()
    assert job.raster.pixel_size[0] == pytest.approx(resolution)
    assert abs(job.raster.width - round(view.width() / resolution)) <= 2


def test_default_output_is_a_geopackage_next_to_the_saved_project(rc, qgis_new_project, tmp_path):
    from qgis.core import QgsSettings
    from qgis.PyQt.QtCore import QStandardPaths

    from remoteclip_qgis.dock import default_output, results_folder, save_setting

    QgsSettings().remove("RemoteCLIP")
    qgis_new_project.setFileName("")
    # unsaved: a visible folder in Documents, not inside QGIS's profile
    documents = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.DocumentsLocation)
    assert results_folder() == Path(documents) / "RemoteCLIP results"
    qgis_new_project.setFileName(str(tmp_path / "site.qgz"))
    path = Path(default_output("Kampala mosaic (z20)", "count"))
    assert path.parent == tmp_path / "remoteclip_results"
    assert path.suffix == ".gpkg" and path.name.startswith("Kampala_mosaic_z20_count_")
    # the folder chosen in the panel wins over both
    save_setting("results_dir", str(tmp_path / "mine"))
    assert Path(default_output("k", "label")).parent == tmp_path / "mine"
    qgis_new_project.setFileName("")
    assert results_folder() == tmp_path / "mine"
    QgsSettings().remove("RemoteCLIP")


def test_model_widget_shows_name_architecture_and_activation(dock, tiny_bundle, tmp_path):
    dock.model_widget.setFilePath(str(tiny_bundle / "manifest.json"))
    assert dock.model_path() == str(tiny_bundle)
    text = dock.model_info.text()
    assert "tiny-test" in text and "quick_gelu" in text
    assert [dock.precision_combo.itemText(i) for i in range(dock.precision_combo.count())] == ["auto", "fp32",
                                                                                              "fp16"]
    assert dock.precision_combo.currentText() == "auto"
    dock.model_widget.setFilePath(str(tmp_path))
    assert "manifest.json" in dock.model_info.text()


def test_precision_int8_is_offered_by_a_bundle_with_int8_graphs(dock, int8_bundle, data_dir):
    dock.model_widget.setFilePath(str(int8_bundle))
    assert [dock.precision_combo.itemText(i) for i in range(dock.precision_combo.count())] == ["auto", "fp32",
                                                                                              "fp16", "int8"]
    dock.layer_combo.setLayer(_raster(data_dir, "orthomosaic/kampala_oam_z20_mosaic_1536x1024.tif", "kampala"))
    dock.set_kind("label")
    dock.labels_edit.setPlainText("water\nbuildings")
    dock.precision_combo.setCurrentText("int8")
    job, _, _ = dock.build_job()
    assert type(job.task).__name__ == "LabelTask" and job.run.precision == "int8"
    assert job.run.model is dock.bundle and str(job.run.model.source) == str(int8_bundle)


def test_the_result_says_which_precision_auto_ran_and_why(dock, int8_bundle, data_dir, tmp_path):
    """Precision auto (the default) on a CPU: int8 where the bundle's recorded agreement reaches the bar,
    fp32 where it falls short; the dock names the precision that ran and the reason in plain words."""
    import json
    import shutil

    def recorded(name, top1):   # as training.export records it: measured on the 2,800 RSSCN7 images
        copy = tmp_path / name
        shutil.copytree(int8_bundle, copy)
        m = json.loads((copy / "manifest.json").read_text())
        m["quantization"]["int8"]["agreement_vs_fp32"].update(top1_agree=top1, n_images=2800)
        (copy / "manifest.json").write_text(json.dumps(m))
        return copy

    usable, short = recorded("usable-int8", 0.995), recorded("short-int8", 0.985)
    dock.layer_combo.setLayer(_raster(data_dir, "orthomosaic/kampala_oam_z20_mosaic_1536x1024.tif", "kampala"))
    dock.set_kind("label")
    dock.labels_edit.setPlainText("water\nbuildings")
    dock.tile_size.setValue(512)
    shown = {}
    for name, bundle in (("usable", usable), ("short", short)):
        dock.model_widget.setFilePath(str(bundle))
        assert dock.precision_combo.currentText() == "auto"
        dock.output_widget.setFilePath(str(tmp_path / f"{name}.gpkg"))
        _run(dock)
        assert dock.last_result is not None, dock.status.text()
        shown[name] = (dock.provider_label.text(), dock.status.text(), dock.last_result.precision)
    label, status, ran = shown["usable"]
    assert ran == "int8" and label == "ran on: CPU · int8 (auto: int8 agrees 99.50 % with fp32 on this bundle)"
    assert "on CPU, int8" in status
    label, status, ran = shown["short"]
    assert ran == "fp32" and label == "ran on: CPU · fp32 (auto: int8 agrees only 98.50 % with fp32 on this " \
                                      "bundle (needs 99%))"
    assert "on CPU, fp32" in status


# -------------------------------------------------------------------------------------------- export

def test_export_a_result_to_shapefile_and_geopackage(dock, data_dir, tmp_path):
    from qgis.core import QgsVectorLayer

    from remoteclip_qgis.dock import export_layer

    raster = _raster(data_dir, KAMPALA, "kampala")
    dock.layer_combo.setLayer(raster)
    dock.set_kind("label")
    dock.labels_edit.setPlainText("buildings\ntrees\nbare soil")
    dock.tile_size.setValue(512)
    dock.output_widget.setFilePath(str(tmp_path / "labels.gpkg"))
    _run(dock)
    layer = dock.last_layer
    assert layer is not None, dock.status.text()
    assert dock.export_layer_combo.currentLayer() is layer

    dock.export_format.setCurrentText("ESRI Shapefile")
    dock.export_widget.setFilePath(str(tmp_path / "export" / "labels"))
    (tmp_path / "export").mkdir()
    from osgeo import gdal, ogr

    said = []
    gdal.PushErrorHandler(lambda _cls, _no, msg: said.append(msg))
    try:
        dock.export_clicked()
    finally:
        gdal.PopErrorHandler()
    shp = tmp_path / "export" / "labels.shp"
    assert shp.is_file(), dock.status.text()
    assert said == [], "GDAL had something to say about the export (truncated fields?)"
    ds = ogr.Open(str(shp))
    defn = ds.GetLayer(0).GetLayerDefn()
    columns = {defn.GetFieldDefn(i).GetName(): defn.GetFieldDefn(i).GetWidth() for i in range(defn.GetFieldCount())}
    ds = None
    assert "fid" not in columns, "the GeoPackage's feature id became a column"
    assert list(columns)[:3] == ["row", "col", "label"] and columns["label"] == 254
    out = QgsVectorLayer(str(shp), "exported", "ogr")
    assert out.isValid() and out.featureCount() == layer.featureCount()
    assert out.crs() == layer.crs()
    assert sorted(f["label"] for f in out.getFeatures()) == sorted(f["label"] for f in layer.getFeatures())
    assert out.renderer().type() == "categorizedSymbol", "the .qml sidecar carries the style"
    meta = json.loads((tmp_path / "export" / "labels.remoteclip.json").read_text(encoding="utf-8"))
    assert meta["fields"] == dock.last_result.field_map and "bare soil" in meta["fields"].values()
    assert meta["format"] == "remoteclip-vector-metadata"

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gpkg = export_layer(layer, str(tmp_path / "export" / "copy.gpkg"), "GeoPackage")
    # no call the running QGIS deprecates (saveStyleToDatabase from 3.42 on) in the Python warning log
    assert [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)
            and "remoteclip_qgis" in str(w.filename)] == []
    copy = QgsVectorLayer(gpkg, "copy", "ogr")
    assert copy.isValid() and copy.featureCount() == layer.featureCount()
    assert copy.renderer().type() == "categorizedSymbol", "the style is stored in the GeoPackage"
    assert sorted(p.name for p in (tmp_path / "export").iterdir() if p.name.startswith("copy")) == ["copy.gpkg"]
    from remoteclip_qgis.core.errors import OutputExists, OutputRefused

    with pytest.raises(OutputRefused) as err:
        export_layer(layer, str(tmp_path / "nope" / "x.shp"), "ESRI Shapefile")
    assert err.value.path == str(tmp_path / "nope")
    # somebody's style file of the name, beside no Shapefile: refused, kept byte for byte, nothing written
    (tmp_path / "export" / "mine.qml").write_text("<qgis>my style</qgis>")
    with pytest.raises(OutputExists) as err:
        export_layer(layer, str(tmp_path / "export" / "mine.shp"), "ESRI Shapefile")
    assert err.value.path == str(tmp_path / "export" / "mine.qml")
    assert (tmp_path / "export" / "mine.qml").read_text() == "<qgis>my style</qgis>"
    assert sorted(p.name for p in (tmp_path / "export").iterdir() if p.name.startswith("mine")) == ["mine.qml"]
    # the .qml of a Shapefile replaced (asked first, in the dock) goes with it
    before = (tmp_path / "export" / "labels.qml").read_text()
    (tmp_path / "export" / "labels.qml").write_text("<qgis>stale</qgis>")
    export_layer(layer, str(shp), "ESRI Shapefile")
    assert (tmp_path / "export" / "labels.qml").read_text() == before


def test_the_raster_choice_follows_the_active_layer(rc, qgis_new_project, data_dir, monkeypatch, tiny_bundle):
    """With a real layer tree (scripts/qgis_window.py) as QGIS's iface: selecting a raster in the
    legend picks it in the dock; selecting a vector layer leaves the raster as it was."""
    import qgis.utils
    from qgis.core import QgsProject, QgsVectorLayer

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    try:
        from qgis_window import QgisWindow
    finally:
        sys.path.pop(0)
    from remoteclip_qgis.dock import RemoteClipDock

    win = QgisWindow()
    monkeypatch.setattr(qgis.utils, "iface", win)
    dock = RemoteClipDock(win.window)
    try:
        kampala = _raster(data_dir, KAMPALA, "kampala")
        utm = _raster(data_dir, UTM, "utm")
        polys = QgsVectorLayer("Polygon?crs=EPSG:4326", "areas", "memory")
        QgsProject.instance().addMapLayer(polys)
        win.setActiveLayer(utm)
        assert dock.layer_combo.currentLayer() is utm
        win.setActiveLayer(kampala)
        assert dock.layer_combo.currentLayer() is kampala
        win.setActiveLayer(polys)
        assert dock.layer_combo.currentLayer() is kampala
    finally:
        dock.unload()
        QgsProject.instance().removeAllMapLayers()
        win.close()


def test_default_model_is_the_remembered_one_else_the_demo_shipped_in_the_plugin(rc, built_plugin, tiny_bundle):
    from qgis.core import QgsSettings

    from remoteclip_qgis.dock import DEMO_MODEL, default_model, save_setting

    QgsSettings().remove("RemoteCLIP")
    assert DEMO_MODEL.is_relative_to(built_plugin.resolve() / "remoteclip_qgis")
    demo = str(DEMO_MODEL) if (DEMO_MODEL / "manifest.json").is_file() else ""   # the demo model is optional
    assert default_model() == demo
    save_setting("model", str(tiny_bundle))
    assert default_model() == str(tiny_bundle)
    save_setting("model", str(tiny_bundle) + "-gone")
    assert default_model() == demo
    QgsSettings().remove("RemoteCLIP")


def test_class_colours_are_expected_distinct_and_stable(rc):
    from remoteclip_qgis.layers import MIN_DELTA_E, UNKNOWN_COLOR, class_colors, delta_e

    colors = class_colors(["water", "trees", "dense residential area", "sparse residential area", "road"])
    assert colors["water"] == "#3a7dc9" and colors["trees"] == "#2e7d32" and colors["road"] == "#5f5f5f"
    assert delta_e(colors["dense residential area"], colors["sparse residential area"]) >= MIN_DELTA_E
    assert len({colors[c] for c in colors}) == len(colors), "two classes share a colour"
    assert colors["unknown"] == UNKNOWN_COLOR
    assert class_colors(["road", "dense residential area", "trees", "sparse residential area", "water"]) == colors


def test_a_run_without_an_output_file_saves_a_geopackage_next_to_the_project(dock, data_dir, tmp_path,
                                                                              qgis_new_project):
    raster = _raster(data_dir, KAMPALA, "kampala")
    qgis_new_project.setFileName(str(tmp_path / "site.qgz"))
    try:
        dock.layer_combo.setLayer(raster)
        dock.set_kind("embed")
        dock.tile_size.setValue(512)
        dock.output_widget.setFilePath("")
        _run(dock)
        layer = dock.last_layer
        assert layer is not None, dock.status.text()
        gpkg = Path(layer.source().split("|")[0])
        assert gpkg.parent == tmp_path / "remoteclip_results" and gpkg.name.startswith("kampala_embed_")
        _check_result_layer(layer, raster, gpkg, dock.last_result.n_tiles)
        assert layer.renderer().type() == "singleSymbol"
    finally:
        qgis_new_project.setFileName("")


# ------------------------------------------------------------------------------ the user's files

class Answer:
    """Answers the real QMessageBox the dock opens (clicks ``button`` from a timer) and records its text."""

    def __init__(self, button):
        self.button, self.texts = button, []

    def __enter__(self):
        from qgis.PyQt.QtCore import QTimer

        self.timer = QTimer()
        self.timer.setInterval(20)
        self.timer.timeout.connect(self._click)
        self.timer.start()
        return self

    def _click(self):
        from qgis.PyQt.QtWidgets import QApplication, QMessageBox

        box = QApplication.activeModalWidget()
        if isinstance(box, QMessageBox):
            self.texts.append(box.text())
            box.button(self.button).click()

    def __exit__(self, *exc):
        self.timer.stop()


def _features(path, layer_name) -> list:
    from osgeo import ogr

    ds = ogr.Open(str(path))
    lyr = ds.GetLayerByName(layer_name)
    defn = lyr.GetLayerDefn()
    names = [defn.GetFieldDefn(i).GetName() for i in range(defn.GetFieldCount())]
    return [([f.GetField(n) for n in names], f.GetGeometryRef().ExportToWkt()) for f in lyr]


@pytest.fixture
def user_gpkg(data_dir, tmp_path):
    """The analyst's GeoPackage: the real Kampala building footprints as layer 'buildings'."""
    from osgeo import gdal

    path = tmp_path / "site.gpkg"
    gdal.VectorTranslate(str(path), str(data_dir / "orthomosaic" / "kampala_buildings_z21_chips.geojson"),
                         options=gdal.VectorTranslateOptions(format="GPKG", layerName="buildings"))
    return path


def test_replacing_an_output_asks_first_and_keeps_the_other_layers(dock, data_dir, user_gpkg):
    from qgis.core import QgsProject
    from qgis.PyQt.QtWidgets import QMessageBox

    buildings = _features(user_gpkg, "buildings")
    raster = _raster(data_dir, KAMPALA, "kampala")
    dock.layer_combo.setLayer(raster)
    dock.set_kind("label")
    dock.labels_edit.setPlainText("buildings\ntrees")
    dock.tile_size.setValue(512)
    dock.output_widget.setFilePath(str(user_gpkg))
    with Answer(QMessageBox.Yes) as answer:
        _run(dock)   # a new layer in the GeoPackage: nothing is replaced, nothing to ask
    assert answer.texts == [] and dock.last_layer is not None, dock.status.text()
    first = _features(user_gpkg, "labels")
    assert len(first) == 6 and _features(user_gpkg, "buildings") == buildings
    QgsProject.instance().removeMapLayer(dock.last_layer.id())

    dock.labels_edit.setPlainText("water\nforest")
    with Answer(QMessageBox.No) as answer:
        assert dock.run() is None
    assert len(answer.texts) == 1 and "Replace the layer 'labels' of" in answer.texts[0]
    assert "other layers are kept" in answer.texts[0] and "Not run" in dock.status.text()
    assert _features(user_gpkg, "labels") == first

    with Answer(QMessageBox.Yes) as answer:
        _run(dock)
    assert len(answer.texts) == 1 and dock.last_result is not None, dock.status.text()
    assert {f[0][2] for f in _features(user_gpkg, "labels")} <= {"water", "forest"}
    assert _features(user_gpkg, "buildings") == buildings
    assert sorted(p.name for p in user_gpkg.parent.iterdir() if p.name.startswith((".site", "site"))) \
        == ["site.gpkg"]


def test_replacing_a_shapefile_asks_naming_the_files_that_exist(dock, data_dir, tmp_path):
    """Only the analyst's out.cpg exists: the question names it (not "the Shapefile out.shp", which does not
    exist), and No keeps it; once the Shapefile exists, the question names its files."""
    from qgis.core import QgsProject
    from qgis.PyQt.QtWidgets import QMessageBox

    raster = _raster(data_dir, KAMPALA, "kampala")
    dock.layer_combo.setLayer(raster)
    dock.set_kind("label")
    dock.labels_edit.setPlainText("buildings\ntrees")
    dock.tile_size.setValue(512)
    out = tmp_path / "out.shp"
    (tmp_path / "out.cpg").write_text("UTF-8")
    dock.output_widget.setFilePath(str(out))
    with Answer(QMessageBox.No) as answer:
        assert dock.run() is None
    assert answer.texts == [f"Replace out.cpg in {tmp_path} (out.shp itself does not exist)?"], answer.texts
    assert (tmp_path / "out.cpg").read_text() == "UTF-8" and not out.exists()

    with Answer(QMessageBox.Yes) as answer:
        _run(dock)
    assert dock.last_layer is not None, dock.status.text()
    QgsProject.instance().removeMapLayer(dock.last_layer.id())
    with Answer(QMessageBox.No) as answer:
        assert dock.run() is None
    (text,) = answer.texts
    assert text.startswith(f"Replace the Shapefile {out} (out.shp, out.shx, out.dbf"), text


def test_a_loaded_output_is_not_replaced_under_its_layer(dock, data_dir, user_gpkg, tmp_path, qgis_iface):
    from qgis.core import Qgis, QgsVectorLayer
    from qgis.PyQt.QtWidgets import QMessageBox

    raster = _raster(data_dir, KAMPALA, "kampala")
    dock.layer_combo.setLayer(raster)
    dock.set_kind("label")
    dock.labels_edit.setPlainText("buildings\ntrees")
    dock.tile_size.setValue(512)
    dock.output_widget.setFilePath(str(user_gpkg))
    _run(dock)
    shown = dock.last_layer
    assert shown is not None, dock.status.text()
    before = _features(user_gpkg, "labels")
    # the same file by another spelling: a symlink in another folder
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "alias.gpkg").symlink_to(user_gpkg)
    for spelling in (str(user_gpkg), str(tmp_path / "elsewhere" / "alias.gpkg")):
        dock.output_widget.setFilePath(spelling)
        with Answer(QMessageBox.Yes) as answer:
            assert dock.run() is None
        assert answer.texts == []   # refused, not even asked
        assert "is shown in this project by the layer “kampala · labels" in dock.status.text()
        assert any("Remove that layer" in m for m in qgis_iface.messageBar().get_messages(Qgis.Warning))
    assert _features(user_gpkg, "labels") == before and shown.featureCount() == len(before)

    # another layer of that GeoPackage on the map does not stop a new layer being added beside it
    from qgis.core import QgsProject

    QgsProject.instance().removeMapLayer(shown.id())
    other = QgsVectorLayer(f"{user_gpkg}|layername=buildings", "my buildings", "ogr")
    assert other.isValid() and QgsProject.instance().addMapLayer(other) is not None
    n_buildings = other.featureCount()
    dock.set_kind("embed")
    dock.output_widget.setFilePath(str(user_gpkg))
    _run(dock)
    assert dock.last_layer is not None, dock.status.text()
    assert len(_features(user_gpkg, "tiles")) == 6 and other.featureCount() == n_buildings


def test_export_into_a_geopackage_keeps_its_layers_and_asks_before_replacing(rc, dock, data_dir, user_gpkg):
    from qgis.PyQt.QtWidgets import QMessageBox

    buildings = _features(user_gpkg, "buildings")
    raster = _raster(data_dir, KAMPALA, "kampala")
    dock.layer_combo.setLayer(raster)
    dock.set_kind("embed")
    dock.tile_size.setValue(512)
    dock.output_widget.setFilePath(str(user_gpkg.parent / "run.gpkg"))
    _run(dock)
    dock.export_layer_combo.setLayer(dock.last_layer)
    exported = rc.dock.slug(dock.last_layer.name()).lower()   # the layer's name, as the Layers panel shows it
    assert exported.startswith("kampala_tiles_512_px_")
    dock.export_format.setCurrentText("GeoPackage")
    dock.export_widget.setFilePath(str(user_gpkg))
    with Answer(QMessageBox.No) as answer:
        dock.export_clicked()
    assert answer.texts == [] and "Exported" in dock.status.text(), dock.status.text()
    assert _features(user_gpkg, "buildings") == buildings and len(_features(user_gpkg, exported)) == 6
    with Answer(QMessageBox.No) as answer:
        dock.export_clicked()
    assert len(answer.texts) == 1 and "Not exported" in dock.status.text()
    with Answer(QMessageBox.Yes) as answer:
        dock.export_clicked()
    assert len(answer.texts) == 1 and "Exported" in dock.status.text()
    assert _features(user_gpkg, "buildings") == buildings and len(_features(user_gpkg, exported)) == 6


def test_a_shapefile_result_reads_its_own_sidecar_and_never_the_users_json(rc, data_dir, tiny_bundle, tmp_path):
    from remoteclip_qgis.core.pipeline import Job, LabelTask, RunOptions, TileSpec, run_job
    from remoteclip_qgis.layers import add_result_layer, read_field_map

    mine = b'{"type": "FeatureCollection", "fields": {"p_trees": "not a class map"}, "features": []}'
    (tmp_path / "labels.json").write_bytes(mine)
    shp = tmp_path / "labels.shp"
    res = run_job(Job(raster=str(data_dir / KAMPALA), task=LabelTask(["buildings", "trees", "bare soil"]),
                      run=RunOptions(model=str(tiny_bundle), cache_dir=""), tiles=TileSpec(size=512),
                      output=str(shp)))
    assert read_field_map(str(shp)) == res.field_map and "bare soil" in res.field_map.values()
    layer = add_result_layer(str(shp), "label", "labels")
    idx = layer.fields().indexOf(next(k for k, v in res.field_map.items() if v == "bare soil"))
    assert layer.attributeAlias(idx) == "P(bare soil)"
    assert (tmp_path / "labels.json").read_bytes() == mine
    # a sidecar of that name without RemoteCLIP's marker is not ours: not read
    (tmp_path / "labels.remoteclip.json").write_text('{"fields": {"p_trees": "oaks"}}')
    assert read_field_map(str(shp)) == {}


# ------------------------------------------------------------------------------- plan, help, demo

def _wait_for(predicate, what: str, limit: float = 60) -> None:
    from qgis.PyQt.QtCore import QCoreApplication

    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, f"{what} did not happen"
        QCoreApplication.processEvents()
        time.sleep(0.01)


def test_the_plan_follows_tiles_and_extent_after_a_pause_and_off_the_gui_thread(dock, data_dir, tiny_bundle):
    from remoteclip_qgis.core.pipeline import EmbedTask, Job, RunOptions, TileSpec, plan_job

    raster = _raster(data_dir, KAMPALA, "kampala")
    dock.layer_combo.setLayer(raster)
    dock.tile_unit.setCurrentIndex(dock.tile_unit.findData("px"))
    dock.tile_size.setValue(256)
    _wait_for(lambda: "24 tiles of 256 × 256 px" in dock.plan_label.text(), "the first plan")
    assert "known after a first run" in dock.plan_label.text()

    # typing in the tile size: nothing is worked out until the user pauses (the timer), then in a thread
    dock.tile_size.setValue(512)
    dock.overlap.setValue(50)
    assert "24 tiles" in dock.plan_label.text() and dock._plan_timer.isActive()
    dock._plan_timer.stop()
    dock.update_plan()
    assert dock.plan_label.text() == "Plan: counting tiles…", "the plan was worked out on the GUI thread"
    want = plan_job(Job(raster=str(data_dir / KAMPALA), task=EmbedTask(), tiles=TileSpec(512, overlap=0.5),
                        run=RunOptions(model=str(tiny_bundle)))).n_tiles
    _wait_for(lambda: f"{want} tiles of 512 × 512 px" in dock.plan_label.text(), "the new plan")
    assert want == 15

    # an input problem is said there, before Run
    dock.bands_edit.setText("red")
    _wait_for(lambda: "not band numbers" in dock.plan_label.text(), "the bands problem")
    dock.bands_edit.setText("")
    _wait_for(lambda: "tiles of" in dock.plan_label.text(), "the plan again")

    # after a run of this model, the plan says how long at the rate measured here
    dock.set_kind("embed")
    dock.tile_size.setValue(128)   # enough tiles (two batches) for core to time the encoder
    dock.overlap.setValue(0)
    _run(dock)
    assert dock.last_layer is not None, dock.status.text()
    dock.update_plan()
    _wait_for(lambda: "measured here" in dock.plan_label.text(), "the timed plan")
    # core's wording of the estimate ("under 1 s" for the tiny model, never "about 0 s")
    assert re.search(r"96 tiles of 128 × 128 px, (about \d|under 1 s)", dock.plan_label.text())
    assert "about 0 s" not in dock.plan_label.text()


def test_help_opens_the_documentation(dock):
    from qgis.PyQt.QtCore import QObject, pyqtSlot
    from qgis.PyQt.QtGui import QDesktopServices

    from remoteclip_qgis.dock import help_url

    class Browser(QObject):
        def __init__(self):
            super().__init__()
            self.urls = []

        @pyqtSlot("QUrl")
        def open(self, url):
            self.urls.append(url.toString())

    browser = Browser()
    QDesktopServices.setUrlHandler("https", browser, "open")
    try:
        dock.help_button.click()
    finally:
        QDesktopServices.unsetUrlHandler("https")
    assert browser.urls == [help_url()]
    assert help_url() == "https://github.com/remoteclip-qgis/remoteclip-qgis#in-qgis"


def test_help_says_where_the_documentation_is_when_no_browser_opens(dock):
    """Offscreen Qt has no browser: openUrl returns False (no https handler is set), as on a desktop without
    one; the status line then names the address, selectable."""
    from qgis.PyQt.QtCore import Qt

    from remoteclip_qgis.dock import help_url

    dock.status.setText("Ready.")
    dock.help_button.click()
    assert help_url() in dock.status.text() and "No web browser opened" in dock.status.text()
    assert dock.status.textInteractionFlags() & Qt.TextInteractionFlag.TextSelectableByMouse
    assert dock.open_help() is False


def test_a_run_with_the_demo_model_says_it_is_a_demo(dock, data_dir, tmp_path, qgis_iface, monkeypatch):
    """The message bar says it once per session (a second run adds no second note)."""
    from qgis.core import Qgis

    from remoteclip_qgis.core.runtime.bundle import DEMO_BUNDLE
    from remoteclip_qgis.dock_banners import DemoBanner

    monkeypatch.setattr(DemoBanner, "said", False, raising=False)   # a fresh QGIS session

    dock.model_widget.setFilePath(str(DEMO_BUNDLE))
    assert dock.demo_banner.isVisibleTo(dock)
    raster = _raster(data_dir, KAMPALA, "kampala")
    dock.layer_combo.setLayer(raster)
    dock.set_kind("embed")
    dock.tile_size.setValue(512)
    dock.output_widget.setFilePath(str(tmp_path / "demo.gpkg"))
    _run(dock)
    assert dock.last_layer is not None, dock.status.text()
    from qgis.PyQt.QtWidgets import QPushButton

    bar = qgis_iface.messageBar()
    notes = [item for item in bar.items() if "demo model: for trying the plugin" in item.text().lower()]
    assert len(notes) == 1 and notes[0].level() == Qgis.Info, [i.text() for i in bar.items()]
    assert [b.text() for b in notes[0].findChildren(QPushButton)] == ["Get RemoteCLIP-ViT-B-32"]
    dock.output_widget.setFilePath(str(tmp_path / "demo-again.gpkg"))
    _run(dock)
    assert dock.last_layer is not None, dock.status.text()
    notes = [item for item in bar.items() if "demo model: for trying the plugin" in item.text().lower()]
    assert len(notes) == 1, [i.text() for i in bar.items()]
    assert dock.demo_banner.isVisibleTo(dock)          # the panel still says it
    bar.clearWidgets()


def test_a_new_input_error_shows_no_stale_progress_or_status(dock, data_dir, tmp_path):
    """After a finished run (progress 100 %) an input error resets the bar; a task's settings error leaves the
    status line when another task is chosen."""
    raster = _raster(data_dir, KAMPALA, "kampala")
    dock.layer_combo.setLayer(raster)
    dock.set_kind("embed")
    dock.tile_size.setValue(512)
    dock.output_widget.setFilePath(str(tmp_path / "e.gpkg"))
    _run(dock)
    assert dock.progress.value() == 100, dock.status.text()
    dock.set_kind("search")
    dock.forms["search"].widgets["query"].setText("")
    assert dock.run() is None
    assert "Search settings" in dock.status.text() and dock.progress.value() == 0
    dock.set_kind("label")
    assert "settings" not in dock.status.text()


def test_the_layer_lists_filter_without_deprecated_flags(rc, qgis_iface, qgis_new_project, data_dir, polygon_layer):
    """The layer combos take the filter type this QGIS expects (Qgis.LayerFilter from 3.34, which warns on the
    old QgsMapLayerProxyModel flags from 3.40; the flags on 3.22), and they still filter: the raster list holds
    no polygon layer, the polygon list no raster."""
    import warnings

    from qgis.core import QgsProject

    from remoteclip_qgis.dock import RemoteClipDock

    raster = _raster(data_dir, KAMPALA, "kampala")
    poly = polygon_layer(["POLYGON((0 0,1 0,1 1,0 0))"])
    QgsProject.instance().addMapLayer(poly)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        d = RemoteClipDock()
    try:
        assert not [w for w in seen if "setFilters" in str(w.message)], [str(w.message) for w in seen]
        listed = [d.layer_combo.layer(i) for i in range(d.layer_combo.count())]
        assert raster in listed and poly not in listed
        listed = [d.polygon_combo.layer(i) for i in range(d.polygon_combo.count())]
        assert poly in listed and raster not in listed
    finally:
        d.unload()
        d.deleteLater()


def test_a_run_saved_to_a_shapefile_gets_its_style_beside_it_but_never_over_a_users(dock, data_dir, tmp_path):
    """As Export does: the run's .qml beside its Shapefile (QGIS applies it when the file is opened again); a .qml
    that sat beside no Shapefile of that name is somebody's and stays."""
    raster = _raster(data_dir, KAMPALA, "kampala")
    dock.layer_combo.setLayer(raster)
    dock.set_kind("label")
    dock.labels_edit.setPlainText("buildings\ntrees")
    dock.tile_unit.setCurrentIndex(dock.tile_unit.findData("px"))
    dock.tile_size.setValue(512)
    out = tmp_path / "labels.shp"
    dock.output_widget.setFilePath(str(out))
    _run(dock)
    qml = tmp_path / "labels.qml"
    assert out.is_file() and qml.is_file() and "categorizedSymbol" in qml.read_text()
    mine = tmp_path / "mine.qml"
    mine.write_text("<qgis>the analyst's own style</qgis>")
    dock.output_widget.setFilePath(str(tmp_path / "mine.shp"))
    _run(dock)
    assert (tmp_path / "mine.shp").is_file() and mine.read_text() == "<qgis>the analyst's own style</qgis>"


def test_a_refused_output_is_said_under_the_file_field(dock, data_dir, tmp_path):
    """Output errors were in the status line only (issue 25 item 7): under the File field too, gone once
    another file is chosen; core's own output checks refuse before the task starts."""
    raster = _raster(data_dir, KAMPALA, "kampala")
    dock.layer_combo.setLayer(raster)
    dock.set_kind("label")
    dock.labels_edit.setPlainText("buildings\ntrees")
    dock.tile_unit.setCurrentIndex(dock.tile_unit.findData("px"))
    dock.tile_size.setValue(512)
    dock.output_widget.setFilePath(str(tmp_path / "no such folder" / "out.gpkg"))
    assert dock.run() is None and dock.task is None
    assert not dock.output_error.isHidden() and "no such folder" in dock.output_error.text()
    assert not (tmp_path / "no such folder").exists()
    dock.output_widget.setFilePath(str(tmp_path / "other.gpkg"))
    assert dock.output_error.isHidden()
