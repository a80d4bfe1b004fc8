"""core.geodata.vectors: GeoPackage and Shapefile writing (OGR), atomic replacement, metadata, dissolve."""

from __future__ import annotations

import json
import os

import pytest
from osgeo import ogr, osr

from core.errors import InvalidInput, OutputRefused
from core.geodata.raster import open_raster
from core.geodata.tiles import TileSpec, make_grid
from core.geodata.vectors import Field, dissolve, shapefile_names, write_vector


@pytest.fixture(scope="module")
def landsat(data_dir):
    """Tiles of the real UTM Landsat scene (EPSG:32618), with made-up attributes."""
    src = open_raster(data_dir / "geotiff" / "rasterio_RGB.byte.tif")
    grid = make_grid(src, TileSpec(size=128))
    crs, transform = src.crs_wkt, src.transform
    src.close()
    recs = [{"row": t.row, "col": t.col, "label": "water" if t.col < 3 else "forest", "score": 0.5 + t.row / 100,
             "geometry": t.polygon_wkt} for t in grid]
    fields = [Field("row", "int"), Field("col", "int"), Field("label", "str"), Field("score", "float")]
    return recs, fields, crs, transform, grid


def _layer(path):
    ds = ogr.Open(str(path))
    assert ds is not None, path
    lyr = ds.GetLayer(0)
    defn = lyr.GetLayerDefn()
    names = [defn.GetFieldDefn(i).GetName() for i in range(defn.GetFieldCount())]
    # WKB, not WKT: OGR's WKT rounds to 15 digits, the file keeps the exact doubles
    feats = [({n: f.GetField(n) for n in names}, bytes(f.GetGeometryRef().ExportToWkb())) for f in lyr]
    return ds, lyr, names, feats


def _geom(text_or_wkb):
    if isinstance(text_or_wkb, bytes):
        return ogr.CreateGeometryFromWkb(text_or_wkb)
    return ogr.CreateGeometryFromWkt(text_or_wkb)


def _ring(wkt):
    g = _geom(wkt)
    r = g.GetGeometryRef(0)  # g must stay alive while r is used
    return {(r.GetX(i), r.GetY(i)) for i in range(r.GetPointCount())}


@pytest.mark.parametrize("ext", [".gpkg", ".shp"])
def test_written_geometry_and_crs_equal_the_raster(landsat, tmp_path, ext):
    recs, fields, crs, transform, grid = landsat
    out = tmp_path / f"tiles{ext}"
    write_vector(out, recs, fields, crs, layer_name="tiles", metadata={"task": "test", "fields": {"a": "b"}})
    ds, lyr, names, feats = _layer(out)
    assert names == ["row", "col", "label", "score"]
    assert len(feats) == len(grid)
    want = osr.SpatialReference()
    want.ImportFromEPSG(32618)
    assert lyr.GetSpatialRef().IsSame(want, ["IGNORE_DATA_AXIS_TO_SRS_AXIS_MAPPING=YES"])
    a, b, c, d, e, f = transform
    for (attrs, wkt), t in zip(feats, grid, strict=True):
        assert (attrs["row"], attrs["col"]) == (t.row, t.col)
        c0, r0, w, h = t.window
        corners = {(a * x + b * y + c, d * x + e * y + f) for x, y in
                   ((c0, r0), (c0 + w, r0), (c0 + w, r0 + h), (c0, r0 + h))}
        assert _ring(wkt) == corners  # doubles survive exactly
    if ext == ".gpkg":
        assert lyr.GetName() == "tiles"
        meta = json.loads(lyr.GetMetadataItem("REMOTECLIP"))
        assert meta["task"] == "test" and meta["fields"] == {"a": "b"} and meta["layer"] == "tiles"
    else:
        assert (tmp_path / "tiles.prj").is_file() and (tmp_path / "tiles.cpg").is_file()
        meta = json.loads((tmp_path / "tiles.remoteclip.json").read_text())
        assert meta["task"] == "test" and meta["field_names"]["label"] == "label"
        assert meta["format"] == "remoteclip-vector-metadata"
    assert sorted(p for p in os.listdir(tmp_path) if p.startswith(".")) == []


