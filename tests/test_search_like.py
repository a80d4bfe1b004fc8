"""Search by example (issue 23): example points, polygons and image files, negative examples, a collection, the
cache, bad input, and the command line, the dock and Processing ranking the same tiles."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.cli import main
from core.errors import InvalidInput, SourceUnreadable
from core.pipeline import Job, RunOptions, TileSpec, run_job
from core.tasks import EmbedTask, SearchTask
from core.tasks.search import query_vector

SIZE = 256   # the Kampala z20 mosaic (1536 x 1024, EPSG:4326) in 6 x 4 tiles


@pytest.fixture(scope="module")
def mosaic(data_dir):
    return str(data_dir / "orthomosaic" / "kampala_oam_z20_mosaic_1536x1024.tif")


def _xy(raster, col_px, row_px):
    """The map position of a pixel position of ``raster``."""
    import rasterio

    with rasterio.open(raster) as ds:
        return ds.transform * (col_px, row_px)


def _geojson(path, geoms):
    feats = [{"type": "Feature", "properties": {}, "geometry": g} for g in geoms]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return str(path)


def _point(raster, row, col, dx=0.5, dy=0.5):
    x, y = _xy(raster, (col + dx) * SIZE, (row + dy) * SIZE)
    return {"type": "Point", "coordinates": [x, y]}


def _box(raster, c0, r0, c1, r1):
    """A polygon over pixels (c0, r0)..(c1, r1)."""
    (x0, y0), (x1, y1) = _xy(raster, c0, r0), _xy(raster, c1, r1)
    return {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}


def _job(raster, bundle, task, cache, **kw):
    return Job(raster=raster, task=task, run=RunOptions(model=str(bundle), cache_dir=str(cache)),
               tiles=TileSpec(size=SIZE), **kw)


def _unit(v):
    return v / np.linalg.norm(v)


def _by_tile(res):
    return {(r.get("source"), r["row"], r["col"]): i for i, r in enumerate(res.records)}


# ------------------------------------------------------------------------------------------- the query

def test_the_query_weighs_the_normalised_means_of_the_examples_and_the_text():
    """normalise(mean(like) + w_text * text - w_unlike * mean(unlike)), each mean normalised first; text alone is
    the text's vector as it was; the weights are the ones given (not the defaults)."""
    like = np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0]], np.float32)
    text = np.array([0, 0, 1.0, 0], np.float32)
    unlike = np.array([[0, 0, 0, 1.0], [0, 0, 0, 1.0], [0, 0, 0, 1.0]], np.float32)
    got = query_vector(like, text, unlike, text_weight=2.0, unlike_weight=0.25)
    want = _unit(_unit(np.array([0.5, 0.5, 0, 0])) + 2.0 * text - 0.25 * np.array([0, 0, 0, 1.0]))
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_array_equal(query_vector(None, text, None), text)
    np.testing.assert_allclose(query_vector(like, None, None), _unit(np.array([1.0, 1.0, 0, 0])), atol=1e-6)


# ------------------------------------------------------------------------------- points, polygons, cache

def test_points_and_polygons_pick_their_tiles_and_after_embed_no_pixel_is_read(mosaic, tiny_bundle, tmp_path):
    """A point picks the tile that contains it, a polygon the tiles it shares area with (a polygon reaching just
    past a tile edge picks the next tile too); the similarity is each tile's cosine to the normalised mean of
    the example tiles' embeddings; after embed the search reads no pixel."""
    cache = tmp_path / "cache"
    first = run_job(_job(mosaic, tiny_bundle, EmbedTask(), cache))
    assert first.images_encoded == 24
    examples = _geojson(tmp_path / "ex.geojson", [
        _point(mosaic, 1, 4),
        _box(mosaic, 2 * SIZE + 10, 3 * SIZE + 10, 3 * SIZE + 2, 3 * SIZE + 100),   # (3, 2) and just into (3, 3)
    ])
    task = SearchTask.from_inputs({"like": [examples], "top_k": 3})
    res = run_job(_job(mosaic, tiny_bundle, task, cache))
    assert res.images_encoded == 0 and res.cache_hit
    marked = {(r["row"], r["col"]) for r in res.records if r["is_example"] == 1}
    assert marked == {(1, 4), (3, 2), (3, 3)}
    at = _by_tile(res)
    emb = res.embeddings
    q = _unit(emb[[at[(None, 1, 4)], at[(None, 3, 2)], at[(None, 3, 3)]]].mean(axis=0))
    np.testing.assert_allclose([r["similarity"] for r in res.records], emb @ q, atol=1e-5)
    assert sum(r["selected"] for r in res.records) == 3


