"""The command line: `remoteclip label|count|search|embed` on real rasters, and its errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import edge_groups

from core.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mosaic(data_dir):
    return str(data_dir / "orthomosaic" / "kampala_oam_z20_mosaic_1536x1024.tif")


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _features(path) -> list[dict]:
    """Every feature's attributes (and its WKT as "geometry") of a written vector file."""
    from osgeo import ogr

    ds = ogr.Open(str(path))
    lyr = ds.GetLayer(0)
    defn = lyr.GetLayerDefn()
    names = [defn.GetFieldDefn(i).GetName() for i in range(defn.GetFieldCount())]
    return [{**{n: f.GetField(n) for n in names}, "geometry": f.GetGeometryRef().ExportToWkt()} for f in lyr]


def _core(raster, bundle, task, **tiles):
    from core.pipeline import Job, RunOptions, TileSpec, run_job

    return run_job(Job(raster=str(raster), task=task, tiles=TileSpec(**tiles),
                       run=RunOptions(model=str(bundle), cache_dir="")))


def test_label_count_search_embed(mosaic, tiny_bundle, tmp_path, capsys):
    """Each command writes what run_job computes for the same options (labels, top-k, object, tile size)."""
    from collections import Counter

    from core.pipeline import CountTask, LabelTask, SearchTask

    cache = tmp_path / "cache"
    out = tmp_path / "labels.gpkg"
    rc, stdout, err = _run(capsys, "label", mosaic, "--model", tiny_bundle, "--labels", "buildings,trees,road",
                           "--tile-size", 512, "--cache-dir", cache, "-o", out)
    assert rc == 0, err
    want = _core(mosaic, tiny_bundle, LabelTask(["buildings", "trees", "road"]), size=512)
    got = _features(out)
    assert sorted((f["row"], f["col"], f["label"]) for f in got) == sorted(
        (r["row"], r["col"], r["label"]) for r in want.records) and len(got) == 6
    top = Counter(r["label"] for r in want.records).most_common(5)
    assert "labels: " + ", ".join(f"{k} {v}" for k, v in top) in stdout
    assert "6 tiles" in stdout and ("CPUExecutionProvider" in stdout or "CUDAExecutionProvider" in stdout)
    assert f"output: {out}" in stdout and "demo model" not in stdout   # another model: no demo note
    assert "%" in err or "‰" in err  # the progress bar went to stderr
    rc, stdout, _ = _run(capsys, "search", mosaic, "--model", tiny_bundle, "--query", "a swimming pool",
                         "--top-k", 2, "--tile-size", 512, "--cache-dir", cache, "-q", "-o", tmp_path / "s.shp")
    assert rc == 0 and "embeddings from the cache" in stdout and "selected 2" in stdout
    want = _core(mosaic, tiny_bundle, SearchTask("a swimming pool", top_k=2), size=512)
    best2 = {(r["row"], r["col"]) for r in want.records if r["rank"] <= 2}
    got = _features(tmp_path / "s.shp")
    assert len(got) == 6 and {(f["row"], f["col"]) for f in got if f["selected"]} == best2
    rc, stdout, _ = _run(capsys, "count", mosaic, "--model", tiny_bundle, "--object", "car", "--tile-size", 512,
                         "--cache-dir", cache, "-q")
    want = _core(mosaic, tiny_bundle, CountTask("car"), size=512)
    assert rc == 0 and f"total car count: {sum(r['count'] for r in want.records)}" in stdout
    assert "output: none" in stdout
    rc, stdout, _ = _run(capsys, "embed", mosaic, "--model", tiny_bundle, "--tile-size", 768, "--no-cache", "-q")
    # 1536 x 1024 px in 768 px tiles: 2 columns, and a second row shifted up to fit (edge "shift")
    assert rc == 0 and "4 tiles" in stdout


