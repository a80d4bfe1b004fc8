"""Accuracy and areas in real QGIS: the Processing tools remoteclip:referencesample and
remoteclip:assessaccuracy (processing.run, batch rows, layers that are no file, the output never an input),
and the dock's "Accuracy and areas" box (a sample layer to label, the report as a table), each checked
against core.assess on the same files: the QGIS side has no figures of its own.

The map is a constructed 4 x 4 grid of 100 m tiles at overlap 0.5 (tests/test_assess.py's): fast."""

from __future__ import annotations

import json
import warnings

import pytest
from qgis.core import (
    QgsApplication,
    QgsFeature,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingParameters,
    QgsProject,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QCoreApplication
from tile_maps import X0, write_tile_map

from core import assess

pytestmark = pytest.mark.qgis



@pytest.fixture(scope="module")
def plugin(rc, qgis_processing):
    from remoteclip_qgis.processing import RemoteClipProvider

    registry = QgsApplication.processingRegistry()
    assert registry.providerById("remoteclip") is None, "an earlier test left a RemoteCLIP provider registered"
    provider = RemoteClipProvider()
    assert registry.addProvider(provider)
    yield rc
    registry.removeProvider(provider)


@pytest.fixture()
def tile_map(tmp_path):
    return write_tile_map(tmp_path / "map.gpkg")


def truth(x: float) -> str:
    return "a" if x < X0 + 80 else "b"   # "a" really ends at 80 m: a fifth of the mapped "a" is "b"


def label_file(path, layer=None, skip=()):
    from osgeo import ogr

    ds = ogr.Open(str(path), 1)
    lyr = ds.GetLayerByName(layer) if layer else ds.GetLayer(0)
    for f in lyr:
        if f.GetField("sample_id") not in skip:
            f.SetField("reference", truth(f.GetGeometryRef().GetX()))
            lyr.SetFeature(f)
    ds = None


def points(path, layer=None) -> list:
    from osgeo import ogr

    ds = ogr.Open(str(path))
    lyr = ds.GetLayerByName(layer) if layer else ds.GetLayer(0)
    return [(f.GetField("sample_id"), f.GetField("map_class"), f.GetGeometryRef().GetX(), f.GetGeometryRef().GetY())
            for f in lyr]


def cli_sample(tile_map, out, per_class=7, seed=5):
    s = assess.write_sample(tile_map, out, "label", "labels", per_class=per_class, seed=seed)
    return s.output, s.layer


def run(alg, params, context=None):
    import processing

    if context is None:
        context = QgsProcessingContext()
        context.setProject(QgsProject.instance())   # layers given by their id
    return processing.run(f"remoteclip:{alg}", params, feedback=QgsProcessingFeedback(), context=context)


def without_sources(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in ("map", "reference")}


# ------------------------------------------------------------------------------------------------ Processing

def test_the_tools_are_registered_with_batch_friendly_parameters(plugin):
    registry = QgsApplication.processingRegistry()
    usable = {"vector", "field", "number", "enum", "string", "vectorDestination", "fileDestination"}
    for name, outputs in (("referencesample", {"OUTPUT", "N_POINTS"}),
                          ("assessaccuracy", {"OUTPUT", "CSV", "OVERALL_ACCURACY", "OVERALL_ACCURACY_CI95",
                                              "N_POINTS", "TABLE"})):
        alg = registry.algorithmById(f"remoteclip:{name}")
        assert alg is not None and alg.group() == "Accuracy assessment"
        for p in alg.parameterDefinitions():   # batch mode and the model designer serialise them
            assert p.type() in usable, (name, p.name(), p.type())
            again = QgsProcessingParameters.parameterFromVariantMap(p.toVariantMap())
            assert again is not None and again.type() == p.type()
        assert {o.name() for o in alg.outputDefinitions()} >= outputs
        assert alg.flags() & alg.FlagSupportsBatch
        assert "Reference field" in alg.shortHelpString()


def test_referencesample_writes_the_points_of_the_command_line(plugin, tile_map, tmp_path):
    out = tmp_path / "ref.gpkg"
    res = run("referencesample", {"MAP": f"{tile_map}|layername=labels", "MAP_FIELD": "label", "PER_CLASS": 7,
                                  "SEED": 5, "OUTPUT": str(out)})
    assert res["N_POINTS"] == 14 and res["OUTPUT"] == str(out)
    cli, layer = cli_sample(tile_map, tmp_path / "cli.gpkg")
    assert points(out) == points(cli, layer)   # same seed, same points (another seed: test_assess.py)
    layer = QgsVectorLayer(str(out), "ref", "ogr")
    assert layer.fields().indexOf("reference") >= 0 and layer.featureCount() == 14
    # a total shared equally, then in proportion to the areas (40 % / 60 %)
    for alloc, want in ((1, ["a"] * 5 + ["b"] * 5), (0, ["a"] * 4 + ["b"] * 6)):
        o = tmp_path / f"total{alloc}.shp"
        run("referencesample", {"MAP": str(tile_map), "PER_CLASS": 7, "TOTAL": 10, "ALLOCATION": alloc,
                                "OUTPUT": str(o)})
        assert sorted(p[1] for p in points(o)) == want


def test_assessaccuracy_gives_the_report_of_core(plugin, tile_map, tmp_path):
    ref, layer = cli_sample(tile_map, tmp_path / "ref.gpkg", per_class=20, seed=2)
    label_file(ref, layer, skip={1})
    out, csv = tmp_path / "report.json", tmp_path / "table.csv"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = run("assessaccuracy", {"MAP": f"{tile_map}|layername=labels", "MAP_FIELD": "label",
                                     "REFERENCE": f"{ref}|layername={layer}", "REFERENCE_FIELD": "reference",
                                     "OUTPUT": str(out), "CSV": str(csv)})
    # no call QGIS deprecates (parameterAsFields from 3.40 on): the Python warning log stays clean
    ours = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)
            and "remoteclip_qgis" in str(w.filename)]
    assert ours == []
    want = assess.assess(tile_map, ref, "reference", "label", "labels", layer)
    got = json.loads(out.read_text())
    assert got == want
    assert want["n"]["left_out"]["no_reference"] == 1 and want["error_matrix"]["counts"][0][1] > 0
    assert res["OVERALL_ACCURACY"] == pytest.approx(want["overall_accuracy"]["estimate"])
    assert res["OVERALL_ACCURACY_CI95"] == pytest.approx(want["overall_accuracy"]["ci95"])
    assert res["N_POINTS"] == 39 and res["TABLE"] == assess.report_table(want)
    assert csv.read_text() == assess.csv_text(want)


