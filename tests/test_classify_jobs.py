"""classify through core.pipeline and the command line on real rasters: samples in another CRS, the report beside
the output, a saved classifier reused and refused, suggestions, the dense GeoTIFF, the cache (a classify after
an embed reads no pixels), the output safety rules, and active learning on the Kampala mosaic with the demo
model (labelling the suggested tiles makes the classified mosaic better)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import CountingSource

from core.cli import main
from core.errors import InvalidInput
from core.pipeline import ClassifyTask, EmbedTask, Job, LabelTask, RunOptions, SearchTask, TileSpec, run_job
from core.samples import Samples, read_samples

Z20 = "orthomosaic/kampala_oam_z20_mosaic_1536x1024.tif"
Z21 = "orthomosaic/kampala_oam_z21_mosaic_3072x2048.tif"
OUTLINES = "orthomosaic/kampala_buildings_z21_chips.geojson"
NAMES = ["buildings", "open ground"]


def _grid(raster, tile):
    from core.geodata.raster import open_raster
    from core.geodata.tiles import TileSpec, make_grid

    src = open_raster(raster)
    try:
        return make_grid(src, TileSpec(size=tile)), src.transform, src.crs_wkt
    finally:
        src.close()


def coverage(grid, outlines, crs_wkt):
    """Fraction of each tile under the building outlines (CRS84 -> the raster's CRS)."""
    from osgeo import ogr, osr

    from core.geodata.crs import srs_from

    ds = ogr.Open(str(outlines))
    lyr = ds.GetLayer(0)
    src = lyr.GetSpatialRef()
    src.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    dst = srs_from(crs_wkt)
    ct = None if src.IsSame(dst) else osr.CoordinateTransformation(src, dst)
    from core.errors import gdal_return_codes

    multi = ogr.Geometry(ogr.wkbMultiPolygon)
    # by return codes whatever QGIS set (3.40+ turns GDAL's exceptions on; this helper runs in the dock tests
    # there): an outline OGR refuses to add (a multipolygon) is left out, as it always was on 3.22, so the
    # samples the tests pick stay the same on every QGIS
    with gdal_return_codes():
        for f in lyr:
            g = f.GetGeometryRef().Clone()
            if ct is not None:
                g.Transform(ct)
            multi.AddGeometry(g)
    union = multi.UnionCascaded()
    out = []
    for t in grid:
        tile = ogr.CreateGeometryFromWkt(t.polygon_wkt)
        out.append(tile.Intersection(union).GetArea() / tile.GetArea())
    return np.asarray(out)


def centre(tile, transform):
    a, b, c, d, e, f = transform[:6]
    c0, r0, w, h = tile.window
    x, y = c0 + w / 2, r0 + h / 2
    return a * x + b * y + c, d * x + e * y + f


def write_samples(path, points, classes, raster_crs, epsg=32636, field="cls", layer="samples"):
    """Points (in the raster's CRS) with their classes, written to a GeoPackage in ``epsg``."""
    from osgeo import ogr, osr

    from core.geodata.crs import srs_from

    dst = osr.SpatialReference()
    dst.ImportFromEPSG(epsg)
    dst.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    ct = osr.CoordinateTransformation(srs_from(raster_crs), dst)
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    lyr = ds.CreateLayer(layer, dst, ogr.wkbPoint)
    lyr.CreateField(ogr.FieldDefn(field, ogr.OFTString))
    for (x, y), cls in zip(points, classes, strict=True):
        f = ogr.Feature(lyr.GetLayerDefn())
        f.SetField(field, cls)
        g = ogr.Geometry(ogr.wkbPoint)
        g.AddPoint_2D(*ct.TransformPoint(x, y)[:2])
        f.SetGeometry(g)
        lyr.CreateFeature(f)
    ds = None
    return path


def kampala_samples(data_dir, seed: int) -> dict:
    """The z20 mosaic in 128 px tiles, building coverage per tile and 4 + 4 sample tiles (buildings / open)."""
    raster = str(data_dir / Z20)
    grid, transform, crs = _grid(raster, 128)
    cov = coverage(grid, data_dir / OUTLINES, crs)
    rng = np.random.default_rng(seed)
    picks = list(rng.choice(np.flatnonzero(cov >= 0.25), 4, replace=False)) + \
        list(rng.choice(np.flatnonzero(cov == 0), 4, replace=False))
    return {"raster": raster, "grid": grid, "transform": transform, "crs": crs, "cov": cov, "picks": picks,
            "points": [centre(grid[i], transform) for i in picks], "classes": [NAMES[0]] * 4 + [NAMES[1]] * 4}


@pytest.fixture(scope="module")
def kampala(data_dir):
    return kampala_samples(data_dir, seed=0)


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _features(path, layer=None):
    from osgeo import ogr

    ds = ogr.Open(str(path))
    lyr = ds.GetLayerByName(layer) if layer else ds.GetLayer(0)
    defn = lyr.GetLayerDefn()
    names = [defn.GetFieldDefn(i).GetName() for i in range(defn.GetFieldCount())]
    return names, [{n: f.GetField(n) for n in names} for f in lyr]


# ------------------------------------------------------------------------------------- command line

def test_classify_on_the_command_line(kampala, tiny_bundle, tmp_path, capsys):
    samples = write_samples(tmp_path / "samples.gpkg", kampala["points"], kampala["classes"], kampala["crs"])
    out, heat, head = tmp_path / "classes.gpkg", tmp_path / "heat.tif", tmp_path / "head.json"
    rc, stdout, err = _run(capsys, "classify", kampala["raster"], "--samples", samples, "--class-field", "cls",
                           "--model", tiny_bundle, "--tile-size", 128, "--suggest", 3, "--head-out", head,
                           "--raster-output", heat, "--cache-dir", tmp_path / "cache", "-q", "-o", out)
    assert rc == 0, err
    # the report is printed: accuracy, per-class precision/recall, the confusion matrix, the tiles to label next
    assert "cross-validated accuracy" in stdout
    assert "(3 folds by place: sample tiles closer than 2.83 tile widths (54 m) kept together)" in stdout
    assert "precision  recall" in stdout and "confusion (rows: true" in stdout
    assert "label these next (row,col uncertainty)" in stdout
    names, feats = _features(out, "classes")
    assert {"label", "score", "p_building", "p_open_gro", "uncertainty", "is_sample", "suggest"} <= set(names)
    assert len(feats) == len(kampala["grid"]) == 96
    samples_rc = {(kampala["grid"][i].row, kampala["grid"][i].col) for i in kampala["picks"]}
    assert {(f["row"], f["col"]) for f in feats if f["is_sample"]} == samples_rc
    sug = sorted((f for f in feats if f["suggest"]), key=lambda f: f["suggest"])
    assert [f["suggest"] for f in sug] == [1, 2, 3]
    assert not any(f["is_sample"] for f in sug)
    assert [f["uncertainty"] for f in sug] == sorted([f["uncertainty"] for f in sug], reverse=True)
    most = max(f["uncertainty"] for f in feats if not f["is_sample"])
    assert sug[0]["uncertainty"] == pytest.approx(most)
    for f in feats:
        assert f["p_building"] + f["p_open_gro"] == pytest.approx(1.0, abs=2e-6)
        p = sorted([f["p_building"], f["p_open_gro"]])
        assert f["uncertainty"] == pytest.approx(1 - (p[1] - p[0]), abs=2e-6)
    # the report beside the output, named for the layer; the classifier; the heat map
    report = json.loads((tmp_path / "classes.classes.remoteclip-report.json").read_text())
    assert report["format"] == "remoteclip-classify-report" and report["classes"] == NAMES
    assert report["samples"]["tiles"] == {"buildings": 4, "open ground": 4}
    assert len(report["cv"]["confusion"]) == 2 and sum(map(sum, report["cv"]["confusion"])) == 8
    assert report["cv"]["grouped_by"] == "space" and report["cv"]["folds"] == 3
    assert report["cv"]["group_distance"]["tile_widths"] == pytest.approx(8 ** 0.5, abs=1e-3)   # (2, 2) tiles
    assert report["cv"]["group_distance"]["m"] == pytest.approx(54, abs=1)   # 128 px of about 15 cm
    assert [s["rank"] for s in report["suggested"]] == [1, 2, 3]
    saved = json.loads(head.read_text())
    assert saved["format"] == "remoteclip-classifier-head" and saved["classes"] == NAMES
    assert saved["model"]["embed_dim"] == 32 and len(saved["model"]["sha256"]) == 64
    from osgeo import gdal

    ds = gdal.Open(str(heat))
    assert (ds.RasterXSize, ds.RasterYSize, ds.RasterCount) == (12, 8, 2)
    assert [ds.GetRasterBand(i).GetDescription() for i in (1, 2)] == NAMES
    band = ds.GetRasterBand(1).ReadAsArray()
    by_tile = {(f["row"], f["col"]): f["p_building"] for f in feats}
    assert band[3, 5] == pytest.approx(by_tile[3, 5], abs=1e-5)   # no overlap: a cell is a tile


def test_outputs_are_never_replaced_silently(kampala, tiny_bundle, tmp_path, capsys):
    samples = write_samples(tmp_path / "samples.gpkg", kampala["points"], kampala["classes"], kampala["crs"])
    common = ["classify", kampala["raster"], "--samples", samples, "--class-field", "cls", "--model", tiny_bundle,
              "--tile-size", 256, "--cache-dir", tmp_path / "cache", "-q"]
    # a file of the report's name that RemoteCLIP did not write stops the run before anything is written
    mine = tmp_path / "out.classes.remoteclip-report.json"
    mine.write_text('{"my": "notes"}')
    rc, _, err = _run(capsys, *common, "-o", tmp_path / "out.gpkg")
    assert rc == 2 and "not written by RemoteCLIP" in err
    assert mine.read_text() == '{"my": "notes"}' and not (tmp_path / "out.gpkg").exists()
    mine.unlink()
    rc, _, err = _run(capsys, *common, "-o", tmp_path / "out.gpkg", "--head-out", tmp_path / "h.json",
                      "--raster-output", tmp_path / "h.tif")
    assert rc == 0, err
    for extra, word in ((["-o", tmp_path / "other.gpkg", "--head-out", tmp_path / "h.json"], "h.json already exists"),
                        (["-o", tmp_path / "other.gpkg", "--raster-output", tmp_path / "h.tif"], "h.tif already exists"),
                        (["-o", tmp_path / "out.gpkg"], "already has a layer 'classes'")):
        before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir() if p.is_file()}
        rc, _, err = _run(capsys, *common, *extra)
        assert rc == 2 and word in err, err
        assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir() if p.is_file()} == before
    rc, _, err = _run(capsys, *common, "-o", tmp_path / "new.gpkg", "--raster-output", kampala["raster"])
    assert rc == 2 and "is the input raster" in err
    rc, _, err = _run(capsys, *common, "-o", tmp_path / "same.gpkg", "--raster-output", tmp_path / "same.tif",
                      "--head-out", tmp_path / "same.tif")
    assert rc == 2 and "the same file" in err
    rc, _, err = _run(capsys, *common, "-o", tmp_path / "out.gpkg", "--overwrite", "--head-out", tmp_path / "h.json",
                      "--raster-output", tmp_path / "h.tif")
    assert rc == 0, err


