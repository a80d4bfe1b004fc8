"""classify in real QGIS: the dock's Classify tab (sample layer and field pickers, selected features only, the
report in the tab, the "label these next" layer, the heat map) and the Processing algorithm
remoteclip:classifyfromsamples; the one rule for typed class names in the dock and in Processing."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from qgis.core import (
    QgsApplication,
    QgsFeature,
    QgsGeometry,
    QgsPointXY,
    QgsProcessingFeatureSourceDefinition,
    QgsProcessingFeedback,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)
from test_classify_jobs import kampala_samples

pytestmark = pytest.mark.qgis
WAIT_S = 600


@pytest.fixture(scope="module")
def kampala(data_dir):
    return kampala_samples(data_dir, seed=1)


def samples_layer(kampala, name="samples", polygons=False):
    """The samples as a memory layer in UTM 36N (the mosaic is in degrees), class in the field "kind": points,
    or polygons 3 m around them (drawn polygons, inside their 19 m tiles)."""
    from qgis.core import QgsCoordinateReferenceSystem, QgsCoordinateTransform

    kind = "Polygon" if polygons else "Point"
    layer = QgsVectorLayer(f"{kind}?crs=EPSG:32636&field=kind:string&field=note:string", name, "memory")
    ct = QgsCoordinateTransform(QgsCoordinateReferenceSystem("EPSG:4326"), QgsCoordinateReferenceSystem("EPSG:32636"),
                                QgsProject.instance())
    feats = []
    for (x, y), cls in zip(kampala["points"], kampala["classes"], strict=True):
        f = QgsFeature(layer.fields())
        p = ct.transform(QgsPointXY(x, y))
        f.setGeometry(QgsGeometry.fromPointXY(p).buffer(3, 1) if polygons else QgsGeometry.fromPointXY(p))
        f.setAttributes([cls, "drawn"])
        feats.append(f)
    assert layer.dataProvider().addFeatures(feats)[0]
    layer.updateExtents()
    return layer


# --------------------------------------------------------------------------------------------- dock

@pytest.fixture
def dock(rc, qgis_iface, qgis_new_project, tiny_bundle, tmp_path, monkeypatch):
    from qgis.core import QgsSettings

    from remoteclip_qgis.dock import RemoteClipDock

    monkeypatch.setenv("REMOTECLIP_CACHE", str(tmp_path / "cache"))
    QgsSettings().remove("RemoteCLIP")
    d = RemoteClipDock()
    d.model_widget.setFilePath(str(tiny_bundle))
    d.batch_size.setValue(16)
    qgis_iface.messageBar().clear_messages()
    yield d
    d.unload()
    d.deleteLater()


def _wait(dock):
    from qgis.PyQt.QtCore import QCoreApplication

    deadline = time.monotonic() + WAIT_S
    while dock.task is not None:
        assert time.monotonic() < deadline
        QCoreApplication.processEvents()
        time.sleep(0.01)
    QCoreApplication.processEvents()


def test_the_classify_tab_from_sample_layer_to_classified_mosaic(dock, kampala, tmp_path):
    raster = QgsRasterLayer(kampala["raster"], "kampala")
    QgsProject.instance().addMapLayer(raster)
    samples = samples_layer(kampala, polygons=True)   # drawn polygons
    QgsProject.instance().addMapLayer(samples)
    dock.layer_combo.setLayer(raster)
    dock.set_kind("classify")
    form = dock.forms["classify"]
    assert dock.tabs.tabText(dock.tabs.currentIndex()) == "Classify"
    form.widgets["samples"].setLayer(samples)
    assert form.widgets["class_field"].layer() is samples      # the field picker follows the layer picker
    form.widgets["class_field"].setField("kind")
    # use selected features only: 3 of the 4 building points and all the open-ground ones
    samples.selectByIds([f.id() for f in samples.getFeatures()][1:])
    form.selected_only["samples"].setChecked(True)
    form.widgets["suggest"].setValue(4)
    dock.tile_size.setValue(128)
    dock.output_widget.setFilePath(str(tmp_path / "classes.gpkg"))
    assert dock.raster_output_widget.isEnabled()
    dock.raster_output_widget.setFilePath(str(tmp_path / "heat.tif"))

    job, kind, name = dock.build_job()
    assert kind == "classify" and name.startswith("kampala · classes · 128 px · ") and job.raster_output == str(tmp_path / "heat.tif")
    assert len(job.task.samples.wkts) == 7 and job.task.suggest == 4 and "32636" in job.task.samples.crs

    task = dock.run()
    assert task is not None, dock.status.text()
    _wait(dock)
    layer = dock.last_layer
    assert layer is not None and layer.featureCount() == 96, dock.status.text()
    assert sum(1 for f in layer.getFeatures() if f["is_sample"]) == 7
    assert layer.renderer().type() == "categorizedSymbol"
    # the report in the tab and in the status line
    assert form.report.isVisibleTo(form) and "cross-validated accuracy" in form.report.text()
    assert "confusion" in form.report_table.toPlainText() and "cross-validated accuracy" in dock.status.text()
    assert form.report_table.isVisibleTo(form)
    assert (tmp_path / "classes.classes.remoteclip-report.json").is_file()
    # the tiles to label next: a temporary layer, most uncertain first
    nxt = dock.last_suggestions
    assert nxt is not None and nxt.name().startswith("label these next") and nxt.providerType() == "memory"
    ranks = [f["suggest"] for f in nxt.getFeatures()]
    unc = [f["uncertainty"] for f in sorted(nxt.getFeatures(), key=lambda f: f["suggest"])]
    assert sorted(ranks) == [1, 2, 3, 4] and unc == sorted(unc, reverse=True)
    # the heat map, with a colour ramp over the probabilities
    heat = dock.last_dense_layer
    assert heat is not None and heat.isValid() and heat.renderer().type() == "singlebandpseudocolor"
    assert (heat.renderer().classificationMin(), heat.renderer().classificationMax()) == (0.0, 1.0)
    assert "buildings" in heat.name()


def test_the_dock_refuses_samples_without_a_class_field_and_splits_names_like_everywhere(dock, kampala):
    raster = QgsRasterLayer(kampala["raster"], "kampala")
    QgsProject.instance().addMapLayer(raster)
    samples = samples_layer(kampala)
    QgsProject.instance().addMapLayer(samples)
    dock.layer_combo.setLayer(raster)
    dock.set_kind("classify")
    dock.forms["classify"].widgets["samples"].setLayer(samples)
    dock.forms["classify"].widgets["class_field"].setField("")
    assert dock.run() is None and "No class field" in dock.status.text()
    dock.forms["classify"].widgets["class_field"].setField("note")   # every sample "drawn": one class
    assert dock.run() is None and "All samples are of one class" in dock.status.text()
    # the one rule: new lines and commas both separate class names
    dock.set_kind("label")
    dock.labels_edit.setPlainText("buildings, trees\nroad")
    assert dock.build_job()[0].task.labels == ["buildings", "trees", "road"]
    assert dock.raster_output_widget.isEnabled()       # label writes a heat map
    dock.set_kind("count")
    assert not dock.raster_output_widget.isEnabled()   # count has no heat map


# --------------------------------------------------------------------------------------- processing

@pytest.fixture(scope="module")
def plugin(rc, qgis_processing):
    from remoteclip_qgis.processing import RemoteClipProvider

    registry = QgsApplication.processingRegistry()
    provider = RemoteClipProvider()
    assert registry.addProvider(provider)
    yield rc
    registry.removeProvider(provider)


def test_processing_classify_from_samples(plugin, kampala, tiny_bundle, tmp_path, monkeypatch):
    import processing

    monkeypatch.setenv("REMOTECLIP_CACHE", str(tmp_path / "cache"))
    samples = samples_layer(kampala, "proc_samples")
    QgsProject.instance().addMapLayer(samples)
    samples.selectByIds([f.id() for f in samples.getFeatures()][:-1])   # leave one open-ground point out
    alg = QgsApplication.processingRegistry().algorithmById("remoteclip:classifyfromsamples")
    names = {p.name() for p in alg.parameterDefinitions()}
    assert {"SAMPLES", "CLASS_FIELD", "HEAD", "HEAD_OUTPUT", "SUGGEST", "METHOD", "RASTER_OUTPUT"} <= names
    assert alg.parameterDefinition("CLASS_FIELD").parentLayerParameterName() == "SAMPLES"
    params = {"INPUT": kampala["raster"], "MODEL": str(tiny_bundle), "TILE_SIZE": 128, "BATCH_SIZE": 16,
              "SAMPLES": QgsProcessingFeatureSourceDefinition(samples.id(), selectedFeaturesOnly=True),
              "CLASS_FIELD": "kind", "SUGGEST": 2, "HEAD_OUTPUT": str(tmp_path / "head.json"),
              "RASTER_OUTPUT": str(tmp_path / "heat.tif"), "OUTPUT": str(tmp_path / "classes.geojson")}
    res = processing.run("remoteclip:classifyfromsamples", params, feedback=QgsProcessingFeedback())
    assert res["N_TILES"] == 96 and 0.0 <= res["ACCURACY"] <= 1.0
    assert Path(res["RASTER_OUTPUT"]).is_file() and Path(res["HEAD_OUTPUT"]).is_file()
    # a converted output (GeoJSON) has its report beside it, not beside the staging GeoPackage
    assert res["REPORT"] == str(tmp_path / "classes.remoteclip-report.json")
    report = json.loads(Path(res["REPORT"]).read_text())
    assert report["samples"]["tiles"] == {"buildings": 4, "open ground": 3} and report["output"].endswith(".geojson")
    out = QgsVectorLayer(str(tmp_path / "classes.geojson"), "out", "ogr")
    assert out.featureCount() == 96 and sum(1 for f in out.getFeatures() if f["is_sample"]) == 7
    assert sorted(f["suggest"] for f in out.getFeatures() if f["suggest"]) == [1, 2]
    # the saved classifier applied by the same algorithm (no samples), on another tile size
    res2 = processing.run("remoteclip:classifyfromsamples", {
        "INPUT": kampala["raster"], "MODEL": str(tiny_bundle), "TILE_SIZE": 256, "BATCH_SIZE": 16,
        "HEAD": str(tmp_path / "head.json"), "OUTPUT": str(tmp_path / "applied.gpkg")},
        feedback=QgsProcessingFeedback())
    assert res2["N_TILES"] == 24


def test_processing_errors_name_the_parameters(plugin, kampala, tiny_bundle, tmp_path):
    import processing
    from qgis.core import QgsProcessingException

    samples = samples_layer(kampala, "proc_samples_2")
    QgsProject.instance().addMapLayer(samples)
    base = {"INPUT": kampala["raster"], "MODEL": str(tiny_bundle), "TILE_SIZE": 256, "OUTPUT": str(tmp_path / "o.gpkg")}
    # QGIS's type: the message is all that comes through; it names the inputs as Processing shows them
    with pytest.raises(QgsProcessingException) as err:
        processing.run("remoteclip:classifyfromsamples", base, feedback=QgsProcessingFeedback())
    assert all(f"({key})" in str(err.value) for key in ("SAMPLES", "CLASS_FIELD", "HEAD"))
    with pytest.raises(QgsProcessingException) as err:
        processing.run("remoteclip:classifyfromsamples", {**base, "SAMPLES": samples.id()},
                       feedback=QgsProcessingFeedback())
    assert "'proc_samples_2'" in str(err.value)   # the samples layer whose field to pick
    with pytest.raises(QgsProcessingException) as err:
        processing.run("remoteclip:labeltiles", {**base, "LABELS": "", "PRESET": 0},
                       feedback=QgsProcessingFeedback())
    assert "(LABELS" in str(err.value) and "(PRESET" in str(err.value)
