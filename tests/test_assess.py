"""Accuracy and areas (core.assess): Olofsson et al. 2014's worked example, the map's areas measured once
where tiles overlap, and a reproducible stratified sample inside each stratum."""

import json
import math

import numpy as np
import pytest
from tile_maps import X0, Y0, write_tile_map

from core import assess
from core.errors import InvalidInput

# Olofsson et al. 2014, section 5 (their tables 8 and 9): map pixels of 30 m and the sample counts
CLASSES = ["deforestation", "forest gain", "stable forest", "stable non-forest"]
PIXELS = np.array([200_000, 150_000, 3_200_000, 6_450_000], float)
COUNTS = [[66, 0, 5, 4], [0, 55, 8, 12], [1, 0, 153, 11], [2, 1, 9, 313]]


def test_olofsson_worked_example():
    r = assess.estimate(COUNTS, PIXELS * 900.0, CLASSES)
    d = r["classes"]["deforestation"]
    assert d["area"]["estimate"] / 1e4 == pytest.approx(21_158, abs=1)
    assert d["area"]["ci95"] / 1e4 == pytest.approx(6_158, abs=1)
    assert d["users_accuracy"]["estimate"] == pytest.approx(0.88)
    assert d["users_accuracy"]["ci95"] == pytest.approx(0.07, abs=0.005)
    assert d["producers_accuracy"]["estimate"] == pytest.approx(0.75, abs=0.005)
    assert d["producers_accuracy"]["ci95"] == pytest.approx(0.21, abs=0.005)
    assert r["overall_accuracy"]["estimate"] == pytest.approx(0.95, abs=0.005)
    assert r["overall_accuracy"]["ci95"] == pytest.approx(0.02, abs=0.005)
    # the other published figures: forest gain 11,686 +/- 3,756 ha, stable forest 285,770 +/- 15,510 ha,
    # stable non-forest 581,386 +/- 16,282 ha (table 9)
    for name, (a, ci) in {"forest gain": (11_686, 3_756), "stable forest": (285_770, 15_510),
                          "stable non-forest": (581_386, 16_282)}.items():
        assert r["classes"][name]["area"]["estimate"] / 1e4 == pytest.approx(a, abs=1)
        assert r["classes"][name]["area"]["ci95"] / 1e4 == pytest.approx(ci, abs=1)
    areas = sum(c["area"]["estimate"] for c in r["classes"].values())
    assert areas == pytest.approx(PIXELS.sum() * 900.0)
    assert r["error_matrix"]["counts"] == COUNTS


def test_stratum_of_one_point_has_no_variance_but_estimates():
    counts = [[3, 1], [0, 1]]
    r = assess.estimate(counts, [600.0, 400.0], ["a", "b"])
    assert r["no_variance"] == ["b"]
    assert r["overall_accuracy"]["estimate"] == pytest.approx(0.6 * 0.75 + 0.4 * 1.0)
    assert r["overall_accuracy"]["ci95"] is None
    assert r["classes"]["b"]["users_accuracy"]["ci95"] is None
    assert r["classes"]["a"]["users_accuracy"]["ci95"] == pytest.approx(1.96 * math.sqrt(0.75 * 0.25 / 3))


def test_a_class_only_in_the_reference_gets_area_but_no_users_accuracy():
    # map: a and b; the reference also finds c inside stratum a
    r = assess.estimate([[6, 0, 2], [0, 4, 0], [0, 0, 0]], [800.0, 200.0, 0.0], ["a", "b", "c"])
    c = r["classes"]["c"]
    assert c["map_area"] == 0 and c["users_accuracy"]["estimate"] is None
    assert c["area"]["estimate"] == pytest.approx(800.0 * 2 / 8)
    assert c["producers_accuracy"]["estimate"] == 0.0


def test_an_unsampled_stratum_is_refused():
    with pytest.raises(InvalidInput) as e:
        assess.estimate([[2, 0], [0, 0]], [1.0, 1.0], ["a", "b"])
    assert e.value.param == "reference"


def test_allocation():
    areas = np.array([70.0, 20.0, 10.0])
    assert assess.allocate(areas, per_class=5).tolist() == [5, 5, 5]
    assert assess.allocate(areas, total=11).tolist() == [8, 2, 1]          # 7.7, 2.2, 1.1: largest remainder
    assert assess.allocate(areas, total=10, allocation="equal").tolist() == [4, 3, 3]
    with pytest.raises(InvalidInput) as e:
        assess.allocate(areas, total=2)
    assert e.value.param == "total"


# ------------------------------------------------------------------ a constructed map: 4 x 4 tiles of 100 m
# at overlap 0.5 (step 50 m) in UTM 36N; columns 0-1 are "a", 2-3 "b"