def test_a_saved_classifier_is_applied_to_another_raster_and_refused_with_another_model(
        kampala, tiny_bundle, data_dir, tmp_path, capsys):
    samples = write_samples(tmp_path / "samples.gpkg", kampala["points"], kampala["classes"], kampala["crs"])
    head = tmp_path / "head.json"
    rc, _, err = _run(capsys, "classify", kampala["raster"], "--samples", samples, "--class-field", "cls",
                      "--model", tiny_bundle, "--tile-size", 128, "--no-cache", "-q", "--head-out", head)
    assert rc == 0, err
    other = str(data_dir / Z21)
    rc, stdout, err = _run(capsys, "classify", other, "--head", head, "--model", tiny_bundle, "--tile-size", 256,
                           "--no-cache", "-q", "-o", tmp_path / "z21.gpkg")
    assert rc == 0, err
    _, feats = _features(tmp_path / "z21.gpkg")
    assert len(feats) == 96 and {f["label"] for f in feats} <= set(NAMES) and not any(f["is_sample"] for f in feats)
    # the same classifier gives the same probabilities as the run that trained it, tile for tile
    again = run_job(Job(raster=other, task=ClassifyTask(head=str(head)), tiles=TileSpec(size=256),
                        run=RunOptions(model=str(tiny_bundle), cache_dir="")))
    assert [r["p_building"] for r in again.records] == [f["p_building"] for f in feats]
    demo = os.path.join(os.path.dirname(__file__), "..", "models", "remoteclip-demo")
    rc, _, err = _run(capsys, "classify", other, "--head", head, "--model", demo, "--tile-size", 256, "--no-cache",
                      "-q", "-o", tmp_path / "demo.gpkg")
    assert rc == 2 and "was trained with the model 'tiny-test'" in err and "remoteclip-demo-small" in err
    assert not (tmp_path / "demo.gpkg").exists()