def test_preset_templates_and_long_prompt_warning(mosaic, tiny_bundle, tmp_path, capsys):
    """--templates-file replaces the default templates (its comment line is not one): the probabilities equal
    run_job's with exactly those two templates, and differ from the defaults'."""
    from core.pipeline import LabelTask
    from core.prompts import preset

    tf = tmp_path / "templates.txt"
    tf.write_text("# my templates\na drone photo of {}.\n{}, seen from above\n")
    lf = tmp_path / "labels.txt"
    lf.write_text("trees\n" + "a dense informal settlement with " + "small tin roofs and narrow paths " * 14 + "\n")
    out = tmp_path / "t.gpkg"
    rc, stdout, err = _run(capsys, "label", mosaic, "--model", tiny_bundle, "--preset", "land-cover",
                           "--templates-file", tf, "--tile-size", 512, "--no-cache", "-q", "-o", out)
    assert rc == 0, err
    labels = preset("land-cover")
    mine = _core(mosaic, tiny_bundle, LabelTask(labels, templates=["a drone photo of {}.", "{}, seen from above"]),
                 size=512)
    default = _core(mosaic, tiny_bundle, LabelTask(labels), size=512)
    fields = list(mine.field_map)
    got = {(f["row"], f["col"]): [f[p] for p in fields] for f in _features(out)}
    for want, other in zip(mine.records, default.records, strict=True):
        assert got[want["row"], want["col"]] == pytest.approx([want[p] for p in fields], abs=1e-6)
        assert max(abs(want[p] - other[p]) for p in fields) > 1e-3   # the defaults would give others
    rc, stdout, _ = _run(capsys, "label", mosaic, "--model", tiny_bundle, "--labels-file", lf,
                         "--tile-size", 512, "--no-cache", "-q")
    assert rc == 0 and "warning:" in stdout and "was cut" in stdout


@pytest.mark.parametrize("args,match", [
    (["label", "{tmp}/missing.tif", "--labels", "a,b"], "Raster not found"),
    (["label", "{junk}", "--labels", "a,b"], "junk.tif"),
    (["label", "{png}", "--labels", "a,b"], "no geotransform"),
    (["label", "{small}", "--labels", "a,b", "--tile-size", "5000"], "larger than the raster"),
    (["label", "{mosaic}", "--labels", ""], "label list is empty"),
    (["label", "{mosaic}", "--labels", "water,trees,water"], "more than once"),
    (["label", "{mosaic}"], "No classes given"),
    (["label", "{mosaic}", "--preset", "moon"], "Unknown preset"),
    (["label", "{mosaic}", "--labels", "a,b", "--bbox", "1,2,3"], "--bbox"),
    (["search", "{mosaic}", "--query", " "], "query is empty"),
    (["label", "{mosaic}", "--labels", "a,b", "--batch-size", "0"], "batch-size"),
    (["label", "{mosaic}", "--labels", "a,b", "-o", "{tmp}/out.csv"], "GeoPackage"),
    (["label", "{mosaic}", "--labels", "a,b", "-o", "{tmp}/no/out.gpkg"], "does not exist"),
    (["label", "{mosaic}", "--labels", "a,b", "--tile-size", "4"], "minimum"),
    (["label", "{mosaic}", "--labels", "a,b", "--tile-size", "0.5", "--tile-unit", "m"], "minimum"),
    (["label", "{mosaic}", "--labels", "a,b", "--overlap", "1"], "--overlap"),
    (["label", "{mosaic}", "--labels", "a,b", "--bands", "4,3,2"], "Band 4 does not exist"),
    (["label", "{mosaic}", "--labels", "a,b", "--bands", "r,g,b"], "--bands"),
    (["label", "{mosaic}", "--labels", "a,b", "--bbox", "10,10,11,11,4326"], "No tiles"),
    (["label", "{mosaic}", "--labels", "a,b", "--bbox", "1,2,3,4,EPSG:99999999"], "coordinate reference system"),
    (["label", "{mosaic}", "--labels", "a,b", "--polygons", "{tmp}/none.geojson"], "--polygons"),
    (["label", "{mosaic}", "--labels", "a,b", "--model", "{tmp}/no-bundle"], "not found"),
])
def test_bad_input_is_one_line_and_exit_2(args, match, mosaic, data_dir, tiny_bundle, tmp_path, capsys):
    junk = tmp_path / "junk.tif"
    junk.write_text("not a raster")
    subst = {"tmp": tmp_path, "junk": junk, "mosaic": mosaic,
             "png": data_dir / "counting" / "dota" / "images" / "P1888.png",
             "small": data_dir / "geotiff" / "rasterio_RGB.byte.tif"}
    argv = [a.format(**subst) for a in args]
    if "--model" not in argv:
        argv += ["--model", str(tiny_bundle)]
    argv += ["--no-cache", "-q"]
    rc, _, err = _run(capsys, *argv)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("remoteclip: error: ") and "Traceback" not in err
    assert match in lines[0] and "Fix:" in lines[0]


