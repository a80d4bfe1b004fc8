"""core.summary: tiles and ground area per class, measured on the ground whatever the raster's CRS, and
overlapping tiles counted once."""

from __future__ import annotations

import pytest
from osgeo import ogr, osr

from core.geodata.raster import open_raster
from core.geodata.tiles import make_grid
from core.pipeline import Job, LabelTask, RunOptions, TileSpec, run_job
from core.summary import format_area, summarize, summary_field

KAMPALA = "orthomosaic/kampala_oam_z20_mosaic_1536x1024.tif"
UTM = "geotiff/rasterio_RGB.byte.tif"


def _grid(path, size, **spec):
    src = open_raster(str(path))
    try:
        return make_grid(src, TileSpec(size=size, **spec)), src.crs_wkt
    finally:
        src.close()


def _area_in(epsg: int, wkts: list[str], crs_wkt: str) -> float:
    src = osr.SpatialReference()
    src.ImportFromWkt(crs_wkt)
    src.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    dst = osr.SpatialReference()
    dst.ImportFromEPSG(epsg)
    dst.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    ct = osr.CoordinateTransformation(src, dst)
    total = 0.0
    for wkt in wkts:
        g = ogr.CreateGeometryFromWkt(wkt)
        g.Transform(ct)
        total += g.GetArea()
    return total


def test_areas_are_ground_square_metres_on_a_geographic_raster(data_dir):
    """The Kampala mosaic is in degrees: its tiles' area is compared with the same tiles in UTM 36N."""
    tiles, crs = _grid(data_dir / KAMPALA, 256)
    records = [{"label": "buildings" if t.col < 4 else "grass", "geometry": t.polygon_wkt} for t in tiles]
    rows = summarize(records, "label", crs)
    assert [(r.value, r.n_tiles) for r in rows] == [("buildings", 16), ("grass", 8)]
    for r in rows:
        utm = _area_in(32636, [x["geometry"] for x in records if x["label"] == r.value], crs)
        assert r.area_m2 == pytest.approx(utm, rel=2e-3)
    assert sum(r.area_m2 for r in rows) == pytest.approx(_area_in(32636, [t.polygon_wkt for t in tiles], crs),
                                                         rel=2e-3)


def test_overlapping_tiles_are_counted_once(data_dir):
    """100 m tiles of a UTM scene with 50% overlap: the union's area is the covered ground, not the sum."""
    tiles, crs = _grid(data_dir / UTM, 20000, unit="m", overlap=0.5)
    records = [{"selected": 1, "geometry": t.polygon_wkt} for t in tiles]
    (row,) = summarize(records, "selected", crs)
    union = ogr.Geometry(ogr.wkbMultiPolygon)
    for t in tiles:
        union.AddGeometry(ogr.CreateGeometryFromWkt(t.polygon_wkt))
    covered = union.UnionCascaded().GetArea()   # UTM metres (scale factor ~0.9996 here)
    assert row.n_tiles == len(tiles) and row.area_m2 == pytest.approx(covered, rel=2e-3)
    assert row.area_m2 < 0.5 * sum(ogr.CreateGeometryFromWkt(t.polygon_wkt).GetArea() for t in tiles)


def test_a_run_is_summarised_by_its_field(data_dir, tiny_bundle):
    res = run_job(Job(raster=str(data_dir / KAMPALA), task=LabelTask(["buildings", "trees"]), tiles=TileSpec(512),
                      run=RunOptions(model=str(tiny_bundle), cache_dir="")))
    assert summary_field(res.records) == "label"
    rows = summarize(res.records, "label", res.crs_wkt)
    assert sum(r.n_tiles for r in rows) == res.n_tiles == 6
    assert [r.n_tiles for r in rows] == sorted((r.n_tiles for r in rows), reverse=True)
    assert summary_field([{"row": 0, "geometry": "POLYGON EMPTY"}]) is None


def test_areas_read_in_the_unit_that_fits():
    assert format_area(512.4) == "512 m²" and format_area(65_536) == "6.55 ha"
    assert format_area(2_500_000) == "2.50 km²" and format_area(None) == "?"
