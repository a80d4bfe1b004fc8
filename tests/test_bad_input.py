"""Bad input, as a new user types it: the command line answers each case with its exit status and one
line naming the problem and the fix, never a traceback, and touches no file but the output it was asked
to write (every case runs in a sandbox folder whose files are compared before and after).

Cases: rasters, parameters, bundles, outputs and faults. Each is (id, arguments, exit status, words the
message must hold). Placeholders in the arguments name files the sandbox provides.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, ogr, osr

from core import cli

LABELS = ("--labels", "water,land")


# ------------------------------------------------------------------------------------------ sandbox

def _tif(path, width=64, height=64, bands=3, dtype=gdal.GDT_Byte, gt=(500000.0, 10.0, 0.0, 100000.0, 0.0, -10.0),
         epsg=32636, fill=None, nodata=None, gcps=None):
    ds = gdal.GetDriverByName("GTiff").Create(str(path), width, height, bands, dtype)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    if gcps:
        ds.SetGCPs(gcps, srs.ExportToWkt())
    else:
        if gt is not None:
            ds.SetGeoTransform(gt)
        if epsg:
            ds.SetProjection(srs.ExportToWkt())
    rng = np.random.default_rng(1)
    for b in range(bands):
        band = ds.GetRasterBand(b + 1)
        if nodata is not None:
            band.SetNoDataValue(nodata)
        if fill is not None:
            band.Fill(fill)
        else:
            band.WriteArray(rng.integers(0, 256, (height, width)).astype(np.uint8))
    ds = None


def _vector(path, wkts, epsg=32618, layer="shapes"):
    drv = ogr.GetDriverByName("GPKG" if str(path).endswith(".gpkg") else "GeoJSON")
    ds = drv.CreateDataSource(str(path))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    geom_type = ogr.CreateGeometryFromWkt(wkts[0]).GetGeometryType() if wkts else ogr.wkbPolygon
    lyr = ds.CreateLayer(layer, srs, geom_type)
    for w in wkts:
        f = ogr.Feature(lyr.GetLayerDefn())
        f.SetGeometry(ogr.CreateGeometryFromWkt(w))
        lyr.CreateFeature(f)
    ds = None


def _bundle_variant(src: Path, dest: Path, edit=None, drop=(), damage=None):
    shutil.copytree(src, dest)
    if edit is not None:
        m = json.loads((dest / "manifest.json").read_text())
        edit(m)
        (dest / "manifest.json").write_text(json.dumps(m))
    for name in drop:
        (dest / name).unlink()
    if damage:
        (dest / damage).write_bytes(b"damaged " * 64)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, data_dir, tiny_bundle) -> dict:
    d = tmp_path_factory.mktemp("sandbox")
    p = {"d": str(d), "bundle": str(d / "bundle")}
    shutil.copytree(tiny_bundle, d / "bundle")
    shutil.copy(data_dir / "geotiff" / "rasterio_RGB.byte.tif", d / "scene.tif")   # 791 x 718, 300 m
    p["scene"] = str(d / "scene.tif")
    (d / "folder").mkdir()
    (d / "adir.gpkg").mkdir()
    (d / "junk.tif").write_bytes(b"this is not a GeoTIFF " * 40)
    (d / "empty.tif").write_bytes(b"")
    shutil.copy(data_dir / "counting" / "dota" / "images" / "P1888.png", d / "photo.png")
    _tif(d / "nogt.tif", gt=None, epsg=4326)
    _tif(d / "nocrs.tif", epsg=0)
    _tif(d / "gcp.tif", epsg=4326, gcps=[gdal.GCP(32.5, 0.35, 0, 0, 0), gdal.GCP(32.51, 0.35, 0, 63, 0),
                                         gdal.GCP(32.5, 0.34, 0, 0, 63)])
    _tif(d / "allnodata.tif", fill=0, nodata=0)
    _tif(d / "allnan.tif", bands=1, dtype=gdal.GDT_Float32, fill=float("nan"))
    _tif(d / "dot.tif", width=1, height=1)
    gdal.Translate(str(d / "cut_src.tif"), str(data_dir / "orthomosaic" / "kampala_oam_z20_mosaic_1536x1024.tif"),
                   creationOptions=["TILED=YES", "COMPRESS=DEFLATE"])
    data = (d / "cut_src.tif").read_bytes()
    (d / "cut.tif").write_bytes(data[: len(data) // 2])
    (d / "cut_src.tif").unlink()
    (d / os.fsdecode(b"sc\xe8ne.tif")).write_bytes((d / "scene.tif").read_bytes())
    gdal.Translate(str(d / "raster.gpkg"), str(d / "scene.tif"), format="GPKG")
    (d / "scene_link.gpkg").symlink_to(d / "raster.gpkg")
    # labels and templates files
    (d / "labels_latin1.txt").write_bytes("forêt\nrivière\n".encode("latin-1"))
    (d / "labels_binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (d / "labels_tab.txt").write_bytes(b"water\ttrees\nroad\n")
    (d / "labels_empty.txt").write_text("# nothing\n\n")
    (d / "labels_bad.json").write_text("[water, trees")
    (d / "labels_dict.json").write_text('{"water": 1}')
    (d / "templates_empty.txt").write_text("")
    (d / "count_templates.txt").write_text("a photo of {object}\n")
    # vectors for --polygons
    _vector(d / "points.geojson", ["POINT (300000 2800000)"])
    _vector(d / "nothing.gpkg", [])
    (d / "notvector.gpkg").write_bytes(b"SQLite format 3\x00" + b"\x00" * 100)
    # bundles
    b = d / "bundle"
    _bundle_variant(b, d / "b_nofp16", edit=lambda m: m["graphs"].pop("fp16"))
    _bundle_variant(b, d / "b_nomanifest", drop=["manifest.json"])
    _bundle_variant(b, d / "b_json", edit=None)
    (d / "b_json" / "manifest.json").write_text("{not json")
    _bundle_variant(b, d / "b_format", edit=lambda m: m.update(format="something-else"))
    _bundle_variant(b, d / "b_version", edit=lambda m: m.update(format_version=2))
    _bundle_variant(b, d / "b_lacks", edit=lambda m: m.pop("logit_scale"))
    _bundle_variant(b, d / "b_huge", edit=lambda m: m["image"].update(size=[100000, 100000]))
    _bundle_variant(b, d / "b_escape", edit=lambda m: m["graphs"]["fp32"].update(image="../../etc/passwd"))
    _bundle_variant(b, d / "b_novocab", drop=["bpe_simple_vocab_16e6.txt.gz"])
    _bundle_variant(b, d / "b_badgraph", damage="image_fp32.onnx")
    _bundle_variant(b, d / "b_badtext", damage="text_fp32.onnx")
    _bundle_variant(b, d / "b_badvocab", damage="bpe_simple_vocab_16e6.txt.gz")
    _bundle_variant(b, d / "b_logit", edit=lambda m: m.update(logit_scale=-1))
    (d / "plain.bin").write_bytes(b"\x00" * 100)
    (d / "damaged.rclip.zip").write_bytes(b"PK\x03\x04" + b"\x00" * 200)
    with zipfile.ZipFile(d / "unsafe.rclip.zip", "w") as z:
        z.writestr("../evil.txt", "x")
        z.writestr("manifest.json", "{}")
    with zipfile.ZipFile(d / "nomanifest.rclip.zip", "w") as z:
        z.writestr("readme.txt", "no bundle here")
    # outputs
    (d / "existing.shp").write_bytes(b"")   # an existing Shapefile part is an existing output
    _vector(d / "existing.gpkg", ["POLYGON ((0 0, 1 0, 1 1, 0 0))"], layer="labels")
    (d / "afile").write_text("a file, not a folder")
    (d / "readonly").mkdir()
    os.chmod(d / "readonly", 0o555)
    return p


def _tree(folder: str) -> dict:
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            st = os.lstat(path)
            out[os.path.relpath(path, folder)] = (st.st_size, st.st_mtime_ns, st.st_mode)
    return out


# ------------------------------------------------------------------------------------------- cases

R = "rasters"
P = "parameters"
B = "bundles"
O = "outputs"  # noqa: E741
F = "faults"

CASES = [
    # --- rasters
    (R, "missing", ["label", "{d}/missing.tif", *LABELS], 2, ["Raster not found", "Check the path"]),
    (R, "folder", ["label", "{d}/folder", *LABELS], 2, ["holds no raster file", "a glob such as"]),   # a folder is a collection
    (R, "junk", ["label", "{d}/junk.tif", *LABELS], 2, ["cannot be read", "gdalinfo"]),
    (R, "empty file", ["label", "{d}/empty.tif", *LABELS], 2, ["cannot be read"]),
    (R, "photo without georeferencing", ["label", "{d}/photo.png", *LABELS], 2, ["no geotransform"]),
    (R, "crs without geotransform", ["label", "{d}/nogt.tif", *LABELS], 2, ["no geotransform", "Georeferencer"]),
    (R, "gcp only", ["label", "{d}/gcp.tif", *LABELS], 2, ["ground control points", "gdalwarp -t_srs EPSG:32636"]),
    (R, "no crs", ["label", "{d}/nocrs.tif", *LABELS, "--tile-size", 32], 2,
     ["no coordinate reference system", "Assign"]),
    (R, "all nodata", ["label", "{d}/allnodata.tif", *LABELS, "--tile-size", 32], 2, ["is nodata", "nodata value"]),
    (R, "all NaN", ["label", "{d}/allnan.tif", *LABELS, "--tile-size", 32], 2, ["is nodata"]),
    (R, "one pixel", ["label", "{d}/dot.tif", *LABELS], 2, ["only 1 x 1 px: too small to tile"]),
    (R, "truncated", ["label", "{d}/cut.tif", *LABELS, "--tile-size", 256], 2, ["cut.tif", "damaged"]),
    (R, "name not UTF-8", ["label", os.fsdecode(b"{d}/sc\xe8ne.tif"), *LABELS], 2, ["not UTF-8 text", "Rename"]),
    (R, "zip that is not there", ["label", "/vsizip/{d}/none.zip/a.tif", *LABELS], 2, ["cannot be read"]),
    (R, "server that is not there", ["label", "/vsicurl/http://127.0.0.1:9/a.tif", *LABELS], 2,
     ["cannot be read"]),
    (R, "vector file", ["label", "{d}/existing.gpkg", *LABELS], 2, ["cannot be read"]),
    (R, "band 4 of 3", ["label", "{scene}", *LABELS, "--bands", "4,3,2"], 2, ["Band 4 does not exist", "1 to 3"]),
    (R, "band 0", ["label", "{scene}", *LABELS, "--bands", "0"], 2, ["band 0", "numbered from 1"]),
    (R, "negative band", ["label", "{scene}", *LABELS, "--bands", "-1,2,3"], 2,
     ["--bands '-1,2,3' holds band -1", "numbered from 1", "positive band numbers"]),
    (R, "bands not numbers", ["label", "{scene}", *LABELS, "--bands", "r,g,b"], 2, ["are not band numbers"]),
    (R, "two bands", ["label", "{scene}", *LABELS, "--bands", "1,2"], 2, ["2 bands were given", "three"]),
    # --- parameters
    (P, "no classes", ["label", "{scene}"], 2, ["No classes given", "--preset"]),
    (P, "empty labels", ["label", "{scene}", "--labels", ""], 2, ["label list is empty"]),
    (P, "one label", ["label", "{scene}", "--labels", "water"], 2, ["Only one label", "at least two"]),
    (P, "repeated label", ["label", "{scene}", "--labels", "water,trees,Water"], 2, ["more than once"]),
    (P, "empty label", ["label", "{scene}", "--labels", "water,,trees"], 2, ["empty name", "',,'"]),
    (P, "label with |", ["label", "{scene}", "--labels", "road|street,water"], 2, ["contains '|'"]),
    (P, "labels and preset", ["label", "{scene}", *LABELS, "--preset", "urban"], 2,
     ["Both --labels and --preset"]),
    (P, "unknown preset", ["label", "{scene}", "--preset", "forests"], 2, ["Unknown preset", "land-cover"]),
    (P, "labels file missing", ["label", "{scene}", "--labels-file", "{d}/none.txt"], 2, ["File not found"]),
    (P, "labels file is a folder", ["label", "{scene}", "--labels-file", "{d}/folder"], 2, ["is a folder"]),
    (P, "labels file latin-1", ["label", "{scene}", "--labels-file", "{d}/labels_latin1.txt"], 2,
     ["not UTF-8 text", "Save it as UTF-8"]),
    (P, "labels file binary", ["label", "{scene}", "--labels-file", "{d}/labels_binary.txt"], 2, ["binary file"]),
    (P, "labels file with a tab", ["label", "{scene}", "--labels-file", "{d}/labels_tab.txt"], 2,
     ["control character"]),
    (P, "labels file empty", ["label", "{scene}", "--labels-file", "{d}/labels_empty.txt"], 2,
     ["holds no class names"]),
    (P, "labels json broken", ["label", "{scene}", "--labels-file", "{d}/labels_bad.json"], 2,
     ["is not valid JSON"]),
    (P, "labels json not a list", ["label", "{scene}", "--labels-file", "{d}/labels_dict.json"], 2,
     ["JSON list of strings"]),
    (P, "templates file empty", ["label", "{scene}", *LABELS, "--templates-file", "{d}/templates_empty.txt"], 2,
     ["holds no templates"]),
    (P, "count template without {count}", ["count", "{scene}", "--object", "car", "--templates-file",
                                           "{d}/count_templates.txt"], 2, ["{count}"]),
    (P, "top-k 0", ["label", "{scene}", *LABELS, "--top-k", 0], 2, ["top_k 0 is out of range"]),
    (P, "threshold above 1", ["label", "{scene}", *LABELS, "--threshold", 1.5], 2, ["threshold", "from 0 to 1"]),
    (P, "threshold not a number", ["label", "{scene}", *LABELS, "--threshold", "high"], 2,
     ["--threshold: invalid float value"]),
    (P, "tile size 0", ["label", "{scene}", *LABELS, "--tile-size", 0], 2, ["not positive"]),
    (P, "tile size negative", ["label", "{scene}", *LABELS, "--tile-size", -5], 2, ["--tile-size -5 is not positive"]),
    (P, "tile size fraction", ["label", "{scene}", *LABELS, "--tile-size", 224.5], 2,
     ["not a whole number of pixels"]),
    (P, "tile larger than raster", ["label", "{scene}", *LABELS, "--tile-size", 5000], 2,
     ["larger than the raster", "at most 718 px"]),
    (P, "tile below minimum", ["label", "{scene}", *LABELS, "--tile-size", 4], 2, ["below the 8 px minimum"]),
    (P, "tile unit km", ["label", "{scene}", *LABELS, "--tile-unit", "km"], 2, ["--tile-unit: invalid choice"]),
    (P, "metres below minimum", ["label", "{scene}", *LABELS, "--tile-size", 1000, "--tile-unit", "m"], 2,
     ["1000 m (3 px on this raster)", "minimum"]),
    (P, "overlap 1", ["label", "{scene}", *LABELS, "--overlap", 1], 2, ["--overlap 1 is outside 0..0.95"]),
    (P, "overlap above the ceiling", ["label", "{scene}", *LABELS, "--overlap", 0.96], 2, ["outside 0..0.95"]),
    (P, "overlap negative", ["label", "{scene}", *LABELS, "--overlap", -0.1], 2, ["--overlap -0.1"]),
    (P, "runaway plan", ["label", "{scene}", *LABELS, "--overlap", 0.95, "--tile-size", 16], 2,
     ["545,528 tiles", "--yes"]),
    (P, "batch size 0", ["label", "{scene}", *LABELS, "--batch-size", 0], 2, ["--batch-size 0 is below 1"]),
    (P, "bbox three values", ["label", "{scene}", *LABELS, "--bbox", "1,2,3"], 2, ["has 3 values"]),
    (P, "bbox not numbers", ["label", "{scene}", *LABELS, "--bbox", "a,b,c,d"], 2, ["not a number"]),
    (P, "bbox empty", ["label", "{scene}", *LABELS, "--bbox", "3,2,1,4"], 2, ["is empty"]),
    (P, "bbox outside", ["label", "{scene}", *LABELS, "--bbox", "-11858000,1,-11857000,2"], 2,
     ["No tiles", "inside the raster"]),
    (P, "bbox unknown CRS", ["label", "{scene}", *LABELS, "--bbox", "1,2,3,4,EPSG:99999999"], 2,
     ["coordinate reference system"]),
    (P, "bbox and polygons", ["label", "{scene}", *LABELS, "--bbox", "1,2,3,4", "--polygons", "{d}/points.geojson"],
     2, ["Both --bbox and --polygons"]),
    (P, "polygons missing", ["label", "{scene}", *LABELS, "--polygons", "{d}/none.gpkg"], 2, ["file not found"]),
    (P, "polygons not a vector", ["label", "{scene}", *LABELS, "--polygons", "{d}/notvector.gpkg"], 2,
     ["not a vector file"]),
    (P, "polygons empty", ["label", "{scene}", *LABELS, "--polygons", "{d}/nothing.gpkg"], 2,
     ["holds no geometries"]),
    (P, "polygons are points", ["label", "{scene}", *LABELS, "--polygons", "{d}/points.geojson"], 2,
     ["is not a polygon"]),
    (P, "count without object", ["count", "{scene}", "--object", " "], 2, ["object to count is empty"]),
    (P, "max count 0", ["count", "{scene}", "--object", "car", "--max-count", 0], 2, ["max_count 0"]),
    (P, "max count 1000", ["count", "{scene}", "--object", "car", "--max-count", 1000], 2, ["out of range"]),
    (P, "empty query", ["search", "{scene}", "--query", ""], 2, ["query is empty"]),
    (P, "search threshold 2", ["search", "{scene}", "--query", "a lake", "--threshold", 2], 2,
     ["similarity threshold", "-1 to 1"]),
    (P, "search top-k 0", ["search", "{scene}", "--query", "a lake", "--top-k", 0], 2, ["top_k 0"]),
    (P, "cuda without a GPU", ["label", "{scene}", *LABELS, "--device", "cuda"], 2, ["no CUDA support"]),
    (P, "unknown device", ["label", "{scene}", *LABELS, "--device", "tpu"], 2, ["--device: invalid choice"]),
    (P, "no command", [], 2, ["the following arguments are required", "remoteclip --help"]),
    (P, "unknown option", ["label", "{scene}", *LABELS, "--colour", "red"], 2,
     ["unrecognized arguments: --colour red", "--help"]),
    # --- bundles
    (B, "missing", ["label", "{scene}", *LABELS, "--model", "{d}/nobundle"], 2, ["Model bundle not found"]),
    (B, "plain file", ["label", "{scene}", *LABELS, "--model", "{d}/plain.bin"], 2,
     ["neither a bundle folder nor a zip"]),
    (B, "no manifest", ["label", "{scene}", *LABELS, "--model", "{d}/b_nomanifest"], 2, ["no manifest.json"]),
    (B, "manifest not JSON", ["label", "{scene}", *LABELS, "--model", "{d}/b_json"], 2, ["not valid JSON"]),
    (B, "other format", ["label", "{scene}", *LABELS, "--model", "{d}/b_format"], 2,
     ["not a RemoteCLIP bundle manifest"]),
    (B, "newer format", ["label", "{scene}", *LABELS, "--model", "{d}/b_version"], 2, ["format_version 2"]),
    (B, "missing key", ["label", "{scene}", *LABELS, "--model", "{d}/b_lacks"], 2, ["lacks logit_scale"]),
    (B, "huge image size", ["label", "{scene}", *LABELS, "--model", "{d}/b_huge"], 2, ["invalid image.size"]),
    (B, "graph outside", ["label", "{scene}", *LABELS, "--model", "{d}/b_escape"], 2, ["invalid graphs.fp32.image"]),
    (B, "negative logit scale", ["label", "{scene}", *LABELS, "--model", "{d}/b_logit"], 2,
     ["invalid logit_scale"]),
    (B, "vocabulary missing", ["label", "{scene}", *LABELS, "--model", "{d}/b_novocab"], 2,
     ["incomplete: missing bpe_simple_vocab_16e6.txt.gz"]),
    (B, "image graph damaged", ["label", "{scene}", *LABELS, "--model", "{d}/b_badgraph"], 2, ["image_fp32.onnx"]),
    (B, "text graph damaged", ["label", "{scene}", *LABELS, "--model", "{d}/b_badtext"], 2, ["text_fp32.onnx"]),
    (B, "vocabulary damaged", ["label", "{scene}", *LABELS, "--model", "{d}/b_badvocab"], 2,
     ["bpe_simple_vocab_16e6.txt.gz"]),
    (B, "no fp16 graphs", ["label", "{scene}", *LABELS, "--model", "{d}/b_nofp16", "--precision", "fp16"], 2,
     ["has no fp16 graphs"]),
    (B, "damaged zip", ["label", "{scene}", *LABELS, "--model", "{d}/damaged.rclip.zip"], 2, ["damaged"]),
    (B, "zip with an unsafe path", ["label", "{scene}", *LABELS, "--model", "{d}/unsafe.rclip.zip"], 2,
     ["unsafe path"]),
    (B, "zip without a bundle", ["label", "{scene}", *LABELS, "--model", "{d}/nomanifest.rclip.zip"], 2,
     ["holds no manifest.json"]),
    # --- outputs
    (O, "not a vector format", ["label", "{scene}", *LABELS, "-o", "{d}/out.txt"], 2,
     ["neither a GeoPackage nor a Shapefile"]),
    (O, "folder missing", ["label", "{scene}", *LABELS, "-o", "{d}/nofolder/out.gpkg"], 2, ["does not exist"]),
    (O, "output is a folder", ["label", "{scene}", *LABELS, "-o", "{d}/adir.gpkg"], 2, ["is a folder"]),
    (O, "output is the input", ["label", "{d}/raster.gpkg", *LABELS, "-o", "{d}/raster.gpkg"], 2, ["input"]),
    (O, "output links to the input", ["label", "{d}/raster.gpkg", *LABELS, "-o", "{d}/scene_link.gpkg"], 2,
     ["input"]),
    (O, "existing layer", ["label", "{scene}", *LABELS, "-o", "{d}/existing.gpkg", "--layer", "labels"], 2,
     ["--overwrite"]),
    (O, "existing shapefile", ["label", "{scene}", *LABELS, "-o", "{d}/existing.shp"], 2, ["--overwrite"]),
    (O, "reserved layer name", ["label", "{scene}", *LABELS, "-o", "{d}/new.gpkg", "--layer", "gpkg_contents"], 2,
     ["reserved", "Choose another layer name"]),
    (O, "under a file", ["label", "{scene}", *LABELS, "-o", "{d}/afile/out.gpkg"], 2, ["afile"]),
    (O, "in /proc", ["label", "{scene}", *LABELS, "-o", "/proc/out.gpkg"], 2, ["/proc"]),
    (O, "read-only folder", ["label", "{scene}", *LABELS, "-o", "{d}/readonly/out.gpkg"], 2, ["readonly"]),
]

for _c in CASES:
    assert len(_c) == 5, _c
assert len(CASES) >= 80, len(CASES)


def _fill(arg, sandbox):
    return str(arg).format(**sandbox) if isinstance(arg, str) else str(arg)


@pytest.mark.parametrize("kind,name,argv,status,words", CASES, ids=[f"{c[0]}: {c[1]}" for c in CASES])
def test_bad_input(sandbox, capsys, kind, name, argv, status, words):
    args = [_fill(a, sandbox) for a in argv]
    if "--model" not in args and args and args[0] in ("label", "count", "search", "embed"):
        args += ["--model", sandbox["bundle"]]
    if "--no-cache" not in args:
        args += ["--no-cache"]
    before = _tree(sandbox["d"])
    try:
        rc = cli.main(args)
    except SystemExit as e:   # argparse's own errors (usage line + message, exit 2)
        rc = e.code
    err = capsys.readouterr().err
    assert rc == status, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], lines[0]
    assert "Fix:" in lines[0]
    assert _tree(sandbox["d"]) == before, "a file in the sandbox was written, removed or changed"


# -------------------------------------------------------------------------------------------- faults

def test_ctrl_c_mid_run_leaves_no_output(sandbox, capsys, monkeypatch, tmp_path):
    from core.runtime.inference import Encoder

    real = Encoder.encode_images
    calls = []

    def interrupted(self, x):
        calls.append(len(x))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, x)

    monkeypatch.setattr(Encoder, "encode_images", interrupted)
    out = tmp_path / "labels.gpkg"
    before = _tree(sandbox["d"])
    rc = cli.main(["label", sandbox["scene"], *LABELS, "--model", sandbox["bundle"], "--tile-size", 64,
                   "--batch-size", 8, "--no-cache", "-q", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 130 and "cancelled; no output written" in err
    assert not out.exists() and os.listdir(tmp_path) == []
    assert _tree(sandbox["d"]) == before


def test_a_damaged_cache_entry_is_recomputed_not_fatal(sandbox, capsys, tmp_path):
    cache = tmp_path / "cache"
    args = ["label", sandbox["scene"], *LABELS, "--model", sandbox["bundle"], "--tile-size", 256,
            "--cache-dir", str(cache), "-q"]
    assert cli.main(args) == 0
    first = capsys.readouterr().out
    (npz,) = cache.glob("*.npz")
    npz.write_bytes(npz.read_bytes()[:100])   # a disk that filled up mid-write
    assert cli.main(args) == 0
    second = capsys.readouterr().out
    assert "from the cache" not in second
    assert first.splitlines()[1] == second.splitlines()[1]   # the same labels
    assert cli.main(args) == 0 and "from the cache" in capsys.readouterr().out


def test_a_band_below_1_is_refused_as_the_band_list_it_is():
    """--bands -1,2,3 reaches the band check (not argparse's 'expected one argument'), typed, naming the option."""
    from core.errors import InvalidInput
    from core.geodata.raster import parse_bands

    for text, low in (("-1,2,3", -1), ("3,0,1", 0)):
        with pytest.raises(InvalidInput) as err:
            parse_bands(text, "--bands")
        assert err.value.param == "bands" and f"band {low}" in err.value.problem and err.value.fix
    assert cli._join_negative_values(["--bands", "-1,2,3"]) == ["--bands=-1,2,3"]