@pytest.fixture()
def tile_map(tmp_path):
    return write_tile_map(tmp_path / "map.gpkg")


def _points(path, layer=None):
    from osgeo import ogr

    ds = ogr.Open(str(path))
    lyr = ds.GetLayerByName(layer) if layer else ds.GetLayer(0)
    return [(f.GetGeometryRef().GetX(), f.GetGeometryRef().GetY(), f.GetField("map_class"), f.GetField("sample_id"))
            for f in lyr], lyr.GetSpatialRef().GetAuthorityCode(None)


def test_map_areas_count_overlapping_tiles_once(tile_map):
    strata = assess.read_map(tile_map, "label")
    assert strata.classes == ["a", "b"]
    # the union is 250 m x 250 m; "a" owns x in [0, 100) (the later tile wins the overlap), "b" [100, 250)
    assert strata.areas().tolist() == pytest.approx([25_000, 37_500], rel=3e-3)


def test_sample_is_stratified_reproducible_and_inside_its_class(tile_map, tmp_path, capsys):
    from core.cli import main

    out = tmp_path / "ref.gpkg"
    assert main(["sample", str(tile_map), "--per-class", "30", "--seed", "7", "-o", str(out)]) == 0
    pts, epsg = _points(out)
    assert epsg == "32636" and len(pts) == 60
    assert sorted(p[2] for p in pts).count("a") == 30
    for x, y, cls, _ in pts:
        assert X0 <= x <= X0 + 250 and Y0 - 250 <= y <= Y0
        assert cls == ("a" if x < X0 + 100 else "b")
    again = tmp_path / "again.gpkg"
    assert main(["sample", str(tile_map), "--per-class", "30", "--seed", "7", "-o", str(again)]) == 0
    assert _points(again)[0] == pts
    other = tmp_path / "other.gpkg"
    assert main(["sample", str(tile_map), "--per-class", "30", "--seed", "8", "-o", str(other)]) == 0
    assert _points(other)[0] != pts
    # proportional: 10 points split 40 % / 60 % by area
    prop = tmp_path / "prop.gpkg"
    assert main(["sample", str(tile_map), "--total", "10", "-o", str(prop)]) == 0
    assert sorted(p[2] for p in _points(prop)[0]) == ["a"] * 4 + ["b"] * 6


def _label(path, truth, skip=()):
    from osgeo import ogr

    ds = ogr.Open(str(path), 1)
    lyr = ds.GetLayer(0)
    for f in lyr:
        if f.GetField("sample_id") in skip:
            continue
        f.SetField("reference", truth(f.GetGeometryRef().GetX()))
        lyr.SetFeature(f)
    ds = None


def test_assess_from_labelled_points(tile_map, tmp_path, capsys):
    from core.cli import main

    ref = tmp_path / "ref.gpkg"
    assert main(["sample", str(tile_map), "--per-class", "40", "--seed", "3", "-o", str(ref)]) == 0
    # the truth: "a" ends at 80 m, not 100 m: a fifth of the mapped "a" is really "b"
    _label(ref, lambda x: "a" if x < X0 + 80 else "b", skip={1, 2})
    pts, _ = _points(ref)
    report_path = tmp_path / "report.json"
    assert main(["assess", str(tile_map), "--reference", str(ref), "-o", str(report_path),
                 "--csv", str(tmp_path / "t.csv")]) == 0
    report = json.loads(report_path.read_text())
    kept = [p for p in pts if p[3] not in (1, 2)]
    counts = [[sum(1 for x, _, c, _ in kept if c == m and ("a" if x < X0 + 80 else "b") == r) for r in "ab"]
              for m in "ab"]
    assert report["error_matrix"]["counts"] == counts and counts[1][0] == 0
    assert report["n"]["left_out"]["no_reference"] == 2 and report["n"]["used"] == 78
    a = report["classes"]["a"]
    assert a["map_area"] == pytest.approx(25_000, rel=3e-3)
    # the estimate is the map area times the user's accuracy here ("b" holds no "a"), and its CI covers 20,000
    assert a["area"]["estimate"] == pytest.approx(a["map_area"] * counts[0][0] / sum(counts[0]), rel=3e-3)
    assert abs(a["area"]["estimate"] - 20_000) <= a["area"]["ci95"]
    assert a["producers_accuracy"]["estimate"] == pytest.approx(1.0)
    assert set(report) >= {"overall_accuracy", "classes", "error_matrix", "n"}
    assert "overall accuracy" in capsys.readouterr().out
    assert (tmp_path / "t.csv").read_text().splitlines()[0].startswith("class,map_area_m2")


