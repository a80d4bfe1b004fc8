"""The Processing provider in real QGIS: the four algorithms on real rasters, qgis_process, and the
QGIS-provider raster source (GeoTIFF read through QGIS, and an offline XYZ tile layer).

The plugin is imported from the built folder (core vendored as remoteclip_qgis.core), as QGIS
loads it, so everything handed to plugin code comes from the vendored core too.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import require, tiles_sharing_area
from qgis.core import (
    QgsApplication,
    QgsCategorizedSymbolRenderer,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsGeometry,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingParameters,
    QgsProcessingUtils,
    QgsProject,
    QgsProviderRegistry,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
    QgsWkbTypes,
)

pytestmark = pytest.mark.qgis

ALGS = ("labeltiles", "countobjects", "textsearch", "classifyfromsamples", "computeembeddings", "changebetweendates")
TOOLS = ("referencesample", "assessaccuracy")   # no model: tests/test_assess_qgis.py
LABELS = "buildings, trees\nroad, bare soil"


# ------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def plugin(rc, qgis_processing):
    """The built plugin (conftest's rc) and its provider in the processing registry, removed afterwards."""
    from remoteclip_qgis.processing import RemoteClipProvider

    registry = QgsApplication.processingRegistry()
    assert registry.providerById("remoteclip") is None, "an earlier test left a RemoteCLIP provider registered"
    provider = RemoteClipProvider()   # held here: the registry does not keep the Python side alive
    assert registry.addProvider(provider)
    yield rc
    registry.removeProvider(provider)


@pytest.fixture(scope="module")
def mosaic(data_dir):
    return str(data_dir / "orthomosaic" / "kampala_oam_z20_mosaic_1536x1024.tif")


@pytest.fixture(scope="module")
def rgb_byte(data_dir):
    return str(data_dir / "geotiff" / "rasterio_RGB.byte.tif")


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    # runs with USE_CACHE on must not touch the user's cache
    monkeypatch.setenv("REMOTECLIP_CACHE", str(tmp_path / "cache"))


def run(alg, params, feedback=None, context=None):
    import processing

    return processing.run(f"remoteclip:{alg}", params, feedback=feedback or QgsProcessingFeedback(),
                          context=context)


def base_params(raster, bundle, out, **kw):
    return {"INPUT": raster if isinstance(raster, QgsRasterLayer) else str(raster), "MODEL": str(bundle), "OUTPUT": str(out), "USE_CACHE": False,
            "BATCH_SIZE": 16, **kw}


def open_output(path) -> QgsVectorLayer:
    layer = QgsVectorLayer(str(path), "out", "ogr")
    assert layer.isValid(), path
    return layer


def grid_of(raster, **spec):
    """(row, col) of every candidate tile core makes for ``raster`` (the plugin's vendored core)."""
    from remoteclip_qgis.core.geodata.raster import open_raster
    from remoteclip_qgis.core.geodata.tiles import TileSpec, make_grid

    src = open_raster(raster) if isinstance(raster, str) else raster
    return {(t.row, t.col) for t in make_grid(src, TileSpec(**spec))}


def assert_inside(layer: QgsVectorLayer, extent: QgsRectangle, tol: float):
    box = QgsRectangle(extent)
    box.grow(tol)
    for f in layer.getFeatures():
        assert box.contains(f.geometry().boundingBox()), (f.geometry().boundingBox(), extent)


# ------------------------------------------------------------------------------------- the provider

def test_provider_has_an_algorithm_per_task_with_designer_friendly_parameters(plugin):
    registry = QgsApplication.processingRegistry()
    provider = registry.providerById("remoteclip")
    assert provider.name() == "RemoteCLIP"
    assert sorted(a.name() for a in provider.algorithms()) == sorted(ALGS + TOOLS)
    usable = {"raster", "file", "string", "enum", "number", "extent", "source", "band", "boolean",
              "vectorDestination", "rasterDestination", "fileDestination", "field", "multilayer"}
    for name in ALGS:
        alg = registry.algorithmById(f"remoteclip:{name}")
        params = {p.name(): p for p in alg.parameterDefinitions()}
        for common in ("INPUT", "MODEL", "TILE_SIZE", "TILE_UNIT", "OVERLAP", "EXTENT", "MASK", "BANDS",
                       "PIXEL_SIZE", "BATCH_SIZE", "DEVICE", "PRECISION", "OUTPUT"):
            assert common in params, (name, common)
        # the model designer and batch mode serialise parameters: every type must survive that
        for p in params.values():
            assert p.type() in usable, (name, p.name(), p.type())
            again = QgsProcessingParameters.parameterFromVariantMap(p.toVariantMap())
            assert again is not None and again.type() == p.type() and again.name() == p.name()
        assert {o.name() for o in alg.outputDefinitions()} >= {"OUTPUT", "PROVIDER", "N_TILES", "CACHE_HIT"}
        assert alg.flags() & alg.FlagSupportsBatch and alg.flags() & alg.FlagCanCancel
        # the help says what each field means: the task's inputs with their own words, and the common ones
        help_text = alg.shortHelpString()
        for prm in alg.task_cls.params:
            assert f"<b>{prm.label}</b>: " in help_text and (prm.help or prm.label) in help_text, (name, prm.name)
        for field in ("Tile size", "Overlap", "Bands", "Extent", "Output"):
            assert f"<b>{field}</b>: " in help_text, (name, field)
        # whole values are shown whole: "224.0" and "0.00", not "224.000000" and "0.000000"
        assert params["TILE_SIZE"].metadata()["widget_wrapper"]["decimals"] == 1
        assert params["OVERLAP"].metadata()["widget_wrapper"]["decimals"] == 2
        for prm in alg.task_cls.params:
            if prm.kind == "int":
                assert params[prm.processing_key].dataType() == params[prm.processing_key].Type.Integer
    label = registry.algorithmById("remoteclip:labeltiles")
    names = {p.name() for p in label.parameterDefinitions()}
    assert {"LABELS", "PRESET", "TEMPLATES", "TOP_K", "THRESHOLD", "USE_CACHE", "DISSOLVE"} <= names
    from remoteclip_qgis.core.prompts import PRESETS

    assert label.parameterDefinition("PRESET").options()[1:] == list(PRESETS)
    assert label.parameterDefinition("PRESET").options()[label.parameterDefinition("PRESET").defaultValue()] \
        == "land-cover", "Label tiles runs with its default values"
    from qgis.gui import QgsGui, QgsProcessingGui
    from qgis.PyQt.QtWidgets import QDoubleSpinBox

    tile_size = registry.algorithmById("remoteclip:labeltiles").parameterDefinition("TILE_SIZE")
    wrapper = QgsGui.processingGuiRegistry().createParameterWidgetWrapper(tile_size, QgsProcessingGui.Standard)
    widget = wrapper.createWrappedWidget(QgsProcessingContext())
    wrapper.setParameterValue(224, QgsProcessingContext())
    spin = widget if isinstance(widget, QDoubleSpinBox) else widget.findChild(QDoubleSpinBox)
    assert spin.text() == "224.0"
    assert {"OBJECT", "MAX_COUNT"} <= {p.name() for p in registry.algorithmById(
        "remoteclip:countobjects").parameterDefinitions()}
    assert {"QUERY", "TOP_K", "THRESHOLD"} <= {p.name() for p in registry.algorithmById(
        "remoteclip:textsearch").parameterDefinitions()}
    embed = {p.name() for p in registry.algorithmById("remoteclip:computeembeddings").parameterDefinitions()}
    assert "USE_CACHE" not in embed and "DISSOLVE" not in embed   # it always caches and keeps every tile


def test_the_algorithms_are_made_from_the_task_registry(plugin, rgb_byte, tiny_bundle, tmp_path):
    """Ids, names and groups as before, one class per task (createInstance makes another of it); a task added to
    the registry gets its algorithm (parameters, cache rule, run) with no plugin code, and loses it when removed."""
    from dataclasses import dataclass
    from typing import ClassVar

    from remoteclip_qgis.core.pipeline import Job, RunOptions, TileSpec, run_job
    from remoteclip_qgis.core.tasks import TASKS, Param, Task, TaskOutput, register

    registry = QgsApplication.processingRegistry()
    expected = {"labeltiles": ("Label tiles", "Zero-shot analysis", "analysis"),
                "countobjects": ("Count objects", "Zero-shot analysis", "analysis"),
                "textsearch": ("Search by text or example", "Zero-shot analysis", "analysis"),
                "classifyfromsamples": ("Classify from samples", "Few-shot analysis", "fewshotanalysis"),
                "computeembeddings": ("Compute embeddings", "Embeddings", "embeddings")}
    for name, (title, group, group_id) in expected.items():
        alg = registry.algorithmById(f"remoteclip:{name}")
        assert (alg.displayName(), alg.group(), alg.groupId()) == (title, group, group_id)
        assert type(alg).__name__ == title.title().replace(" ", "") + "Algorithm"
        assert type(alg.createInstance()) is type(alg)

    @dataclass
    class BrightestTask(Task):
        scale: float = 1.0

        kind: ClassVar[str] = "brightest"
        title: ClassVar[str] = "Brightest"
        summary: ClassVar[str] = "a test task"
        help: ClassVar[str] = "A test task."
        algorithm: ClassVar[str] = "brightesttiles"
        algorithm_title: ClassVar[str] = "Brightest tiles"
        group: ClassVar[str] = "Test tasks"
        can_skip_cache: ClassVar[bool] = False
        params: ClassVar[tuple] = (Param("scale", "float", "Scale", default=1.0, lo=0.0, hi=10.0),)

        def outputs(self, part, text, bundle, fitted):
            return TaskOutput([{"value": float(x)} for x in part.embeddings[:, 0] * self.scale], [("value", "float")])

    provider = registry.providerById("remoteclip")
    register(BrightestTask)
    try:
        provider.refreshAlgorithms()
        alg = registry.algorithmById("remoteclip:brightesttiles")
        assert (alg.displayName(), alg.group()) == ("Brightest tiles", "Test tasks")
        params = {p.name() for p in alg.parameterDefinitions()}
        assert "SCALE" in params and "USE_CACHE" not in params and "DISSOLVE" not in params
        out = tmp_path / "b.gpkg"
        params = base_params(rgb_byte, tiny_bundle, out, SCALE=2.5, TILE_SIZE=359)
        del params["USE_CACHE"]   # the task always caches
        res = run("brightesttiles", params)
        same = run_job(Job(raster=rgb_byte, task=BrightestTask(scale=2.5), tiles=TileSpec(size=359),
                           run=RunOptions(model=str(tiny_bundle), cache_dir="")))
        assert res["N_TILES"] == len(same.records) > 0
        assert sorted(f["value"] for f in open_output(out).getFeatures()) == pytest.approx(
            sorted(r["value"] for r in same.records), abs=1e-5)
    finally:
        del TASKS["brightest"]
        provider.refreshAlgorithms()
    assert registry.algorithmById("remoteclip:brightesttiles") is None


# ----------------------------------------------------------------------------------- the algorithms

def test_labeltiles_on_the_kampala_mosaic_with_tiles_in_metres(plugin, mosaic, tiny_bundle, tmp_path):
    out = tmp_path / "labels.gpkg"
    res = run("labeltiles", base_params(mosaic, tiny_bundle, out, LABELS=LABELS, TILE_SIZE=30, TILE_UNIT=1))
    assert res["OUTPUT"] == str(out) and out.is_file()
    assert res["PROVIDER"] == "CPUExecutionProvider" and res["CACHE_HIT"] is False
    raster = QgsRasterLayer(mosaic, "mosaic")
    layer = open_output(out)
    assert layer.crs() == raster.crs() and layer.crs().authid() == "EPSG:4326"
    grid = grid_of(mosaic, size=30, unit="m")
    assert layer.featureCount() == res["N_TILES"] == len(grid) > 1   # no nodata: every tile is kept
    assert {(f["row"], f["col"]) for f in layer.getFeatures()} == grid
    assert_inside(layer, raster.extent(), tol=raster.rasterUnitsPerPixelX() * 1e-3)
    pfields = ["p_building", "p_trees", "p_road", "p_bare_soi"]   # Shapefile-safe: 10 characters at most
    assert layer.fields().names() == ["fid", "row", "col", "label", "score", "top_labels", "top_scores", *pfields]
    labels = {"buildings", "trees", "road", "bare soil"}
    for f in layer.getFeatures():
        assert f["label"] in labels
        assert 0.0 < f["score"] <= 1.0
        assert len(f["top_labels"].split("|")) == 3
        probs = [f[n] for n in pfields]
        assert sum(probs) == pytest.approx(1.0, abs=1e-4) and max(probs) == pytest.approx(f["score"], abs=1e-5)


class Warnings(QgsProcessingFeedback):
    def __init__(self):
        super().__init__()
        self.warnings = []

    def pushWarning(self, text):
        self.warnings.append(text)
        super().pushWarning(text)


def test_the_demo_model_says_it_is_a_toy_and_another_model_does_not(plugin, mosaic, tiny_bundle, tmp_path):
    from remoteclip_qgis.core.runtime.bundle import DEMO_BUNDLE

    notes = {}
    for name, model in (("demo", str(DEMO_BUNDLE)), ("tiny", str(tiny_bundle))):
        feedback = Warnings()
        run("labeltiles", base_params(mosaic, model, tmp_path / f"{name}.gpkg", LABELS="buildings,trees",
                                      TILE_SIZE=512), feedback=feedback)
        notes[name] = [w for w in feedback.warnings if "demo model is a toy" in w]
    assert len(notes["demo"]) == 1 and "30.5 %" in notes["demo"][0] and "RemoteCLIP" in notes["demo"][0]
    assert notes["tiny"] == []


def test_labeltiles_with_int8_graphs(plugin, mosaic, int8_bundle, tmp_path):
    registry = QgsApplication.processingRegistry()
    param = registry.algorithmById("remoteclip:labeltiles").parameterDefinition("PRECISION")
    assert param.options() == ["fp32", "fp16", "int8", "auto"]   # the indices of earlier versions are kept
    assert param.defaultValue() == 3   # auto
    out = tmp_path / "labels_int8.gpkg"
    res = run("labeltiles", base_params(mosaic, int8_bundle, out, LABELS=LABELS, TILE_SIZE=256, PRECISION=2))
    layer = open_output(out)
    assert res["PROVIDER"] == "CPUExecutionProvider" and layer.featureCount() == res["N_TILES"] == 24
    assert res["PRECISION_RAN"] == "int8 (chosen in the run's settings)"
    # auto: the tiny bundle's int8 agreement was measured on 16 synthetic images only: fp32, and it says so
    auto = run("labeltiles", base_params(mosaic, int8_bundle, tmp_path / "labels_auto.gpkg", LABELS=LABELS,
                                         TILE_SIZE=256, PRECISION=3))
    assert auto["PRECISION_RAN"].startswith("fp32 (auto: the int8 agreement was measured on only 16 images")
    from remoteclip_qgis.core.pipeline import Job, LabelTask, RunOptions, TileSpec, run_job

    direct = run_job(Job(raster=mosaic, task=LabelTask(["buildings", "trees", "road", "bare soil"]),
                         tiles=TileSpec(size=256),
                         run=RunOptions(model=str(int8_bundle), precision="int8", cache_dir="")))
    assert {(f["row"], f["col"]): f["label"] for f in layer.getFeatures()} == \
        {(r["row"], r["col"]): r["label"] for r in direct.records}


def test_countobjects_on_a_utm_raster_with_nodata(plugin, rgb_byte, tiny_bundle, tmp_path):
    out = tmp_path / "cars.gpkg"
    res = run("countobjects", base_params(rgb_byte, tiny_bundle, out, OBJECT="car", MAX_COUNT=5, TILE_SIZE=64))
    raster = QgsRasterLayer(rgb_byte, "rgb")
    layer = open_output(out)
    assert layer.crs() == raster.crs() and layer.crs().authid() == "EPSG:32618"
    assert {"row", "col", "count", "count_conf"} <= set(layer.fields().names())
    grid = grid_of(rgb_byte, size=64)
    kept = {(f["row"], f["col"]) for f in layer.getFeatures()}
    # the scene is rotated inside nodata: the all-nodata corner tiles are dropped, the rest kept
    assert 0 < len(kept) == res["N_TILES"] < len(grid) and kept <= grid
    assert_inside(layer, raster.extent(), tol=1e-6)
    assert all(1 <= f["count"] <= 5 and 0 < f["count_conf"] <= 1 for f in layer.getFeatures())

    # the same job straight through core gives the same tiles
    from remoteclip_qgis.core.pipeline import CountTask, Job, RunOptions, TileSpec, run_job

    direct = run_job(Job(raster=rgb_byte, task=CountTask("car", 5), tiles=TileSpec(size=64),
                         run=RunOptions(model=str(tiny_bundle), cache_dir="")))
    assert {(r["row"], r["col"]) for r in direct.records} == kept
    by_tile = {(f["row"], f["col"]): f["count"] for f in layer.getFeatures()}
    assert all(by_tile[(r["row"], r["col"])] == r["count"] for r in direct.records)


def test_textsearch_with_an_extent_in_another_crs(plugin, rgb_byte, tiny_bundle, tmp_path):
    raster = QgsRasterLayer(rgb_byte, "rgb")
    wgs84 = QgsCoordinateReferenceSystem("EPSG:4326")
    full = raster.extent()
    inner = QgsRectangle(full.xMinimum() + full.width() * 0.3, full.yMinimum() + full.height() * 0.3,
                         full.xMaximum() - full.width() * 0.3, full.yMaximum() - full.height() * 0.3)
    geo = QgsCoordinateTransform(raster.crs(), wgs84, QgsProject.instance()).transformBoundingBox(inner)
    extent = f"{geo.xMinimum()},{geo.xMaximum()},{geo.yMinimum()},{geo.yMaximum()} [EPSG:4326]"
    out = tmp_path / "search.gpkg"
    res = run("textsearch", base_params(rgb_byte, tiny_bundle, out, QUERY="a river", TOP_K=5, TILE_SIZE=48,
                                        EXTENT=extent))
    layer = open_output(out)
    assert layer.crs() == raster.crs()
    n = layer.featureCount()
    assert n == res["N_TILES"] and 5 < n < len(grid_of(rgb_byte, size=48))
    # the same extent handed to core directly keeps the same tiles
    from remoteclip_qgis.core.pipeline import BBox, Job, RunOptions, SearchTask, TileSpec, run_job

    direct = run_job(Job(raster=rgb_byte, task=SearchTask("a river"), run=RunOptions(model=str(tiny_bundle),
                         cache_dir=""), tiles=TileSpec(size=48, extent=BBox(geo.xMinimum(), geo.yMinimum(),
                                                                            geo.xMaximum(), geo.yMaximum(), 4326))))
    assert {(f["row"], f["col"]) for f in layer.getFeatures()} == {(r["row"], r["col"]) for r in direct.records}
    back = QgsCoordinateTransform(wgs84, raster.crs(), QgsProject.instance()).transformBoundingBox(geo)
    box = QgsGeometry.fromRect(back)
    assert all(f.geometry().intersects(box) for f in layer.getFeatures())
    ranks = sorted(f["rank"] for f in layer.getFeatures())
    assert ranks == list(range(1, n + 1))
    assert sum(f["selected"] for f in layer.getFeatures()) == 5
    best = max(layer.getFeatures(), key=lambda f: f["similarity"])
    assert best["rank"] == 1 and best["selected"] == 1


def test_mask_polygons_keep_only_the_tiles_touching_them(plugin, mosaic, data_dir, tiny_bundle, tmp_path):
    buildings = QgsVectorLayer(str(data_dir / "orthomosaic" / "kampala_buildings_z21_chips.geojson"), "b", "ogr")
    assert buildings.isValid() and buildings.featureCount() == 215
    out = tmp_path / "masked.gpkg"
    res = run("labeltiles", base_params(mosaic, tiny_bundle, out, LABELS=LABELS, TILE_SIZE=64, MASK=buildings))
    layer = open_output(out)
    want = tiles_sharing_area(mosaic, data_dir / "orthomosaic" / "kampala_buildings_z21_chips.geojson", 64)
    assert {(f["row"], f["col"]) for f in layer.getFeatures()} == want
    assert res["N_TILES"] == layer.featureCount() == len(want) < len(grid_of(mosaic, size=64))


def test_embeddings_fill_the_cache_and_a_later_label_run_reads_no_pixels(plugin, rgb_byte, tiny_bundle,
                                                                          tmp_path):
    tiles = {"TILE_SIZE": 96, "OVERLAP": 0.25, "BANDS": [3, 2, 1]}
    params = base_params(rgb_byte, tiny_bundle, tmp_path / "tiles.gpkg", **tiles)
    del params["USE_CACHE"]   # computeembeddings always caches
    emb = run("computeembeddings", params)
    assert emb["CACHE_HIT"] is False and emb["N_TILES"] > 0
    assert open_output(tmp_path / "tiles.gpkg").fields().names() == ["fid", "row", "col"]
    labels = run("labeltiles", base_params(rgb_byte, tiny_bundle, tmp_path / "l.gpkg", LABELS=LABELS,
                                           USE_CACHE=True, **tiles))
    assert labels["CACHE_HIT"] is True and labels["N_TILES"] == emb["N_TILES"]
    dissolved = run("labeltiles", base_params(rgb_byte, tiny_bundle, tmp_path / "d.gpkg", LABELS=LABELS,
                                              USE_CACHE=True, DISSOLVE=True, **tiles))
    assert dissolved["CACHE_HIT"] is True
    layer = open_output(tmp_path / "d.gpkg")
    per_label = {f["label"] for f in open_output(tmp_path / "l.gpkg").getFeatures()}
    assert {f["label"] for f in layer.getFeatures()} == per_label
    assert layer.featureCount() < labels["N_TILES"]


def test_temporary_output_is_a_geopackage_in_the_processing_temp_folder(plugin, rgb_byte, tiny_bundle):
    res = run("textsearch", base_params(rgb_byte, tiny_bundle, "TEMPORARY_OUTPUT", QUERY="farmland",
                                        TILE_SIZE=128))
    out = Path(res["OUTPUT"])
    assert out.suffix == ".gpkg" and out.is_file()
    assert str(out).startswith(QgsProcessingUtils.tempFolder())
    assert open_output(out).featureCount() == res["N_TILES"]


def test_label_tiles_runs_with_its_default_values_and_typed_names_win_over_the_preset(plugin, rgb_byte, tiny_bundle,
                                                                                       tmp_path):
    from remoteclip_qgis.core.prompts import PRESETS

    params = {"INPUT": rgb_byte, "MODEL": str(tiny_bundle), "OUTPUT": str(tmp_path / "default.gpkg"),
              "TILE_SIZE": 256}
    run("labeltiles", params)
    assert {f["label"] for f in open_output(tmp_path / "default.gpkg").getFeatures()} <= set(PRESETS["land-cover"])
    run("labeltiles", {**params, "LABELS": "river, forest", "PRESET": 1, "OUTPUT": str(tmp_path / "typed.gpkg")})
    assert {f["label"] for f in open_output(tmp_path / "typed.gpkg").getFeatures()} <= {"river", "forest"}


def test_a_csv_output_keeps_the_tiles_as_wkt_and_spreadsheets_are_refused(plugin, rgb_byte, tiny_bundle, tmp_path):
    import csv

    out = tmp_path / "search.csv"
    res = run("textsearch", base_params(rgb_byte, tiny_bundle, out, QUERY="a river", TILE_SIZE=256))
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == res["N_TILES"] > 0
    # GDAL names the column WKT (3.6, QGIS 3.22) or after the geometry field, geom (3.10, QGIS 3.40 and 3.44)
    (wkt,) = [k for k in rows[0] if k in ("WKT", "geom")]
    geoms = [QgsGeometry.fromWkt(r[wkt]) for r in rows]
    assert all(g.type() == QgsWkbTypes.PolygonGeometry and g.area() > 0 for g in geoms)
    with pytest.raises(QgsProcessingException) as err:   # QGIS's type: the message is all that comes through
        run("textsearch", base_params(rgb_byte, tiny_bundle, tmp_path / "search.xlsx", QUERY="a river"))
    assert ".xlsx" in str(err.value) and "Fix:" in str(err.value)   # the format named
    assert not (tmp_path / "search.xlsx").exists()


def test_other_vector_formats_are_converted_and_unknown_ones_refused(plugin, rgb_byte, tiny_bundle, tmp_path):
    out = tmp_path / "search.geojson"
    res = run("textsearch", base_params(rgb_byte, tiny_bundle, out, QUERY="a river", TILE_SIZE=128))
    layer = open_output(out)
    assert layer.featureCount() == res["N_TILES"]
    assert layer.crs().authid() == "EPSG:32618"
    assert {"row", "col", "similarity", "rank", "selected"} <= set(layer.fields().names())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["search.geojson"]   # no staging left
    with pytest.raises(QgsProcessingException) as err:
        run("textsearch", base_params(rgb_byte, tiny_bundle, tmp_path / "x.abc", QUERY="a river"))
    assert ".abc" in str(err.value) and "Fix:" in str(err.value)
    assert not (tmp_path / "x.abc").exists()


def _features(path, layer_name) -> list:
    from osgeo import ogr

    ds = ogr.Open(str(path))
    lyr = ds.GetLayerByName(layer_name)
    assert lyr is not None, (path, layer_name)
    defn = lyr.GetLayerDefn()
    names = [defn.GetFieldDefn(i).GetName() for i in range(defn.GetFieldCount())]
    return [([f.GetField(n) for n in names], f.GetGeometryRef().ExportToWkt()) for f in lyr]


def test_a_geopackage_output_keeps_its_other_layers(plugin, mosaic, data_dir, tiny_bundle, tmp_path):
    from osgeo import gdal

    gpkg = tmp_path / "site.gpkg"
    gdal.VectorTranslate(str(gpkg), str(data_dir / "orthomosaic" / "kampala_buildings_z21_chips.geojson"),
                         options=gdal.VectorTranslateOptions(format="GPKG", layerName="buildings"))
    buildings = _features(gpkg, "buildings")
    dest = f"ogr:dbname='{gpkg}' table=\"labels\" (geom)"
    res = run("labeltiles", base_params(mosaic, tiny_bundle, dest, LABELS=LABELS, TILE_SIZE=512))
    assert res["N_TILES"] == 6 and len(_features(gpkg, "labels")) == 6
    assert _features(gpkg, "buildings") == buildings
    # Processing's convention: an output is overwritten (its file widget asked) — the layer, not the file
    run("textsearch", base_params(mosaic, tiny_bundle, dest, QUERY="a road", TILE_SIZE=768))
    assert len(_features(gpkg, "labels")) == 4 and _features(gpkg, "buildings") == buildings
    # a plain path: the task's layer is added beside the others
    run("countobjects", base_params(mosaic, tiny_bundle, gpkg, OBJECT="car", TILE_SIZE=512))
    assert len(_features(gpkg, "count_car")) == 6 and _features(gpkg, "buildings") == buildings
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("cache")) == ["site.gpkg"]