def test_kampala_4326_layer(data_dir, tmp_path):
    src = open_raster(data_dir / "orthomosaic" / "kampala_oam_z20_mosaic_1536x1024.tif")
    grid = make_grid(src, TileSpec(size=256))
    crs = src.crs_wkt
    src.close()
    out = tmp_path / "k.gpkg"
    write_vector(out, [{"geometry": t.polygon_wkt} for t in grid], [], crs)
    ds, lyr, _, feats = _layer(out)  # ds keeps lyr alive
    want = osr.SpatialReference()
    want.ImportFromEPSG(4326)
    assert lyr.GetSpatialRef().IsSame(want, ["IGNORE_DATA_AXIS_TO_SRS_AXIS_MAPPING=YES"])
    assert lyr.GetSpatialRef().GetAuthorityCode(None) == "4326"
    env = lyr.GetExtent()  # (minx, maxx, miny, maxy): longitudes first, whatever EPSG:4326's axis order
    assert 32.59 < env[0] < env[1] < 32.6 and 0.35 < env[2] < env[3] < 0.352
    assert [_ring(w) for _, w in feats] == [_ring(t.polygon_wkt) for t in grid]


def test_shapefile_field_names_are_cut_and_mapped(landsat, tmp_path):
    recs, _, crs, _, _ = landsat
    long = [{"a_very_long_name": 1, "a_very_long_other": 2.5, "klasse_ü": "Straße", "geometry": r["geometry"]}
            for r in recs[:3]]
    fields = [Field("a_very_long_name", "int"), Field("a_very_long_other", "float"), Field("klasse_ü", "str")]
    out = tmp_path / "long.shp"
    write_vector(out, long, fields, crs)
    _, _, names, feats = _layer(out)
    assert names == shapefile_names([f.name for f in fields]) == ["a_very_lon", "a_very_lo1", "klasse_ü"]
    assert all(len(n) <= 10 for n in names)
    meta = json.loads((tmp_path / "long.remoteclip.json").read_text())
    assert meta["field_names"] == {"a_very_lon": "a_very_long_name", "a_very_lo1": "a_very_long_other",
                                   "klasse_ü": "klasse_ü"}
    assert feats[0][0] == {"a_very_lon": 1, "a_very_lo1": 2.5, "klasse_ü": "Straße"}


def test_overwrite_is_atomic_and_failures_leave_the_old_file(landsat, tmp_path):
    recs, fields, crs, _, _ = landsat
    out = tmp_path / "o.gpkg"
    write_vector(out, recs, fields, crs)
    before = out.read_bytes()
    bad = [*recs[:5], {"row": 0, "col": 0, "label": "x", "score": 1.0, "geometry": "POLYGON ((0 0, 1"}]
    with pytest.raises(InvalidInput) as err:
        write_vector(out, bad, fields, crs, overwrite=True)
    assert "Record 5 " in err.value.problem and err.value.fix   # the bad record (the sixth) is named
    assert out.read_bytes() == before and os.listdir(tmp_path) == ["o.gpkg"]
    write_vector(out, recs[:7], fields, crs, overwrite=True)
    assert len(_layer(out)[3]) == 7 and os.listdir(tmp_path) == ["o.gpkg"]
    # shapefile: the set of files is replaced, an old spatial index is removed
    shp = tmp_path / "s.shp"
    write_vector(shp, recs, fields, crs)
    ds = ogr.Open(str(shp), 1)
    ds.ExecuteSQL("CREATE SPATIAL INDEX ON s")
    ds = None
    assert (tmp_path / "s.qix").is_file()
    old = (tmp_path / "s.dbf").read_bytes()
    with pytest.raises(InvalidInput) as err:
        write_vector(shp, bad, fields, crs, overwrite=True)
    assert "Record 5 " in err.value.problem
    assert (tmp_path / "s.dbf").read_bytes() == old and (tmp_path / "s.qix").is_file()
    write_vector(shp, recs[:4], fields, crs, overwrite=True)
    assert not (tmp_path / "s.qix").exists() and len(_layer(shp)[3]) == 4
    assert sorted(p for p in os.listdir(tmp_path) if p.startswith(".")) == []