def test_assess_bad_inputs(tile_map, tmp_path):
    ref = tmp_path / "ref.gpkg"
    from core.cli import main

    assert main(["sample", str(tile_map), "--per-class", "3", "-o", str(ref)]) == 0
    with pytest.raises(InvalidInput) as e:                 # nobody labelled anything yet
        assess.assess(tile_map, ref)
    assert e.value.param == "reference_field"
    with pytest.raises(InvalidInput) as e:
        assess.assess(tile_map, ref, reference_field="truth")
    assert e.value.param == "reference_field"
    with pytest.raises(InvalidInput) as e:
        assess.read_map(tile_map, "class")
    assert e.value.param == "map_field"
    with pytest.raises(InvalidInput) as e:                 # 25 m cells: "a" has 40, fewer than asked
        assess.sample_points(assess.read_map(tile_map, max_cells=100), np.array([41, 10]))
    assert e.value.param == "per_class"
    # a class only in the reference is listed and kept
    _label(ref, lambda x: "water" if x < X0 + 20 else "a" if x < X0 + 100 else "b")
    report = assess.assess(tile_map, ref)
    assert report["error_matrix"]["classes"][:2] == ["a", "b"]
    # the sample never replaces the map's layer, with or without --overwrite; a new layer beside it is fine
    import argparse

    from core.assess_cli import run_sample
    from core.errors import OutputIsInput

    args = dict(map=str(tile_map), map_field="label", layer=None, per_class=3, total=None, allocation="proportional",
                seed=0, reference_field="reference", output=str(tile_map), out_layer="labels", overwrite=True)
    with pytest.raises(OutputIsInput) as e:
        run_sample(argparse.Namespace(**args))
    assert e.value.path == str(tile_map)
    assert assess.read_map(tile_map).areas().sum() == pytest.approx(62_500, rel=3e-3)
    assert run_sample(argparse.Namespace(**{**args, "out_layer": "reference_sample"})) == 0
    assert len(_points(tile_map, "reference_sample")[0]) == 6


def test_reference_points_in_another_crs_are_transformed(tile_map, tmp_path):
    """The same labelled points saved in EPSG:4326 give the same error matrix as in the map's UTM."""
    from osgeo import gdal

    from core.cli import main

    ref = tmp_path / "ref.gpkg"
    assert main(["sample", str(tile_map), "--per-class", "15", "--seed", "4", "-o", str(ref)]) == 0
    _label(ref, lambda x: "a" if x < X0 + 80 else "b")
    wgs = tmp_path / "ref_4326.gpkg"
    assert gdal.VectorTranslate(str(wgs), str(ref), dstSRS="EPSG:4326", reproject=True) is not None
    assert _points(wgs)[1] == "4326"
    utm, lonlat = assess.assess(tile_map, ref), assess.assess(tile_map, wgs)
    assert lonlat["error_matrix"]["counts"] == utm["error_matrix"]["counts"]
    assert lonlat["n"]["used"] == 30 and lonlat["n"]["left_out"]["outside_map"] == 0


def test_a_labelled_reference_sample_is_never_replaced(tile_map, tmp_path, capsys):
    """--overwrite (and Processing, which always overwrites) replaces an unlabelled sample, but never one in
    which the analyst has typed reference classes: that is their work, not an output."""
    from osgeo import ogr

    from core.cli import main

    for name in ("ref.gpkg", "ref.shp"):
        out = tmp_path / name
        assert main(["sample", str(tile_map), "--per-class", "5", "--seed", "1", "-o", str(out)]) == 0
        # still empty: a new sample replaces it
        assert main(["sample", str(tile_map), "--per-class", "6", "--seed", "1", "-o", str(out), "--overwrite"]) == 0
        assert len(_points(out)[0]) == 12
        ds = ogr.Open(str(out), 1)
        lyr = ds.GetLayer(0)
        f = lyr.GetNextFeature()   # the last point labelled, as an analyst would
        f.SetField("reference", "a")
        assert lyr.SetFeature(f) == 0
        ds = lyr = f = None
        before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.stem == "ref"}
        capsys.readouterr()
        assert main(["sample", str(tile_map), "--per-class", "5", "--seed", "2", "-o", str(out), "--overwrite"]) == 2
        assert str(out) in capsys.readouterr().err   # the file named
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.stem == "ref"} == before
        for p in list(tmp_path.iterdir()):
            if p.stem == "ref":
                p.unlink()
    from core.assess import write_sample
    from core.errors import OutputExists

    out = tmp_path / "kept.gpkg"
    write_sample(tile_map, out, per_class=3, seed=0)
    ds = ogr.Open(str(out), 1)
    lyr = ds.GetLayer(0)
    f = lyr.GetNextFeature()
    f.SetField("reference", "b")
    assert lyr.SetFeature(f) == 0
    ds = lyr = f = None
    with pytest.raises(OutputExists) as err:
        write_sample(tile_map, out, per_class=3, seed=0, overwrite=True)
    assert err.value.path == str(out)