def test_staging_folders_of_a_killed_conversion_are_removed(plugin, rgb_byte, tiny_bundle, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    stale = tmp_path / f".remoteclip_{int(dead.stdout)}_abcd1234"
    (stale / "sub").mkdir(parents=True)
    (stale / "search.geojson").write_text("half")
    keep = [tmp_path / f".remoteclip_{os.getppid()}_abcd1234", tmp_path / ".remoteclip_notes"]
    for k in keep:
        k.mkdir()
    out = tmp_path / "search.geojson"
    run("textsearch", base_params(rgb_byte, tiny_bundle, out, QUERY="a river", TILE_SIZE=128))
    assert out.is_file() and not stale.exists() and all(k.is_dir() for k in keep)


@pytest.mark.parametrize("out", ["/proc/remoteclip-test.geojson", "/proc/remoteclip-test.gpkg"])
def test_an_unwritable_output_is_refused_before_the_run(plugin, rgb_byte, tiny_bundle, tmp_path, out):
    with pytest.raises(QgsProcessingException) as err:
        run("textsearch", base_params(rgb_byte, tiny_bundle, out, QUERY="a river", TILE_SIZE=128,
                                      USE_CACHE=True))
    assert "/proc " in str(err.value) and "Fix:" in str(err.value) and "Traceback" not in str(err.value)
    assert not (tmp_path / "cache").exists()   # no tile was encoded


class CancelAfterFirstBatch(QgsProcessingFeedback):
    def __init__(self):
        super().__init__()
        self.progressChanged.connect(self._maybe_cancel)

    def _maybe_cancel(self, value):
        if value > 0:
            self.cancel()


def test_a_cancelled_run_raises_and_leaves_no_output(plugin, mosaic, tiny_bundle, tmp_path):
    out = tmp_path / "cancelled.gpkg"
    feedback = CancelAfterFirstBatch()
    with pytest.raises(QgsProcessingException) as err:
        run("labeltiles", base_params(mosaic, tiny_bundle, out, LABELS=LABELS, TILE_SIZE=64, BATCH_SIZE=2),
            feedback=feedback)
    # the plugin's own message for a cancel (a Cancelled, no RemoteClipError: no Fix), not another failure
    assert str(err.value).startswith("Cancelled") and "Fix:" not in str(err.value)
    assert feedback.isCanceled()
    assert list(tmp_path.rglob("*")) == []   # no output, no partial or staging file


@pytest.mark.parametrize("extra, shown", [   # the value (or the Processing inputs) the message names
    ({"LABELS": "buildings"}, "'buildings'"),
    ({"LABELS": "", "PRESET": 0}, "(PRESET"),
    ({"LABELS": LABELS, "TILE_SIZE": 5000}, "5000"),
    ({"LABELS": LABELS, "BANDS": [1, 2]}, "[1, 2]"),
])
def test_bad_input_gives_a_readable_processing_error(plugin, rgb_byte, tiny_bundle, tmp_path, extra, shown):
    out = tmp_path / "bad.gpkg"
    with pytest.raises(QgsProcessingException) as err:   # QGIS's type: the message is all that comes through
        run("labeltiles", base_params(rgb_byte, tiny_bundle, out, **extra))
    assert shown in str(err.value)
    assert "Fix:" in str(err.value) and "Traceback" not in str(err.value)
    assert not out.exists()


def test_a_missing_model_names_the_model_and_the_fix(plugin, rgb_byte, tmp_path):
    with pytest.raises(QgsProcessingException) as err:
        run("countobjects", base_params(rgb_byte, tmp_path / "nowhere", tmp_path / "c.gpkg", OBJECT="car"))
    assert str(tmp_path / "nowhere") in str(err.value)   # the model named
    assert "Fix:" in str(err.value)
    assert not (tmp_path / "c.gpkg").exists()


def test_the_output_is_styled_when_loaded_into_the_project(plugin, rgb_byte, tiny_bundle, tmp_path, qgis_iface,
                                                           monkeypatch):
    import processing
    from qgis.core import QgsLayerTreeModel, QgsSettings
    from qgis.gui import QgsLayerTreeView

    project = QgsProject.instance()
    # QGIS 3.44's Processing hands iface.layerTreeView() to C++, where pytest-qgis's stand-in is refused:
    # a real layer tree view on the project's tree
    view = QgsLayerTreeView()
    view.setModel(QgsLayerTreeModel(project.layerTreeRoot(), view))
    monkeypatch.setattr(qgis_iface, "layerTreeView", lambda: view)
    before_all = set(project.mapLayers())
    settings, key = QgsSettings(), "Processing/Configuration/PREFER_FILENAME_AS_LAYER_NAME"
    was = settings.value(key)
    # as the dock names its layers (QGIS names a raster given as a path by its file name up to the first dot)
    title = f"{Path(rgb_byte).name.split('.')[0]} · labels · buildings, trees, … · 128 px"

    def load(out, prefer_filename: bool):
        settings.setValue(key, prefer_filename)
        before = set(project.mapLayers())
        params = base_params(rgb_byte, tiny_bundle, out, LABELS=LABELS, TILE_SIZE=128)
        processing.runAndLoadResults("remoteclip:labeltiles", params, feedback=QgsProcessingFeedback())
        return [project.mapLayer(i) for i in set(project.mapLayers()) - before]

    try:
        out = tmp_path / "styled.gpkg"
        added = load(out, False)
        assert len(added) == 1
        layer = added[0]
        assert Path(layer.source().split("|")[0]) == out
        renderer = layer.renderer()
        assert isinstance(renderer, QgsCategorizedSymbolRenderer) and renderer.classAttribute() == "label"
        assert {c.value() for c in renderer.categories()} >= {f["label"] for f in layer.getFeatures()}
        assert layer.name() == title
        project.removeMapLayers([la.id() for la in added])
        # a temporary output's file name (labeltiles.gpkg in QGIS's temporary folder) means nothing: the title,
        # even where "Prefer output filename for layer names" is on
        added = load("TEMPORARY_OUTPUT", True)
        assert [la.name() for la in added] == [title]
    finally:
        project.removeMapLayers([i for i in project.mapLayers() if i not in before_all])
        if was is None:
            settings.remove(key)
        else:
            settings.setValue(key, was)


# ------------------------------------------------------------------------ reading through QGIS itself

def test_a_geotiff_read_through_qgis_equals_rasterio(plugin, rgb_byte, data_dir):
    from remoteclip_qgis.core.geodata.raster import open_raster
    from remoteclip_qgis.layer_source import QgisRasterSource, raster_for_layer

    layer = QgsRasterLayer(rgb_byte, "rgb")
    assert raster_for_layer(layer) == rgb_byte          # a local file goes to core as a path
    src = raster_for_layer(layer, force_provider=True)
    assert isinstance(src, QgisRasterSource)
    ref = open_raster(rgb_byte)
    assert (src.width, src.height, src.count, src.dtype) == (ref.width, ref.height, ref.count, ref.dtype)
    assert np.allclose(src.transform, ref.transform, rtol=0, atol=1e-6)
    assert src.colorinterp == ["red", "green", "blue"] and src.nodata == ref.nodata == 0
    assert QgsCoordinateReferenceSystem.fromWkt(src.crs_wkt).authid() == "EPSG:32618"
    for window in [(0, 0, 791, 718), (100, 50, 300, 200), (0, 600, 64, 64), (700, 650, 91, 68)]:
        d, v = src.read([3, 2, 1], window)
        rd, rv = ref.read([3, 2, 1], window)
        assert d.dtype == rd.dtype and np.array_equal(d, rd), window
        assert np.array_equal(v, rv), window
    d, v = src.read([1], (0, 0, 791, 718), out_shape=(100, 110))
    rd, _ = ref.read([1], (0, 0, 791, 718), out_shape=(100, 110))
    assert d.shape == (1, 100, 110) and v.shape == (100, 110)
    assert abs(float(d.mean()) - float(rd.mean())) < 2.0
    ref.close()

    pan = str(data_dir / "geotiff" / "solaris_sample_geotiff.tif")   # uint16, one band
    src16 = raster_for_layer(QgsRasterLayer(pan, "pan"), force_provider=True)
    ref16 = open_raster(pan)
    assert src16.dtype == "uint16" and src16.count == 1
    d, v = src16.read([1, 1, 1], (200, 300, 224, 224))
    rd, rv = ref16.read([1, 1, 1], (200, 300, 224, 224))
    assert np.array_equal(d, rd) and np.array_equal(v, rv)
    ref16.close()
    src16.close()


def test_a_palette_layer_read_through_qgis_gives_the_colours_core_reads_from_the_file(plugin, palette_tif):
    from remoteclip_qgis.core.geodata.raster import Stretch, open_raster, read_rgb
    from remoteclip_qgis.layer_source import raster_for_layer

    path, table = palette_tif
    src = raster_for_layer(QgsRasterLayer(path, "palette"), force_provider=True)
    ref = open_raster(path)
    try:
        assert src.colorinterp == ref.colorinterp == ["palette"]
        assert src.colormap(1) == ref.colormap(1) == table
        stretch = Stretch.from_source(src, [1, 1, 1])
        assert stretch == Stretch.from_source(ref, [1, 1, 1]) and stretch.params["kind"] == "palette"
        for window in [(0, 0, 256, 256), (700, 400, 300, 200)]:
            got, _ = read_rgb(src, [1, 1, 1], window, stretch)
            want, _ = read_rgb(ref, [1, 1, 1], window, stretch)
            assert np.array_equal(got, want), window
    finally:
        src.close()
        ref.close()


def test_run_job_on_the_qgis_source_gives_the_tiles_of_the_file(plugin, rgb_byte, tiny_bundle):
    from remoteclip_qgis.core.pipeline import Job, LabelTask, RunOptions, TileSpec, run_job
    from remoteclip_qgis.layer_source import raster_for_layer

    def job(raster):
        return Job(raster=raster, task=LabelTask(["water", "forest", "fields"]), tiles=TileSpec(size=80),
                   run=RunOptions(model=str(tiny_bundle), cache_dir=""))

    src = raster_for_layer(QgsRasterLayer(rgb_byte, "rgb"), force_provider=True)
    via_qgis = run_job(job(src))
    src.close()
    via_file = run_job(job(rgb_byte))
    assert [(r["row"], r["col"]) for r in via_qgis.records] == [(r["row"], r["col"]) for r in via_file.records]
    for a, b in zip(via_qgis.records, via_file.records, strict=True):
        assert QgsGeometry.fromWkt(a["geometry"]).equals(QgsGeometry.fromWkt(b["geometry"])) or \
            QgsGeometry.fromWkt(a["geometry"]).symDifference(QgsGeometry.fromWkt(b["geometry"])).area() < 1e-3
    assert np.allclose(via_qgis.embeddings, via_file.embeddings, atol=1e-5)
    assert [r["label"] for r in via_qgis.records] == [r["label"] for r in via_file.records]


@pytest.fixture(scope="module")
def xyz_uri(mosaic, tmp_path_factory):
    """An XYZ layer over a file:// tile pyramid made from the Kampala mosaic (zooms 18-20, offline)."""
    folder = tmp_path_factory.mktemp("xyz")
    done = subprocess.run([sys.executable, "-m", "osgeo_utils.gdal2tiles", "--xyz", "-z", "18-20", "-w", "none",
                           "-r", "near", "-q", mosaic, str(folder)], capture_output=True, text=True)
    require(done.returncode == 0, f"gdal2tiles failed: {done.stderr[-500:]}")
    assert len(list(folder.rglob("*.png"))) > 20
    uri = QgsProviderRegistry.instance().encodeUri(
        "wms", {"type": "xyz", "url": f"file://{folder}/{{z}}/{{x}}/{{y}}.png", "zmin": "18", "zmax": "20"})
    assert QgsRasterLayer(uri, "kampala xyz", "wms").isValid(), uri
    return uri


@pytest.fixture
def xyz_layer(xyz_uri):
    return QgsRasterLayer(xyz_uri, "kampala xyz", "wms")


def test_an_xyz_layer_is_read_at_its_deepest_zoom_within_an_extent(plugin, xyz_layer, mosaic):
    from remoteclip_qgis.core.errors import InvalidInput
    from remoteclip_qgis.core.geodata.raster import open_raster
    from remoteclip_qgis.layer_source import QgisRasterSource, extent_from_rectangle, raster_for_layer

    with pytest.raises(InvalidInput) as err:
        raster_for_layer(xyz_layer)
    assert err.value.param == "extent" and "'kampala xyz'" in err.value.problem
    k = QgsRasterLayer(mosaic, "k")
    src = raster_for_layer(xyz_layer, extent=extent_from_rectangle(k.extent(), k.crs()))
    assert isinstance(src, QgisRasterSource) and src.name == xyz_layer.source()
    z20 = 2 * 20037508.342789244 / 256 / 2 ** 20
    assert src.transform[0] == pytest.approx(z20) and src.transform[4] == pytest.approx(-z20)
    assert QgsCoordinateReferenceSystem.fromWkt(src.crs_wkt).authid() == "EPSG:3857"
    assert (src.count, src.dtype, src.colorinterp) == (3, "uint8", ["red", "green", "blue"])
    # the mosaic was cut from z20 tiles, so the extent is ~1536 x 1024 z20 pixels
    assert abs(src.width - 1536) <= 2 and abs(src.height - 1024) <= 2
    data, valid = src.read([1, 2, 3], (0, 0, src.width, src.height))
    assert data.shape == (3, src.height, src.width) and valid.mean() > 0.99
    ref = open_raster(mosaic)
    rdata, _ = ref.read([1, 2, 3], (0, 0, ref.width, ref.height))
    ref.close()
    assert np.allclose(data[:, valid].mean(axis=1), rdata.reshape(3, -1).mean(axis=1), atol=1.0)
    # outside the pyramid the tiles are missing: transparent pixels are not valid
    a, _, c, _, e, f = src.transform
    src.close()
    wider = raster_for_layer(xyz_layer, extent=extent_from_rectangle(
        QgsRectangle(c - 200 * a, f + (src.height + 200) * e, c + (src.width + 200) * a, f - 200 * e),
        xyz_layer.crs()))
    _, v = wider.read([1, 2, 3], (0, 0, wider.width, wider.height), out_shape=(200, 300))
    assert 0.2 < v.mean() < 0.9
    wider.close()


def test_labeltiles_on_an_xyz_layer_needs_an_extent_and_then_tiles_it(plugin, xyz_layer, mosaic, data_dir,
                                                                       tiny_bundle, tmp_path):
    with pytest.raises(QgsProcessingException) as err:
        run("labeltiles", base_params(xyz_layer, tiny_bundle, tmp_path / "no.gpkg", LABELS=LABELS))
    assert "'kampala xyz'" in str(err.value) and "EXTENT" in str(err.value)   # the layer and the input to set
    assert not (tmp_path / "no.gpkg").exists()
    k = QgsRasterLayer(mosaic, "k").extent()
    extent = f"{k.xMinimum()},{k.xMaximum()},{k.yMinimum()},{k.yMaximum()} [EPSG:4326]"
    out = tmp_path / "xyz.gpkg"
    res = run("labeltiles", base_params(xyz_layer, tiny_bundle, out, LABELS=LABELS, TILE_SIZE=256, EXTENT=extent))
    layer = open_output(out)
    assert layer.crs().authid() == "EPSG:3857"
    merc = QgsCoordinateTransform(QgsCoordinateReferenceSystem("EPSG:4326"), layer.crs(),
                                  QgsProject.instance()).transformBoundingBox(k)
    assert_inside(layer, merc, tol=1.0)
    # 1536 x 1024 z20 pixels in 256 px tiles: a 6 x 4 grid
    assert res["N_TILES"] == layer.featureCount() == 24
    assert {(f["row"], f["col"]) for f in layer.getFeatures()} == {(r, c) for r in range(4) for c in range(6)}

    # mask polygons alone (in CRS84) give the web layer both its reading extent and the tiles to keep
    buildings = QgsVectorLayer(str(data_dir / "orthomosaic" / "kampala_buildings_z21_chips.geojson"), "b", "ogr")
    masked = tmp_path / "masked.gpkg"
    res = run("labeltiles", base_params(xyz_layer, tiny_bundle, masked, LABELS=LABELS, TILE_SIZE=128,
                                        MASK=buildings))
    layer = open_output(masked)
    assert layer.crs().authid() == "EPSG:3857" and layer.featureCount() == res["N_TILES"] > 0
    to_merc = QgsCoordinateTransform(buildings.crs(), layer.crs(), QgsProject.instance())
    geoms = []
    for f in buildings.getFeatures():
        g = QgsGeometry(f.geometry())
        g.transform(to_merc)
        geoms.append(g)
    assert all(any(f.geometry().intersects(g) for g in geoms) for f in layer.getFeatures())


# ------------------------------------------------------------------------------------ extents

def test_extent_from_rectangle_and_features(plugin, polygon_layer):
    from remoteclip_qgis.core.errors import InvalidInput
    from remoteclip_qgis.core.geodata.tiles import BBox, Polygons
    from remoteclip_qgis.layer_source import extent_from_features, extent_from_rectangle

    crs = QgsCoordinateReferenceSystem("EPSG:32618")
    bbox = extent_from_rectangle(QgsRectangle(1, 2, 3, 4), crs)
    assert isinstance(bbox, BBox) and (bbox.xmin, bbox.ymin, bbox.xmax, bbox.ymax) == (1, 2, 3, 4)
    assert QgsCoordinateReferenceSystem.fromWkt(bbox.crs).authid() == "EPSG:32618"
    with pytest.raises(InvalidInput) as err:
        extent_from_rectangle(QgsRectangle(), crs)
    assert err.value.param == "extent" and err.value.fix
    from remoteclip_qgis.layer_source import samples_from_layer

    with pytest.raises(InvalidInput) as err:   # samples with no class field chosen
        samples_from_layer(polygon_layer(["POLYGON((0 0, 1 0, 1 1, 0 0))"]), "")
    assert err.value.param == "class_field" and err.value.fix

    layer = polygon_layer(["POLYGON((32.58 0.33, 32.59 0.33, 32.59 0.34, 32.58 0.33))",
                           "POLYGON((32.60 0.33, 32.61 0.33, 32.61 0.34, 32.60 0.33))"])
    with pytest.raises(InvalidInput) as err:
        extent_from_features(layer)
    assert err.value.param == "polygons" and "'polygons'" in err.value.problem and err.value.fix   # the layer
    everything = extent_from_features(layer, selected_only=False)
    assert isinstance(everything, Polygons) and len(everything.wkts) == 2
    assert QgsCoordinateReferenceSystem.fromWkt(everything.crs).authid() == "EPSG:4326"
    first = next(layer.getFeatures())
    layer.selectByIds([first.id()])
    one = extent_from_features(layer)
    assert len(one.wkts) == 1 and QgsGeometry.fromWkt(one.wkts[0]).equals(first.geometry())
    points = QgsVectorLayer("Point?crs=EPSG:4326", "pts", "memory")
    with pytest.raises(InvalidInput) as err:
        extent_from_features(points, selected_only=False)
    assert err.value.param == "polygons" and "'pts'" in err.value.problem


# -------------------------------------------------------------------------------------- qgis_process

def test_qgis_process_loads_the_plugin_and_runs_labeltiles(plugin, built_plugin, mosaic, tiny_bundle, tmp_path):
    exe = shutil.which("qgis_process.bin") or shutil.which("qgis_process")
    require(exe is not None, "qgis_process is not installed")
    profile = tmp_path / "config"
    plugins = profile / "profiles" / "default" / "python" / "plugins"
    plugins.mkdir(parents=True)
    shutil.copytree(built_plugin / "remoteclip_qgis", plugins / "remoteclip_qgis")
    env = dict(os.environ, QGIS_CUSTOM_CONFIG_PATH=str(profile), QT_QPA_PLATFORM="offscreen",
               REMOTECLIP_CACHE=str(tmp_path / "cache"),
               # qgis_process runs the system python: give it this environment's onnxruntime, ftfy, regex
               PYTHONPATH=os.pathsep.join([*site.getsitepackages(), os.environ.get("PYTHONPATH", "")]))

    def qgis_process(*args):
        done = subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=300)
        return done.returncode, done.stdout, done.stderr

    rc, out, err = qgis_process("plugins", "enable", "remoteclip_qgis")
    assert rc == 0, out + err
    rc, out, err = qgis_process("plugins")
    assert rc == 0 and any(line.strip() == "* remoteclip_qgis" for line in out.splitlines()), out + err
    rc, out, err = qgis_process("list")
    assert rc == 0 and all(f"remoteclip:{a}" in out for a in ALGS), out + err

    dest = tmp_path / "labels.gpkg"
    rc, out, err = qgis_process("--json", "run", "remoteclip:labeltiles", "--", f"INPUT={mosaic}",
                                f"MODEL={tiny_bundle}", "LABELS=buildings,trees,road", "TILE_SIZE=50",
                                "TILE_UNIT=1", f"OUTPUT={dest}")
    assert rc == 0, out[-2000:] + err[-2000:]
    results = json.loads(out[out.index("{"):])["results"]
    assert results["OUTPUT"] == str(dest) and results["PROVIDER"] == "CPUExecutionProvider"
    layer = open_output(dest)
    assert layer.featureCount() == results["N_TILES"] == len(grid_of(mosaic, size=50, unit="m"))
    assert layer.crs().authid() == "EPSG:4326"

    rc, out, err = qgis_process("run", "remoteclip:labeltiles", "--", f"INPUT={mosaic}", f"MODEL={tiny_bundle}",
                                "LABELS=buildings", f"OUTPUT={tmp_path / 'bad.gpkg'}")
    assert rc != 0 and "Only one label" in out + err
    assert not (tmp_path / "bad.gpkg").exists()

    # bands as users type them ("3,2,1"; QGIS itself reads only "3;2;1" and took "3,2,1" for band 0)
    common = {"LABELS": "buildings,trees,road", "TILE_SIZE": 100, "TILE_UNIT": 1}
    rc, out, err = qgis_process("run", "remoteclip:labeltiles", "--", f"INPUT={mosaic}", f"MODEL={tiny_bundle}",
                                *(f"{k}={v}" for k, v in common.items()), "BANDS=3,2,1",
                                f"OUTPUT={tmp_path / 'bgr.gpkg'}")
    assert rc == 0, out[-2000:] + err[-2000:]
    run("labeltiles", base_params(mosaic, tiny_bundle, tmp_path / "bgr_list.gpkg", BANDS=[3, 2, 1], **common))
    run("labeltiles", base_params(mosaic, tiny_bundle, tmp_path / "rgb.gpkg", **common))

    def probabilities(path):
        return sorted((f["row"], f["col"], round(f["p_building"], 4), round(f["p_trees"], 4))
                      for f in open_output(path).getFeatures())

    bgr = probabilities(tmp_path / "bgr.gpkg")
    assert bgr == probabilities(tmp_path / "bgr_list.gpkg"), "BANDS=3,2,1 read other bands than [3, 2, 1]"
    assert bgr != probabilities(tmp_path / "rgb.gpkg"), "BANDS=3,2,1 read the default bands"


