"""Outputs never destroy an analyst's files (core.geodata.vectors, core.pipeline, the command line).

A GeoPackage keeps its other layers; the input raster is never the output, whatever its spelling; the
user's own files beside a Shapefile are left alone; an existing output needs --overwrite; a killed or
failed write leaves the old file and its temporaries are cleaned at the next run; an output that
cannot be written is refused before the model loads or a pixel is read.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from osgeo import gdal, ogr

from core.cli import main
from core.errors import InvalidInput, OutputExists, OutputIsInput, OutputRefused, WriteFailed
from core.geodata.vectors import Field, check_output, input_files, output_exists, write_vector
from core.pipeline import Job, LabelTask, RunOptions, TileSpec, run_job

ROOT = Path(__file__).resolve().parents[1]
LABELS = "buildings,trees,road"


@pytest.fixture(scope="module")
def mosaic(data_dir):
    return str(data_dir / "orthomosaic" / "kampala_oam_z20_mosaic_1536x1024.tif")


@pytest.fixture
def user_gpkg(data_dir, tmp_path):
    """An analyst's GeoPackage: the real Kampala building footprints as layer 'buildings' and a second
    layer 'survey' (points with attributes), plus its snapshot to compare with."""
    path = tmp_path / "project.gpkg"
    gdal.VectorTranslate(str(path), str(data_dir / "orthomosaic" / "kampala_buildings_z21_chips.geojson"),
                         options=gdal.VectorTranslateOptions(format="GPKG", layerName="buildings"))
    ds = ogr.Open(str(path), 1)
    src = ds.GetLayerByName("buildings")
    lyr = ds.CreateLayer("survey", src.GetSpatialRef(), ogr.wkbPoint)
    lyr.CreateField(ogr.FieldDefn("name", ogr.OFTString))
    lyr.CreateField(ogr.FieldDefn("height", ogr.OFTReal))
    for i, f in enumerate(src):
        if i == 25:
            break
        p = ogr.Feature(lyr.GetLayerDefn())
        p.SetField("name", f"roof {i} · ü")
        p.SetField("height", 3.5 + i)
        p.SetGeometry(f.GetGeometryRef().PointOnSurface())
        lyr.CreateFeature(p)
    ds = None
    return path


def snapshot(path, skip=()) -> dict:
    """Every layer of a vector file: fields, features (attributes + WKB) and the REMOTECLIP metadata."""
    ds = ogr.Open(str(path))
    assert ds is not None, path
    out = {}
    for i in range(ds.GetLayerCount()):
        lyr = ds.GetLayer(i)
        if lyr.GetName() in skip:
            continue
        defn = lyr.GetLayerDefn()
        names = [defn.GetFieldDefn(j).GetName() for j in range(defn.GetFieldCount())]
        feats = [(f.GetFID(), [f.GetField(n) for n in names], bytes(f.GetGeometryRef().ExportToWkb()))
                 for f in lyr]
        out[lyr.GetName()] = (names, feats, lyr.GetMetadataItem("REMOTECLIP"))
    return out


def cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    got = capsys.readouterr()
    return rc, got.out, got.err


def one_line_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("remoteclip: error:") and "Traceback" not in err, err
    return lines[0]


def label_job(raster, bundle, output, cache_dir="", **kw) -> Job:
    return Job(raster=raster, task=LabelTask(LABELS.split(",")), tiles=TileSpec(size=512),
               run=RunOptions(model=str(bundle), cache_dir=cache_dir), output=str(output), **kw)


# ------------------------------------------------------------------------------- GeoPackage layers

def test_other_layers_of_a_geopackage_survive(user_gpkg, mosaic, tiny_bundle, capsys):
    before = snapshot(user_gpkg)
    assert set(before) == {"buildings", "survey"} and len(before["survey"][1]) == 25
    rc, out, err = cli(capsys, "label", mosaic, "--model", tiny_bundle, "--labels", LABELS, "--tile-size", 512,
                       "--no-cache", "-q", "-o", user_gpkg, "--layer", "labels")
    assert rc == 0, err   # a new layer in an existing GeoPackage needs no --overwrite
    after = snapshot(user_gpkg)
    assert {k: after[k] for k in before} == before
    assert len(after["labels"][1]) == 6 and json.loads(after["labels"][2])["layer"] == "labels"

    # the same layer again: refused without --overwrite, the file as it was
    raw = user_gpkg.read_bytes()
    rc, _, err = cli(capsys, "label", mosaic, "--model", tiny_bundle, "--labels", "water,forest", "--tile-size",
                     512, "--no-cache", "-q", "-o", user_gpkg, "--layer", "labels")
    line = one_line_error(err)
    assert rc == 2 and "already has a layer 'labels'" in line and "--overwrite" in line
    assert user_gpkg.read_bytes() == raw

    # with --overwrite only that layer is replaced
    rc, _, err = cli(capsys, "label", mosaic, "--model", tiny_bundle, "--labels", "water,forest", "--tile-size",
                     512, "--no-cache", "-q", "-o", user_gpkg, "--layer", "labels", "--overwrite")
    assert rc == 0, err
    again = snapshot(user_gpkg)
    assert {k: again[k] for k in before} == before
    assert json.loads(again["labels"][2])["fields"] == {"p_water": "water", "p_forest": "forest"}
    assert sorted(p.name for p in user_gpkg.parent.iterdir()) == ["project.gpkg"]


@pytest.mark.parametrize("name", ["gpkg_contents", "GPKG_Extensions", "gpkg_metadata", "rtree_survey_geom",
                                  "sqlite_sequence"])
def test_system_table_names_are_refused(user_gpkg, mosaic, tiny_bundle, capsys, name):
    raw = user_gpkg.read_bytes()
    rc, _, err = cli(capsys, "label", mosaic, "--model", tiny_bundle, "--labels", LABELS, "--no-cache", "-q",
                     "-o", user_gpkg, "--layer", name, "--overwrite")
    line = one_line_error(err)
    assert rc == 2 and f"'{name}' is reserved" in line and "Fix: Choose another layer name (--layer)" in line
    assert user_gpkg.read_bytes() == raw
    with pytest.raises(InvalidInput) as e:
        write_vector(user_gpkg.parent / "new.gpkg", [], [], "", layer_name=name)
    assert e.value.param == "layer_name" and f"'{name}'" in e.value.problem
    assert not (user_gpkg.parent / "new.gpkg").exists()


def test_a_raster_table_of_that_name_is_not_replaced(user_gpkg, mosaic, tiny_bundle):
    gdal.Translate(str(user_gpkg), mosaic, format="GPKG",
                   creationOptions=["APPEND_SUBDATASET=YES", "RASTER_TABLE=ortho"])
    before = snapshot(user_gpkg)
    with pytest.raises(OutputExists) as e:
        run_job(label_job(mosaic, tiny_bundle, user_gpkg, layer_name="ortho", overwrite=True))
    assert e.value.path == str(user_gpkg) and "'ortho'" in e.value.problem
    assert snapshot(user_gpkg) == before


# --------------------------------------------------------------------------- failed or killed writes

def _tiles(mosaic):
    from core.geodata.raster import open_raster
    from core.geodata.tiles import make_grid

    src = open_raster(mosaic)
    grid = make_grid(src, TileSpec(size=256))
    crs = src.crs_wkt
    src.close()
    recs = [{"row": t.row, "col": t.col, "geometry": t.polygon_wkt} for t in grid]
    return recs, [Field("row", "int"), Field("col", "int")], crs


def test_a_failed_write_leaves_the_old_geopackage(user_gpkg, mosaic):
    recs, fields, crs = _tiles(mosaic)
    write_vector(user_gpkg, recs, fields, crs, layer_name="labels")
    before = snapshot(user_gpkg)
    # the writer raises after it replaced the layer's table and wrote features (a bad last geometry)
    bad = [*recs, {"row": 9, "col": 9, "geometry": "POLYGON ((0 0, 1"}]
    with pytest.raises(InvalidInput) as e:
        write_vector(user_gpkg, bad, fields, crs, layer_name="labels", overwrite=True)
    assert f"Record {len(recs)} " in e.value.problem   # the last record, the bad one
    with pytest.raises(InvalidInput) as e:
        write_vector(user_gpkg, bad, fields, crs, layer_name="other")
    assert f"Record {len(recs)} " in e.value.problem
    assert snapshot(user_gpkg) == before
    assert sorted(p.name for p in user_gpkg.parent.iterdir()) == ["project.gpkg"]


_KILLED_WRITER = r"""
import os, signal, sys
sys.path.insert(0, sys.argv[1])
import core.geodata.vectors as v
from core.geodata.vectors import Field, write_vector

