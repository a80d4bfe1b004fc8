"""core.pipeline.run_job end to end on the real rasters of ../shared/data with the tiny bundle."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from conftest import CountingSource, edge_groups

from core.errors import Cancelled, InvalidInput, ModelError, SourceUnreadable
from core.pipeline import (
    BBox,
    CountTask,
    EmbedTask,
    Job,
    LabelTask,
    RunOptions,
    SearchTask,
    TileSpec,
    run_job,
)
from core.records import UNKNOWN

LABELS = ["buildings", "trees", "road", "bare soil"]


@pytest.fixture(scope="module")
def mosaic(data_dir):
    return str(data_dir / "orthomosaic" / "kampala_oam_z20_mosaic_1536x1024.tif")


def _job(raster, bundle, task=None, cache_dir="", **kw):
    run = RunOptions(model=str(bundle), batch_size=kw.pop("batch_size", 8), cache_dir=cache_dir)
    return Job(raster=raster, task=task or LabelTask(LABELS), run=run, **kw)


def _read_layer(path):
    from osgeo import ogr

    ds = ogr.Open(str(path))
    lyr = ds.GetLayer(0)
    defn = lyr.GetLayerDefn()
    names = [defn.GetFieldDefn(i).GetName() for i in range(defn.GetFieldCount())]
    feats = [{n: f.GetField(n) for n in names} for f in lyr]
    return names, feats


def test_label_job_writes_every_tile(mosaic, tiny_bundle, tmp_path):
    seen = []
    out = tmp_path / "labels.gpkg"
    res = run_job(_job(mosaic, tiny_bundle, output=str(out), tiles=TileSpec(size=256)),
                  progress=lambda f, m: seen.append(f))
    # 1536 x 1024 in 256 px tiles
    assert res.n_tiles == len(res.records) == 6 * 4
    assert res.provider in ("CPUExecutionProvider", "CUDAExecutionProvider")
    assert not res.cache_hit and res.output == str(out)
    assert {(r["row"], r["col"]) for r in res.records} == {(r, c) for r in range(4) for c in range(6)}
    pfields = [f for f in res.fields if f.startswith("p_")]
    assert len(pfields) == len(LABELS) and all(len(f) <= 10 for f in res.fields)
    assert [res.field_map[f] for f in pfields] == LABELS
    for r in res.records:
        probs = [r[f] for f in pfields]
        assert abs(sum(probs) - 1) < 1e-4
        assert r["label"] == LABELS[int(np.argmax(probs))] and r["score"] == pytest.approx(max(probs))
        assert r["top_labels"].split("|")[0] == r["label"] and len(r["top_labels"].split("|")) == 3
        assert r["geometry"].upper().startswith("POLYGON")
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) >= 4
    names, feats = _read_layer(out)
    assert len(feats) == 24 and {"row", "col", "label", "score", *pfields} <= set(names)
    assert sorted((f["row"], f["col"], f["label"]) for f in feats) == sorted(
        (r["row"], r["col"], r["label"]) for r in res.records)


def test_threshold_makes_unknown_and_dissolve_merges(mosaic, tiny_bundle, tmp_path):
    plain = run_job(_job(mosaic, tiny_bundle, tiles=TileSpec(size=256)))
    scores = sorted({r["score"] for r in plain.records})
    thr = (scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2   # half the tiles on each side
    res = run_job(_job(mosaic, tiny_bundle, task=LabelTask(LABELS, threshold=thr), tiles=TileSpec(size=256)))
    for a, b in zip(plain.records, res.records, strict=True):
        assert b["score"] == a["score"] and b["label"] == (a["label"] if a["score"] >= thr else UNKNOWN)
    assert 0 < sum(r["label"] == UNKNOWN for r in res.records) < res.n_tiles
    out = tmp_path / "d.gpkg"
    run_job(_job(mosaic, tiny_bundle, task=LabelTask(LABELS, threshold=thr), output=str(out), dissolve=True,
                 tiles=TileSpec(size=256)))
    _, feats = _read_layer(out)
    want = edge_groups({(r["row"], r["col"]): r["label"] for r in res.records})
    assert sorted((f["label"], f["n_tiles"]) for f in feats) == want and len(want) < res.n_tiles


def test_nodata_tiles_are_dropped(data_dir, tiny_bundle):
    """Landsat scene rotated inside its frame: exactly the tiles with a valid pixel in rasterio's dataset mask
    are kept."""
    import rasterio

    raster = str(data_dir / "geotiff" / "rasterio_RGB.byte.tif")
    res = run_job(_job(raster, tiny_bundle, tiles=TileSpec(size=64)))
    with rasterio.open(raster) as ds:
        mask = ds.dataset_mask() > 0
        w, h = ds.width, ds.height
    # 791 x 718 px: 12 x 11 tiles of 64 px, the last column and row shifted back inside
    cols = [*range(0, w - 64 + 1, 64), w - 64]
    rows = [*range(0, h - 64 + 1, 64), h - 64]
    want = {(i, j) for i, r in enumerate(rows) for j, c in enumerate(cols) if mask[r:r + 64, c:c + 64].any()}
    assert {(r["row"], r["col"]) for r in res.records} == want
    assert 0 < len(want) < len(rows) * len(cols) == 13 * 12
    # each kept tile's embedding is that tile's, though dropped tiles left gaps in the reader's batches
    from core.geodata.raster import Stretch, default_bands, open_raster, read_rgb
    from core.runtime.inference import Encoder
    from core.runtime.preprocess import preprocess

    emb = run_job(_job(raster, tiny_bundle, task=EmbedTask(), tiles=TileSpec(size=64)))
    src = open_raster(raster)
    bands = default_bands(src)
    stretch = Stretch.from_source(src, bands)
    enc = Encoder(tiny_bundle, batch_size=32)
    for i in (0, len(emb.records) // 2, len(emb.records) - 1):
        r = emb.records[i]
        rgb, valid = read_rgb(src, bands, (cols[r["col"]], rows[r["row"]], 64, 64), stretch)
        alone = enc.encode_images(preprocess(rgb, enc.bundle.image, valid)[None])[0]
        np.testing.assert_allclose(emb.embeddings[i], alone, atol=1e-5)
    src.close()


def test_count_and_search(mosaic, tiny_bundle, tmp_path):
    res = run_job(_job(mosaic, tiny_bundle, task=CountTask("car"), tiles=TileSpec(size=256)))
    assert all(1 <= r["count"] <= 10 and 0 < r["count_conf"] <= 1 for r in res.records)
    assert res.fields == ["row", "col", "count", "count_conf"]
    out = tmp_path / "s.shp"
    res = run_job(_job(mosaic, tiny_bundle, task=SearchTask("a swimming pool", top_k=5), output=str(out),
                       tiles=TileSpec(size=256)))
    sims = [r["similarity"] for r in res.records]
    assert sorted(r["rank"] for r in res.records) == list(range(1, 25))
    best = max(res.records, key=lambda r: r["similarity"])
    assert best["rank"] == 1 and all(-1 <= s <= 1 for s in sims)
    assert sum(r["selected"] for r in res.records) == 5
    assert all(r["selected"] == (r["rank"] <= 5) for r in res.records)
    # halfway between the 8th and 9th best (similarities in records are rounded to 6 decimals)
    ranked = sorted(sims)
    assert ranked[-8] > ranked[-9]
    thr = (ranked[-8] + ranked[-9]) / 2
    res2 = run_job(_job(mosaic, tiny_bundle, task=SearchTask("a swimming pool", threshold=thr),
                        tiles=TileSpec(size=256)))
    assert sum(r["selected"] for r in res2.records) == 8
    names, feats = _read_layer(out)
    assert len(feats) == 24 and {"similarity", "rank", "selected"} <= set(names)


def test_cache_reuse_reads_no_pixels_and_runs_no_image_encoder(mosaic, tiny_bundle, tmp_path):
    cache = str(tmp_path / "cache")
    src = CountingSource(mosaic)
    first = run_job(_job(src, tiny_bundle, cache_dir=cache, task=EmbedTask(), tiles=TileSpec(size=256)))
    assert not first.cache_hit and src.reads >= 24 and first.images_encoded == 24
    src.reads = 0
    relabel = run_job(_job(src, tiny_bundle, cache_dir=cache, task=LabelTask(["water", "forest", "roofs"]),
                           tiles=TileSpec(size=256)))
    assert relabel.cache_hit and src.reads == 0 and relabel.images_encoded == 0
    np.testing.assert_array_equal(relabel.embeddings, first.embeddings)
    search = run_job(_job(src, tiny_bundle, cache_dir=cache, task=SearchTask("a road"), tiles=TileSpec(size=256)))
    assert search.cache_hit and src.reads == 0
    # the cached result equals a fresh computation
    fresh = run_job(_job(mosaic, tiny_bundle, task=LabelTask(["water", "forest", "roofs"]), tiles=TileSpec(size=256)))
    assert [r["label"] for r in fresh.records] == [r["label"] for r in relabel.records]
    # another grid is another cache entry
    src.reads = 0
    other = run_job(_job(src, tiny_bundle, cache_dir=cache, tiles=TileSpec(size=300)))
    assert not other.cache_hit and src.reads > 0
    src.close()


def test_bbox_extent_limits_tiles(mosaic, tiny_bundle):
    from core.geodata.raster import open_raster

    src = open_raster(mosaic)
    a, _, c, _, e, f = src.transform[:6]
    src.close()
    # the top-left 2 x 2 tiles of 256 px
    bbox = BBox(c + a * 10, f + e * 500, c + a * 500, f + e * 10, None)
    res = run_job(_job(mosaic, tiny_bundle, tiles=TileSpec(size=256, extent=bbox)))
    assert {(r["row"], r["col"]) for r in res.records} == {(0, 0), (0, 1), (1, 0), (1, 1)}


def test_cancel_writes_nothing_and_keeps_an_existing_output(mosaic, tiny_bundle, tmp_path):
    out = tmp_path / "keep.gpkg"
    run_job(_job(mosaic, tiny_bundle, output=str(out), tiles=TileSpec(size=256)))
    before = out.read_bytes()
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled):
        run_job(_job(mosaic, tiny_bundle, output=str(out), tiles=TileSpec(size=128), batch_size=4, overwrite=True),
                is_cancelled=cancel)
    assert out.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["keep.gpkg"]
    new = tmp_path / "new.gpkg"
    with pytest.raises(Cancelled):
        run_job(_job(mosaic, tiny_bundle, output=str(new), tiles=TileSpec(size=128), batch_size=4),
                is_cancelled=lambda: True)
    assert not new.exists() and sorted(os.listdir(tmp_path)) == ["keep.gpkg"]


def test_long_prompt_is_cut_with_a_warning(mosaic, tiny_bundle):
    long = "a very large industrial area with " + "many warehouses and trucks and containers " * 12
    res = run_job(_job(mosaic, tiny_bundle, task=LabelTask(["trees", long], templates=["{}"]),
                       tiles=TileSpec(size=512)))
    assert len(res.warnings) == 1 and "was cut" in res.warnings[0] and "many warehouses" in res.warnings[0]


@pytest.mark.parametrize("labels,shown", [([], ""), (["a", ""], "''"), (["water", "Water"], "'Water'"),
                                          (["water"], "'water'")])
def test_bad_labels(mosaic, tiny_bundle, labels, shown):
    with pytest.raises(InvalidInput) as err:
        run_job(_job(mosaic, tiny_bundle, task=LabelTask(labels)))
    assert err.value.param == "labels" and shown in err.value.problem and err.value.fix


def test_bad_rasters(data_dir, tiny_bundle, tmp_path):
    with pytest.raises(SourceUnreadable) as err:
        run_job(_job(str(tmp_path / "missing.tif"), tiny_bundle))
    assert err.value.path == str(tmp_path / "missing.tif")
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"this is not a GeoTIFF" * 10)
    with pytest.raises(SourceUnreadable) as err:
        run_job(_job(str(junk), tiny_bundle))
    assert err.value.path == str(junk)
    # a real image without any georeferencing
    png = str(data_dir / "counting" / "dota" / "images" / "P1888.png")
    with pytest.raises(InvalidInput) as err:
        run_job(_job(png, tiny_bundle))
    assert err.value.path == png and err.value.param is None
    small = str(data_dir / "geotiff" / "rasterio_RGB.byte.tif")
    with pytest.raises(InvalidInput) as err:
        run_job(_job(small, tiny_bundle, tiles=TileSpec(size=2000)))
    assert err.value.param == "size" and "2000" in err.value.problem


def test_bad_bundle_and_output(mosaic, tiny_bundle, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle, broken)
    (broken / "image_fp32.onnx").write_bytes(b"garbage")
    with pytest.raises(ModelError) as err:
        run_job(_job(mosaic, broken, tiles=TileSpec(size=512)))
    assert err.value.path == str(broken / "image_fp32.onnx")   # the broken graph named
    with pytest.raises(ModelError) as err:
        run_job(_job(mosaic, tmp_path / "nope"))
    assert err.value.path == str(tmp_path / "nope")
    with pytest.raises(InvalidInput) as err:
        run_job(_job(mosaic, tiny_bundle, output=str(tmp_path / "x.csv")))
    assert err.value.param == "output" and err.value.path == str(tmp_path / "x.csv")


def test_durations_are_said_as_estimates():
    from core.pipeline import duration_text

    assert [duration_text(s) for s in (0.0, 0.49, 0.6, 1.0, 44.6, 89, 90, 720, 5399, 5400, 9000)] == [
        "under 1 s", "under 1 s", "under 1 s", "about 1 s", "about 45 s", "about 89 s", "about 2 min",
        "about 12 min", "about 90 min", "about 1.5 h", "about 2.5 h"]


def test_count_captions_follow_remotecount():
    from core.prompts import count_captions, plural

    caps = count_captions("car", 10)
    assert len(caps) == 10 and caps[0] == ["There is one car in the image."]
    assert caps[1] == ["There are two cars in the image."] and caps[9] == ["There are ten cars in the image."]
    assert plural("tennis court") == "tennis courts" and plural("bus") == "buses" and plural("ferry") == "ferries"
    # the name typed in the plural gives the same prompts, not "one cars" and "two carses"
    assert count_captions("cars", 10) == caps
    assert count_captions("storage tanks", 3)[:2] == [["There is one storage tank in the image."],
                                                      ["There are two storage tanks in the image."]]
    assert count_captions("cities", 2) == count_captions("city", 2) == [["There is one city in the image."],
                                                                       ["There are two cities in the image."]]
    assert count_captions("bus", 2)[1] == ["There are two buses in the image."]   # a singular ending in s
    with pytest.raises(InvalidInput) as err:
        count_captions("car", 3, ["a photo of {object}"])
    assert err.value.param == "templates" and "'a photo of {object}'" in err.value.problem


def test_template_ensemble_is_clip_benchmarks(tiny_bundle):
    from core.pipeline.encode import ensemble
    from core.prompts import DEFAULT_TEMPLATES, label_prompts
    from core.runtime.inference import Encoder
    from core.tasks import slug_fields

    enc = Encoder(tiny_bundle, device="cpu")
    groups = label_prompts(["harbor", "forest"])
    assert groups[0][0] == DEFAULT_TEMPLATES[0].format("harbor")
    got = ensemble(enc, groups, [])
    for g, row in zip(groups, got, strict=True):
        e = enc.encode_texts(g)
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        m = e.mean(axis=0)
        np.testing.assert_allclose(row, m / np.linalg.norm(m), atol=1e-6)
    assert slug_fields(["Bare soil", "bare-soil", "a very long class name"]) == ["p_bare_soi", "p_bare_so1",
                                                                              "p_a_very_l"]


@pytest.mark.parametrize("rel,tile,epsg", [("orthomosaic/kampala_oam_z20_mosaic_1536x1024.tif", 256, 4326),
                                           ("geotiff/rasterio_RGB.byte.tif", 64, 32618)])
def test_output_crs_and_polygons_are_the_rasters(data_dir, tiny_bundle, tmp_path, rel, tile, epsg):
    """The written layer is in the raster's CRS and each polygon is its pixel window through the affine
    (read independently with rasterio; WKB keeps the exact doubles)."""
    import rasterio
    from osgeo import ogr, osr

    raster = str(data_dir / rel)
    out = tmp_path / "t.gpkg"
    res = run_job(_job(raster, tiny_bundle, output=str(out), tiles=TileSpec(size=tile)))
    with rasterio.open(raster) as ds:
        t, width, height = ds.transform, ds.width, ds.height
    ds = ogr.Open(str(out))
    lyr = ds.GetLayer(0)
    want = osr.SpatialReference()
    want.ImportFromEPSG(epsg)
    assert lyr.GetSpatialRef().IsSame(want, ["IGNORE_DATA_AXIS_TO_SRS_AXIS_MAPPING=YES"])
    n = 0
    for f in lyr:
        row, col = f.GetField("row"), f.GetField("col")
        # the grid rule: steps of `tile` px, the last row/column shifted back inside the raster
        c0, r0 = min(col * tile, width - tile), min(row * tile, height - tile)
        g = ogr.CreateGeometryFromWkb(bytes(f.GetGeometryRef().ExportToWkb()))
        ring = g.GetGeometryRef(0)
        got = {(ring.GetX(i), ring.GetY(i)) for i in range(ring.GetPointCount())}
        assert got == {t * (c0, r0), t * (c0 + tile, r0), t * (c0 + tile, r0 + tile), t * (c0, r0 + tile)}
        n += 1
    assert n == res.n_tiles > 0


def test_sixteen_bit_and_hillshade_rasters(data_dir, tiny_bundle):
    pan = run_job(_job(str(data_dir / "geotiff" / "solaris_sample_geotiff.tif"), tiny_bundle,
                       tiles=TileSpec(size=100)))
    assert pan.n_tiles == 81
    # hillshade: one band as grey, nodata 255 covers most of it, so most tiles are dropped
    shade = str(data_dir / "geotiff" / "rasterio_shade.tif")
    res = run_job(_job(shade, tiny_bundle, tiles=TileSpec(size=128)))
    assert 0 < res.n_tiles < 64
    from core.geodata.raster import open_raster

    with open_raster(shade) as src:
        kept = {(r["row"], r["col"]) for r in res.records}
        for row in range(8):
            for col in range(8):
                _, valid = src.read([1], (col * 128, row * 128, 128, 128))
                assert ((row, col) in kept) == bool(valid.any())


def test_tile_size_in_metres_on_4326_and_extents(mosaic, tiny_bundle, data_dir, building_tiles):
    res = run_job(_job(mosaic, tiny_bundle, tiles=TileSpec(size=30, unit="m")))
    # 30 m on ~0.149 x 0.148 m pixels: 201 x 202 px tiles, 8 columns x 6 rows with the shifted edge
    assert res.n_tiles == 8 * 6
    # a bbox in UTM 36N around the centre of the mosaic
    from osgeo import osr

    src_srs, utm = osr.SpatialReference(), osr.SpatialReference()
    src_srs.ImportFromEPSG(4326)
    utm.ImportFromEPSG(32636)
    for s in (src_srs, utm):
        s.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    ct = osr.CoordinateTransformation(src_srs, utm)
    x, y = ct.TransformPoint(32.5947, 0.35087)[:2]
    res = run_job(_job(mosaic, tiny_bundle, tiles=TileSpec(size=256, extent=BBox(x - 10, y - 10, x + 10, y + 10,
                                                                                   "EPSG:32636"))))
    # the box's corners back in the mosaic's degrees, then in pixels: the 256 px tiles it overlaps
    import rasterio

    back = osr.CoordinateTransformation(utm, src_srs)
    with rasterio.open(mosaic) as ds:
        px = [~ds.transform * back.TransformPoint(cx, cy)[:2] for cx in (x - 10, x + 10) for cy in (y - 10, y + 10)]
    c0, c1 = min(p[0] for p in px), max(p[0] for p in px)
    r0, r1 = min(p[1] for p in px), max(p[1] for p in px)
    want = {(i, j) for i in range(4) for j in range(6)
            if j * 256 < c1 and j * 256 + 256 > c0 and i * 256 < r1 and i * 256 + 256 > r0}
    assert {(r["row"], r["col"]) for r in res.records} == want and len(want) >= 1
    # the real building outlines (CRS84) select exactly the tiles they share area with
    from core.cli import _polygons

    polys = _polygons(str(data_dir / "orthomosaic" / "kampala_buildings_z21_chips.geojson"))
    res = run_job(_job(mosaic, tiny_bundle, tiles=TileSpec(size=128, extent=polys)))
    assert {(r["row"], r["col"]) for r in res.records} == building_tiles and res.n_tiles == 88


def test_bands_and_edge_modes(data_dir, tiny_bundle):
    raster = str(data_dir / "geotiff" / "rasterio_RGB.byte.tif")
    bgr = run_job(_job(raster, tiny_bundle, tiles=TileSpec(size=128, bands=[3, 2, 1])))
    grey = run_job(_job(raster, tiny_bundle, tiles=TileSpec(size=128, bands=[2])))
    rgb = run_job(_job(raster, tiny_bundle, tiles=TileSpec(size=128)))
    assert bgr.n_tiles == grey.n_tiles == rgb.n_tiles
    assert not np.allclose(bgr.embeddings, rgb.embeddings)
    with pytest.raises(InvalidInput) as err:
        run_job(_job(raster, tiny_bundle, tiles=TileSpec(size=128, bands=[4, 3, 2])))
    assert err.value.param == "bands" and "4" in err.value.problem.replace(str(raster), "")
    pad = run_job(_job(raster, tiny_bundle, tiles=TileSpec(size=128, edge="pad")))
    drop = run_job(_job(raster, tiny_bundle, tiles=TileSpec(size=128, edge="drop")))
    assert max(r["col"] for r in pad.records) == 6 and max(r["col"] for r in drop.records) == 5
    assert drop.n_tiles < pad.n_tiles


# ------------------------------------------------------------------ labels and counts on constructed embeddings

def _tiles_with_cosines(cosines) -> tuple[np.ndarray, np.ndarray]:
    """Unit tile embeddings whose cosine with class j is cosines[i][j] exactly: the class embeddings are the
    first basis vectors and the last axis takes up the rest of each tile's unit length."""
    cos = np.asarray(cosines, dtype=np.float64)
    n, k = cos.shape
    rest = np.sqrt(1.0 - (cos ** 2).sum(axis=1))
    emb = np.concatenate([cos, rest[:, None]], axis=1).astype(np.float32)
    text = np.eye(k, k + 1, dtype=np.float32)
    return emb, text