@pytest.mark.parametrize("args,match", [
    (["--class-field", "cls"], "No samples and no saved classifier"),
    (["--samples", "{samples}"], "No class field"),
    (["--samples", "{samples}", "--class-field", "kind"], "have no field 'kind' (fields: cls)"),
    (["--samples", "{samples}", "--class-field", "cls", "--head", "{tmp}/h.json"], "Both samples and a saved"),
    (["--head", "{tmp}/none.json"], "Classifier file not found"),
    (["--samples", "{one_class}", "--class-field", "cls"], "All samples are of one class"),
    (["--samples", "{outside}", "--class-field", "cls"], "has no sample tile"),
])
def test_bad_classify_input_is_one_line(args, match, kampala, tiny_bundle, tmp_path, capsys):
    samples = write_samples(tmp_path / "samples.gpkg", kampala["points"], kampala["classes"], kampala["crs"])
    one = write_samples(tmp_path / "one.gpkg", kampala["points"][:2], ["roof", "roof"], kampala["crs"])
    far = [(x + 1.0, y) for x, y in kampala["points"][:2]]    # a degree east of the mosaic
    outside = write_samples(tmp_path / "outside.gpkg", kampala["points"][:2] + far,
                            ["roof", "roof", "water", "water"], kampala["crs"])
    (tmp_path / "h.json").write_text("{}")
    argv = [a.format(samples=samples, one_class=one, outside=outside, tmp=tmp_path) for a in args]
    rc, _, err = _run(capsys, "classify", kampala["raster"], "--model", tiny_bundle, "--tile-size", 256,
                      "--no-cache", *argv)
    assert rc == 2
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1 and match in lines[0], err


