"""Search by example in QGIS: the dock's Search tab (an example layer's selected features) and Processing's
LIKE parameter rank the same tiles as the command line for the same examples."""

from __future__ import annotations

import json

import pytest
from conftest import require
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


# ---------------------------------------------------------------------------------- picking on the map

OVERLAP = 25   # %: a step of 192 px, so the grid differs from the tile size's own (and a centre is in one tile)
STEP = 192


@pytest.fixture
def dock(rc, qgis_iface, qgis_new_project, tiny_bundle, tmp_path, monkeypatch):
    from qgis.core import QgsSettings

    from remoteclip_qgis.dock import RemoteClipDock

    monkeypatch.setenv("REMOTECLIP_CACHE", str(tmp_path / "cache"))
    QgsSettings().remove("RemoteCLIP")
    d = RemoteClipDock()
    d.model_widget.setFilePath(str(tiny_bundle))
    yield d
    d.unload()
    d.deleteLater()


def _click(canvas, tool, raster, px, py, shift=False):
    """A real mouse release on the canvas at the screen position of raster pixel (px, py)."""
    import rasterio
    from qgis.core import QgsCoordinateReferenceSystem, QgsCoordinateTransform
    from qgis.gui import QgsMapMouseEvent
    from qgis.PyQt.QtCore import QEvent, QPoint, Qt

    with rasterio.open(raster) as ds:
        x, y = ds.transform * (px, py)
    to_map = QgsCoordinateTransform(QgsCoordinateReferenceSystem("EPSG:4326"),
                                    canvas.mapSettings().destinationCrs(), QgsProject.instance())
    screen = canvas.getCoordinateTransform().transform(to_map.transform(QgsPointXY(x, y)))
    mods = Qt.KeyboardModifier.ShiftModifier if shift else Qt.KeyboardModifier.NoModifier
    event = QgsMapMouseEvent(canvas, QEvent.Type.MouseButtonRelease, QPoint(round(screen.x()), round(screen.y())),
                             Qt.MouseButton.LeftButton, Qt.MouseButton.LeftButton, mods)
    tool.canvasReleaseEvent(event)


def _tile_box(raster, row, col):
    """The outline of tile (row, col) of the 256 px grid at a 192 px step, in EPSG:3857 (the canvas's CRS)."""
    import rasterio
    from qgis.core import QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsRectangle

    with rasterio.open(raster) as ds:
        (x0, y0), (x1, y1) = ds.transform * (col * STEP, row * STEP), ds.transform * (col * STEP + SIZE,
                                                                                       row * STEP + SIZE)
    ct = QgsCoordinateTransform(QgsCoordinateReferenceSystem("EPSG:4326"),
                                QgsCoordinateReferenceSystem("EPSG:3857"), QgsProject.instance())
    return ct.transformBoundingBox(QgsRectangle(x0, y1, x1, y0))