def _softmax_by_hand(cos_row, scale):
    e = np.exp(scale * np.asarray(cos_row, dtype=np.float64))
    return e / e.sum()


def _task_records(task, emb, text, logit_scale):
    """The task's per-tile values as the pipeline makes them (LabelTask/CountTask.outputs -> core.records)."""
    from types import SimpleNamespace

    from core.records import Records
    from core.tasks import RasterPart

    part = RasterPart(name="t", crs_wkt="", transform=(), grid=None, index=np.arange(len(emb)), embeddings=emb,
                      tile_px=(1, 1), step_px=(1, 1))
    out = task.outputs(part, text, SimpleNamespace(logit_scale=logit_scale), None)
    return list(Records(out.fields, out.columns)), out.fields, out.field_map


def label_records(emb, text, labels, logit_scale, top_k, threshold):
    return _task_records(LabelTask(labels=labels, top_k=top_k, threshold=threshold), emb, text, logit_scale)


def count_records(emb, text, logit_scale):
    from core.pipeline import CountTask

    recs, fields, _ = _task_records(CountTask(object_name="cars", max_count=text.shape[0]), emb, text,
                                    logit_scale)
    return recs, fields


def test_label_threshold_is_on_the_probability_not_the_cosine():
    labels = ["water", "trees", "roofs"]
    cos = [[0.30, -0.20, -0.30],    # low cosine (0.30) but a clear winner: probability 0.991
           [0.50, 0.55, 0.50],      # high cosine (0.55) but a near tie: probability 0.452
           [-0.10, 0.10, 0.60]]     # both above
    emb, text = _tiles_with_cosines(cos)
    probs = [_softmax_by_hand(c, 10.0) for c in cos]
    assert probs[0][0] > 0.5 > cos[0][0] and cos[1][1] > 0.5 > probs[1][1]   # the case separates the two rules
    recs, fields, fmap = label_records(emb, text, labels, 10.0, top_k=2, threshold=0.5)
    assert [r["label"] for r in recs] == ["water", UNKNOWN, "roofs"]
    for r, p in zip(recs, probs, strict=True):
        assert r["score"] == pytest.approx(p.max(), abs=1e-6)    # the score is the probability, kept for unknown
        assert [r[f] for f in fmap] == pytest.approx(list(p), abs=1e-6)
    assert recs[1]["top_labels"] == "trees|water"    # the ranking is kept even when the label is unknown
    # no threshold: every tile keeps its best class
    recs, _, _ = label_records(emb, text, labels, 10.0, top_k=3, threshold=None)
    assert [r["label"] for r in recs] == ["water", "trees", "roofs"]