def test_samples_read_from_a_file_keep_their_class_values(kampala, tmp_path):
    from osgeo import ogr, osr

    path = tmp_path / "codes.gpkg"
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(4326)
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    lyr = ds.CreateLayer("s", srs, ogr.wkbPolygon)
    lyr.CreateField(ogr.FieldDefn("Code", ogr.OFTInteger))
    for code, wkt in ((3, "POLYGON ((32.59 0.35, 32.591 0.35, 32.591 0.351, 32.59 0.35))"),
                      (12, "POLYGON ((32.592 0.35, 32.593 0.35, 32.593 0.351, 32.592 0.35))")):
        f = ogr.Feature(lyr.GetLayerDefn())
        f.SetField("Code", code)
        f.SetGeometry(ogr.CreateGeometryFromWkt(wkt))
        lyr.CreateFeature(f)
    ds = None
    s = read_samples(path, "code")   # the field's name is matched ignoring case
    assert s.classes == ["3", "12"] and s.class_names() == ["12", "3"] and "4326" in s.crs


# ---------------------------------------------------------------------------------------- the cache

def test_a_classify_after_an_embed_reads_no_pixels(kampala, tiny_bundle, tmp_path):
    cache = str(tmp_path / "cache")
    src = CountingSource(kampala["raster"])
    run = RunOptions(model=str(tiny_bundle), cache_dir=cache, batch_size=16)
    embed = run_job(Job(raster=src, task=EmbedTask(), run=run, tiles=TileSpec(size=128)))
    assert src.reads == 96 and embed.images_encoded == 96
    src.reads = 0
    samples = Samples([f"POINT ({x!r} {y!r})" for x, y in kampala["points"]], kampala["classes"], kampala["crs"])
    res = run_job(Job(raster=src, task=ClassifyTask(samples=samples), run=run, tiles=TileSpec(size=128)))
    assert src.reads == 0 and res.cache_hit and res.images_encoded == 0
    assert np.allclose(res.embeddings, embed.embeddings)
    src.close()


# --------------------------------------------------------------------------------------- dense maps