def test_bad_outputs(landsat, tmp_path):
    recs, fields, crs, _, _ = landsat
    with pytest.raises(InvalidInput) as err:
        write_vector(tmp_path / "x.csv", recs, fields, crs)
    assert err.value.param == "output" and err.value.path == str(tmp_path / "x.csv")
    with pytest.raises(OutputRefused) as err:
        write_vector(tmp_path / "nope" / "x.gpkg", recs, fields, crs)
    assert err.value.path == str(tmp_path / "nope")
    with pytest.raises(InvalidInput) as err:
        write_vector(tmp_path / "x.gpkg", recs, [*fields, Field("Score", "float")], crs)
    assert "'Score'" in err.value.problem and err.value.fix
    with pytest.raises(ValueError) as err:   # a caller's bug, not a user's input: a plain ValueError
        write_vector(tmp_path / "x.gpkg", recs, [Field("row", "integer")], crs)
    assert "'integer'" in str(err.value)
    assert os.listdir(tmp_path) == []


def test_empty_and_null_and_big_ints(landsat, tmp_path):
    recs, _, crs, _, _ = landsat
    out = tmp_path / "e.gpkg"
    write_vector(out, [], [Field("label", "str")], crs, layer_name="empty")
    ds, lyr, names, feats = _layer(out)  # ds keeps lyr alive
    assert names == ["label"] and feats == [] and lyr.GetName() == "empty"
    rows = [{"n": 2 ** 40, "s": None, "geometry": recs[0]["geometry"]}]
    write_vector(out, rows, [Field("n", "int"), Field("s", "str")], crs, layer_name="empty", overwrite=True)
    _, _, _, feats = _layer(out)
    assert feats[0][0] == {"n": 2 ** 40, "s": None}


def test_dissolve_merges_connected_tiles_with_the_same_value(landsat, tmp_path):
    recs, fields, crs, _, grid = landsat
    out = tmp_path / "d.gpkg"
    write_vector(out, recs, fields, crs, dissolve_by="label")
    _, _, names, feats = _layer(out)
    assert names == ["label", "n_tiles", "score"]
    # columns 0-2 water, the rest forest: two connected groups
    assert sorted(a["label"] for a, _ in feats) == ["forest", "water"]
    by = {a["label"]: (a, w) for a, w in feats}
    n_water = sum(r["label"] == "water" for r in recs)
    assert by["water"][0]["n_tiles"] == n_water and by["forest"][0]["n_tiles"] == len(recs) - n_water
    mean = sum(r["score"] for r in recs if r["label"] == "water") / n_water
    assert by["water"][0]["score"] == pytest.approx(mean, abs=1e-6)
    # the merged outline covers exactly the union of its tiles
    union = ogr.Geometry(ogr.wkbMultiPolygon)
    for r in recs:
        if r["label"] == "water":
            union.AddGeometry(ogr.CreateGeometryFromWkt(r["geometry"]))
    merged = _geom(by["water"][1])
    assert merged.GetGeometryCount() == 1  # one polygon, no hole
    assert merged.SymDifference(union.UnionCascaded()).GetArea() < 1e-6 * merged.GetArea()


