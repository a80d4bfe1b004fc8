"""core.geodata.tiles on the real rasters: grids, edge modes, tile sizes in metres, extents in other CRSs."""

from __future__ import annotations

import math

import pytest
from osgeo import ogr, osr

from core.errors import InvalidInput
from core.geodata.raster import open_raster
from core.geodata.tiles import MIN_TILE_PX, BBox, Polygons, TileSpec, make_grid, spec_params, tile_size_px


@pytest.fixture(scope="module")
def rasters(data_dir):
    paths = {"kampala": "orthomosaic/kampala_oam_z20_mosaic_1536x1024.tif",   # EPSG:4326
             "landsat": "geotiff/rasterio_RGB.byte.tif",                       # EPSG:32618, 791 x 718
             "shade": "geotiff/rasterio_shade.tif",                            # EPSG:3857
             "pan": "geotiff/solaris_sample_geotiff.tif"}                      # EPSG:32616, 0.5 m
    srcs = {k: open_raster(data_dir / v) for k, v in paths.items()}
    yield srcs
    for s in srcs.values():
        s.close()


def _srs(epsg):
    s = osr.SpatialReference()
    s.ImportFromEPSG(epsg)
    s.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return s


def _ring(wkt):
    g = ogr.CreateGeometryFromWkt(wkt)
    r = g.GetGeometryRef(0)  # g must stay alive while r is used
    return [(r.GetX(i), r.GetY(i)) for i in range(r.GetPointCount())]


def _corners(transform, window):
    a, b, c, d, e, f = transform
    c0, r0, w, h = window
    return {(a * x + b * y + c, d * x + e * y + f) for x, y in
            ((c0, r0), (c0 + w, r0), (c0 + w, r0 + h), (c0, r0 + h))}


def test_pixel_grid_and_polygons_follow_the_affine(rasters):
    src = rasters["kampala"]
    import rasterio

    with rasterio.open(src.path) as ds:
        t = ds.transform
    grid = make_grid(src, TileSpec(size=256))
    assert [(g.row, g.col) for g in grid] == [(r, c) for r in range(4) for c in range(6)]
    for g in grid:
        assert g.window == (256 * g.col, 256 * g.row, 256, 256)
        ring = _ring(g.polygon_wkt)
        assert len(ring) == 5 and ring[0] == ring[-1]
        # exact: the same float values as rasterio's Affine gives for the pixel corners
        c0, r0, w, h = g.window
        want = {t * (x, y) for x, y in ((c0, r0), (c0 + w, r0), (c0 + w, r0 + h), (c0, r0 + h))}
        assert set(ring) == want
        assert ogr.CreateGeometryFromWkt(g.polygon_wkt).IsValid()
    # neighbours share their edge exactly
    a, b = grid[0], grid[1]
    assert len(set(_ring(a.polygon_wkt)) & set(_ring(b.polygon_wkt))) == 2


def test_edge_modes(rasters):
    src = rasters["landsat"]  # 791 x 718
    shift = make_grid(src, TileSpec(size=100))
    cols = sorted({g.window[0] for g in shift})
    rows = sorted({g.window[1] for g in shift})
    assert cols == [0, 100, 200, 300, 400, 500, 600, 691] and rows == [0, 100, 200, 300, 400, 500, 600, 618]
    assert all(g.window[2:] == (100, 100) for g in shift)
    assert all(g.window[0] + 100 <= 791 and g.window[1] + 100 <= 718 for g in shift)
    pad = make_grid(src, TileSpec(size=100, edge="pad"))
    assert sorted({g.window[0] for g in pad})[-1] == 700 and sorted({g.window[1] for g in pad})[-1] == 700
    drop = make_grid(src, TileSpec(size=100, edge="drop"))
    assert len(drop) == 7 * 7 and max(g.window[0] + 100 for g in drop) == 700
    # a grid that ends exactly on the raster edge is the same in every mode
    k = rasters["kampala"]
    assert [g.window for g in make_grid(k, TileSpec(size=256, edge="drop"))] == \
        [g.window for g in make_grid(k, TileSpec(size=256))]