def _memory_copy(path, layer_name, geometry: str) -> QgsVectorLayer:
    src = QgsVectorLayer(f"{path}|layername={layer_name}", "src", "ogr")
    mem = QgsVectorLayer(f"{geometry}?crs={src.crs().authid()}", "memory copy", "memory")
    mem.dataProvider().addAttributes(src.fields().toList())
    mem.updateFields()
    feats = []
    for f in src.getFeatures():
        g = QgsFeature(mem.fields())
        g.setGeometry(f.geometry())
        for name in src.fields().names():
            if name != "fid":
                g[name] = f[name]
        feats.append(g)
    assert mem.dataProvider().addFeatures(feats)[0]
    return mem


def test_layers_that_are_no_file_or_have_unsaved_edits_are_read_as_they_show(plugin, tile_map, tmp_path):
    ref, layer = cli_sample(tile_map, tmp_path / "ref.gpkg", per_class=20, seed=2)
    label_file(ref, layer)
    want = assess.assess(tile_map, ref, "reference", "label", "labels", layer)
    # the map in memory, the points in memory: copied to a GeoPackage for core, the same figures
    project = QgsProject.instance()
    mem_map = _memory_copy(tile_map, "labels", "Polygon")
    mem_ref = _memory_copy(ref, layer, "Point")
    project.addMapLayers([mem_map, mem_ref])
    try:
        out = tmp_path / "mem.json"
        run("assessaccuracy", {"MAP": mem_map.id(), "REFERENCE": mem_ref.id(), "OUTPUT": str(out)})
        got = json.loads(out.read_text())
        assert without_sources(got) == without_sources(want)
        assert got["map"] == mem_map.publicSource()   # not the copy, which is gone
        # the file's points with an unsaved edit: the edit counts (one "b" point relabelled "a")
        edited = QgsVectorLayer(f"{ref}|layername={layer}", "edited", "ogr")
        project.addMapLayer(edited)
        edited.startEditing()
        idx = edited.fields().indexOf("reference")
        fid = next(f.id() for f in edited.getFeatures() if f["reference"] == "b" and f["map_class"] == "b")
        assert edited.changeAttributeValue(fid, idx, "a")
        run("assessaccuracy", {"MAP": str(tile_map), "REFERENCE": edited.id(), "OUTPUT": str(out)})
        counts = json.loads(out.read_text())["error_matrix"]["counts"]
        assert counts[1][0] == want["error_matrix"]["counts"][1][0] + 1
        edited.rollBack()
    finally:
        project.removeAllMapLayers()


