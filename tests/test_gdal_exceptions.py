"""Core inside QGIS 3.40 and later: QGIS's Processing framework turns GDAL's Python exceptions on for the
whole process (gdal/ogr/osr.UseExceptions()), where core's checks read return values. Bad input must still
be a RemoteClipError that says what to do, and the caller's mode must be left as it was.

Runs on every leg of the QGIS matrix: on 3.22 (GDAL 3.6) the mode is switched here by hand, on 3.40/3.44
(GDAL 3.10/3.13) Processing has switched it already when the QGIS tests ran first.
"""

from __future__ import annotations

import pytest

from core.errors import InvalidInput, gdal_return_codes
from core.geodata.crs import srs_from
from core.geodata.raster import open_raster
from core.geodata.tiles import BBox, Polygons, TileSpec, make_grid
from core.geodata.vectors import Field, write_vector


def _modes() -> list[int]:
    from osgeo import gdal, ogr, osr

    return [m.GetUseExceptions() for m in (gdal, ogr, osr)]


@pytest.fixture
def exceptions_on():
    """GDAL, OGR and OSR raise Python exceptions, as inside QGIS 3.40+; restored afterwards."""
    from osgeo import gdal, ogr, osr

    before = _modes()
    for m in (gdal, ogr, osr):
        m.UseExceptions()
    assert _modes() == [1, 1, 1]
    yield
    for m, was in reversed(list(zip((gdal, ogr, osr), before, strict=True))):   # GDAL < 3.7: last on, first off
        if not was:
            m.DontUseExceptions()


@pytest.fixture(scope="module")
def mosaic(data_dir):
    src = open_raster(str(data_dir / "orthomosaic" / "kampala_oam_z20_mosaic_1536x1024.tif"))
    yield src
    src.close()


def test_the_caller_sees_raw_gdal_errors_without_the_guard(exceptions_on):
    """What core met inside QGIS 3.40+ before the guard: the failure a RuntimeError, not a return code."""
    from osgeo import ogr, osr

    with pytest.raises(RuntimeError):
        osr.SpatialReference().SetFromUserInput("EPSG:999999")
    with pytest.raises(RuntimeError):
        ogr.CreateGeometryFromWkt("POLYGON ((0 0, 1")
    with gdal_return_codes():
        assert osr.SpatialReference().SetFromUserInput("EPSG:999999") != 0
        assert ogr.CreateGeometryFromWkt("POLYGON ((0 0, 1") is None
    assert _modes() == [1, 1, 1], "the caller's mode must come back"


def test_a_crs_gdal_does_not_know(exceptions_on, mosaic):
    with pytest.raises(InvalidInput) as err:
        srs_from("EPSG:999999")
    assert "'EPSG:999999'" in err.value.problem and err.value.fix
    with pytest.raises(InvalidInput) as err:
        make_grid(mosaic, TileSpec(size=256, extent=BBox(0, 0, 1, 1, "EPSG:999999")))
    assert err.value.param == "extent" and "'EPSG:999999'" in err.value.problem
    assert _modes() == [1, 1, 1]


def test_polygons_that_are_not_valid_wkt(exceptions_on, mosaic):
    with pytest.raises(InvalidInput) as err:
        make_grid(mosaic, TileSpec(size=256, extent=Polygons(["POLYGON ((1 2, 3"])))
    assert err.value.param == "extent" and "'POLYGON ((1 2, 3'" in err.value.problem
    assert _modes() == [1, 1, 1]


def test_tiles_in_metres_on_a_good_raster(exceptions_on, mosaic):
    grid = make_grid(mosaic, TileSpec(size=30, unit="m"))
    assert len(grid) > 1 and _modes() == [1, 1, 1]


def test_a_record_with_a_broken_geometry_leaves_the_old_file(exceptions_on, tmp_path):
    crs = srs_from("EPSG:32618").ExportToWkt()
    fields = [Field("label", "str")]
    good = [{"label": "a", "geometry": "POLYGON ((0 0, 10 0, 10 10, 0 10, 0 0))"}]
    out = tmp_path / "o.gpkg"
    write_vector(out, good, fields, crs)
    before = out.read_bytes()
    bad = [*good, {"label": "b", "geometry": "POLYGON ((0 0, 1"}]
    with pytest.raises(InvalidInput) as err:
        write_vector(out, bad, fields, crs, overwrite=True)
    assert "Record 1 " in err.value.problem and err.value.fix   # the broken record (the second) is named
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["o.gpkg"]
    assert _modes() == [1, 1, 1]


def test_the_command_line_polygons_file_that_is_not_a_vector(exceptions_on, tmp_path, capsys):
    from core.cli import main

    junk = tmp_path / "junk.geojson"
    junk.write_text("not json at all", encoding="utf-8")
    assert main(["label", str(tmp_path / "x.tif"), "--labels", "a,b", "--polygons", str(junk)]) == 2
    err = capsys.readouterr().err
    assert "--polygons" in err and "Traceback" not in err and "RuntimeError" not in err