def test_dissolve_keeps_separate_groups_apart():
    sq = "POLYGON (({0} {1}, {2} {1}, {2} {3}, {0} {3}, {0} {1}))"

    def tile(c, r, label, score):
        return {"label": label, "score": score, "row": r, "col": c,
                "geometry": sq.format(c * 10, -r * 10, c * 10 + 10, -r * 10 - 10)}

    recs = [tile(0, 0, "a", 0.2), tile(1, 0, "a", 0.4),   # an edge: one group
            tile(2, 1, "a", 0.9),                         # a corner with (1, 0) only: its own group
            tile(5, 5, "a", 0.5),                         # far away
            tile(3, 1, "b", 0.7)]
    fields = [Field("row", "int"), Field("col", "int"), Field("label", "str"), Field("score", "float")]
    out, f = dissolve(recs, fields, "label")
    assert [x.name for x in f] == ["label", "n_tiles", "score"]
    got = sorted((r["label"], r["n_tiles"], r["score"]) for r in out)
    assert got == [("a", 1, 0.5), ("a", 1, 0.9), ("a", 2, pytest.approx(0.3)), ("b", 1, 0.7)]
    two = next(r for r in out if r["n_tiles"] == 2)
    assert ogr.CreateGeometryFromWkt(two["geometry"]).GetArea() == pytest.approx(200)


@pytest.mark.parametrize("ext", [".gpkg", ".shp"])
def test_a_layer_with_one_multipart_outline_is_multipolygon_throughout(tmp_path, ext):
    """An outline in two parts (a dissolved group, a sample polygon) makes the whole layer MultiPolygon, each
    feature written as one: a Polygon layer holding a MultiPolygon is refused by strict readers (and
    GeoPackage validators), and a layer of tile squares alone stays plain Polygon."""
    sq = "(({0} {1}, {2} {1}, {2} {3}, {0} {3}, {0} {1}))"
    fields = [Field("label", "str")]
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32636)
    crs = srs.ExportToWkt()
    two = [{"label": "a", "geometry": "MULTIPOLYGON (" + sq.format(0, 0, 10, 10) + ", " + sq.format(20, 0, 30, 10) + ")"},
           {"label": "b", "geometry": "POLYGON " + sq.format(40, 0, 50, 10)}]
    out = tmp_path / ("multi" + ext)
    write_vector(out, two, fields, crs)
    ds, lyr, _, feats = _layer(out)
    assert [_geom(w).GetArea() for _, w in feats] == [200.0, 100.0]
    assert ogr.GT_Flatten(_geom(feats[0][1]).GetGeometryType()) == ogr.wkbMultiPolygon   # both parts kept
    if ext == ".gpkg":   # a Shapefile has one polygon type for both; a GeoPackage layer declares which
        assert ogr.GT_Flatten(lyr.GetGeomType()) == ogr.wkbMultiPolygon
        assert ogr.GT_Flatten(_geom(feats[1][1]).GetGeometryType()) == ogr.wkbMultiPolygon
        plain = tmp_path / "plain.gpkg"
        write_vector(plain, two[1:], fields, crs)
        ds2, lyr2, _, _ = _layer(plain)
        assert ogr.GT_Flatten(lyr2.GetGeomType()) == ogr.wkbPolygon
        del ds2
    del ds


def test_what_an_output_replaces_says_whether_it_is_one_layer_of_a_geopackage(tmp_path):
    """The dock says "its other layers are kept" from this field, not from the words."""
    from osgeo import osr

    from core.geodata.vectors import output_exists, write_vector

    crs = osr.SpatialReference()
    crs.ImportFromEPSG(4326)
    recs = [{"geometry": "POLYGON ((0 0, 1 0, 1 1, 0 1, 0 0))"}]
    gpkg, shp, empty = tmp_path / "a.gpkg", tmp_path / "b.shp", tmp_path / "c.gpkg"
    write_vector(str(gpkg), recs, [], crs.ExportToWkt(), layer_name="labels")
    write_vector(str(shp), recs, [], crs.ExportToWkt())
    empty.write_bytes(b"")
    assert output_exists(gpkg, "labels").layer is True
    assert output_exists(gpkg, "other") is None
    assert output_exists(shp).layer is False and output_exists(empty, "labels").layer is False