def test_batch_rows_run_each_with_their_own_values(plugin, tile_map, tmp_path):
    """What the batch dialog does: one instance per row from the registry, values as the rows hold them."""
    registry = QgsApplication.processingRegistry()
    rows = [{"MAP": str(tile_map), "MAP_FIELD": "label", "PER_CLASS": "3", "SEED": str(seed), "TOTAL": "0",
             "ALLOCATION": "0", "REFERENCE_FIELD": "reference", "OUTPUT": str(tmp_path / f"row{seed}.gpkg")}
            for seed in (1, 2)]
    for row in rows:
        alg = registry.createAlgorithmById("remoteclip:referencesample")
        ok, _ = alg.checkParameterValues(row, QgsProcessingContext())
        assert ok
        res, ok = alg.run(row, QgsProcessingContext(), QgsProcessingFeedback())
        assert ok and res["N_POINTS"] == 6
    one, two = points(tmp_path / "row1.gpkg"), points(tmp_path / "row2.gpkg")
    assert one != two
    assert one == points(*cli_sample(tile_map, tmp_path / "cli1.gpkg", per_class=3, seed=1))


def test_an_output_is_never_an_input(plugin, tile_map, tmp_path):
    # the sample onto the map's own layer: refused, the map untouched
    with pytest.raises(QgsProcessingException):
        run("referencesample", {"MAP": f"{tile_map}|layername=labels", "PER_CLASS": 2,
                                "OUTPUT": f"ogr:dbname='{tile_map}' table=\"labels\" (geom)"})
    assert QgsVectorLayer(f"{tile_map}|layername=labels", "m", "ogr").featureCount() == 16
    # a filtered layer is copied for core to read, and its file is still no output
    filtered = QgsVectorLayer(f"{tile_map}|layername=labels|subset=\"label\" IS NOT NULL", "filtered", "ogr")
    assert filtered.isValid() and filtered.subsetString()
    QgsProject.instance().addMapLayer(filtered)
    try:
        with pytest.raises(QgsProcessingException):
            run("referencesample", {"MAP": filtered.id(), "PER_CLASS": 2,
                                    "OUTPUT": f"ogr:dbname='{tile_map}' table=\"labels\" (geom)"})
    finally:
        QgsProject.instance().removeMapLayer(filtered.id())
    assert QgsVectorLayer(f"{tile_map}|layername=labels", "m", "ogr").featureCount() == 16
    # another layer of the same GeoPackage is fine
    res = run("referencesample", {"MAP": f"{tile_map}|layername=labels", "PER_CLASS": 2,
                                  "OUTPUT": f"ogr:dbname='{tile_map}' table=\"sample\" (geom)"})
    assert res["N_POINTS"] == 4 and len(points(tile_map, "sample")) == 4
    # a Shapefile map: the same file is refused
    shp = tmp_path / "map.shp"
    from osgeo import gdal

    gdal.VectorTranslate(str(shp), str(tile_map), layers=["labels"])
    size = shp.stat().st_size
    with pytest.raises(QgsProcessingException):
        run("referencesample", {"MAP": str(shp), "PER_CLASS": 2, "OUTPUT": str(shp)})
    assert shp.stat().st_size == size
    # the report onto the points' file, or the CSV onto the map: refused before anything is read
    ref = tmp_path / "ref.shp"
    run("referencesample", {"MAP": str(tile_map), "PER_CLASS": 2, "OUTPUT": str(ref)})
    ref_size = ref.stat().st_size
    for out, csv in ((str(ref), None), (str(tmp_path / "r.json"), str(shp.with_suffix(".dbf")))):
        params = {"MAP": str(shp), "REFERENCE": str(ref), "OUTPUT": out}
        if csv:
            params["CSV"] = csv
        with pytest.raises(QgsProcessingException):
            run("assessaccuracy", params)
    assert ref.stat().st_size == ref_size and shp.stat().st_size == size