def test_every_command_prints_its_help(capsys):
    """argparse formats help texts with %: a bare '99% of' in one option's help broke --help of every task."""
    from core.cli import _parser

    commands = ["label", "count", "search", "embed", "classify", "change", "sample", "assess", "models"]
    for argv in [["--help"]] + [[c, "--help"] for c in commands]:
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 0, argv
        assert "usage:" in capsys.readouterr().out
    assert set(commands) <= set(_parser()._subparsers._group_actions[0].choices)


def test_bundle_that_does_not_load(mosaic, tmp_path, capsys):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{}")
    rc, _, err = _run(capsys, "label", mosaic, "--labels", "a,b", "--model", tmp_path / "bad", "-q")
    assert rc == 2 and err.startswith("remoteclip: error: ") and "Fix:" in err


def test_python_dash_m_core(tmp_path):
    out = subprocess.run([sys.executable, "-m", "core", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and "label" in out.stdout and "search" in out.stdout
    out = subprocess.run([sys.executable, "-m", "core", "label", str(tmp_path / "none.tif"), "--labels", "a,b",
                          "--model", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and "Raster not found" in out.stderr and "Traceback" not in out.stderr


def test_make_label_command(data_dir, tmp_path):
    """The README's main job (`make label`): the Makefile's command with the default model, the shipped demo
    bundle, gives the labels the README quotes."""
    import json
    import os

    out = tmp_path / "kampala_labels.gpkg"
    env = {k: v for k, v in os.environ.items() if k != "REMOTECLIP_MODEL"}
    done = subprocess.run([sys.executable, "-m", "core", "label",
                           str(data_dir / "orthomosaic" / "kampala_oam_z20_mosaic_1536x1024.tif"),
                           "--preset", "land-cover", "--tile-size", "256", "-o", str(out),
                           "--cache-dir", str(tmp_path / "cache")], cwd=ROOT, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "24 tiles" in done.stdout and f"output: {out}" in done.stdout
    assert "labels: buildings 22, grass 2\n" in done.stdout
    # the analyst is told that the default model is the demo toy, with its measured figure and the way out
    assert "note: the demo model is a toy" in done.stdout and "30.5 %" in done.stdout and "2,660" in done.stdout
    assert "models pull RemoteCLIP-ViT-B-32" in done.stdout
    feats = _features(out)
    assert {(f["row"], f["col"]) for f in feats if f["label"] != "buildings"} == {(2, 1), (2, 2)}
    from osgeo import ogr

    ds = ogr.Open(str(out))   # held while its layer is read
    meta = json.loads(ds.GetLayer("labels").GetMetadataItem("REMOTECLIP"))
    assert meta["model"] == "remoteclip-demo-small"
    assert sorted(meta["fields"].values()) == sorted(["buildings", "road", "trees", "grass", "bare soil", "water",
                                                      "farmland", "parking lot"])


def test_no_shipped_text_passes_the_demo_models_69_percent_off_as_unseen_scenes():
    """The demo model's 69 % is on 42 images from the same scene runs as its training images: no shipped text
    (READMEs, docs, the code's messages, the split file) may call it a figure on unseen scenes, and the note
    every demo run prints quotes what it scores on RSSCN7 images it never saw."""
    import re

    from core.runtime.bundle import DEMO_NOTE

    files = [ROOT / "README.md", ROOT / "models" / "README.md", ROOT / "metadata.txt",
             ROOT / "models" / "remoteclip-demo.rsscn7_split.json", *sorted((ROOT / "docs").glob("*.md")),
             *[p for d in ("core", "remoteclip_qgis", "training", "scripts") for p in sorted((ROOT / d).rglob("*"))
               if p.suffix in (".py", ".sh")]]
    texts = {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in files if p.is_file()}
    texts["DEMO_NOTE"] = DEMO_NOTE
    unseen = re.compile(r"unseen|never (?:seen|saw|trained)|not trained on|held.out|scene.disjoint", re.I)
    quoted = 0
    for name, text in texts.items():
        # sentences, paragraphs, list items and table rows
        for sentence in re.split(r"(?<=\.)\s+|\n\s*\n|\n\s*(?=[-*|#])", text):
            if re.search(r"\b69(?:\.0)?\s?%", sentence):
                quoted += 1
                assert not unseen.search(sentence), f"{name}: {sentence}"
    assert quoted >= 3   # the 42-image figure is still shown (READMEs, docs), as what it is
    assert "30.5 %" in DEMO_NOTE and "2,660 RSSCN7 images it never saw" in DEMO_NOTE and "69" not in DEMO_NOTE


def test_bbox_and_polygons_options(mosaic, data_dir, tiny_bundle, tmp_path, capsys, building_tiles):
    rc, stdout, err = _run(capsys, "label", mosaic, "--model", tiny_bundle, "--labels", "a,b", "--tile-size", 256,
                           "--bbox", "32.5937,0.3510,32.5943,0.35155,EPSG:4326", "--no-cache", "-q",
                           "-o", tmp_path / "b.gpkg")
    assert rc == 0, err
    import rasterio

    with rasterio.open(mosaic) as ds:   # the bbox in pixels; tiles whose window overlaps it (mosaic in EPSG:4326)
        (c0, r0), (c1, r1) = ~ds.transform * (32.5937, 0.35155), ~ds.transform * (32.5943, 0.3510)
    want = {(r, c) for r in range(4) for c in range(6)
            if c * 256 < c1 and c * 256 + 256 > c0 and r * 256 < r1 and r * 256 + 256 > r0}
    assert {(f["row"], f["col"]) for f in _features(tmp_path / "b.gpkg")} == want and len(want) == 4
    assert "4 tiles" in stdout
    geojson = data_dir / "orthomosaic" / "kampala_buildings_z21_chips.geojson"
    common = ["count", mosaic, "--model", tiny_bundle, "--object", "building", "--tile-size", 128,
              "--polygons", geojson, "--no-cache", "-q"]
    rc, stdout, err = _run(capsys, *common, "-o", tmp_path / "tiles.gpkg")
    assert rc == 0, err
    tiles = {(f["row"], f["col"]): f["count"] for f in _features(tmp_path / "tiles.gpkg")}
    assert set(tiles) == building_tiles and len(tiles) == 88 and f"{len(tiles)} tiles" in stdout
    rc, stdout, err = _run(capsys, *common, "--dissolve", "-o", tmp_path / "c.gpkg")
    assert rc == 0, err
    merged = _features(tmp_path / "c.gpkg")
    assert sorted((f["count"], f["n_tiles"]) for f in merged) == edge_groups(tiles)
    assert len(merged) < len(tiles)