def test_tiles_picked_on_the_map_are_drawn_and_rank_as_the_command_line_with_their_centres(
        dock, qgis_iface, data_dir, tiny_bundle, tmp_path):
    """Clicks on a real canvas (in EPSG:3857, over the EPSG:4326 mosaic) pick tiles of the grid at the panel's
    tile size and overlap: a click adds a tile, a second click removes it, Shift+click picks an unlike tile; the
    drawn outlines are those tiles; the run ranks the tiles as the command line does with the tiles' centre
    points; picks and a layer together are refused; a new tile size clears the picks."""
    import rasterio
    from qgis.core import QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsRasterLayer

    from remoteclip_qgis.core.cli import main
    from remoteclip_qgis.core.errors import InvalidInput
    from remoteclip_qgis.core.pipeline import run_job

    mosaic = str(data_dir / "orthomosaic" / "kampala_oam_z20_mosaic_1536x1024.tif")
    raster = QgsRasterLayer(mosaic, "kampala")
    assert raster.isValid()
    QgsProject.instance().addMapLayer(raster)
    dock.layer_combo.setLayer(raster)
    dock.tile_size.setValue(SIZE)
    dock.overlap.setValue(OVERLAP)
    dock.set_kind("search")
    canvas = qgis_iface.mapCanvas()
    canvas.resize(900, 600)
    canvas.setDestinationCrs(QgsCoordinateReferenceSystem("EPSG:3857"))
    canvas.setExtent(QgsCoordinateTransform(raster.crs(), QgsCoordinateReferenceSystem("EPSG:3857"),
                                            QgsProject.instance()).transformBoundingBox(raster.extent()))
    form = dock.forms["search"]
    form.widgets["query"].setText("")
    picks = form.map_picks
    picks.like_button.click()
    tool = canvas.mapTool()
    assert tool is picks.tools["like"]
    problems = []
    picks.problem.connect(problems.append)

    _click(canvas, tool, mosaic, 4 * STEP + 150, STEP + 100)           # tile (1, 4), off its centre
    _click(canvas, tool, mosaic, 30, 30)                               # tile (0, 0)
    _click(canvas, tool, mosaic, 2 * STEP + 148, 3 * STEP + 148, shift=True)   # tile (3, 2), unlike
    _click(canvas, tool, mosaic, 1 * STEP + 100, 2 * STEP + 100)       # tile (2, 1) ...
    _click(canvas, tool, mosaic, 1 * STEP + 140, 2 * STEP + 60)        # ... and off again
    assert {k: kind for k, (kind, _) in picks.picks.items()} == {(1, 4): "like", (0, 0): "like", (3, 2): "unlike"}
    assert not problems
    _click(canvas, tool, mosaic, 1536 + 300, 200)                     # off the raster: no tile, said so
    assert len(problems) == 1 and len(picks.picks) == 3

    for kind, tiles in (("like", [(0, 0), (1, 4)]), ("unlike", [(3, 2)])):
        drawn = sorted((g.boundingBox() for g in picks.drawn(kind)), key=lambda b: (-b.yMaximum(), b.xMinimum()))
        want = [_tile_box(mosaic, r, c) for r, c in tiles]
        assert len(drawn) == len(want)
        for got, box in zip(drawn, want, strict=True):
            tol = box.width() * 1e-6
            assert abs(got.xMinimum() - box.xMinimum()) < tol and abs(got.yMaximum() - box.yMaximum()) < tol
            assert abs(got.width() - box.width()) < tol and abs(got.height() - box.height()) < tol

    job, _kind, _title = dock.build_job()
    assert job.tiles.overlap == pytest.approx(OVERLAP / 100)
    res = run_job(job)
    dock_ranks = {(r["row"], r["col"]): (r["rank"], r["is_example"]) for r in res.records}

    # the command line with the tiles' centre points (EPSG:4326)
    with rasterio.open(mosaic) as ds:
        def centres(tiles):
            return {"type": "FeatureCollection", "features": [
                {"type": "Feature", "properties": {}, "geometry": {"type": "Point", "coordinates": list(
                    ds.transform * (c * STEP + SIZE / 2, r * STEP + SIZE / 2))}} for r, c in tiles]}
        (tmp_path / "like.geojson").write_text(json.dumps(centres([(1, 4), (0, 0)])))
        (tmp_path / "unlike.geojson").write_text(json.dumps(centres([(3, 2)])))
    out = tmp_path / "cli.gpkg"
    assert main(["search", mosaic, "--model", str(tiny_bundle), "--tile-size", str(SIZE), "--overlap",
                 str(OVERLAP / 100), "--no-cache", "-q", "-o", str(out), "--like", str(tmp_path / "like.geojson"),
                 "--unlike", str(tmp_path / "unlike.geojson")]) == 0
    cli = _ranks(QgsVectorLayer(str(out), "cli", "ogr"))
    assert dock_ranks == cli
    assert {k for k, v in cli.items() if v[1] == 1} == {(1, 4), (0, 0)}
    assert {k for k, v in cli.items() if v[1] == -1} == {(3, 2)}

    # the picks and a layer of examples as well: which? refused, naming the input
    points = QgsVectorLayer("Point?crs=EPSG:4326", "examples", "memory")
    f = QgsFeature()
    f.setGeometry(QgsGeometry.fromPointXY(QgsPointXY(*_xy_of(mosaic, 10, 10))))
    assert points.dataProvider().addFeatures([f])[0]
    QgsProject.instance().addMapLayer(points)
    try:
        form.widgets["like"].setLayer(points)
        with pytest.raises(InvalidInput) as err:
            form.task()
        assert err.value.param == "like"
        form.widgets["like"].setLayer(None)
    finally:
        QgsProject.instance().removeMapLayer(points.id())

    # another tile size: another grid, the picks (tiles of the old one) are cleared and nothing is drawn
    dock.tile_size.setValue(SIZE + 64)
    assert picks.picks == {} and picks.drawn("like") == [] and picks.drawn("unlike") == []
    picks.like_button.click()
    assert canvas.mapTool() is None or canvas.mapTool() is not tool