# ------------------------------------------------------------------------------------------------ the dock

@pytest.fixture
def dock(rc, qgis_iface, qgis_new_project, tiny_bundle, tmp_path, monkeypatch):
    from qgis.core import QgsSettings

    from remoteclip_qgis.dock import RemoteClipDock

    monkeypatch.setenv("REMOTECLIP_CACHE", str(tmp_path / "cache"))
    QgsSettings().remove("RemoteCLIP")
    d = RemoteClipDock()
    d.model_widget.setFilePath(str(tiny_bundle))
    qgis_iface.messageBar().clear_messages()
    yield d
    d.unload()
    if d.assess_box.dialog is not None:
        d.assess_box.dialog.close()
    d.deleteLater()


def test_the_dock_makes_a_sample_layer_to_label_with_the_points_of_the_cli(dock, tile_map, tmp_path):
    box = dock.assess_box
    map_layer = QgsVectorLayer(f"{tile_map}|layername=labels", "labels", "ogr")
    QgsProject.instance().addMapLayer(map_layer)
    box.set_map(map_layer)
    assert box.map_combo.currentLayer() is map_layer and box.map_field.currentField() == "label"
    assert box.per_class.value() == 50
    box.per_class.setValue(6)
    box.seed.setValue(4)
    layer = box.make_sample()
    assert layer is not None, dock.status.text()
    out = tmp_path / "map_reference.gpkg"   # beside the map
    assert layer.source().split("|")[0] == str(out)
    assert QgsProject.instance().mapLayer(layer.id()) is layer and layer.isEditable()
    setup = layer.editorWidgetSetup(layer.fields().indexOf("reference"))
    assert setup.type() == "ValueMap" and setup.config()["map"] == [{"a": "a"}, {"b": "b"}]
    assert box.ref_combo.currentLayer() is layer and box.ref_field.currentField() == "reference"
    assert points(out, "reference_sample") == points(*cli_sample(tile_map, tmp_path / "cli.gpkg", 6, 4))
    # a second sample never replaces the first, which may hold labels
    assert box.make_sample().source().split("|")[0] == str(tmp_path / "map_reference_2.gpkg")
    # drawn so they show on any map's colours: white with a black ring, not QGIS's random colour
    symbol = layer.renderer().symbol()
    assert symbol.color().name() == "#ffffff" and symbol.symbolLayer(0).strokeColor().name() == "#000000"