def test_overlap_is_a_fraction_of_the_tile(rasters):
    src = rasters["kampala"]
    grid = make_grid(src, TileSpec(size=256, overlap=0.25))
    cols = sorted({g.window[0] for g in grid})
    assert cols[:3] == [0, 192, 384] and cols[-1] == 1536 - 256
    assert all(b - a <= 192 for a, b in zip(cols, cols[1:], strict=False))


@pytest.mark.parametrize("spec,param,shown", [
    (dict(size=2000), "size", "791 x 718 px"),              # the raster's size
    (dict(size=800), "size", "791 x 718 px"),  # wider than 718 rows
    (dict(size=MIN_TILE_PX - 1), "size", f"{MIN_TILE_PX} px"),   # the minimum
    (dict(size=1000, unit="m"), "size", f"{MIN_TILE_PX} px"),       # 1 km on 300 m pixels: 3 px
    (dict(size=10_000_000, unit="m"), "size", "791 x 718 px"),
    (dict(size=64.5), "size", "64.5"),
    (dict(size=0), "size", "0"),
    (dict(size=64, overlap=1.0), "overlap", "1"),
    (dict(size=64, overlap=-0.1), "overlap", "-0.1"),
    (dict(size=64, unit="km"), "unit", "'km'"),
    (dict(size=64, edge="wrap"), "edge", "'wrap'"),
])
def test_bad_specs(rasters, spec, param, shown):
    # refused when the spec is made (values alone) or when the grid is made (against the raster)
    with pytest.raises(InvalidInput) as err:
        make_grid(rasters["landsat"], TileSpec(**spec))
    assert err.value.param == param and shown in err.value.problem and err.value.fix


def _ground_edges(src, window, utm_epsg):
    """Lengths in metres of a tile's top and left edges, measured in a UTM zone (independent of core)."""
    ct = osr.CoordinateTransformation(_srs_from_wkt(src.crs_wkt), _srs(utm_epsg))
    a, b, c, d, e, f = src.transform
    c0, r0, w, h = window

    def utm(x, y):
        p = ct.TransformPoint(a * x + b * y + c, d * x + e * y + f)
        return p[0], p[1]

    tl, tr, bl = utm(c0, r0), utm(c0 + w, r0), utm(c0, r0 + h)
    return math.dist(tl, tr), math.dist(tl, bl)


def _srs_from_wkt(wkt):
    s = osr.SpatialReference()
    s.ImportFromWkt(wkt)
    s.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return s


@pytest.mark.parametrize("name,metres,utm", [("kampala", 30, 32636),   # degrees (EPSG:4326), Kampala: UTM 36N
                                             ("shade", 1000, 32613),   # Web Mercator at ~40 N: UTM 13N
                                             ("pan", 100, 32616)])     # UTM 16N itself
