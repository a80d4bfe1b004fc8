"""The change task (core.tasks.change, core.pipeline.dates): two dates of the same place compared tile by tile, on
real LEVIR-CD pairs made into GeoTIFFs with a made-up UTM geotransform (written to tmp_path), AFTER warped to
another CRS and resolution for the alignment."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from core.errors import InvalidInput, ModelError, OutputIsInput
from core.pipeline import Job, LabelTask, RunOptions, TileSpec, run_job
from core.tasks.change import ChangeTask

LEVIR = "change/levir-cd"
PAIR = "test_2_0000_0000.png"
X0, Y0 = 500000.0, 3300000.0
LABELS = ["buildings", "trees", "bare soil"]


def write_tif(path, arr, res=0.5, x0=X0, y0=Y0, epsg=32614, nodata=None, wkt=None):
    from osgeo import gdal, osr

    h, w = arr.shape[:2]
    ds = gdal.GetDriverByName("GTiff").Create(str(path), w, h, 3, gdal.GDT_Byte)
    ds.SetGeoTransform((x0, res, 0, y0, 0, -res))
    if wkt is None:
        s = osr.SpatialReference()
        s.ImportFromEPSG(epsg)
        wkt = s.ExportToWkt()
    ds.SetProjection(wkt)
    for i in range(3):
        band = ds.GetRasterBand(i + 1)
        band.WriteArray(arr[..., i])
        if nodata is not None:
            band.SetNoDataValue(nodata)
    ds = None
    return str(path)


def png(data_dir, which, name=PAIR):
    return np.array(Image.open(data_dir / LEVIR / which / name).convert("RGB"))


@pytest.fixture
def pair(data_dir, tmp_path):
    return (write_tif(tmp_path / "before.tif", png(data_dir, "A")),
            write_tif(tmp_path / "after.tif", png(data_dir, "B")))


def warp(src, dst, **kw):
    from osgeo import gdal

    ds = gdal.Warp(str(dst), src, **kw)
    assert ds is not None
    ds = None
    return str(dst)


def job(before, after, bundle, tmp_path, cache="", tiles=None, **task):
    return Job(raster=before, task=ChangeTask(after=after, labels=LABELS, **task),
               run=RunOptions(model=str(bundle), cache_dir=cache, batch_size=8),
               tiles=tiles or TileSpec(size=64))


def embeddings_on(raster, windows, bundle):
    """Unit image embeddings of ``windows`` of ``raster``, read and encoded here (core.runtime.inference.Encoder)."""
    from core.geodata.raster import Stretch, default_bands, open_raster, read_rgb
    from core.runtime.inference import Encoder
    from core.runtime.preprocess import preprocess_batch

    enc = Encoder(str(bundle), device="cpu")
    with open_raster(raster) as src:
        bands = default_bands(src)
        stretch = Stretch.from_source(src, bands)
        tiles = [read_rgb(src, bands, tuple(w), stretch) for w in windows]
    x = preprocess_batch([t[0] for t in tiles], enc.bundle.image, [t[1] for t in tiles])
    e = enc.encode_images(x).astype(np.float64)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def test_change_is_one_minus_cosine_of_encoder_embeddings_across_crs_and_resolution(pair, tiny_bundle, tmp_path):
    before, after = pair
    # AFTER in Web Mercator at 0.7 m: read in BEFORE's UTM 0.5 m grid through GDAL's bilinear warp
    moved = warp(after, tmp_path / "after_3857.tif", dstSRS="EPSG:3857", xRes=0.7, yRes=0.7, resampleAlg="bilinear")
    res = run_job(job(before, moved, tiny_bundle, tmp_path))
    assert res.n_tiles == 16 and res.fields[:5] == ["row", "col", "change", "change_rank", "selected"]
    wins = [tuple(int(v) for v in res.records.grid.windows([i])[0]) for i in res.records.index]
    # the same warp done independently, to a GeoTIFF on BEFORE's grid
    on_grid = warp(moved, tmp_path / "on_grid.tif", dstSRS="EPSG:32614", outputBounds=(X0, Y0 - 128, X0 + 128, Y0),
                   width=256, height=256, resampleAlg="bilinear")
    b = embeddings_on(before, wins, tiny_bundle)
    a = embeddings_on(on_grid, wins, tiny_bundle)
    expect = 1.0 - np.sum(a * b, axis=1)
    got = np.array([r["change"] for r in res.records])
    np.testing.assert_allclose(got, expect, atol=2e-4)
    assert got.max() > 0.001   # real change, not the same image twice
    assert sorted(r["change_rank"] for r in res.records) == list(range(1, 17))
    most = min(res.records, key=lambda r: r["change_rank"])
    assert most["change"] == pytest.approx(got.max())
    assert res.report["alignment"]["warped"] and res.report["alignment"]["resampling"] == "bilinear"


def test_labels_equal_plain_label_runs_on_each_date(pair, tiny_bundle, tmp_path):
    before, after = pair
    res = run_job(job(before, after, tiny_bundle, tmp_path))
    assert not res.report["alignment"]["warped"]   # the same grid: AFTER read as it is
    for path, field in ((before, "label_before"), (after, "label_after")):
        plain = run_job(Job(raster=path, task=LabelTask(labels=LABELS), run=RunOptions(model=str(tiny_bundle),
                                                                                        cache_dir=""),
                            tiles=TileSpec(size=64)))
        by_tile = {(r["row"], r["col"]): (r["label"], r["score"]) for r in plain.records}
        for r in res.records:
            label, score = by_tile[(r["row"], r["col"])]
            assert r[field] == label
            assert r[field.replace("label", "score")] == pytest.approx(score, abs=1e-6)
    for r in res.records:
        assert r["class_changed"] == int(r["label_before"] != r["label_after"])


def test_only_tiles_both_dates_cover_with_data_are_compared(data_dir, tiny_bundle, tmp_path):
    before = write_tif(tmp_path / "before.tif", png(data_dir, "A"))
    b = png(data_dir, "B").copy()
    b[:64, :, :] = 0          # the first row of tiles is nodata in AFTER
    after = write_tif(tmp_path / "after_nd.tif", b, nodata=0)
    # and AFTER covers only the left half of BEFORE (a crop, in another resolution)
    half = warp(after, tmp_path / "half.tif", outputBounds=(X0, Y0 - 128, X0 + 64, Y0), xRes=0.25, yRes=0.25,
                resampleAlg="nearest")
    res = run_job(job(before, half, tiny_bundle, tmp_path, resampling="nearest"))
    tiles = {(r["row"], r["col"]) for r in res.records}
    assert tiles == {(r, c) for r in range(1, 4) for c in range(2)}
    assert res.report["alignment"]["dropped_tiles"] == 10


def test_after_all_nodata_over_the_grid_is_a_clear_error(data_dir, tiny_bundle, tmp_path):
    before = write_tif(tmp_path / "before.tif", png(data_dir, "A"))
    after = write_tif(tmp_path / "empty.tif", np.zeros((256, 256, 3), np.uint8), nodata=0)
    with pytest.raises(InvalidInput) as err:
        run_job(job(before, after, tiny_bundle, tmp_path))
    assert err.value.path == after and err.value.param == "after"


def test_rasters_that_do_not_overlap_are_refused_before_the_model_loads(data_dir, tmp_path):
    before = write_tif(tmp_path / "before.tif", png(data_dir, "A"))
    after = write_tif(tmp_path / "far.tif", png(data_dir, "B"), x0=X0 + 10_000)
    with pytest.raises(InvalidInput) as err:
        run_job(job(before, after, tmp_path / "no-model-needed", tmp_path))
    assert err.value.path == after and err.value.param == "after"


def test_a_crs_without_a_transformation_is_a_clear_error(data_dir, tmp_path):
    before = write_tif(tmp_path / "before.tif", png(data_dir, "A"))
    local = 'LOCAL_CS["site grid",LOCAL_DATUM["site",0],UNIT["metre",1],AXIS["X",EAST],AXIS["Y",NORTH]]'
    after = write_tif(tmp_path / "local.tif", png(data_dir, "B"), wkt=local)
    with pytest.raises(InvalidInput) as err:
        run_job(job(before, after, tmp_path / "no-model-needed", tmp_path))
    assert err.value.path == after and err.value.param == "after"


def test_after_equal_to_before_warns_and_changes_nothing(pair, tiny_bundle, tmp_path):
    before, _ = pair
    res = run_job(job(before, before, tiny_bundle, tmp_path))
    assert any("AFTER is the BEFORE raster" in w for w in res.warnings)
    assert all(r["change"] == 0.0 and r["selected"] == 0 and r["class_changed"] == 0 for r in res.records)


def test_an_output_equal_to_either_input_is_refused(pair, tmp_path):
    from osgeo import gdal

    before, after = pair
    for target in (before, after):   # the heat map written over BEFORE or AFTER
        j = job(before, after, tmp_path / "no-model-needed", tmp_path)
        j.raster_output = target
        with pytest.raises(OutputIsInput) as err:
            run_job(j)
        assert os.path.samefile(err.value.path, target)
    # the vector output into AFTER's GeoPackage
    gpkg = str(tmp_path / "after.gpkg")
    gdal.Translate(gpkg, after, format="GPKG")
    j = job(before, gpkg, tmp_path / "no-model-needed", tmp_path)
    j.output = gpkg
    with pytest.raises(OutputIsInput):
        run_job(j)


def test_a_classifier_made_with_another_model_is_refused(pair, tiny_bundle, tmp_path):
    from core.classify import HEAD_FORMAT, HEAD_VERSION

    before, after = pair
    head = tmp_path / "head.json"
    d = 8
    head.write_text(json.dumps({
        "format": HEAD_FORMAT, "version": HEAD_VERSION, "classes": ["a", "b"], "method": "logistic", "alpha": 0.0,
        "l2": 1.0, "k": 5, "logit_scale": 100.0, "model": {"name": "other", "sha256": "0" * 64, "embed_dim": d},
        "templates": None, "text": np.eye(2, d).tolist(), "weights": np.zeros((d, 2)).tolist(), "bias": [0, 0]}))
    j = Job(raster=before, task=ChangeTask(after=after, head=str(head)),
            run=RunOptions(model=str(tiny_bundle), cache_dir=""), tiles=TileSpec(size=64))
    with pytest.raises(ModelError) as err:
        run_job(j)
    assert err.value.path == str(head)


def test_each_date_is_cached_and_after_is_keyed_by_both_rasters_and_the_warp(pair, tiny_bundle, tmp_path):
    before, after = pair
    cache = str(tmp_path / "cache")
    moved = warp(after, tmp_path / "after_3857.tif", dstSRS="EPSG:3857", xRes=0.7, yRes=0.7)
    first = run_job(job(before, moved, tiny_bundle, tmp_path, cache=cache))
    assert first.images_encoded == 32
    again = run_job(job(before, moved, tiny_bundle, tmp_path, cache=cache))
    assert again.images_encoded == 0 and again.cache_hit
    assert [r["change"] for r in again.records] == [r["change"] for r in first.records]
    # BEFORE's entry is a plain label run's: that run reads no pixels
    label = run_job(Job(raster=before, task=LabelTask(labels=LABELS), run=RunOptions(model=str(tiny_bundle),
                                                                                      cache_dir=cache),
                        tiles=TileSpec(size=64)))
    assert label.images_encoded == 0 and label.cache_hit
    # another warp of AFTER: a new entry for AFTER, BEFORE still from the cache
    other = run_job(job(before, moved, tiny_bundle, tmp_path, cache=cache, resampling="nearest"))
    assert other.images_encoded == 16 and not other.cache_hit
    # AFTER rewritten: re-encoded
    warp(after, moved, dstSRS="EPSG:3857", xRes=0.6, yRes=0.6)
    assert run_job(job(before, moved, tiny_bundle, tmp_path, cache=cache)).images_encoded == 16


def test_the_report_has_the_from_to_table_with_overlapping_tiles_counted_once(pair, tiny_bundle, tmp_path):
    before, after = pair
    j = job(before, after, tiny_bundle, tmp_path, tiles=TileSpec(size=64, overlap=0.5))
    j.output = str(tmp_path / "change.gpkg")
    j.raster_output = str(tmp_path / "change.tif")
    res = run_job(j)
    with open(res.report_output, encoding="utf-8") as f:
        rep = json.load(f)
    assert rep["format"] == "remoteclip-change-report" and rep["tiles"] == res.n_tiles == 49
    table = np.array(rep["from_to"]["tiles"])
    assert table.sum() == 49
    names = rep["classes"]
    for i, f in enumerate(names):
        for k, t in enumerate(names):
            assert table[i, k] == sum(1 for r in res.records if r["label_before"] == f and r["label_after"] == t)
    # 49 tiles of 32 m x 32 m overlap by half: the area is the raster's 128 m x 128 m once, not 49 x 1024 m2
    assert rep["area_m2"] == pytest.approx(128 * 128, rel=0.01)
    assert np.array(rep["from_to"]["area_m2"]).sum() == pytest.approx(rep["area_m2"], rel=1e-6)
    changed = sum(rep["from_to"]["area_m2"][i][k] for i in range(len(names)) for k in range(len(names)) if i != k)
    assert rep["changed_class_share"] == pytest.approx(changed / rep["area_m2"], abs=1e-5)
    assert rep["most_changed"][0]["change"] == pytest.approx(max(r["change"] for r in res.records), abs=1e-5)
    from osgeo import gdal

    ds = gdal.Open(res.raster_output)
    assert ds.GetGeoTransform()[0] == X0 and ds.GetGeoTransform()[3] == Y0 and ds.RasterCount == 1   # clipped to BEFORE


def test_histogram_matching_takes_out_a_change_of_light(data_dir, tiny_bundle, tmp_path):
    a = png(data_dir, "A")
    before = write_tif(tmp_path / "before.tif", a)
    dark = write_tif(tmp_path / "dark.tif", (a.astype(np.float64) * 0.55 + 10).astype(np.uint8))
    plain = run_job(job(before, dark, tiny_bundle, tmp_path))
    matched = run_job(job(before, dark, tiny_bundle, tmp_path, match_histograms=True))
    p = np.array([r["change"] for r in plain.records])
    m = np.array([r["change"] for r in matched.records])
    assert m.mean() < 0.5 * p.mean()
    assert matched.report["match_histograms"] is True


def test_match_luts_map_a_darkened_band_back():
    from core.tasks.change import match_luts

    rng = np.random.default_rng(0)
    b = rng.integers(0, 256, (1, 64, 64)).astype(np.uint8)
    a = (b // 2 + 20).astype(np.uint8)
    (lut,) = match_luts(b, a, np.ones((64, 64), bool))
    back = np.asarray(lut, np.uint8)[a]
    assert np.abs(back.astype(int) - (b // 2 * 2).astype(int)).max() <= 1


def test_a_collection_is_refused(pair, tmp_path):
    before, after = pair
    j = job([before, after], after, tmp_path / "no-model-needed", tmp_path)
    with pytest.raises(InvalidInput) as err:
        run_job(j)
    assert err.value.param == "raster"


def test_command_line_change(pair, tiny_bundle, tmp_path, capsys):
    from core.cli import main

    before, after = pair
    out = tmp_path / "c.gpkg"
    code = main(["change", before, after, "--model", str(tiny_bundle), "--labels", ",".join(LABELS), "--tile-size",
                 "64", "-o", str(out), "--raster-output", str(tmp_path / "c.tif"), "--top-k", "3",
                 "--after-bands", "1,2,3", "--match-histograms", "--no-cache", "-q"])
    text = capsys.readouterr().out
    assert code == 0 and out.is_file() and "from/to" in text
    from osgeo import ogr

    ds = ogr.Open(str(out))
    lyr = ds.GetLayerByName("change")
    assert sum(f.GetField("selected") for f in lyr) == 3
    code = main(["change", before, str(tmp_path / "missing.tif"), "--model", str(tiny_bundle), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err


def test_an_after_that_cannot_be_reprojected_is_a_typed_error_also_with_gdal_exceptions_on():
    """QGIS 3.40+ turns GDAL's Python exceptions on for the process: an AFTER reaching past the pole, which
    EPSG:3857 cannot hold, is still the InvalidInput that names it, not GDAL's RuntimeError."""
    from types import SimpleNamespace

    from osgeo import gdal, ogr, osr

    from core.errors import InvalidInput
    from core.tasks.change import footprint_overlap

    def crs(code):
        srs = osr.SpatialReference()
        srs.ImportFromEPSG(code)
        return srs.ExportToWkt()

    before = SimpleNamespace(transform=(10.0, 0, 0.0, 0, -10.0, 1000.0), width=100, height=100, crs_wkt=crs(3857))
    # an affine transform as RasterSource holds it: lon 0..10, lat 95..85, past the pole
    after = SimpleNamespace(transform=(0.1, 0, 0.0, 0, -0.1, 95.0), width=100, height=100, crs_wkt=crs(4326))
    modes = [m.GetUseExceptions() for m in (gdal, ogr, osr)]
    for m in (gdal, ogr, osr):
        m.UseExceptions()
    try:
        with pytest.raises(InvalidInput) as err:
            footprint_overlap(before, after, "after.tif")
    finally:
        for m, on in reversed(list(zip((gdal, ogr, osr), modes, strict=True))):   # GDAL pops them in reverse
            if not on:
                m.DontUseExceptions()
    assert err.value.param == "after" and err.value.path == "after.tif"