def test_the_dock_assesses_the_labelled_points_and_shows_the_report(dock, tile_map, tmp_path):
    box = dock.assess_box
    map_layer = QgsVectorLayer(f"{tile_map}|layername=labels", "labels", "ogr")
    QgsProject.instance().addMapLayer(map_layer)
    box.set_map(map_layer)
    box.per_class.setValue(15)
    layer = box.make_sample()
    # the analyst picks each point's class: edits still unsaved when Assess is clicked
    idx = layer.fields().indexOf("reference")
    for f in layer.getFeatures():
        if f["sample_id"] != 2:
            assert layer.changeAttributeValue(f.id(), idx, truth(f.geometry().asPoint().x()))
    report = box.assess()
    assert report is not None, dock.status.text()
    assert layer.commitChanges()
    sample = tmp_path / "map_reference.gpkg"
    want = assess.assess(tile_map, sample, "reference", "label", "labels", "reference_sample")
    assert without_sources(report) == without_sources(want)
    saved = tmp_path / "map_reference.reference_sample.accuracy.json"   # beside the points
    assert without_sources(json.loads(saved.read_text())) == without_sources(want)
    dialog = box.dialog
    assert dialog.isVisible() and dialog.table.rowCount() == 2
    # every row shows whole in the dialog as it opens (its first height cut the last row)
    QCoreApplication.processEvents()
    shown = dialog.table.viewport().height()
    assert shown >= sum(dialog.table.rowHeight(r) for r in range(dialog.table.rowCount()))
    for r, row in enumerate(assess.report_rows(want)):
        assert [dialog.cell(r, c) for c in range(5)] == [t.replace("+/-", "±") for t in row]
    assert dialog.overall.text() == assess.overall_text(want).replace("+/-", "±")
    assert "1 no reference" in dialog.notes.text() and str(saved) in dialog.notes.text()
    # assessed again: the report of ours is replaced; a file of someone else's is not
    assert box.assess() is not None
    saved.write_text("{}")
    assert box.assess() is None and saved.read_text() == "{}"


def test_the_sample_layer_takes_a_class_the_map_lacks_and_assess_reports_it(dock, tile_map, tmp_path):
    """The analyst's label may be a class the map does not have: "+" beside the reference field (its dialog
    answered) adds it to the field's value map, QGIS's own editor widget then offers it and sets it, and the
    report lists it as a reference-only class (core.assess on the same file agrees)."""
    from qgis.gui import QgsGui
    from qgis.PyQt.QtCore import QTimer
    from qgis.PyQt.QtWidgets import QApplication, QComboBox, QInputDialog

    box = dock.assess_box
    map_layer = QgsVectorLayer(f"{tile_map}|layername=labels", "labels", "ogr")
    QgsProject.instance().addMapLayer(map_layer)
    box.set_map(map_layer)
    box.per_class.setValue(6)
    layer = box.make_sample()
    idx = layer.fields().indexOf("reference")

    def answer():
        dialog = QApplication.activeModalWidget()
        if isinstance(dialog, QInputDialog):
            dialog.setTextValue("  wetland ")
            dialog.accept()
        else:
            QTimer.singleShot(20, answer)
    QTimer.singleShot(20, answer)
    box.add_class_button.click()
    setup = layer.editorWidgetSetup(idx)
    assert setup.type() == "ValueMap" and setup.config()["map"] == [{"a": "a"}, {"b": "b"}, {"wetland": "wetland"}]
    assert box.add_class("wetland") == ["a", "b", "wetland"]   # once only
    assert box.add_class(" ") is None and "empty" in dock.status.text()
    # a value map in QGIS's older form, {description: value} (projects from older QGIS), takes a class too
    from qgis.core import QgsEditorWidgetSetup

    from remoteclip_qgis.assess_view import add_reference_class

    layer.setEditorWidgetSetup(idx, QgsEditorWidgetSetup("ValueMap", {"map": {"a": "a", "b": "b"}}))
    assert add_reference_class(layer, "reference", "wetland") == ["a", "b", "wetland"]
    layer.setEditorWidgetSetup(idx, setup)

    # QGIS's attribute form widget for the field offers the new class and sets it
    wrapper = QgsGui.editorWidgetRegistry().create(setup.type(), layer, idx, setup.config(), None, dock)
    combo = wrapper.widget()
    assert isinstance(combo, QComboBox) and combo.findText("wetland") >= 0
    combo.setCurrentIndex(combo.findText("wetland"))
    wet = [f.id() for f in layer.getFeatures()][:2]
    for f in layer.getFeatures():
        value = wrapper.value() if f.id() in wet else truth(f.geometry().asPoint().x())
        assert layer.changeAttributeValue(f.id(), idx, value)
    report = box.assess()
    assert report is not None, dock.status.text()
    assert report["reference_only_classes"] == ["wetland"]
    assert layer.commitChanges()
    want = assess.assess(tile_map, tmp_path / "map_reference.gpkg", "reference", "label", "labels", "reference_sample")
    assert without_sources(report) == without_sources(want)
    assert "reference classes not in the map: wetland" in box.dialog.notes.text()