def test_search_heat_map_averages_overlapping_tiles(kampala, tiny_bundle, tmp_path):
    from osgeo import gdal

    heat = tmp_path / "search.tif"
    res = run_job(Job(raster=kampala["raster"], task=SearchTask("a tin roof"), tiles=TileSpec(size=256, overlap=0.5),
                      run=RunOptions(model=str(tiny_bundle), cache_dir=""), raster_output=str(heat)))
    assert res.raster_output == str(heat)
    ds = gdal.Open(str(heat))
    assert ds.RasterCount == 1 and ds.GetRasterBand(1).GetDescription() == "similarity"
    # 128 px cells; the cell at rows 128-256, cols 384-512 lies under tiles (0,2) (0,3) (1,2) (1,3)
    assert (ds.RasterXSize, ds.RasterYSize) == (12, 8)
    assert ds.GetGeoTransform()[1] == pytest.approx(kampala["transform"][0] * 128)
    sim = {(r["row"], r["col"]): r["similarity"] for r in res.records}
    want = np.mean([sim[k] for k in ((0, 2), (0, 3), (1, 2), (1, 3))])
    assert ds.GetRasterBand(1).ReadAsArray()[1, 3] == pytest.approx(want, abs=1e-5)
    # label writes one band per class; embed has no dense map
    res = run_job(Job(raster=kampala["raster"], task=LabelTask(["water", "roofs", "trees"]),
                      tiles=TileSpec(size=256), run=RunOptions(model=str(tiny_bundle), cache_dir=""),
                      raster_output=str(tmp_path / "labels.tif")))
    ds = gdal.Open(res.raster_output)
    assert [ds.GetRasterBand(i + 1).GetDescription() for i in range(ds.RasterCount)] == ["water", "roofs", "trees"]
    with pytest.raises(InvalidInput) as err:
        Job(raster=kampala["raster"], task=EmbedTask(), run=RunOptions(model=str(tiny_bundle)),
            raster_output=str(tmp_path / "e.tif"))
    assert err.value.param == "raster_output" and err.value.path is None and "embed" in err.value.problem
    with pytest.raises(InvalidInput) as err:
        run_job(Job(raster=kampala["raster"], task=SearchTask("x"), run=RunOptions(model=str(tiny_bundle)),
                    raster_output=str(tmp_path / "e.png")))
    assert err.value.param == "raster_output" and err.value.path == str(tmp_path / "e.png")



@pytest.mark.parametrize("edge", ["pad", "shift"])
def test_heat_maps_end_where_the_raster_ends(kampala, tiny_bundle, tmp_path, edge):
    """224 px tiles on the 1536 x 1024 mosaic: 6.9 x 4.6 tiles. The partial last column and row of tiles (padded
    past the raster, or shifted inside it) are clipped: no heat map of any task reaches over unseen ground."""
    from osgeo import gdal

    raster = gdal.Open(kampala["raster"])
    gt, width, height = raster.GetGeoTransform(), raster.RasterXSize, raster.RasterYSize
    raster = None
    want = (gt[0], gt[3], gt[0] + gt[1] * width, gt[3] + gt[5] * height)
    samples = Samples([f"POINT ({x!r} {y!r})" for x, y in kampala["points"]], kampala["classes"], kampala["crs"])
    run = RunOptions(model=str(tiny_bundle), cache_dir=str(tmp_path / "cache"))
    for task in (SearchTask("a tin roof"), LabelTask(["water", "roofs"]), ClassifyTask(samples=samples)):
        out = tmp_path / f"{task.kind}-{edge}.tif"
        res = run_job(Job(raster=kampala["raster"], task=task, tiles=TileSpec(size=224, edge=edge), run=run,
                          raster_output=str(out)))
        ds = gdal.Open(res.raster_output)
        g, w, h = ds.GetGeoTransform(), ds.RasterXSize, ds.RasterYSize
        data = ds.GetRasterBand(1).ReadAsArray()
        ds = None
        assert (w, h) == (7, 5), task.kind   # cells of about the tile's size, no fewer
        got = (g[0], g[3], g[0] + g[1] * w, g[3] + g[5] * h)
        assert got == pytest.approx(want, abs=1e-6), task.kind
        assert not np.isnan(data).any(), task.kind   # every cell of the raster was seen
        # the last column's cells hold the last column's tiles (shift: the tile moved inside, pad: the padded one)
        last = max(r["col"] for r in res.records)
        if task.kind == "search":
            sim = {(r["row"], r["col"]): r["similarity"] for r in res.records}
            assert data[0, 6] == pytest.approx(sim[(0, last)], abs=1e-5)
            assert data[0, 5] == pytest.approx(sim[(0, last - 1)], abs=1e-5)