def _xy_of(raster, px, py):
    import rasterio

    with rasterio.open(raster) as ds:
        return ds.transform * (px, py)


# ------------------------------------------------------------------------------ Processing: image files

def _chips(raster, tmp_path, tiles):
    """Tiles (row, col) of ``raster`` (256 px) cut out as PNG files."""
    import numpy as np
    import rasterio
    from PIL import Image
    from rasterio.windows import Window

    out = []
    with rasterio.open(raster) as ds:
        for r, c in tiles:
            pixels = ds.read([1, 2, 3], window=Window(c * SIZE, r * SIZE, SIZE, SIZE))
            path = tmp_path / f"chip_{r}_{c}.png"
            Image.fromarray(np.moveaxis(pixels, 0, -1)).save(path)
            out.append(str(path))
    return out


def test_processing_takes_several_like_images_and_unlike_images_and_ranks_as_the_command_line(
        plugin, built_plugin, data_dir, tiny_bundle, tmp_path):
    """LIKE_IMAGES with two image files and UNLIKE_IMAGES with one (in processing.run and in qgis_process, the
    parameter repeated) rank the tiles as --like-images/--unlike-images do; the unlike image changes the
    ranking (it is read, not dropped)."""
    import os
    import shutil
    import site
    import subprocess

    import processing

    from remoteclip_qgis.core.cli import main

    mosaic = str(data_dir / "orthomosaic" / "kampala_oam_z20_mosaic_1536x1024.tif")
    like = _chips(mosaic, tmp_path, [(1, 4), (0, 0)])
    (unlike,) = _chips(mosaic, tmp_path, [(3, 2)])
    common = ["--model", str(tiny_bundle), "--tile-size", str(SIZE), "--no-cache", "-q"]
    cli_out, alone_out = tmp_path / "cli.gpkg", tmp_path / "like_only.gpkg"
    assert main(["search", mosaic, *common, "-o", str(cli_out), "--like-images", *like,
                 "--unlike-images", unlike]) == 0
    assert main(["search", mosaic, *common, "-o", str(alone_out), "--like-images", *like]) == 0
    cli = _ranks(QgsVectorLayer(str(cli_out), "cli", "ogr"))
    assert cli != _ranks(QgsVectorLayer(str(alone_out), "alone", "ogr"))

    out = tmp_path / "proc.gpkg"
    processing.run("remoteclip:textsearch", {
        "INPUT": mosaic, "MODEL": str(tiny_bundle), "OUTPUT": str(out), "USE_CACHE": False, "TILE_SIZE": SIZE,
        "LIKE_IMAGES": like, "UNLIKE_IMAGES": [unlike]}, feedback=QgsProcessingFeedback())
    assert _ranks(QgsVectorLayer(str(out), "proc", "ogr")) == cli

    exe = shutil.which("qgis_process.bin") or shutil.which("qgis_process")
    # the Processing API above ran already; without qgis_process the rest is skipped here and fails in CI
    require(exe is not None, "qgis_process is not installed")
    profile = tmp_path / "config"
    plugins = profile / "profiles" / "default" / "python" / "plugins"
    plugins.mkdir(parents=True)
    shutil.copytree(built_plugin / "remoteclip_qgis", plugins / "remoteclip_qgis")
    env = dict(os.environ, QGIS_CUSTOM_CONFIG_PATH=str(profile), QT_QPA_PLATFORM="offscreen",
               PYTHONPATH=os.pathsep.join([*site.getsitepackages(), os.environ.get("PYTHONPATH", "")]))
    subprocess.run([exe, "plugins", "enable", "remoteclip_qgis"], env=env, capture_output=True, timeout=300)
    dest = tmp_path / "qp.gpkg"
    done = subprocess.run([exe, "run", "remoteclip:textsearch", "--", f"INPUT={mosaic}", f"MODEL={tiny_bundle}",
                           f"TILE_SIZE={SIZE}", "USE_CACHE=false", *(f"LIKE_IMAGES={p}" for p in like),
                           f"UNLIKE_IMAGES={unlike}", f"OUTPUT={dest}"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert _ranks(QgsVectorLayer(str(dest), "qp", "ogr")) == cli