def test_tile_size_in_metres_is_metres_on_the_ground(rasters, name, metres, utm):
    src = rasters[name]
    tw, th = tile_size_px(src, TileSpec(size=metres, unit="m"))
    grid = make_grid(src, TileSpec(size=metres, unit="m"))
    mid = grid[len(grid) // 2]
    assert mid.window[2:] == (tw, th)
    ew, eh = _ground_edges(src, mid.window, utm)
    # within a pixel's rounding and the scale factor of a UTM zone
    px_w, px_h = ew / tw, eh / th
    assert abs(ew - metres) <= px_w / 2 + metres * 1e-3, (ew, metres)
    assert abs(eh - metres) <= px_h / 2 + metres * 1e-3, (eh, metres)


def test_tile_size_in_metres_on_4326_converts_at_the_centre_latitude(rasters):
    src = rasters["kampala"]
    tw, th = tile_size_px(src, TileSpec(size=30, unit="m"))
    # about 0.149 m per pixel east-west and 0.148 m north-south at 0.35 N
    assert (tw, th) == (round(30 / 0.14929), round(30 / 0.14829))


def test_bbox_in_the_raster_crs_and_in_another_crs(rasters):
    src = rasters["kampala"]
    a, _, c, _, e, f = src.transform
    bbox = BBox(c + a * 10, f + e * 500, c + a * 500, f + e * 10, None)
    same = make_grid(src, TileSpec(size=256, extent=bbox))
    assert [(g.row, g.col) for g in same] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    # a box in UTM 36N between the UTM positions of pixels (20, 490) and (490, 20)
    ct = osr.CoordinateTransformation(_srs(4326), _srs(32636))
    x0, y0 = ct.TransformPoint(c + a * 20, f + e * 490)[:2]
    x1, y1 = ct.TransformPoint(c + a * 490, f + e * 20)[:2]
    inner = BBox(x0, y0, x1, y1, "EPSG:32636")
    utm = make_grid(src, TileSpec(size=256, extent=inner))
    assert [(g.row, g.col) for g in utm] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [g.window for g in utm] == [g.window for g in same]  # one grid, anchored at the raster's origin
    # lon/lat box on a UTM raster: traditional GIS axis order (x = longitude)
    land = rasters["landsat"]
    ct = osr.CoordinateTransformation(_srs_from_wkt(land.crs_wkt), _srs(4326))
    a, _, c, _, e, f = land.transform
    lon0, lat0 = ct.TransformPoint(c + a * 300, f + e * 300)[:2]
    lon1, lat1 = ct.TransformPoint(c + a * 420, f + e * 180)[:2]
    got = make_grid(land, TileSpec(size=64, extent=BBox(lon0, lat0, lon1, lat1, 4326)))
    assert got and all(g.window[0] + 64 > 290 and g.window[0] < 430 for g in got)
    assert all(g.window[1] + 64 > 170 and g.window[1] < 310 for g in got)
    assert {(4, 4), (4, 5), (3, 6)} <= {(g.row, g.col) for g in got}


def test_bbox_outside_the_raster_gives_no_tiles(rasters):
    src = rasters["kampala"]
    assert make_grid(src, TileSpec(size=256, extent=BBox(10.0, 10.0, 10.1, 10.1, "EPSG:4326"))) == []
    with pytest.raises(InvalidInput) as err:
        make_grid(src, TileSpec(size=256, extent=BBox(1.0, 1.0, 0.5, 2.0)))
    assert err.value.param == "extent" and "[1.0, 1.0, 0.5, 2.0]" in err.value.problem
    with pytest.raises(InvalidInput) as err:
        make_grid(src, TileSpec(size=256, extent=BBox(0, 0, 1, 1, "EPSG:999999")))
    assert err.value.param == "extent" and "'EPSG:999999'" in err.value.problem


def test_polygons_select_the_tiles_they_share_area_with(rasters):
    src = rasters["kampala"]
    a, _, c, _, e, f = src.transform

    def xy(col, row):
        return f"{c + a * col!r} {f + e * row!r}"

    tri = f"POLYGON (({xy(300, 300)}, {xy(600, 300)}, {xy(300, 700)}, {xy(300, 300)}))"
    got = make_grid(src, TileSpec(size=256, extent=Polygons([tri])))
    assert [(g.row, g.col) for g in got] == [(1, 1), (1, 2), (2, 1)]
    # a polygon on tile edges selects the tiles inside it, not the neighbours that only touch it
    block = f"POLYGON (({xy(256, 256)}, {xy(768, 256)}, {xy(768, 512)}, {xy(256, 512)}, {xy(256, 256)}))"
    got = make_grid(src, TileSpec(size=256, extent=Polygons([block])))
    assert [(g.row, g.col) for g in got] == [(1, 1), (1, 2)]
    # several polygons, overlapping and in a multipolygon, in another CRS (UTM 36N)
    ct = osr.CoordinateTransformation(_srs(4326), _srs(32636))
    g = ogr.CreateGeometryFromWkt(tri)
    g.Transform(ct)
    multi = ogr.CreateGeometryFromWkt(f"MULTIPOLYGON ((({xy(1300, 900)}, {xy(1310, 900)}, {xy(1310, 910)}, "
                                      f"{xy(1300, 900)})))")
    multi.Transform(ct)
    got = make_grid(src, TileSpec(size=256, extent=Polygons([g.ExportToWkt(), g.ExportToWkt(), multi.ExportToWkt()],
                                                            "EPSG:32636")))
    assert [(g.row, g.col) for g in got] == [(1, 1), (1, 2), (2, 1), (3, 5)]


def test_polygons_on_real_building_outlines(rasters, data_dir):
    """The 43 SpaceNet footprints select exactly the tiles whose squares overlap one of them."""
    src = rasters["pan"]
    ds = ogr.Open(str(data_dir / "geotiff" / "solaris_geotiff_labels.geojson"))
    lyr = ds.GetLayer(0)
    polys = [ft.GetGeometryRef().Clone() for ft in lyr]
    wkts = [p.ExportToWkt() for p in polys]
    got = make_grid(src, TileSpec(size=100, extent=Polygons(wkts, lyr.GetSpatialRef().ExportToWkt())))
    everything = make_grid(src, TileSpec(size=100))
    want = []
    for t in everything:
        tile = ogr.CreateGeometryFromWkt(t.polygon_wkt)
        if any(p.Intersection(tile).GetArea() > 0 for p in polys):
            want.append((t.row, t.col))
    assert 0 < len(got) < len(everything)
    assert [(g.row, g.col) for g in got] == want


def test_bad_polygons(rasters):
    src = rasters["kampala"]
    with pytest.raises(InvalidInput) as err:
        make_grid(src, TileSpec(size=256, extent=Polygons(["POLYGON ((1 2, 3"])))
    assert err.value.param == "extent" and "'POLYGON ((1 2, 3'" in err.value.problem
    with pytest.raises(InvalidInput) as err:
        make_grid(src, TileSpec(size=256, extent=Polygons(["LINESTRING (32.59 0.35, 32.6 0.36)"])))
    assert err.value.param == "extent" and "LINESTRING" in err.value.problem
    with pytest.raises(InvalidInput) as err:
        make_grid(src, TileSpec(size=256, extent=Polygons([])))
    assert err.value.param == "extent" and err.value.problem and err.value.fix


def test_rotated_geotransform(tmp_path, rasters):
    """Polygons follow b and d of the affine too (a rotated VRT over the real Landsat scene)."""
    from osgeo import gdal

    vrt = str(tmp_path / "rot.vrt")
    gdal.Translate(vrt, rasters["landsat"].path, format="VRT")
    ds = gdal.Open(vrt, gdal.GA_Update)
    gt = (101985.0, 260.0, 150.0, 2826915.0, 150.0, -260.0)
    ds.SetGeoTransform(gt)
    ds = None
    src = open_raster(vrt)
    try:
        grid = make_grid(src, TileSpec(size=128))
        a, b, c, d, e, f = gt[1], gt[2], gt[0], gt[4], gt[5], gt[3]
        assert src.transform == (a, b, c, d, e, f)
        for g in grid:
            assert set(_ring(g.polygon_wkt)) == _corners(src.transform, g.window)
            assert ogr.CreateGeometryFromWkt(g.polygon_wkt).IsValid()
    finally:
        src.close()


def test_spec_params_identify_the_grid():
    a = spec_params(TileSpec(size=256, extent=BBox(1, 2, 3, 4, "EPSG:4326")))
    assert a == spec_params(TileSpec(size=256.0, extent=BBox(1.0, 2.0, 3.0, 4.0, "EPSG:4326")))
    assert a != spec_params(TileSpec(size=256, extent=BBox(1, 2, 3, 5, "EPSG:4326")))
    assert spec_params(TileSpec(extent=Polygons(["POLYGON ((0 0, 1 0, 1 1, 0 0))"]))) != \
        spec_params(TileSpec(extent=Polygons(["POLYGON ((0 0, 2 0, 1 1, 0 0))"])))
    assert spec_params(TileSpec(edge="pad")) != spec_params(TileSpec())


# --- the grid as arrays: pinned against the list-of-tiles implementation it replaced ----------------------------

def _buildings(data_dir, rel):
    ds = ogr.Open(str(data_dir / rel))
    lyr = ds.GetLayer(0)
    return [f.GetGeometryRef().ExportToWkt() for f in lyr], lyr.GetSpatialRef().ExportToWkt()


# (raster, spec, tile count, sha256 of "row col window polygon_wkt" lines) as the former make_grid (one Tile with
# its WKT per tile, commit e760e2f) gave them
PINNED = {
    "z21_224": ("z21", dict(size=224), 140, "bd40d4b31936a2647f8f23a938fdbca3d53be6c9bf54794352601cb4e2384e9c"),
    "z21_100_pad": ("z21", dict(size=100, edge="pad"), 651,
                    "d4f5eae4a399ea66ed40e9c9bf1b99f5956ee3da66f647e3790db3d198c3de15"),
    "z21_100_drop": ("z21", dict(size=100, edge="drop"), 600,
                     "ffc4e96353d34343093b24fcbdd07a22228a0852fa80bd75e06a9b2c629314cb"),
    "z21_256_ov25": ("z21", dict(size=256, overlap=0.25), 176,
                     "ce3454668d72263cb46d922393c9f4961ddedc86d939dd3f8e9320326bd786f2"),
    "z21_20m": ("z21", dict(size=20, unit="m"), 96, "77fa720e9ba3b218c9e341bf37dcf316667315b31ceb1b4b777e0d222130e775"),
    "z21_7m_ov": ("z21", dict(size=7.5, unit="m", overlap=0.3, edge="pad"), 1276,
                  "5dd1bc20f07503354304429edffefd172125686676ee99c26630774fcfbb2c15"),
    "z21_buildings": ("z21", dict(size=64, extent="buildings"), 741,
                      "6f4013463cca6de7a28f5186c9edc54bb25ebdc9043674da1be0c83ad2b1d2a7"),
    "z21_bbox4326": ("z21", dict(size=128, extent=BBox(32.59405, 0.35035, 32.59521, 0.35102, "EPSG:4326")), 126,
                     "27c9b14f302fe88da35d0df447517b353efba8d847d1db6b3c370d5f8e026a5e"),
    "z20_bbox3857": ("z20", dict(size=96, overlap=0.5, extent=BBox(3628395, 39020, 3628470, 39090, "EPSG:3857")),
                     144, "10d0b6c322bf3bbae5e3d2288c2a396d4fd897619cf8179c8bf8520627e9e911"),
    "landsat_100": ("landsat", dict(size=100), 64, "38adfba33f924de6516d83365e998be7d25e189fdd485c154be681427c4691a5"),
    "landsat_3km_pad": ("landsat", dict(size=3000, unit="m", edge="pad"), 5760,
                        "14be6522da5d5396479b50e3215d0fe92d6a37c9636b2bf46584253162285fae"),
    "shade_64_ov": ("shade", dict(size=64, overlap=0.1, edge="drop"), 289,
                    "27085cf655d54037425339d5e003fae741b09cb61c2023fc3b4ac4ec629e3544"),
    "pan_100_spacenet": ("pan", dict(size=100, extent="spacenet"), 45,
                         "a8d2595a82d3935848bec1d9dcb96288bd06901db868b71e398b8c717671ec72"),
    "pan_37_spacenet_ov": ("pan", dict(size=37, overlap=0.2, edge="pad", extent="spacenet"), 185,
                           "325f25352ae0ca5826718701dd0fe84ab63f105b302ec2fcbf6b5edf4c0df753"),
}
def _digest(grid) -> str:
    import hashlib

    h = hashlib.sha256()
    for t in grid:
        h.update(f"{t.row} {t.col} {tuple(t.window)} {t.polygon_wkt}\n".encode())
    return h.hexdigest()


@pytest.fixture(scope="module")
def pin_rasters(data_dir):
    paths = {"z21": "orthomosaic/kampala_oam_z21_mosaic_3072x2048.tif",
             "z20": "orthomosaic/kampala_oam_z20_mosaic_1536x1024.tif",
             "landsat": "geotiff/rasterio_RGB.byte.tif", "shade": "geotiff/rasterio_shade.tif",
             "pan": "geotiff/solaris_sample_geotiff.tif"}
    srcs = {k: open_raster(data_dir / v) for k, v in paths.items()}
    yield srcs
    for s in srcs.values():
        s.close()


@pytest.mark.parametrize("case", sorted(PINNED))
def test_grid_arrays_give_the_former_tiles_and_polygons(case, pin_rasters, data_dir):
    raster, spec, count, digest = PINNED[case]
    spec = dict(spec)
    if spec.get("extent") == "buildings":
        wkts, _ = _buildings(data_dir, "orthomosaic/kampala_buildings_z21_chips.geojson")
        spec["extent"] = Polygons(wkts, "EPSG:4326")
    elif spec.get("extent") == "spacenet":
        spec["extent"] = Polygons(*_buildings(data_dir, "geotiff/solaris_geotiff_labels.geojson"))
    grid = make_grid(pin_rasters[raster], TileSpec(**spec))
    assert len(grid) == count
    assert _digest(grid) == digest


def test_grid_arrays_on_a_rotated_geotransform(tmp_path, rasters):
    from osgeo import gdal

    vrt = str(tmp_path / "rot.vrt")
    gdal.Translate(vrt, rasters["landsat"].path, format="VRT")
    ds = gdal.Open(vrt, gdal.GA_Update)
    ds.SetGeoTransform((101985.0, 260.0, 150.0, 2826915.0, 150.0, -260.0))
    ds = None
    tri = "POLYGON ((180000 2750000, 260000 2700000, 200000 2650000, 180000 2750000))"
    src = open_raster(vrt)
    try:
        for spec, count, digest in (
                (dict(size=128), 42, "243a7ef3a995fa150f405070652f91d5c947a62b22b9500a6e25995edace424a"),
                (dict(size=50, overlap=0.3, edge="pad"), 483,
                 "884e4fbbaf38c20722a502722779d7e6fdbb6c4d1bbc4d81912c1b80b2b4371e"),
                (dict(size=40, extent=Polygons([tri])), 38,
                 "c7b2bda0b2c488cdabdd8532a7fbf2057f3512318296fd6829480a7b67ebd658")):
            grid = make_grid(src, TileSpec(**spec))
            assert (len(grid), _digest(grid)) == (count, digest)
    finally:
        src.close()


def test_grid_is_a_sequence_of_tiles(pin_rasters, data_dir):
    import numpy as np

    from core.geodata.tiles import Tile, TileGrid

    src = pin_rasters["z21"]
    wkts, _ = _buildings(data_dir, "orthomosaic/kampala_buildings_z21_chips.geojson")
    for spec in (TileSpec(size=100, edge="pad"), TileSpec(size=64, extent=Polygons(wkts, "EPSG:4326"))):
        grid = make_grid(src, spec)
        assert isinstance(grid, TileGrid)
        tiles = list(grid)
        assert len(tiles) == len(grid) and all(isinstance(t, Tile) for t in tiles)
        assert grid[0] == tiles[0] and grid[-1] == tiles[-1] and grid[5:9] == tiles[5:9] and grid == tiles
        with pytest.raises(IndexError):
            grid[len(grid)]
        rows, cols = grid.rows_cols()
        assert [(t.row, t.col) for t in tiles] == list(zip(rows.tolist(), cols.tolist(), strict=True))
        assert [t.window for t in tiles] == [tuple(w) for w in grid.windows().tolist()]
        idx = np.array([3, 1, len(grid) - 1])
        assert [tuple(w) for w in grid.windows(idx).tolist()] == [tiles[i].window for i in idx]
        # the writers' WKB: the very coordinates of the WKT, ring for ring
        assert grid.polygon_wkb(idx) == [ogr.CreateGeometryFromWkt(tiles[i].polygon_wkt).ExportToWkb() for i in idx]
    empty = make_grid(src, TileSpec(size=256, extent=BBox(10.0, 10.0, 10.1, 10.1, "EPSG:4326")))
    assert len(empty) == 0 and empty == [] and list(empty) == []


def test_a_ten_million_tile_grid_holds_arrays_not_tiles():
    """The plan of a huge raster keeps the grid's offsets, not one object per tile."""
    from types import SimpleNamespace

    src = SimpleNamespace(name="huge", width=708_400, height=708_400, transform=(0.5, 0.0, 0.0, 0.0, -0.5, 0.0),
                          crs_wkt="")
    grid = make_grid(src, TileSpec(size=224))
    assert len(grid) == 3163 * 3163  # 3162 steps and the shifted last tile
    held = sum(a.nbytes for a in (grid.col_offsets, grid.row_offsets, grid.col_index, grid.row_index))
    assert grid.keep is None and held < 200_000
    last = grid[-1]
    assert (last.row, last.col, last.window) == (3162, 3162, (708_400 - 224, 708_400 - 224, 224, 224))