# ---------------------------------------------------------------------------------- active learning

def test_labelling_the_suggested_tiles_improves_the_classified_mosaic(data_dir, tmp_path):
    """Active learning on the z21 Kampala mosaic with the demo model: start from 3 + 3 random sample tiles, then
    three times label the 6 tiles the classifier suggests (the oracle: the building outlines, a tile with a
    tenth or more under buildings is "buildings"). The balanced accuracy of the classified mosaic (the tiles
    that are not samples) rises for every seed (seeds 0-5: by 2 to 28 points, 13 on average); where the first samples taught nothing the cross-validation
    could measure (balanced 50%: the class names alone were kept), the cross-validated accuracy rises too.
    (Elsewhere it need not: the suggested tiles are the hard ones, so they pull the cross-validated figure on
    the samples down while the mosaic gets better.)"""
    from core.runtime.bundle import DEMO_BUNDLE

    raster = str(data_dir / Z21)
    grid, transform, crs = _grid(raster, 128)
    truth = np.where(coverage(grid, data_dir / OUTLINES, crs) >= 0.1, 0, 1)
    where = {(t.row, t.col): i for i, t in enumerate(grid)}
    run = RunOptions(model=str(DEMO_BUNDLE), cache_dir=str(tmp_path / "cache"))
    rises, cv_rises = [], []
    for seed in range(6):
        rng = np.random.default_rng(seed)
        chosen = [int(i) for k in (0, 1) for i in rng.choice(np.flatnonzero(truth == k), 3, replace=False)]
        mosaic, cv = [], []
        for _ in range(4):
            samples = Samples([f"POINT ({x!r} {y!r})" for x, y in (centre(grid[i], transform) for i in chosen)],
                              [NAMES[truth[i]] for i in chosen], crs)
            res = run_job(Job(raster=raster, task=ClassifyTask(samples=samples, suggest=6), run=run,
                              tiles=TileSpec(size=128)))
            pred = np.full(len(grid), -1)
            for r in res.records:
                pred[where[r["row"], r["col"]]] = NAMES.index(r["label"])
            rest = np.setdiff1d(np.arange(len(grid)), chosen)
            mosaic.append(np.mean([np.mean(pred[rest][truth[rest] == k] == k) for k in (0, 1)]))
            cv.append(res.report["cv"]["balanced_accuracy"])
            suggested = sorted((r for r in res.records if r.get("suggest")), key=lambda r: r["suggest"])
            assert len(suggested) == 6
            chosen += [where[r["row"], r["col"]] for r in suggested]
        rises.append(mosaic[-1] - mosaic[0])
        if cv[0] == 0.5:
            cv_rises.append(cv[-1] - cv[0])
    assert min(rises) > 0.01 and np.mean(rises) > 0.1, rises
    assert len(cv_rises) >= 2 and min(cv_rises) > 0.05, cv_rises


def _latin1_shapefile(path, points, classes, raster_crs):
    """A Shapefile whose .dbf holds the classes as Latin-1 bytes and says no encoding (no .cpg, no LDID):
    what older GIS software wrote."""
    from osgeo import gdal, ogr

    from core.geodata.crs import srs_from

    # QGIS, once started in this process, sets SHAPE_ENCODING to "" (no recoding), which the layer's own
    # ENCODING option does not override: say Latin-1 here too
    before = gdal.GetConfigOption("SHAPE_ENCODING")
    gdal.SetConfigOption("SHAPE_ENCODING", "ISO-8859-1")
    ds = ogr.GetDriverByName("ESRI Shapefile").CreateDataSource(str(path))
    srs = srs_from(raster_crs)
    lyr = ds.CreateLayer("samples", srs, ogr.wkbPoint, options=["ENCODING=ISO-8859-1"])
    lyr.CreateField(ogr.FieldDefn("cls", ogr.OFTString))
    for (x, y), cls in zip(points, classes, strict=True):
        f = ogr.Feature(lyr.GetLayerDefn())
        f.SetField("cls", cls)
        f.SetGeometry(ogr.CreateGeometryFromWkt(f"POINT ({x!r} {y!r})"))
        lyr.CreateFeature(f)
    ds = None
    gdal.SetConfigOption("SHAPE_ENCODING", before)
    path.with_suffix(".cpg").unlink(missing_ok=True)
    dbf = bytearray(path.with_suffix(".dbf").read_bytes())
    dbf[29] = 0   # no language driver id: nothing says the encoding
    path.with_suffix(".dbf").write_bytes(bytes(dbf))
    assert "café".encode("latin-1") in dbf
    return path


