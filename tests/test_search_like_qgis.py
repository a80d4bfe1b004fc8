"""Search by example in QGIS: the dock's Search tab (an example layer's selected features) and Processing's
LIKE parameter rank the same tiles as the command line for the same examples."""

from __future__ import annotations

import json

import pytest
from qgis.core import (
    QgsApplication,
    QgsFeature,
    QgsGeometry,
    QgsPointXY,
    QgsProcessingFeatureSourceDefinition,
    QgsProcessingFeedback,
    QgsProject,
    QgsVectorLayer,
)

pytestmark = pytest.mark.qgis
SIZE = 256


@pytest.fixture(scope="module")
def plugin(rc, qgis_processing):
    from remoteclip_qgis.processing import RemoteClipProvider

    registry = QgsApplication.processingRegistry()
    provider = RemoteClipProvider()
    assert registry.addProvider(provider)
    yield rc
    registry.removeProvider(provider)


def test_the_command_line_the_dock_and_processing_rank_the_same_tiles(plugin, data_dir, tiny_bundle, tmp_path):
    import processing
    import rasterio

    from remoteclip_qgis.core.cli import main
    from remoteclip_qgis.core.pipeline import Job, RunOptions, TileSpec, run_job
    from remoteclip_qgis.core.tasks import SearchTask
    from remoteclip_qgis.task_forms import TaskForm

    mosaic = str(data_dir / "orthomosaic" / "kampala_oam_z20_mosaic_1536x1024.tif")
    with rasterio.open(mosaic) as ds:
        pts = [ds.transform * ((c + 0.5) * SIZE, (r + 0.5) * SIZE) for r, c in ((1, 4), (0, 0), (3, 2))]
    layer = QgsVectorLayer("Point?crs=EPSG:4326", "examples", "memory")
    feats = []
    for x, y in pts:
        f = QgsFeature()
        f.setGeometry(QgsGeometry.fromPointXY(QgsPointXY(x, y)))
        feats.append(f)
    assert layer.dataProvider().addFeatures(feats)[0]
    QgsProject.instance().addMapLayer(layer)
    try:
        ids = [f.id() for f in layer.getFeatures()]
        layer.selectByIds(ids[:2])   # the third point is not an example
        # the command line, with the selected two
        ex = tmp_path / "ex.geojson"
        ex.write_text(json.dumps({"type": "FeatureCollection", "features": [
            {"type": "Feature", "properties": {}, "geometry": {"type": "Point", "coordinates": list(p)}}
            for p in pts[:2]]}))
        cli_out = tmp_path / "cli.gpkg"
        assert main(["search", mosaic, "--like", str(ex), "--model", str(tiny_bundle), "--tile-size", str(SIZE),
                     "--no-cache", "-q", "-o", str(cli_out)]) == 0
        cli = _ranks(QgsVectorLayer(str(cli_out), "cli", "ogr"))
        assert sum(1 for v in cli.values() if v[1] == 1) == 2
        # the dock's form
        form = TaskForm(SearchTask)
        try:
            form.widgets["query"].setText("")
            form.widgets["like"].setLayer(layer)
            form.selected_only["like"].setChecked(True)
            task = form.task()
        finally:
            form.deleteLater()
        res = run_job(Job(raster=mosaic, task=task, run=RunOptions(model=str(tiny_bundle), cache_dir=""),
                          tiles=TileSpec(size=SIZE)))
        dock = {(r["row"], r["col"]): (r["rank"], r["is_example"]) for r in res.records}
        assert dock == cli
        # Processing, the layer's selected features
        out = tmp_path / "proc.gpkg"
        processing.run("remoteclip:textsearch", {
            "INPUT": mosaic, "MODEL": str(tiny_bundle), "OUTPUT": str(out), "USE_CACHE": False, "TILE_SIZE": SIZE,
            "LIKE": QgsProcessingFeatureSourceDefinition(layer.id(), True)}, feedback=QgsProcessingFeedback())
        assert _ranks(QgsVectorLayer(str(out), "proc", "ogr")) == cli
    finally:
        QgsProject.instance().removeMapLayer(layer.id())


def _ranks(layer) -> dict:
    assert layer.isValid()
    return {(f["row"], f["col"]): (f["rank"], f["is_example"]) for f in layer.getFeatures()}
