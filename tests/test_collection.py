"""Many rasters, one job (core.pipeline): one layer with a source field, one output CRS, skipped and
resumed rasters, the plan over the collection. Real GeoTIFFs (sheets cut from the Kampala mosaic, the
Landsat scene in UTM), the demo bundle on onnxruntime."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from core.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "models" / "remoteclip-demo"
LABELS = "buildings,grass,water"


def cut_sheets(mosaic, folder: Path, rows: int = 2, cols: int = 4) -> list[Path]:
    """The mosaic cut into rows x cols GeoTIFF sheets, as orthophoto series come."""
    import rasterio
    from rasterio.windows import Window

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    with rasterio.open(mosaic) as src:
        h, w = src.height // rows, src.width // cols
        for r in range(rows):
            for c in range(cols):
                win = Window(c * w, r * h, w, h)
                prof = {**src.profile, "width": w, "height": h, "transform": src.window_transform(win)}
                path = folder / f"sheet_{r}{c}.tif"
                with rasterio.open(path, "w", **prof) as dst:
                    dst.write(src.read(window=win))
                out.append(path)
    return out


@pytest.fixture(scope="module")
def sheets(data_dir, tmp_path_factory) -> list[Path]:
    return cut_sheets(data_dir / "orthomosaic" / "kampala_oam_z20_mosaic_1536x1024.tif",
                      tmp_path_factory.mktemp("sheets") / "sheets")


@pytest.fixture(scope="module")
def landsat(data_dir) -> Path:
    return data_dir / "geotiff" / "rasterio_RGB.byte.tif"


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def features(path, layer=None) -> list[dict]:
    from osgeo import ogr

    ds = ogr.Open(str(path))
    lyr = ds.GetLayerByName(layer) if layer else ds.GetLayer(0)
    defn = lyr.GetLayerDefn()
    names = [defn.GetFieldDefn(i).GetName() for i in range(defn.GetFieldCount())]
    return [{**{n: f.GetField(n) for n in names}, "geometry": f.GetGeometryRef().ExportToWkt()} for f in lyr]


def _label(capsys, rasters, out, *extra):
    rc, stdout, err = _run(capsys, "label", *rasters, "--model", DEMO, "--labels", LABELS, "--tile-size", 64,
                           "-o", out, "-q", *extra)
    assert rc == 0, err
    return stdout


def test_mixed_crs_one_layer_with_source(sheets, landsat, tmp_path, capsys):
    """A glob of sheets (EPSG:4326) and a UTM scene: one layer, every tile tagged with its raster, the
    records those of each raster on its own, the UTM tiles reprojected into the first raster's CRS."""
    from osgeo import ogr, osr

    folder = sheets[0].parent
    out = tmp_path / "all.gpkg"
    text = _label(capsys, [folder / "*.tif", landsat], out, "--no-cache")
    assert "rasters: 9 in the output" in text and "output CRS: EPSG:4326" in text
    got = features(out)
    by_source: dict[str, list] = {}
    for f in got:
        by_source.setdefault(f["source"], []).append(f)
    assert sorted(by_source) == sorted(str(p) for p in [*sheets, landsat])
    # each raster's tiles are the tiles of a run on that raster alone (same labels and scores)
    for raster in [sheets[0], sheets[5], landsat]:
        one = tmp_path / f"one_{raster.stem}.gpkg"
        _label(capsys, [raster], one, "--no-cache")
        alone = features(one)
        mine = by_source[str(raster)]
        assert [(f["row"], f["col"], f["label"], f["score"], f["p_grass"]) for f in mine] == \
               [(f["row"], f["col"], f["label"], f["score"], f["p_grass"]) for f in alone]
        assert "source" not in alone[0]        # one plain raster: the output is as before
        if raster != landsat:
            assert [f["geometry"] for f in mine] == [f["geometry"] for f in alone]
    # the UTM tiles: corners where OGR puts them in degrees, edges densified (a curved transform)
    utm = osr.SpatialReference()
    utm.ImportFromEPSG(32618)
    wgs = osr.SpatialReference()
    wgs.ImportFromEPSG(4326)
    for s in (utm, wgs):
        s.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    ct = osr.CoordinateTransformation(utm, wgs)
    alone = features(tmp_path / f"one_{landsat.stem}.gpkg")
    for mine, ref in zip(by_source[str(landsat)][:5], alone[:5], strict=True):
        g = ogr.CreateGeometryFromWkt(mine["geometry"])
        ring = g.GetGeometryRef(0)
        assert ring.GetPointCount() > 5                       # densified, not four corners
        pts = {(round(ring.GetX(i), 9), round(ring.GetY(i), 9)) for i in range(ring.GetPointCount())}
        ref_poly = ogr.CreateGeometryFromWkt(ref["geometry"])   # kept: a ring lives as long as its polygon
        ref_ring = ref_poly.GetGeometryRef(0)
        for i in range(4):
            x, y, _ = ct.TransformPoint(ref_ring.GetX(i), ref_ring.GetY(i))
            assert (round(x, 9), round(y, 9)) in pts
        assert -80 < g.Centroid().GetX() < -70 and 20 < g.Centroid().GetY() < 30   # the Bahamas, in degrees
    # --out-crs: the UTM scene keeps its own polygons, the sheets move
    out2 = tmp_path / "utm.gpkg"
    text = _label(capsys, [landsat, sheets[0]], out2, "--no-cache", "--out-crs", "EPSG:32618")
    assert "output CRS: EPSG:32618" in text
    got2 = features(out2)
    assert [f["geometry"] for f in got2 if f["source"] == str(landsat)] == [f["geometry"] for f in alone]
    ds = ogr.Open(str(out2))
    assert ds.GetLayer(0).GetSpatialRef().GetAuthorityCode(None) == "32618"
    # one raster with --out-crs: reprojected as in a collection
    out3 = tmp_path / "one_in_degrees.gpkg"
    text = _label(capsys, [landsat], out3, "--no-cache", "--out-crs", "EPSG:4326")
    assert "output CRS: EPSG:4326" in text
    assert [f["geometry"] for f in features(out3)] == [f["geometry"] for f in by_source[str(landsat)]]