fill = v._fill
def fill_then_die(*args, **kw):   # the features are written, the file not yet complete: the process dies
    fill(*args, **kw)
    os.kill(os.getpid(), signal.SIGKILL)
v._fill = fill_then_die
recs = [{"n": i, "geometry": f"POLYGON (({i} 0, {i + 1} 0, {i + 1} 1, {i} 1, {i} 0))"} for i in range(50)]
write_vector(sys.argv[2], recs, [Field("n", "int")], "", layer_name=sys.argv[3], overwrite=True)
"""


def _killed_write(path, layer="labels") -> int:
    p = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(ROOT), str(path), layer],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr
    return p


def test_a_killed_write_leaves_the_old_file_and_its_temporaries_go_at_the_next_run(user_gpkg, mosaic,
                                                                                   tiny_bundle, capsys):
    folder = user_gpkg.parent
    # into an existing GeoPackage: killed inside its transaction, SQLite rolls it back
    before = snapshot(user_gpkg)
    _killed_write(user_gpkg, "buildings")
    assert snapshot(user_gpkg) == before
    recs, fields, crs = _tiles(mosaic)   # and the next write into it works
    write_vector(user_gpkg, recs, fields, crs, layer_name="labels")
    assert {k: v for k, v in snapshot(user_gpkg).items() if k != "labels"} == before

    # a new GeoPackage: killed with its temporary complete beside it
    _killed_write(folder / "new.gpkg")
    left = [p.name for p in folder.iterdir() if p.name.startswith(".new.tmp-")]
    assert any(n.endswith(".gpkg") for n in left) and not (folder / "new.gpkg").exists(), left
    # someone else's files that only look alike, and a temporary of a process that still runs, stay
    live = folder / f".new.tmp-{os.getppid()}-abcd1234.gpkg"
    keep = [live, folder / ".new.tmp-notes.txt", folder / ".new.tmp-123-short.gpkg", folder / "new.gpkg.txt"]
    for k in keep:
        k.write_text("mine")
    rc, _, err = cli(capsys, "label", mosaic, "--model", tiny_bundle, "--labels", LABELS, "--tile-size", 512,
                     "--no-cache", "-q", "-o", folder / "new.gpkg")
    assert rc == 0, err
    assert [p for p in folder.iterdir() if p.name.startswith(".new.tmp-") and p not in keep] == []
    assert all(k.read_text() == "mine" for k in keep)
    assert len(snapshot(folder / "new.gpkg")["labels"][1]) == 6

    # a new Shapefile: its temporary folder, cleaned by the next write of that output
    _killed_write(folder / "fresh.shp")
    assert [p.is_dir() for p in folder.iterdir() if p.name.startswith(".fresh.tmp-")] == [True]
    recs, fields, crs = _tiles(mosaic)
    write_vector(folder / "fresh.shp", recs, fields, crs)
    assert [p for p in folder.iterdir() if p.name.startswith(".fresh.tmp-")] == []


def test_a_leftover_temporary_of_a_dead_process_is_removed_before_writing(user_gpkg, mosaic):
    folder = user_gpkg.parent
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    pid = int(dead.stdout)
    stale = [folder / f".project.tmp-{pid}-k3y_9abc.gpkg", folder / f".project.tmp-{pid}-k3y_9abc.gpkg-journal"]
    for s in stale:
        s.write_bytes(b"half a GeoPackage")
    (folder / f".project.tmp-{pid}-dir_0000").mkdir()   # a Shapefile's temporary folder
    recs, fields, crs = _tiles(mosaic)
    before = snapshot(user_gpkg)
    check_output(user_gpkg, "labels")
    assert sorted(p.name for p in folder.iterdir()) == ["project.gpkg"]
    write_vector(user_gpkg, recs, fields, crs, layer_name="labels")
    assert {k: v for k, v in snapshot(user_gpkg).items() if k != "labels"} == before


# ------------------------------------------------------------------------------- output == input

@pytest.fixture
def gpkg_raster(mosaic, tmp_path):
    path = tmp_path / "ortho.gpkg"
    gdal.Translate(str(path), mosaic, format="GPKG", creationOptions=["RASTER_TABLE=ortho"])
    return path


@pytest.mark.parametrize("spelling", ["same", "relative", "dot", "symlink", "hardlink", "uri"])
def test_output_equal_to_the_input_is_refused(gpkg_raster, tiny_bundle, tmp_path, monkeypatch, spelling):
    monkeypatch.chdir(tmp_path)
    raster, output = str(gpkg_raster), str(gpkg_raster)
    if spelling == "relative":
        output = "ortho.gpkg"
    elif spelling == "dot":
        raster, output = "./ortho.gpkg", str(tmp_path / "sub" / ".." / "ortho.gpkg")
        (tmp_path / "sub").mkdir()
    elif spelling == "symlink":
        os.symlink(gpkg_raster, tmp_path / "link.gpkg")
        output = "link.gpkg"
    elif spelling == "hardlink":
        os.link(gpkg_raster, tmp_path / "hard.gpkg")
        output = str(tmp_path / "hard.gpkg")
    elif spelling == "uri":
        raster = f"GPKG:{gpkg_raster}:ortho"
    raw = gpkg_raster.read_bytes()
    cache = tmp_path / "cache"
    with pytest.raises(OutputIsInput) as e:
        run_job(label_job(raster, tiny_bundle, output, cache_dir=str(cache), overwrite=True, layer_name="labels"))
    assert e.value.path == output
    assert gpkg_raster.read_bytes() == raw
    assert not cache.exists()   # refused before a tile was read


def test_input_files_of_gdal_uris(gpkg_raster, tmp_path):
    import zipfile

    z = tmp_path / "scenes.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("a/b.tif", b"x")
    assert input_files(f"/vsizip/{z}/a/b.tif") == [str(z)]
    assert input_files(f"/vsizip/{{{z}}}/a/b.tif") == [str(z)]
    assert input_files(f'NETCDF:"{gpkg_raster}":band') == [str(gpkg_raster)]
    assert input_files(f"GPKG:{gpkg_raster}:ortho") == [str(gpkg_raster)]
    assert input_files("https://example.org/x.tif") == [] and input_files("/vsicurl/https://e.org/x.tif") == []
    # the output is the zip (whatever its name): refused
    pack = tmp_path / "pack.gpkg"
    os.link(z, pack)
    with pytest.raises(OutputIsInput) as e:
        check_output(pack, "labels", overwrite=True, inputs=[f"/vsizip/{{{tmp_path / 'scenes.zip'}}}/a/b.tif"])
    assert e.value.path == str(pack)


# ------------------------------------------------------------------------------ the user's files

def test_the_users_files_beside_a_shapefile_are_left_alone(data_dir, mosaic, tiny_bundle, tmp_path, capsys):
    mine = {"buildings.json": (data_dir / "orthomosaic" / "kampala_buildings_z21_chips.geojson").read_bytes(),
            "buildings.qmd": b"<qgis><identifier>my metadata</identifier></qgis>",
            "buildings.qml": b"<qgis><renderer-v2/></qgis>",
            "buildings.xml": b"<metadata/>", "buildings.shp.xml": b"<arcgis/>"}
    for name, data in mine.items():
        (tmp_path / name).write_bytes(data)
    shp = tmp_path / "buildings.shp"
    args = ["label", mosaic, "--model", tiny_bundle, "--labels", LABELS, "--tile-size", 512, "--no-cache", "-q",
            "-o", shp]
    assert cli(capsys, *args)[0] == 0
    side = tmp_path / "buildings.remoteclip.json"
    meta = json.loads(side.read_text(encoding="utf-8"))
    assert meta["format"] == "remoteclip-vector-metadata" and meta["fields"]["p_trees"] == "trees"
    # replacing the Shapefile replaces its own parts and its old spatial index, nothing else
    ds = ogr.Open(str(shp), 1)
    ds.ExecuteSQL("CREATE SPATIAL INDEX ON buildings")
    ds = None
    assert (tmp_path / "buildings.qix").is_file()
    rc, _, err = cli(capsys, *args, "--overwrite", "--labels", "water,forest")
    assert rc == 0, err
    assert not (tmp_path / "buildings.qix").exists()
    assert {n: (tmp_path / n).read_bytes() for n in mine} == mine
    assert json.loads(side.read_text(encoding="utf-8"))["fields"] == {"p_water": "water", "p_forest": "forest"}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*mine, "buildings.shp", "buildings.shx", "buildings.dbf", "buildings.prj", "buildings.cpg",
         "buildings.remoteclip.json"])

    # a file of the sidecar's name that RemoteCLIP did not write is never replaced
    side.write_text('{"my": "notes"}')
    rc, _, err = cli(capsys, *args, "--overwrite")
    assert rc == 2 and "was not written by RemoteCLIP" in one_line_error(err)
    assert side.read_text() == '{"my": "notes"}'


# ------------------------------------------------------------------------------- existing outputs

@pytest.mark.parametrize("ext", [".shp", ".gpkg"])
def test_an_existing_output_needs_overwrite(mosaic, tiny_bundle, tmp_path, capsys, ext):
    out = tmp_path / f"labels{ext}"
    args = ["label", mosaic, "--model", tiny_bundle, "--labels", LABELS, "--tile-size", 512, "--no-cache", "-q",
            "-o", out]
    assert cli(capsys, *args)[0] == 0
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    rc, out_text, err = cli(capsys, *args)
    line = one_line_error(err)
    assert rc == 2 and "already" in line and "--overwrite" in line and out_text == ""
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files
    assert output_exists(out, "labels") is not None
    assert (output_exists(out, "other") is None) == (ext == ".gpkg")   # a new layer replaces nothing
    rc, _, err = cli(capsys, *args[:-2], "--labels", "water,forest", "-o", out, "--overwrite")
    assert rc == 0, err
    names, feats, _ = snapshot(out)["labels"]
    assert names[:3] == ["row", "col", "label"] and {f[1][2] for f in feats} <= {"water", "forest"}
    # the library refuses too (Job.overwrite defaults to False), before the model is even opened
    with pytest.raises(OutputExists) as e:
        run_job(label_job(mosaic, tmp_path / "no-such-model", out))
    assert e.value.path == str(out)


# ---------------------------------------------------------------------------- unwritable outputs

@pytest.mark.parametrize("where", ["proc", "sys", "under_a_file", "missing", "read_only"])
def test_an_unwritable_output_fails_before_the_model_loads(mosaic, tiny_bundle, tmp_path, capsys, where):
    # root may write almost anywhere (os.access says yes to everything): these fail for root too
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    (tmp_path / "locked").mkdir(mode=0o555)   # r-x for all: read-only, also when root could write in it
    out = {"proc": "/proc/remoteclip-test.gpkg", "sys": "/sys/remoteclip-test.shp",
           "under_a_file": str(tmp_path / "notes.txt" / "out.gpkg"),
           "missing": str(tmp_path / "no" / "out.gpkg"), "read_only": str(tmp_path / "locked" / "out.gpkg")}[where]
    cache = tmp_path / "cache"
    with pytest.raises((OutputRefused, WriteFailed)) as e:
        run_job(label_job(mosaic, tiny_bundle, out, cache_dir=str(cache)))
    assert e.value.path == os.path.dirname(out) and e.value.fix   # the folder is named
    assert not cache.exists()   # no tile was encoded
    rc, stdout, err = cli(capsys, "label", mosaic, "--model", tiny_bundle, "--labels", LABELS, "--cache-dir",
                          cache, "-q", "-o", out)
    assert rc == 2 and "output folder" in one_line_error(err) and stdout == ""
    assert not cache.exists()
    assert (tmp_path / "notes.txt").read_text() == "a file, not a folder"
    assert list((tmp_path / "locked").iterdir()) == []


def test_a_read_only_output_file_is_not_replaced(mosaic, tiny_bundle, tmp_path, capsys):
    out = tmp_path / "done.shp"
    args = ["label", mosaic, "--model", tiny_bundle, "--labels", LABELS, "--tile-size", 512, "--no-cache", "-q",
            "-o", out, "--overwrite"]
    assert cli(capsys, *args)[0] == 0
    (tmp_path / "done.dbf").chmod(0o444)
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    rc, _, err = cli(capsys, *args)
    assert rc == 2 and "done.dbf is read-only" in one_line_error(err)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files


def test_heads_heat_maps_and_reports_get_the_umasks_permissions_like_vectors(mosaic, tiny_bundle, tmp_path,
                                                                            capsys):
    from core.outputs import write_report, write_text_file

    old = os.umask(0o027)   # not the usual 022: the mode must come from the umask, not be fixed
    try:
        rc, _, err = cli(capsys, "search", mosaic, "--model", tiny_bundle, "--query", "a road", "--tile-size", 512,
                         "--no-cache", "-q", "-o", tmp_path / "out.gpkg", "--raster-output", tmp_path / "heat.tif")
        assert rc == 0, err
        write_text_file(str(tmp_path / "head.json"), "{}")
        write_report(str(tmp_path / "out.remoteclip-report.json"), {"format": "remoteclip-classify-report"})
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"out.gpkg": 0o640, "heat.tif": 0o640, "head.json": 0o640, "out.remoteclip-report.json": 0o640}