def test_label_threshold_boundary_keeps_the_label():
    """Two classes at the same cosine: probability exactly 1/2, and a threshold of 0.5 keeps the label (>=)."""
    emb, text = _tiles_with_cosines([[0.4, 0.4], [0.4, 0.35]])
    recs, _, _ = label_records(emb, text, ["field", "forest"], 100.0, top_k=1, threshold=0.5)
    assert recs[0]["score"] == 0.5 and recs[0]["label"] == "field"   # a tie goes to the first class
    assert recs[1]["label"] == "field"
    recs, _, _ = label_records(emb, text, ["field", "forest"], 100.0, top_k=1, threshold=np.nextafter(0.5, 1))
    assert recs[0]["label"] == UNKNOWN and recs[1]["label"] == "field"


def test_count_is_the_best_matching_caption_plus_one_and_its_probability():
    # captions for 1..5 objects; tile 0 matches "three" best and "two" worst, tile 1 matches "five" best
    cos = [[0.10, -0.40, 0.50, 0.20, 0.00],
           [0.00, 0.05, -0.30, 0.10, 0.30]]
    emb, text = _tiles_with_cosines(cos)
    recs, fields = count_records(emb, text, 20.0)
    assert fields == [("count", "int"), ("count_conf", "float")]
    assert [r["count"] for r in recs] == [3, 5]
    for r, c in zip(recs, cos, strict=True):
        p = _softmax_by_hand(c, 20.0)
        assert r["count_conf"] == pytest.approx(p[r["count"] - 1], abs=1e-6) and p.argmax() == r["count"] - 1


def test_several_readers_give_the_tiles_one_reader_gives(data_dir, tiny_bundle):
    """Beside a GPU the tiles are read by several threads, each on its own handle of the file: same tiles
    kept (the all-nodata corners of the Landsat scene dropped), same order, same embeddings."""
    from core.pipeline.encode import reader_count

    rgb = str(data_dir / "geotiff" / "rasterio_RGB.byte.tif")
    spec = TileSpec(size=64, edge="pad")
    runs = [run_job(Job(raster=rgb, task=EmbedTask(), tiles=spec,
                        run=RunOptions(model=str(tiny_bundle), batch_size=7, cache_dir="", readers=n)))
            for n in (1, 3)]
    assert [(r["row"], r["col"]) for r in runs[0].records] == [(r["row"], r["col"]) for r in runs[1].records]
    assert 0 < runs[0].n_tiles < 13 * 12
    np.testing.assert_array_equal(runs[0].embeddings, runs[1].embeddings)
    from core.geodata.raster import open_raster

    src = open_raster(rgb)
    assert reader_count(src, on_gpu=False) == 1 and reader_count(src, on_gpu=True) >= 1
    src.close()
