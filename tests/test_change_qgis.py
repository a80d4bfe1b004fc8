"""The change task in real QGIS: the Processing algorithm (remoteclip:changebetweendates, two raster inputs) and
the dock's Change form (a second raster picker) give the layer the command line gives."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from qgis.core import QgsApplication, QgsProcessingFeedback, QgsProject, QgsRasterLayer, QgsVectorLayer

pytestmark = pytest.mark.qgis

LABELS = "buildings, trees, bare soil"
PAIR = "test_2_0000_0000.png"


@pytest.fixture(scope="module")
def plugin(rc, qgis_processing):
    from remoteclip_qgis.processing import RemoteClipProvider

    registry = QgsApplication.processingRegistry()
    provider = RemoteClipProvider()
    assert registry.addProvider(provider)
    yield rc
    registry.removeProvider(provider)


@pytest.fixture
def pair(data_dir, tmp_path):
    from osgeo import gdal, osr

    paths = []
    for which in ("A", "B"):
        arr = np.array(Image.open(data_dir / "change/levir-cd" / which / PAIR).convert("RGB"))
        path = str(tmp_path / f"{which}.tif")
        ds = gdal.GetDriverByName("GTiff").Create(path, 256, 256, 3, gdal.GDT_Byte)
        ds.SetGeoTransform((500000.0, 0.5, 0, 3300000.0, 0, -0.5))
        s = osr.SpatialReference()
        s.ImportFromEPSG(32614)
        ds.SetProjection(s.ExportToWkt())
        for i in range(3):
            ds.GetRasterBand(i + 1).WriteArray(arr[..., i])
        ds = None
        paths.append(path)
    moved = str(tmp_path / "B_3857.tif")
    gdal.Warp(moved, paths[1], dstSRS="EPSG:3857", xRes=0.7, yRes=0.7)
    return paths[0], moved


def rows(path, layer="change"):
    lyr = QgsVectorLayer(f"{path}|layername={layer}", "out", "ogr")
    assert lyr.isValid(), path
    return {(f["row"], f["col"]): (round(f["change"], 5), f["label_before"], f["label_after"], f["selected"])
            for f in lyr.getFeatures()}


def cli_rows(before, after, bundle, out, *extra):
    from remoteclip_qgis.core.cli import main

    assert main(["change", before, after, "--model", str(bundle), "--labels", LABELS, "--tile-size", "64",
                 "--no-cache", "-q", "-o", str(out), *extra]) == 0
    return rows(out)


def test_processing_gives_the_command_lines_layer(plugin, pair, tiny_bundle, tmp_path):
    import processing

    before, after = pair
    out = tmp_path / "p.gpkg"
    res = processing.run("remoteclip:changebetweendates",
                         {"INPUT": before, "AFTER": after, "MODEL": str(tiny_bundle), "OUTPUT": str(out),
                          "USE_CACHE": False, "LABELS": LABELS, "TILE_SIZE": 64, "MATCH_HISTOGRAMS": True,
                          "TOP_K": 4}, feedback=QgsProcessingFeedback())
    assert res["N_TILES"] == 16
    from osgeo import ogr

    ds = ogr.Open(str(out))
    name = ds.GetLayer(0).GetName()
    ds = None
    got = rows(out, name)
    assert got == cli_rows(before, after, tiny_bundle, tmp_path / "c.gpkg", "--match-histograms", "--top-k", "4")
    assert sum(v[3] for v in got.values()) == 4


def test_the_dock_form_reads_the_after_layer_and_the_flag(plugin, pair, tiny_bundle, tmp_path):
    from remoteclip_qgis.core.pipeline import Job, RunOptions, TileSpec, run_job
    from remoteclip_qgis.core.tasks.change import ChangeTask
    from remoteclip_qgis.task_forms import TaskForm

    before, after = pair
    layer = QgsRasterLayer(after, "after")
    QgsProject.instance().addMapLayer(layer)
    form = TaskForm(ChangeTask)
    try:
        form.widgets["after"].setLayer(layer)
        form.widgets["labels"].setPlainText(LABELS)
        form.widgets["match_histograms"].setChecked(True)
        raw = form.raw()
        assert raw["after"] == after and raw["match_histograms"] is True
        task = ChangeTask.from_inputs(raw)
    finally:
        form.deleteLater()
        QgsProject.instance().removeMapLayer(layer.id())
    out = tmp_path / "d.gpkg"
    run_job(Job(raster=before, task=task, run=RunOptions(model=str(tiny_bundle), cache_dir=""),
                tiles=TileSpec(size=64), output=str(out)))
    assert rows(out) == cli_rows(before, after, tiny_bundle, tmp_path / "c.gpkg", "--match-histograms")