def test_an_image_file_cut_from_a_tile_finds_that_tile_first(mosaic, tiny_bundle, tmp_path):
    """A PNG of one tile's pixels is preprocessed as the tile is, so its embedding is the tile's: that tile ranks
    1 with a similarity of 1; a GeoTIFF chip of another tile (uint16, stretched) is read as an example too."""
    import rasterio
    from PIL import Image

    with rasterio.open(mosaic) as ds:
        pixels = ds.read([1, 2, 3], window=((2 * SIZE, 3 * SIZE), (5 * SIZE, 6 * SIZE)))   # tile (2, 5)
    png = tmp_path / "chip.png"
    Image.fromarray(np.moveaxis(pixels, 0, -1)).save(png)
    res = run_job(_job(mosaic, tiny_bundle, SearchTask(like_images=[str(png)]), tmp_path / "cache"))
    best = min(res.records, key=lambda r: r["rank"])
    assert (best["row"], best["col"]) == (2, 5) and best["similarity"] == pytest.approx(1.0, abs=1e-4)
    assert not any(r["is_example"] for r in res.records)   # an image file marks no tile


def test_unlike_examples_push_the_query_away_by_their_weight(mosaic, tiny_bundle, tmp_path):
    """--unlike: query = normalise(mean(like) - w * mean(unlike)) with the weight given; unlike tiles are marked
    -1; text and examples combined by the text weight given."""
    like = _geojson(tmp_path / "like.geojson", [_point(mosaic, 0, 0)])
    unlike = _geojson(tmp_path / "unlike.geojson", [_point(mosaic, 3, 5), _point(mosaic, 2, 5)])
    task = SearchTask.from_inputs({"like": like, "unlike": [unlike], "query": "a tin roof", "text_weight": 0.3,
                                   "unlike_weight": 2.0})
    cache = tmp_path / "cache"
    res = run_job(_job(mosaic, tiny_bundle, task, cache))
    at = _by_tile(res)
    emb = res.embeddings
    from core.pipeline.encode import ensemble
    from core.runtime.inference import Encoder

    text_vec = ensemble(Encoder(str(tiny_bundle)), [["a tin roof"]], [])[0].astype(np.float64)
    q = _unit(_unit(emb[at[(None, 0, 0)]]) + 0.3 * _unit(text_vec)
              - 2.0 * _unit(emb[[at[(None, 3, 5)], at[(None, 2, 5)]]].mean(axis=0)))
    np.testing.assert_allclose([r["similarity"] for r in res.records], emb @ q, atol=1e-4)
    assert {(r["row"], r["col"]) for r in res.records if r["is_example"] == -1} == {(3, 5), (2, 5)}
    assert max(res.records, key=lambda r: r["rank"])["is_example"] == -1   # pushed to the bottom


def test_examples_on_one_raster_of_a_collection_search_all_of_them(mosaic, tiny_bundle, tmp_path):
    """Two halves of the mosaic as a collection, the example on the second (the last part): its tile is marked in
    its own source, and every tile of both rasters is ranked against it, from each raster's cache."""
    from osgeo import gdal

    left, right = str(tmp_path / "left.tif"), str(tmp_path / "right.tif")
    gdal.Translate(left, mosaic, srcWin=[0, 0, 3 * SIZE, 4 * SIZE])
    gdal.Translate(right, mosaic, srcWin=[3 * SIZE, 0, 3 * SIZE, 4 * SIZE])
    cache = tmp_path / "cache"
    run_job(_job([left, right], tiny_bundle, EmbedTask(), cache))
    ex = _geojson(tmp_path / "ex.geojson", [_point(mosaic, 1, 4)])   # the right half's (1, 1)
    res = run_job(_job([left, right], tiny_bundle, SearchTask.from_inputs({"like": [ex]}), cache))
    assert res.images_encoded == 0 and len(res.records) == 24
    marked = [(r["source"], r["row"], r["col"]) for r in res.records if r["is_example"] == 1]
    assert len(marked) == 1 and marked[0][0].endswith("right.tif") and marked[0][1:] == (1, 1)
    assert sorted(r["rank"] for r in res.records) == list(range(1, 25))
    q = res.embeddings[[i for i, r in enumerate(res.records) if r["is_example"] == 1][0]]
    np.testing.assert_allclose([r["similarity"] for r in res.records], res.embeddings @ _unit(q), atol=1e-5)