def test_a_latin1_shapefile_without_cpg_classifies_with_its_class_names(kampala, tiny_bundle, tmp_path, capsys):
    """Class values that are Latin-1 bytes (GDAL hands them over as surrogates, which no file can hold): read
    as the names they are, and the run writes them (it stopped with a TypeError in SetMetadataItem)."""
    classes = ["café"] * 4 + ["forêt"] * 4
    shp = _latin1_shapefile(tmp_path / "samples.shp", kampala["points"], classes, kampala["crs"])
    assert read_samples(shp, "cls").class_names() == ["café", "forêt"]
    out = tmp_path / "classes.gpkg"
    rc, _, err = _run(capsys, "classify", kampala["raster"], "--samples", shp, "--class-field", "cls",
                      "--model", tiny_bundle, "--tile-size", 256, "--no-cache", "-q", "-o", out)
    assert rc == 0, err
    _, feats = _features(out)
    assert {f["label"] for f in feats} <= {"café", "forêt"} and feats


def test_class_names_with_bytes_that_are_not_utf8_are_refused_typed():
    """Surrogates reach a class name another way (the library, a UI): refused, typed, before any pixel."""
    from core.errors import InvalidInput

    with pytest.raises(InvalidInput) as err:
        Samples(["POINT (1 2)", "POINT (3 4)"], ["caf\udce9", "for\udceat"])
    assert err.value.param is None and "sample class" in err.value.problem and "\ufffd" in err.value.problem


def test_an_empty_or_unreadable_samples_file_says_so(tmp_path):
    """A samples file with no feature says it has none (not that it lacks the class field); one whose bytes
    cannot be read is SourceUnreadable, not 'not a vector file'; a readable file of another format is
    InvalidInput."""
    from osgeo import ogr, osr

    from core.errors import InvalidInput, SourceUnreadable

    srs = osr.SpatialReference()
    srs.ImportFromEPSG(4326)
    for name in ("empty.geojson", "empty.gpkg"):
        path = tmp_path / name
        ds = ogr.GetDriverByName("GeoJSON" if name.endswith("json") else "GPKG").CreateDataSource(str(path))
        lyr = ds.CreateLayer("s", srs, ogr.wkbPoint)
        lyr.CreateField(ogr.FieldDefn("class", ogr.OFTString))
        ds = None
        with pytest.raises(InvalidInput) as err:
            read_samples(path, "class")
        assert "has no features" in err.value.problem and err.value.path == str(path)
    # /proc/self/mem: a file that is there and whose bytes cannot be read (even by root)
    with pytest.raises(SourceUnreadable) as err:
        read_samples("/proc/self/mem", "class")
    assert err.value.path == "/proc/self/mem" and "cannot be read" in err.value.problem
    junk = tmp_path / "notes.gpkg"
    junk.write_text("not a vector file")
    with pytest.raises(InvalidInput) as err:
        read_samples(junk, "class")
    assert err.value.path == str(junk) and "not a vector file" in err.value.problem


def test_a_deeply_nested_head_file_is_refused_as_not_a_classifier(kampala, tiny_bundle, tmp_path, capsys):
    """--head with 100000 nested lists: json's RecursionError became a traceback; now InvalidInput with the
    path, one line on the command line."""
    from core.classify import Head
    from core.errors import InvalidInput

    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(InvalidInput) as err:
        Head.read(path)
    assert err.value.path == str(path) and "not a RemoteCLIP classifier" in err.value.problem
    rc, _, err_text = _run(capsys, "classify", kampala["raster"], "--head", path, "--model", tiny_bundle,
                           "--tile-size", 256, "--no-cache", "-q")
    lines = [ln for ln in err_text.splitlines() if "error:" in ln]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err_text and "Fix:" in lines[0]
