"""core.geodata.crs: the one place core reads, names, compares and transforms coordinate reference systems
(the helpers were spread over tiles, the pipeline, vectors, summary, assess, change and the plugin)."""

from __future__ import annotations

import pytest
from osgeo import ogr

from core.errors import InvalidInput
from core.geodata.crs import (
    crs_name,
    crs_text,
    equal_area_at,
    require_crs,
    same_crs,
    srs_from,
    to_lonlat,
    transformation,
)
from core.summary import summarize


def test_a_crs_is_read_as_the_user_gives_it():
    assert crs_text(32636) == "EPSG:32636"
    assert crs_text(" 4326 ") == "EPSG:4326"
    assert crs_text(" ESRI:54009\n") == "ESRI:54009"
    assert crs_name(srs_from("32636").ExportToWkt()) == "EPSG:32636"
    assert same_crs(srs_from(3857).ExportToWkt(), srs_from("EPSG:3857").ExportToWkt())
    assert not same_crs(srs_from(3857).ExportToWkt(), srs_from(4326).ExportToWkt())
    for bad in ("EPSG:0", "  ", "not a crs"):
        with pytest.raises(InvalidInput):
            srs_from(bad, "output CRS")


def test_axes_are_easting_first_whatever_the_authority_says():
    # EPSG:4326 is latitude-first for its authority; core always gives longitude first: 33 E, 0.3 N lies on
    # UTM 36N's central meridian (x = 500 km)
    x, y, _ = transformation(srs_from(4326), srs_from(32636)).TransformPoint(33.0, 0.3)
    assert abs(x - 500_000) < 1 and 30_000 < y < 36_000
    lon, lat = to_lonlat(srs_from(32636), x, y)
    assert (round(lon, 6), round(lat, 6)) == (33.0, 0.3)


def _square(cx, cy, half):
    return (f"POLYGON(({cx - half} {cy - half},{cx + half} {cy - half},{cx + half} {cy + half},"
            f"{cx - half} {cy + half},{cx - half} {cy - half}))")


def test_areas_are_ground_areas_in_the_one_equal_area_projection():
    # 2 km x 2 km of Web Mercator "metres" at 60 N is 1 km x 1 km on the ground (1 / cos 60 = 2)
    merc = srs_from(3857)
    cx, cy, _ = transformation(srs_from(4326), merc).TransformPoint(25.0, 60.0)
    wkt = _square(cx, cy, 1000)
    g = ogr.CreateGeometryFromWkt(wkt)
    g.Transform(equal_area_at(merc, *to_lonlat(merc, cx, cy)))
    assert g.GetArea() == pytest.approx(1e6, rel=0.01)
    # the summary measures with it (not in the raster's CRS: 4e6)
    (row,) = summarize([{"label": "a", "geometry": wkt}], "label", merc.ExportToWkt())
    assert row.area_m2 == pytest.approx(g.GetArea(), rel=1e-9)


def test_a_raster_without_a_crs_is_refused():
    class Source:
        name, crs_wkt = "plain.png", ""

    with pytest.raises(InvalidInput):
        require_crs(Source())
    Source.crs_wkt = srs_from(4326).ExportToWkt()
    assert require_crs(Source()) is None


@pytest.mark.qgis
def test_the_plugin_reads_an_extent_crs_as_core_does(rc):
    """layer_source turns a core extent's CRS into QGIS's through crs_text: "4326" is EPSG:4326 there too."""
    from remoteclip_qgis.layer_source import _qgs_crs

    for value in (4326, "4326", " EPSG:4326 "):
        assert _qgs_crs(value).authid() == "EPSG:4326", value
    assert _qgs_crs(srs_from(32636).ExportToWkt()).isValid()