def test_the_command_line_takes_image_files_and_a_vector_file_after_like(mosaic, tiny_bundle, tmp_path, capsys):
    from PIL import Image

    png = tmp_path / "a.png"
    Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(png)
    ex = _geojson(tmp_path / "ex.geojson", [_point(mosaic, 0, 1)])
    out = tmp_path / "s.gpkg"
    assert main(["search", mosaic, "--like", ex, str(png), "--top-k", "4", "--model", str(tiny_bundle),
                 "--tile-size", str(SIZE), "--no-cache", "-q", "-o", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "examples: 1 like tile, 0 unlike, 1 image file" in stdout
    from osgeo import ogr

    ds = ogr.Open(str(out))
    lyr = ds.GetLayer(0)
    assert [(f.GetField("row"), f.GetField("col")) for f in lyr if f.GetField("is_example") == 1] == [(0, 1)]
    meta = json.loads(lyr.GetMetadataItem("REMOTECLIP"))
    assert meta["like_tiles"] == 1 and meta["like_images"] == 1


# -------------------------------------------------------------------------------------------- bad input

def test_examples_outside_every_raster_are_refused_naming_the_file(mosaic, tiny_bundle, tmp_path):
    far = _geojson(tmp_path / "far.geojson", [{"type": "Point", "coordinates": [10.0, 50.0]},
                                             {"type": "Point", "coordinates": [11.0, 50.0]}])
    with pytest.raises(InvalidInput) as err:
        run_job(_job(mosaic, tiny_bundle, SearchTask.from_inputs({"like": far}), tmp_path / "c"))
    assert err.value.param == "like" and err.value.path == far and "2 of 2" in err.value.problem
    # one of two outside: a warning that says how many, and the search runs on the other
    some = _geojson(tmp_path / "some.geojson", [{"type": "Point", "coordinates": [10.0, 50.0]},
                                               _point(mosaic, 0, 0)])
    res = run_job(_job(mosaic, tiny_bundle, SearchTask.from_inputs({"like": some}), tmp_path / "c"))
    assert any("1 of 2 like examples fall outside every raster" in w for w in res.warnings)


def test_an_empty_example_layer_is_refused(tmp_path):
    empty = _geojson(tmp_path / "empty.geojson", [])
    with pytest.raises(InvalidInput) as err:
        SearchTask.from_inputs({"like": empty})
    assert err.value.param == "like" and err.value.path == empty
    with pytest.raises(InvalidInput) as err:
        SearchTask.from_inputs({"unlike": empty, "query": "x"})
    assert err.value.param == "unlike"


def test_only_negative_examples_are_refused(mosaic, tmp_path):
    ex = _geojson(tmp_path / "ex.geojson", [_point(mosaic, 0, 0)])
    with pytest.raises(InvalidInput) as err:
        SearchTask.from_inputs({"unlike": ex})
    assert err.value.param == "like"
    with pytest.raises(InvalidInput) as err:
        SearchTask.from_inputs({})
    assert err.value.param == "query"


def test_unreadable_and_non_rgb_image_files_are_refused(mosaic, tiny_bundle, tmp_path):
    from PIL import Image

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(SourceUnreadable) as err:
        run_job(_job(mosaic, tiny_bundle, SearchTask(like_images=[str(bad)]), tmp_path / "c"))
    assert err.value.path == str(bad)
    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((32, 32), 80, np.uint8)).save(grey)
    with pytest.raises(InvalidInput) as err:
        run_job(_job(mosaic, tiny_bundle, SearchTask("x", like_images=[str(grey)]), tmp_path / "c"))
    assert err.value.path == str(grey) and err.value.param == "like_images"
    # an unlike image file (--unlike-images, Processing's UNLIKE_IMAGES) is named as such
    with pytest.raises(InvalidInput) as err:
        run_job(_job(mosaic, tiny_bundle, SearchTask.from_inputs({"query": "x", "unlike_images": [str(grey)]}),
                     tmp_path / "c"))
    assert err.value.path == str(grey) and err.value.param == "unlike_images"


def test_examples_whose_tiles_are_all_nodata_are_refused(mosaic, tiny_bundle, tmp_path):
    """A raster whose first tile column is nodata: an example there picks no kept tile; on the raster, not
    outside it, so the error says nodata."""
    from osgeo import gdal

    holed = str(tmp_path / "holed.tif")
    ds = gdal.Translate(holed, mosaic, noData=0)
    for b in (1, 2, 3):
        band = ds.GetRasterBand(b)
        band.WriteArray(np.zeros((4 * SIZE, SIZE), np.uint8), 0, 0)
    ds = None
    ex = _geojson(tmp_path / "ex.geojson", [_point(mosaic, 1, 0), _point(mosaic, 2, 0)])
    with pytest.raises(InvalidInput) as err:
        run_job(_job(holed, tiny_bundle, SearchTask.from_inputs({"like": ex}), tmp_path / "c"))
    assert err.value.param == "like" and err.value.path == ex and "nodata" in err.value.problem


def test_a_click_picks_the_tile_with_the_nearest_centre_and_its_centre_picks_what_core_uses(mosaic):
    """The dock's map tool (core.examples.tile_at) on a grid of 256 px tiles overlapping by 50 % (a 128 px step):
    a click held by two tiles picks the one whose centre is nearer; off the raster, none; the tile's centre
    (the example it becomes) picks, by the search's rule, that tile and the neighbours whose border it lies on."""
    from core.examples import Examples, raster_grid, tile_at, tile_centre_wkt, tiles_of
    from core.geodata.tiles import TileSpec

    grid, wkt = raster_grid(mosaic, TileSpec(size=SIZE, overlap=0.5))
    i = tile_at(grid, *_xy(mosaic, 200, 100))   # in columns 0 (centre 128) and 1 (centre 256), row 0 only
    (r,), (c,) = grid.rows_cols([i])
    assert (r, c) == (0, 1)
    assert tile_at(grid, *_xy(mosaic, 1536 + 10, 100)) is None
    centre = tile_centre_wkt(grid, i)
    assert centre == "POINT ({!r} {!r})".format(*_xy(mosaic, 256, 128))
    rows, cols = grid.rows_cols(tiles_of(Examples([centre], wkt), grid, wkt))
    assert set(zip(rows.tolist(), cols.tolist(), strict=True)) == {(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)}