def test_labeltiles_runs_inside_a_processing_model(plugin, rgb_byte, tiny_bundle, tmp_path):
    """The model designer's path: a model whose child is remoteclip:labeltiles, fed by model inputs."""
    from qgis.core import (
        QgsProcessingModelAlgorithm,
        QgsProcessingModelChildAlgorithm,
        QgsProcessingModelChildParameterSource,
        QgsProcessingModelOutput,
        QgsProcessingModelParameter,
        QgsProcessingParameterRasterLayer,
        QgsProcessingParameterString,
    )

    model = QgsProcessingModelAlgorithm("label model", "tests")
    model.addModelParameter(QgsProcessingParameterRasterLayer("raster", "raster"), QgsProcessingModelParameter("raster"))
    model.addModelParameter(QgsProcessingParameterString("classes", "classes"), QgsProcessingModelParameter("classes"))
    child = QgsProcessingModelChildAlgorithm("remoteclip:labeltiles")
    child.setChildId("label")
    child.addParameterSources("INPUT", [QgsProcessingModelChildParameterSource.fromModelParameter("raster")])
    child.addParameterSources("LABELS", [QgsProcessingModelChildParameterSource.fromModelParameter("classes")])
    child.addParameterSources("MODEL", [QgsProcessingModelChildParameterSource.fromStaticValue(str(tiny_bundle))])
    child.addParameterSources("TILE_SIZE", [QgsProcessingModelChildParameterSource.fromStaticValue(128)])
    child.addParameterSources("USE_CACHE", [QgsProcessingModelChildParameterSource.fromStaticValue(False)])
    output = QgsProcessingModelOutput("labels", "labels")
    output.setChildId("label")
    output.setChildOutputName("OUTPUT")
    child.setModelOutputs({"labels": output})
    model.addChildAlgorithm(child)
    # a saved and reloaded model (what the designer writes) must still hold the child's parameters
    path = tmp_path / "model.model3"
    assert model.toFile(str(path))
    again = QgsProcessingModelAlgorithm()
    assert again.fromFile(str(path))
    assert again.childAlgorithm("label").algorithmId() == "remoteclip:labeltiles"

    # QGIS 3.22 names the model's output parameter CHILD:OUTPUT ("label:labels"), 3.36 and later the output
    # itself ("labels")
    names = [p.name() for p in again.destinationParameterDefinitions()]
    assert len(names) == 1 and names[0] in ("label:labels", "labels"), names
    import processing

    out = tmp_path / "labels.gpkg"
    res = processing.run(again, {"raster": rgb_byte, "classes": "water, forest, fields", names[0]: str(out)},
                         feedback=QgsProcessingFeedback())
    layer = open_output(out)
    assert res[names[0]] == str(out)
    assert layer.crs().authid() == "EPSG:32618"
    # the model's child ran the job core runs for those parameters
    from remoteclip_qgis.core.pipeline import Job, LabelTask, RunOptions, TileSpec, run_job

    direct = run_job(Job(raster=rgb_byte, task=LabelTask(["water", "forest", "fields"]), tiles=TileSpec(size=128),
                         run=RunOptions(model=str(tiny_bundle), cache_dir="")))
    assert {(f["row"], f["col"]): f["label"] for f in layer.getFeatures()} == {
        (r["row"], r["col"]): r["label"] for r in direct.records}