def test_folder_list_file_and_glob_are_one_collection(sheets, tmp_path, capsys):
    folder = sheets[0].parent
    listing = tmp_path / "rasters.txt"
    rel = [os.path.relpath(p, tmp_path) for p in sheets[:3]]
    listing.write_text("# three sheets\n" + "\n".join(rel) + "\n\n" + rel[0] + "\n", encoding="utf-8")
    _label(capsys, [listing], tmp_path / "list.gpkg")
    assert sorted({f["source"] for f in features(tmp_path / "list.gpkg")}) == [str(p) for p in sheets[:3]]
    _label(capsys, [folder], tmp_path / "folder.gpkg")
    _label(capsys, [folder / "sheet_*.tif"], tmp_path / "glob.gpkg")
    assert features(tmp_path / "folder.gpkg") == features(tmp_path / "glob.gpkg")
    rc, _, err = _run(capsys, "label", folder / "nothing_*.tif", "--model", DEMO, "--labels", LABELS, "-q")
    assert rc == 2 and "No file matches" in err and "quote it" in err


def _truncated(src: Path, dst: Path) -> Path:
    """A GeoTIFF whose header reads and whose pixels are cut off: it fails only when read."""
    data = src.read_bytes()
    dst.write_bytes(data[:len(data) // 3])
    return dst


def test_unreadable_rasters_skipped_named_or_strict(sheets, tmp_path, capsys):
    missing = tmp_path / "gone.tif"
    broken = _truncated(sheets[1], tmp_path / "broken.tif")
    not_raster = tmp_path / "notes.tif"
    not_raster.write_text("not a raster", encoding="utf-8")
    out = tmp_path / "out.gpkg"
    text = _label(capsys, [sheets[0], missing, broken, not_raster, sheets[2]], out, "--no-cache")
    assert "rasters: 2 in the output, 3 skipped" in text
    assert f"skipped: {missing}: Raster not found" in text
    assert f"skipped: {not_raster}:" in text and "cannot be read" in text
    broken_line = next(ln for ln in text.splitlines() if ln.startswith(f"skipped: {broken}:"))
    assert len(broken_line) > len(f"skipped: {broken}: ") + 5   # with the reason GDAL gave
    assert {f["source"] for f in features(out)} == {str(sheets[0]), str(sheets[2])}
    # --strict stops at the first unreadable raster, names it, and writes nothing
    out2 = tmp_path / "strict.gpkg"
    rc, _, err = _run(capsys, "label", sheets[0], broken, sheets[2], "--model", DEMO, "--labels", LABELS,
                      "--tile-size", 64, "-o", out2, "-q", "--no-cache", "--strict")
    assert rc == 2 and str(broken) in err and "--strict" in err
    assert not out2.exists()


def test_resume_after_cancel(sheets, tmp_path, capsys):
    """A run cancelled after three rasters leaves no output and a record; the rerun encodes only the
    other rasters, says what it resumed, writes what an uninterrupted run writes and removes the record."""
    from core.errors import Cancelled
    from core.pipeline import Job, LabelTask, RunOptions, TileSpec, run_job
    from core.pipeline.resume import resume_path

    cache = tmp_path / "cache"
    out = tmp_path / "resumed.gpkg"
    job = Job(raster=[str(p) for p in sheets], task=LabelTask(LABELS.split(",")),
              run=RunOptions(model=str(DEMO), cache_dir=str(cache)), tiles=TileSpec(size=64), output=str(out))
    seen = []

    def progress(fraction, message):
        if message.endswith(" rasters"):
            seen.append(message)

    with pytest.raises(Cancelled):
        run_job(job, progress=progress, is_cancelled=lambda: len(seen) >= 3)
    assert not out.exists()
    record = Path(resume_path(str(out), "labels"))
    assert record.name == "resumed.labels.remoteclip-resume.json"
    data = json.loads(record.read_text())
    assert data["format"] == "remoteclip-resume" and sorted(data["done"]) == sorted(str(p) for p in sheets[:3])
    res = run_job(job)
    assert res.resumed == 3 and res.images_encoded == sum(48 for _ in sheets[3:])   # 48 tiles a sheet
    assert not record.exists()
    ref = tmp_path / "straight.gpkg"
    _label(capsys, sheets, ref, "--no-cache")
    assert features(out) == features(ref)
    # the command line says it
    text = _label(capsys, sheets, tmp_path / "again.gpkg", "--cache-dir", cache)
    assert "rasters: 8 in the output" in text


_KILLED_WRITING_THE_RECORD = """
import os, sys
sys.path.insert(0, sys.argv[1])
from core.pipeline import Job, LabelTask, RunOptions, TileSpec, run_job

fsync = os.fsync

def fsync_then_die(fd):
    # killed while the resume record's temporary is half written (the cache's own writes go through)
    if ".resumed.tmp-" in os.readlink(f"/proc/self/fd/{fd}"):
        os._exit(9)
    fsync(fd)

os.fsync = fsync_then_die
rasters, model, cache, out = sys.argv[2].split(os.pathsep), sys.argv[3], sys.argv[4], sys.argv[5]
run_job(Job(raster=rasters, task=LabelTask(["buildings", "grass", "water"]), run=RunOptions(model=model, cache_dir=cache),
            tiles=TileSpec(size=64), output=out))
"""


def test_a_run_killed_while_writing_its_resume_record_leaves_a_temporary_the_next_run_removes(sheets, tmp_path):
    """Killed mid-write, the record's temporary stays beside the output (nothing can catch a kill): it is
    named as the output's temporaries are (stem, process id), so the next run of that output removes it,
    and nothing else of the folder."""
    import re
    import subprocess
    import sys

    from core.geodata.vector_checks import _temp_pattern
    from core.pipeline import Job, LabelTask, RunOptions, TileSpec, run_job

    out, cache = tmp_path / "resumed.gpkg", tmp_path / "cache"
    (tmp_path / ".resumed.tmp-notes.txt").write_text("somebody's")   # not a name of ours: kept
    rasters = [str(p) for p in sheets[:2]]
    done = subprocess.run([sys.executable, "-c", _KILLED_WRITING_THE_RECORD, str(ROOT), os.pathsep.join(rasters),
                           str(DEMO), str(cache), str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 9, done.stderr[-2000:]
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".resumed.tmp-"))
    ours = [n for n in left if re.fullmatch(_temp_pattern("resumed"), n)]
    assert len(ours) == 1 and len(left) == 2, left
    assert not out.exists()
    res = run_job(Job(raster=rasters, task=LabelTask(LABELS.split(",")), run=RunOptions(model=str(DEMO), cache_dir=str(cache)),
                      tiles=TileSpec(size=64), output=str(out)))
    assert out.is_file() and res.n_tiles == 96
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [".resumed.tmp-notes.txt"]


def test_a_users_file_at_the_resume_path_is_refused_and_kept(sheets, tmp_path):
    """The record beside the output replaces only a record of ours: a user's file of that name stops the run
    before any pixel is read, and is left as it was."""
    from core.errors import OutputExists
    from core.pipeline import Job, LabelTask, RunOptions, TileSpec, run_job
    from core.pipeline.resume import resume_path

    out = tmp_path / "mine.gpkg"
    users = Path(resume_path(str(out), "labels"))
    users.write_text('{"notes": "mine"}')
    job = Job(raster=[str(p) for p in sheets[:2]], task=LabelTask(LABELS.split(",")),
              run=RunOptions(model=str(DEMO), cache_dir=""), tiles=TileSpec(size=64), output=str(out))
    with pytest.raises(OutputExists) as err:
        run_job(job)
    assert err.value.path == str(users)
    assert users.read_text() == '{"notes": "mine"}' and not out.exists()


def test_search_ranks_over_the_collection(sheets, tmp_path, capsys):
    out = tmp_path / "search.gpkg"
    rc, _, err = _run(capsys, "search", *sheets[:3], "--model", DEMO, "--query", "a swimming pool",
                      "--top-k", 5, "--tile-size", 64, "-o", out, "-q", "--no-cache")
    assert rc == 0, err
    got = features(out)
    assert sorted(f["rank"] for f in got) == list(range(1, len(got) + 1))
    best = sorted(got, key=lambda f: -f["similarity"])[:5]
    assert {(f["source"], f["row"], f["col"]) for f in got if f["selected"]} == \
           {(f["source"], f["row"], f["col"]) for f in best}
    assert len({f["source"] for f in got}) == 3


def test_plan_covers_the_collection(sheets, tmp_path, capsys):
    from core.errors import InvalidInput
    from core.pipeline import Job, LabelTask, RunOptions, TileSpec, plan_job, run_job

    job = Job(raster=[str(p) for p in sheets[:4]], task=LabelTask(LABELS.split(",")),
              run=RunOptions(model=str(DEMO), cache_dir=""), tiles=TileSpec(size=64), max_tiles=150)
    plan = plan_job(job)
    assert plan.n_tiles == 4 * 48 and plan.rasters == 4 and "in 4 rasters" in plan.describe()
    with pytest.raises(InvalidInput) as err:
        run_job(job)
    assert err.value.param == "max_tiles" and "192 tiles" in err.value.problem and "4 rasters" in err.value.problem
    assert "--yes" in err.value.fix
    rc, _, err = _run(capsys, "label", *sheets[:2], "--model", DEMO, "--labels", LABELS, "--raster-output",
                      tmp_path / "heat.tif", "-o", tmp_path / "x.gpkg")
    assert rc == 2 and "--raster-output" in err and not (tmp_path / "heat.tif").exists()
    rc, _, err = _run(capsys, "label", sheets[0], "--model", DEMO, "--labels", LABELS, "--raster-output",
                      tmp_path / "heat.tif", "--out-crs", "EPSG:3857", "-o", tmp_path / "x.gpkg", "--no-cache")
    assert rc == 2 and "--out-crs asks for another" in err and not (tmp_path / "heat.tif").exists()


def test_next_raster_is_read_while_this_one_encodes(sheets, tmp_path):
    """Reading overlaps across rasters: while a raster's tiles are encoded, the next raster's reader runs."""
    from core.pipeline import Job, LabelTask, RunOptions, TileSpec, run_job

    def alive():
        return sum(t.name == "remoteclip-reader" and t.is_alive() for t in threading.enumerate())

    before = alive()
    readers = []

    def progress(fraction, message):
        if "tiles" in message and message.startswith("sheet_"):
            readers.append(alive() - before)

    run_job(Job(raster=[str(p) for p in sheets[:4]], task=LabelTask(LABELS.split(",")),
                run=RunOptions(model=str(DEMO), cache_dir="", batch_size=16), tiles=TileSpec(size=64)),
            progress=progress)
    assert max(readers) == 2


def test_a_collection_without_dask_never_imports_it(sheets, tmp_path):
    """Dask is optional: core imports it only for --dask (the plugin, which vendors core, never does)."""
    import subprocess
    import sys

    code = ("import sys; from core.cli import main; "
            f"rc = main(['label', {str(sheets[0])!r}, {str(sheets[1])!r}, '--model', {str(DEMO)!r}, "
            "'--labels', 'a,b', '-q', '--no-cache']); "
            "assert rc == 0; bad = [m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stdout + out.stderr


def test_coded_text_columns_are_recoded_into_one_table(sheets, landsat, tiny_bundle):
    """The per-raster coded text columns (top_labels, a code into the raster's own table of lists; top_scores,
    made on read) joined into one collection: each raster's values are those of a run on it alone. The tables
    of the rasters differ (checked), so codes kept as they were would read another raster's lists."""
    from core.pipeline import Job, LabelTask, RunOptions, TileSpec, run_job
    from core.records import Categorical

    rasters = [str(sheets[0]), str(sheets[5]), str(landsat)]
    task = LabelTask(["buildings", "grass", "water", "road", "trees"], top_k=3)
    run = RunOptions(model=str(tiny_bundle), cache_dir="")
    tiles = TileSpec(size=64)
    both = run_job(Job(raster=rasters, task=task, run=run, tiles=tiles))
    alone = {r: run_job(Job(raster=r, task=task, run=run, tiles=tiles)) for r in rasters}
    keys = ("row", "col", "label", "top_labels", "top_scores")
    tables = [list(dict.fromkeys(a.records.column("top_labels"))) for a in alone.values()]
    assert isinstance(alone[rasters[0]].records.columns["top_labels"], Categorical)
    assert len({tuple(sorted(t)) for t in tables}) == len(tables)   # every raster has its own table
    for r in rasters:
        mine = [tuple(rec[k] for k in keys) for rec in both.records if rec["source"] == r]
        assert mine == [tuple(rec[k] for k in keys) for rec in alone[r].records]


def test_a_file_name_that_is_not_utf8_in_a_glob_is_skipped_and_named(sheets, tiny_bundle, tmp_path):
    """One raster of a glob whose name holds bytes that are not UTF-8 (GDAL cannot open it): skipped like any
    unreadable raster and named in the summary and the layer's metadata (it stopped the whole run); --strict
    stops at it. Run as a user runs it: a process with the bytes in its argument and a real stdout."""
    import shutil
    import subprocess
    import sys

    from osgeo import ogr

    folder = tmp_path / "sheets"
    folder.mkdir()
    for name in (b"a.tif", b"sc\xe8ne.tif", b"c.tif"):
        shutil.copy(sheets[0], os.fsdecode(bytes(folder) + b"/" + name))
    out = tmp_path / "out.gpkg"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))

    def run(*extra):
        proc = subprocess.run([sys.executable, "-m", "core", "label", str(folder / "*.tif"), "--labels", LABELS,
                               "--model", str(tiny_bundle), "--tile-size", "64", "--no-cache", "-q", *extra],
                              capture_output=True, env=env)
        return proc.returncode, proc.stdout.decode(), proc.stderr.decode()

    rc, stdout, err = run("-o", str(out))
    assert rc == 0, err
    assert "rasters: 2 in the output, 1 skipped" in stdout
    assert f"skipped: {folder}/sc\ufffdne.tif: " in stdout and "not UTF-8" in stdout
    ds = ogr.Open(str(out))
    meta = json.loads(ds.GetLayer(0).GetMetadataItem("REMOTECLIP"))
    assert [s["raster"] for s in meta["skipped"]] == [f"{folder}/sc\ufffdne.tif"]
    assert {f["source"] for f in features(out)} == {str(folder / "a.tif"), str(folder / "c.tif")}
    rc, _, err = run("--strict")
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert rc == 2 and len(lines) == 1 and "--strict" in lines[0] and "Traceback" not in err


def _grey(src: Path, dst: Path) -> Path:
    """The raster's first band alone: a one-band sheet in a collection of RGB ones."""
    import rasterio

    with rasterio.open(src) as s:
        prof = {**s.profile, "count": 1}
        prof.pop("photometric", None)
        with rasterio.open(dst, "w", **prof) as d:
            d.write(s.read(1), 1)
    return dst


def _plan(rasters, bands, strict=False):
    from core.pipeline import Job, LabelTask, RunOptions, TileSpec
    from core.pipeline.plan import plan_rasters

    return plan_rasters(Job(raster=[str(p) for p in rasters], task=LabelTask(LABELS.split(",")),
                               run=RunOptions(model=str(DEMO)), tiles=TileSpec(size=64, bands=bands),
                               strict=strict))


def test_a_raster_the_bands_do_not_fit_is_skipped_but_bands_no_raster_has_are_an_error(sheets, tmp_path):
    from core.errors import InvalidInput, SourceUnreadable

    grey = _grey(sheets[1], tmp_path / "grey.tif")
    gone = tmp_path / "gone.tif"
    # a mixed collection: band 3 is the grey sheet's data problem, the RGB sheets fit
    plans, state = _plan([sheets[0], grey, gone, sheets[2]], [3, 2, 1])
    assert [p.path for p in plans] == [str(sheets[0]), str(sheets[2])]
    assert [p for p, _ in state.skipped] == [str(gone), str(grey)]
    with pytest.raises(InvalidInput) as err:
        _plan([sheets[0], grey], [3, 2, 1], strict=True)
    assert err.value.path == str(grey)
    # a band no raster has is a bad --bands: its own error, not "none of the rasters can be processed"
    with pytest.raises(InvalidInput) as err:
        _plan([sheets[0], gone, sheets[2]], [9, 2, 1])
    assert err.value.param == "bands"
    # only unreadable rasters: the collection cannot be read
    with pytest.raises(SourceUnreadable):
        _plan([gone, tmp_path / "gone2.tif"], [3, 2, 1])
