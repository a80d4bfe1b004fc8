"""The command line: `remoteclip label|count|search|embed` on real rasters, and its errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from core.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mosaic(data_dir):
    return str(data_dir / "orthomosaic" / "kampala_oam_z20_mosaic_1536x1024.tif")


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_label_count_search_embed(mosaic, tiny_bundle, tmp_path, capsys):
    cache = tmp_path / "cache"
    out = tmp_path / "labels.gpkg"
    rc, stdout, err = _run(capsys, "label", mosaic, "--model", tiny_bundle, "--labels", "buildings,trees,road",
                           "--tile-size", 512, "--cache-dir", cache, "-o", out)
    assert rc == 0, err
    assert out.is_file()
    assert "6 tiles" in stdout and ("CPUExecutionProvider" in stdout or "CUDAExecutionProvider" in stdout)
    assert f"output: {out}" in stdout
    assert "%" in err or "‰" in err  # the progress bar went to stderr
    rc, stdout, _ = _run(capsys, "search", mosaic, "--model", tiny_bundle, "--query", "a swimming pool",
                         "--top-k", 2, "--tile-size", 512, "--cache-dir", cache, "-q", "-o", tmp_path / "s.shp")
    assert rc == 0 and "embeddings from the cache" in stdout and "selected 2" in stdout
    assert (tmp_path / "s.shp").is_file()
    rc, stdout, _ = _run(capsys, "count", mosaic, "--model", tiny_bundle, "--object", "car", "--tile-size", 512,
                         "--cache-dir", cache, "-q")
    assert rc == 0 and "total car count" in stdout
    rc, stdout, _ = _run(capsys, "embed", mosaic, "--model", tiny_bundle, "--tile-size", 768, "--no-cache", "-q")
    # 1536 x 1024 px in 768 px tiles: 2 columns, and a second row shifted up to fit (edge "shift")
    assert rc == 0 and "4 tiles" in stdout


def test_preset_templates_and_long_prompt_warning(mosaic, tiny_bundle, tmp_path, capsys):
    tf = tmp_path / "templates.txt"
    tf.write_text("# my templates\na drone photo of {}.\n{}, seen from above\n")
    lf = tmp_path / "labels.txt"
    lf.write_text("trees\n" + "a dense informal settlement with " + "small tin roofs and narrow paths " * 14 + "\n")
    rc, stdout, _ = _run(capsys, "label", mosaic, "--model", tiny_bundle, "--preset", "land-cover",
                         "--templates-file", tf, "--tile-size", 512, "--no-cache", "-q")
    assert rc == 0
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


def test_make_label_command(data_dir, tiny_bundle, tmp_path):
    """The README's main job (`make label`), with the tiny bundle in place of the demo model."""
    out = tmp_path / "kampala_labels.gpkg"
    done = subprocess.run([sys.executable, "-m", "core", "label",
                           str(data_dir / "orthomosaic" / "kampala_oam_z20_mosaic_1536x1024.tif"),
                           "--preset", "land-cover", "--tile-size", "256", "-o", str(out), "--model", str(tiny_bundle),
                           "--cache-dir", str(tmp_path / "cache")], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "24 tiles" in done.stdout and f"output: {out}" in done.stdout
    from osgeo import ogr

    ds = ogr.Open(str(out))
    lyr = ds.GetLayer("labels")
    assert lyr.GetFeatureCount() == 24
    import json

    meta = json.loads(lyr.GetMetadataItem("REMOTECLIP"))
    assert sorted(meta["fields"].values()) == sorted(["buildings", "road", "trees", "grass", "bare soil", "water",
                                                      "farmland", "parking lot"])


def test_bbox_and_polygons_options(mosaic, data_dir, tiny_bundle, tmp_path, capsys):
    rc, stdout, err = _run(capsys, "label", mosaic, "--model", tiny_bundle, "--labels", "a,b", "--tile-size", 256,
                           "--bbox", "32.5937,0.3510,32.5943,0.35155,EPSG:4326", "--no-cache", "-q")
    assert rc == 0, err
    assert "4 tiles" in stdout
    rc, stdout, err = _run(capsys, "count", mosaic, "--model", tiny_bundle, "--object", "building", "--tile-size",
                           128, "--polygons", data_dir / "orthomosaic" / "kampala_buildings_z21_chips.geojson",
                           "--no-cache", "-q", "--dissolve", "-o", tmp_path / "c.gpkg")
    assert rc == 0, err
    assert (tmp_path / "c.gpkg").is_file()
