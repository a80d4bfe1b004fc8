"""Inputs that used to give silent wrong answers, tracebacks or runaway work (data-safety issue):
rasters without a geotransform, cache keys of archives, servers and VRTs, labels files, the
library's dataclasses, damaged cache entries, hostile manifests and checkpoints, huge plans."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import require
from gdal_file_server import FileServer
from osgeo import gdal, osr

from core.cache import EmbeddingCache
from core.errors import InvalidInput, ModelError
from core.pipeline import CountTask, Job, LabelTask, RunOptions, SearchTask, TileSpec, plan_job, run_job

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rgb_byte(data_dir) -> str:
    return str(data_dir / "geotiff" / "rasterio_RGB.byte.tif")


def _job(raster, bundle, cache=None, task=None, **kw):
    tiles = kw.pop("tiles", TileSpec(size=256))
    return Job(raster=raster, task=task or LabelTask(["water", "land", "clouds"]),
               run=RunOptions(model=str(bundle), cache_dir="" if cache is None else str(cache)), tiles=tiles, **kw)


def _cli(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "core", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env)


def _one_error_line(proc) -> str:
    """exit 2 and a single 'remoteclip: error: ... Fix: ...' line, no traceback."""
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in proc.stderr
    err = [ln for ln in lines if ln.startswith("remoteclip: error:")]
    assert len(err) == 1 and "Fix:" in err[0], proc.stderr
    return err[0]


def _write_rgb(path, width=300, height=300, gt=(500000.0, 1.0, 0.0, 100000.0, 0.0, -1.0), epsg=32636,
               seed=0, nodata=None, gcps=None):
    rng = np.random.default_rng(seed)
    ds = gdal.GetDriverByName("GTiff").Create(str(path), width, height, 3, gdal.GDT_Byte)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    if gcps:
        ds.SetGCPs(gcps, srs.ExportToWkt())
    else:
        if gt is not None:
            ds.SetGeoTransform(gt)
        ds.SetProjection(srs.ExportToWkt())
    for b in range(3):
        band = ds.GetRasterBand(b + 1)
        if nodata is not None:
            band.SetNoDataValue(nodata)
            band.Fill(nodata)
        else:
            band.WriteArray(rng.integers(0, 256, (height, width), dtype=np.uint8))
    ds = None
    return str(path)


# ------------------------------------------------------------------------------- georeferencing

def test_a_raster_with_a_crs_but_no_geotransform_is_refused(tmp_path, tiny_bundle):
    # before: labelled in pixel coordinates tagged as EPSG:4326, upside down
    path = _write_rgb(tmp_path / "nogt.tif", gt=None, epsg=4326)
    with pytest.raises(InvalidInput) as e:
        run_job(_job(path, tiny_bundle, tiles=TileSpec(size=64)))
    assert e.value.path == str(path)
    err = _one_error_line(_cli("label", path, "--labels", "a,b", "--model", tiny_bundle, "--no-cache"))
    assert "Georeferencer" in err and "gdal_edit" not in err


def test_a_gcp_only_raster_is_refused_with_a_gdalwarp_command_that_works(tmp_path, tiny_bundle):
    gcps = [gdal.GCP(32.50, 0.35, 0, 0, 0), gdal.GCP(32.51, 0.35, 0, 299, 0), gdal.GCP(32.50, 0.34, 0, 0, 299),
            gdal.GCP(32.51, 0.34, 0, 299, 299)]
    path = _write_rgb(tmp_path / "gcp.tif", epsg=4326, gcps=gcps)
    proc = _cli("label", path, "--labels", "a,b", "--model", tiny_bundle, "--no-cache", "--tile-size", 64)
    err = _one_error_line(proc)
    assert "4 ground control points" in err
    cmd = re.search(r"`(gdalwarp [^`]+)`", err).group(1)
    assert "-t_srs EPSG:32636" in cmd   # the UTM zone of Kampala, where the GCPs are
    # the fix as the message words it: run it (warped.tif in the working folder), then label the result
    subprocess.run(shlex.split(cmd), check=True, cwd=tmp_path, capture_output=True)
    warped = tmp_path / "warped.tif"
    res = run_job(_job(str(warped), tiny_bundle, tiles=TileSpec(size=64)))
    assert res.n_tiles > 0
    with rasterio.open(warped) as ds:
        assert ds.crs.to_epsg() == 32636 and not ds.transform.is_identity


# ------------------------------------------------------------------------------------ cache keys

def test_a_vsizip_raster_is_keyed_by_its_archive(tmp_path, tiny_bundle, rgb_byte):
    # before: keyed by the URI alone, so a changed zip gave the old embeddings
    cache = tmp_path / "cache"
    tif = tmp_path / "scene.tif"
    shutil.copy(rgb_byte, tif)
    archive = tmp_path / "scene.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(tif, "scene.tif")
    uri = f"/vsizip/{archive}/scene.tif"
    first = run_job(_job(uri, tiny_bundle, cache))
    assert not first.cache_hit and first.images_encoded > 0
    assert run_job(_job(uri, tiny_bundle, cache)).cache_hit
    with rasterio.open(tif, "r+") as ds:   # other pixels, same file name inside the zip
        ds.write(255 - ds.read())
    os.unlink(archive)
    with zipfile.ZipFile(archive, "w") as z:
        z.write(tif, "scene.tif")
    second = run_job(_job(uri, tiny_bundle, cache))
    assert not second.cache_hit and second.images_encoded > 0
    assert not np.allclose(first.embeddings, second.embeddings)


def test_a_vrt_is_keyed_by_its_sources(tmp_path, tiny_bundle, rgb_byte):
    # before: keyed by the .vrt file alone, so an edited source went unnoticed
    cache = tmp_path / "cache"
    src = tmp_path / "source.tif"
    shutil.copy(rgb_byte, src)
    vrt = tmp_path / "mosaic.vrt"
    gdal.BuildVRT(str(vrt), [str(src)])
    assert not run_job(_job(str(vrt), tiny_bundle, cache)).cache_hit
    assert run_job(_job(str(vrt), tiny_bundle, cache)).cache_hit
    vrt_bytes = vrt.read_bytes()
    with rasterio.open(src, "r+") as ds:
        ds.write(255 - ds.read())
    assert vrt.read_bytes() == vrt_bytes
    assert not run_job(_job(str(vrt), tiny_bundle, cache)).cache_hit


def test_a_raster_over_http_is_keyed_by_the_servers_validators(tmp_path, tiny_bundle, rgb_byte):
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(rgb_byte, served / "scene.tif")
    cache = tmp_path / "cache"
    common = ("--labels", "water,land", "--model", tiny_bundle, "--tile-size", 256, "--cache-dir", cache, "-q")
    with FileServer(served) as srv:
        uri = "/vsicurl/" + srv.url("scene.tif")
        assert "from the cache" not in _cli("label", uri, *common).stdout
        assert "from the cache" in _cli("label", uri, *common).stdout
        with rasterio.open(served / "scene.tif", "r+") as ds:   # same size, new ETag and date
            ds.write(255 - ds.read())
        out = _cli("label", uri, *common)
        assert out.returncode == 0 and "from the cache" not in out.stdout
    with FileServer(served, validators=False) as srv:
        # nothing tells when the content changes: not cached, and the run says so
        res = run_job(_job("/vsicurl/" + srv.url("scene.tif"), tiny_bundle, cache))
        res2 = run_job(_job("/vsicurl/" + srv.url("scene.tif"), tiny_bundle, cache))
        assert not res2.cache_hit and res2.images_encoded > 0
        assert any("not cached" in w for w in res.warnings)


@pytest.mark.parametrize("damage,why", [
    (lambda k, e: (k - 1, e), "negative index"),
    (lambda k, e: (k + 10_000, e), "index beyond the grid"),
    (lambda k, e: (k[::-1].copy(), e), "indices out of order"),
    (lambda k, e: (k, np.where(np.arange(e.size).reshape(e.shape) == 3, np.nan, e).astype(np.float32)), "NaN"),
    (lambda k, e: (k, e[:, :-1].copy()), "wrong width"),
    (lambda k, e: (k, e * 3), "not unit vectors"),
    (lambda k, e: (k[:-1].copy(), e), "shapes disagree"),
])
def test_a_cache_entry_that_does_not_fit_is_a_miss_and_rewritten(tmp_path, tiny_bundle, rgb_byte, damage, why):
    cache = tmp_path / "cache"
    first = run_job(_job(rgb_byte, tiny_bundle, cache))
    (npz,) = cache.glob("*.npz")
    with np.load(npz) as z:
        kept, emb = damage(z["kept"], z["emb"])
    np.savez(npz, kept=kept, emb=emb)
    again = run_job(_job(rgb_byte, tiny_bundle, cache))
    assert not again.cache_hit, why
    assert [r["label"] for r in again.records] == [r["label"] for r in first.records]
    assert run_job(_job(rgb_byte, tiny_bundle, cache)).cache_hit   # rewritten whole


def test_a_source_without_a_path_is_not_cached():
    class WebLike:   # what the plugin's QGIS source of an XYZ layer looks like to the cache
        name = "type=xyz&url=https://tile.example/{z}/{x}/{y}.png"
        path = None
        width = height = 512
        count = 3
        transform = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
        crs_wkt = "EPSG:3857"

    assert EmbeddingCache("/nonexistent").key(WebLike(), TileSpec(), [1, 2, 3], _Identity(), "m") is None


class _Identity:
    @staticmethod
    def key():
        return "{}"


# ---------------------------------------------------------------------------------------- labels

def test_a_labels_file_with_a_byte_order_mark_gives_clean_names(tmp_path, tiny_bundle, rgb_byte):
    # before: the first class was "\ufeffwater"
    f = tmp_path / "labels.txt"
    f.write_bytes("water\ntrees\n".encode("utf-8-sig"))
    out = tmp_path / "o.gpkg"
    proc = _cli("label", rgb_byte, "--labels-file", f, "--model", tiny_bundle, "--no-cache", "-q", "-o", out)
    assert proc.returncode == 0, proc.stderr
    labels = {r["label"] for r in _features(out)}
    assert labels <= {"water", "trees"} and labels
    j = tmp_path / "labels.json"
    j.write_bytes(json.dumps(["water", "trees"]).encode("utf-8-sig"))
    assert _cli("label", rgb_byte, "--labels-file", j, "--model", tiny_bundle, "--no-cache", "-q").returncode == 0


def _features(path):
    from osgeo import ogr

    ds = ogr.Open(str(path))
    lyr = ds.GetLayer(0)
    return [{k: f.GetField(k) for k in f.keys()} for f in lyr]  # noqa: SIM118 (an OGR feature iterates values)


@pytest.mark.parametrize("content,match", [
    (b"water\ttrees\nroad\n", "control character"),
    ("forêt\nrivière\n".encode("latin-1"), "not UTF-8 text"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary file"),
    (b"road|street\nwater\n", "contains '|'"),
    (b"# only a comment\n\n", "holds no class names"),
])
def test_bad_labels_files(tmp_path, tiny_bundle, rgb_byte, content, match):
    f = tmp_path / "labels.txt"
    f.write_bytes(content)
    err = _one_error_line(_cli("label", rgb_byte, "--labels-file", f, "--model", tiny_bundle, "--no-cache"))
    assert match in err


def test_an_empty_templates_file_is_refused_not_replaced_by_the_defaults(tmp_path, tiny_bundle, rgb_byte):
    f = tmp_path / "templates.txt"
    f.write_text("# nothing yet\n")
    err = _one_error_line(_cli("label", rgb_byte, "--labels", "a,b", "--templates-file", f, "--model",
                               tiny_bundle, "--no-cache"))
    assert "holds no templates" in err


def test_top_labels_cannot_be_ambiguous():
    with pytest.raises(InvalidInput) as e:
        LabelTask(["road|street", "water"])
    assert e.value.param == "labels"


# ----------------------------------------------------------------------------- library dataclasses

@pytest.mark.parametrize("make,param", [
    (lambda: LabelTask("cat"), "labels"),            # before: classes c, a, t
    (lambda: LabelTask(["water"]), "labels"),
    (lambda: LabelTask(["a", "b"], top_k=0), "top_k"),
    (lambda: LabelTask(["a", "b"], threshold=1.5), "threshold"),
    (lambda: LabelTask(["a", "b"], templates="a photo of {}"), "templates"),
    (lambda: LabelTask(["a", "b"], templates=[]), "templates"),
    (lambda: SearchTask("pools", top_k="abc"), "top_k"),
    (lambda: SearchTask("pools", top_k=2.5), "top_k"),
    (lambda: SearchTask("  "), "query"),
    (lambda: SearchTask("pools", threshold=float("nan")), "threshold"),
    (lambda: CountTask("car", max_count=True), "max_count"),
    (lambda: CountTask("car", max_count=101), "max_count"),
    (lambda: CountTask("car", templates=["no count here"]), "templates"),
    (lambda: RunOptions("m", batch_size=0), "batch_size"),
    (lambda: RunOptions("m", device="tpu"), "device"),
    (lambda: RunOptions("m", precision="int4"), "precision"),
    (lambda: TileSpec(size=224.5), "size"),
    (lambda: TileSpec(size="big"), "size"),
    (lambda: TileSpec(bands="3,2,1"), "bands"),
    (lambda: Job(raster=None, task=LabelTask(["a", "b"]), run=RunOptions("m")), "raster"),
    (lambda: Job(raster="x.tif", task="label", run=RunOptions("m")), "task"),
    (lambda: Job(raster="x.tif", task=LabelTask(["a", "b"]), run={"model": "m"}), "run"),
    (lambda: Job(raster="x.tif", task=LabelTask(["a", "b"]), run=RunOptions("m"), max_tiles=0), "max_tiles"),
])
def test_the_librarys_dataclasses_are_checked_when_made(make, param):
    """A bad value is an InvalidInput naming its parameter."""
    with pytest.raises(InvalidInput) as e:
        make()
    assert e.value.param == param and e.value.problem and e.value.fix


def test_every_checked_option_names_its_param():
    """The options checked by the shared number/choice checks name themselves too (a front-end shows the error
    under that field): a value out of range or unknown, one per option."""
    from core.pipeline import ClassifyTask
    from core.samples import Samples
    from core.tasks import ChangeTask

    samples = Samples(["POINT (0 0)", "POINT (1 1)"], ["a", "b"])
    cases = {
        "threads": lambda: RunOptions("m", threads=0),
        "readers": lambda: RunOptions("m", readers=0),
        "text_weight": lambda: SearchTask("pools", text_weight=11),
        "unlike_weight": lambda: SearchTask("pools", unlike_weight=-1),
        "resampling": lambda: ChangeTask(after="b.tif", resampling="magic"),
        "stand_out": lambda: ChangeTask(after="b.tif", stand_out=9),
        "threshold": lambda: ChangeTask(after="b.tif", threshold=5),
        "top_k": lambda: ChangeTask(after="b.tif", top_k=0),
        "suggest": lambda: ClassifyTask(samples=samples, suggest=-1),
        "method": lambda: ClassifyTask(samples=samples, method="forest"),
        "k": lambda: ClassifyTask(samples=samples, method="knn", k=0),
        "folds": lambda: ClassifyTask(samples=samples, folds=1),
        "seed": lambda: ClassifyTask(samples=samples, seed=-1),
        "unit": lambda: TileSpec(size=64, unit="km"),
        "edge": lambda: TileSpec(size=64, edge="wrap"),
        "overlap": lambda: TileSpec(size=64, overlap="lots"),
        "bands": lambda: TileSpec(bands=[3, "red", 1]),
    }
    for param, make in cases.items():
        with pytest.raises(InvalidInput) as e:
            make()
        assert e.value.param == param and e.value.problem and e.value.fix, param


def test_an_output_crs_gdal_does_not_know_names_out_crs(tiny_bundle, rgb_byte):
    with pytest.raises(InvalidInput) as e:
        run_job(_job(rgb_byte, tiny_bundle, out_crs="EPSG:999999"))
    assert e.value.param == "out_crs" and "'EPSG:999999'" in e.value.problem


def test_values_typed_into_a_ui_are_read_as_numbers():
    assert SearchTask("pools", top_k="5", threshold="0.2").top_k == 5
    assert TileSpec(size=224.0).size == 224 and TileSpec(size="50", unit="M").unit == "m"
    assert LabelTask([" water ", "\ufefftrees"]).labels == ["water", "trees"]


def test_a_field_changed_after_construction_is_checked_again_by_run_job(tiny_bundle, rgb_byte):
    job = _job(rgb_byte, tiny_bundle)
    job.task.top_k = "many"
    with pytest.raises(InvalidInput) as e:
        run_job(job)
    assert e.value.param == "top_k" and "'many'" in e.value.problem


# -------------------------------------------------------------------------------------- manifests

def _edited_bundle(tiny_bundle, tmp_path, edit) -> Path:
    out = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, out)
    m = json.loads((out / "manifest.json").read_text())
    edit(m)
    (out / "manifest.json").write_text(json.dumps(m))
    return out


@pytest.mark.parametrize("edit,field", [
    (lambda m: m["image"].update(size=[100000, 100000]), "image.size"),   # before: ~24 GB, then killed
    (lambda m: m["image"].update(size=0), "image.size"),
    (lambda m: m["image"].update(std=[0, 0, 0]), "image.std"),
    (lambda m: m["image"].update(mean=[0.5, 0.5]), "image.mean"),
    (lambda m: m["image"].update(resize_mode="stretch"), "image.resize_mode"),
    (lambda m: m["text"].update(context_length="77"), "text.context_length"),
    (lambda m: m["text"].update(eot_token_id=10 ** 9), "text.eot_token_id"),
    (lambda m: m.update(logit_scale=float("inf")), "logit_scale"),
    (lambda m: m.update(embed_dim=-1), "embed_dim"),
    (lambda m: m.update(activation="relu"), "activation"),
    (lambda m: m["graphs"]["fp32"].update(image="../../../../etc/passwd"), "graphs.fp32.image"),
    (lambda m: m["text"].update(vocab_file="/etc/passwd"), "text.vocab_file"),
    (lambda m: m.update(image=[224, 224]), "image"),
    (lambda m: m.update(text="clip"), "text"),
    (lambda m: m.update(graphs=["image.onnx"]), "graphs"),
])
def test_every_manifest_field_is_checked_before_a_tile_is_read(tmp_path, tiny_bundle, rgb_byte, edit, field):
    bundle = _edited_bundle(tiny_bundle, tmp_path, edit)
    cache = tmp_path / "cache"
    err = _one_error_line(_cli("label", rgb_byte, "--labels", "a,b", "--model", bundle, "--cache-dir", cache))
    assert f"invalid {field}" in err or f"invalid {field.split('.')[0]}" in err
    assert not cache.exists()   # nothing was read or encoded


def test_a_symlink_in_a_bundle_may_not_lead_outside_it(tmp_path, tiny_bundle, rgb_byte):
    out = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, out)
    elsewhere = tmp_path / "elsewhere.onnx"
    shutil.move(out / "image_fp32.onnx", elsewhere)
    (out / "image_fp32.onnx").symlink_to(elsewhere)
    with pytest.raises(ModelError) as e:
        run_job(_job(rgb_byte, out))
    assert e.value.path == str(out / "image_fp32.onnx")   # the link that leads out, named


def test_a_malformed_manifest_is_one_line(tmp_path, tiny_bundle, rgb_byte):
    out = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, out)
    for text in ("{not json", "[1, 2, 3]", '{"format": "remoteclip-onnx-bundle", "format_version": 1}'):
        (out / "manifest.json").write_text(text)
        err = _one_error_line(_cli("label", rgb_byte, "--labels", "a,b", "--model", out, "--no-cache"))
        assert "manifest" in err


# ------------------------------------------------------------------------------------ checkpoints

class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def test_resume_never_runs_code_from_a_crafted_checkpoint(tmp_path):
    try:
        import torch
    except ImportError as e:  # outside CI a runtime-only set-up skips; in CI a missing torch fails
        require(False, f"torch missing ({e}); run scripts/setup.sh (it installs the training group)")
    from training.pretrain import load_resume_state

    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoint_last.pt"
    torch.save({"model": {}, "epoch": 0, "step": 0, "x": _Payload(marker)}, path)
    with pytest.raises(ModelError) as e:
        load_resume_state(path)
    assert e.value.path == str(path)
    assert not marker.exists()
    # what the tool itself writes still loads
    torch.save({"model": {"w": torch.ones(2)}, "epoch": 1, "step": 7, "rng": {"python": (3, (1, 2), None)}},
               path)
    assert load_resume_state(path)["step"] == 7


# --------------------------------------------------------------------------------- plans and limits

def test_a_runaway_plan_is_refused_before_any_pixel_is_read(tmp_path, tiny_bundle, rgb_byte):
    # before: --overlap 0.999 --tile-size 64 planned 1.4 million tiles (about 2 hours) in silence; the overlap
    # ceiling (0.95) now refuses that, and the tile limit still catches tiny tiles at the ceiling
    cache = tmp_path / "cache"
    err = _one_error_line(_cli("label", rgb_byte, "--labels", "a,b", "--model", tiny_bundle, "--overlap", 0.95,
                               "--tile-size", 16, "--cache-dir", cache))
    assert "545,528 tiles of 16 x 16 px" in err and "--yes" in err
    assert not cache.exists()


def test_the_tile_limit_is_the_jobs_and_yes_lifts_it(tiny_bundle, rgb_byte, tmp_path):
    from core import cli

    # 7 x 6 tiles are planned; the 2 in the nodata corners of the scene are dropped after reading
    job = _job(rgb_byte, tiny_bundle, tiles=TileSpec(size=128), max_tiles=41)
    assert plan_job(job).n_tiles == 42
    with pytest.raises(InvalidInput) as e:
        run_job(job)
    assert e.value.param == "max_tiles" and "42 tiles" in e.value.problem
    job.max_tiles = 42
    assert run_job(job).n_tiles == 40
    args = cli._parser().parse_args(["label", rgb_byte, "--labels", "a,b", "--yes"])
    assert cli._job(args).max_tiles is None
    args = cli._parser().parse_args(["label", rgb_byte, "--labels", "a,b"])
    assert cli._job(args).max_tiles == cli.MAX_TILES


def test_the_plan_is_printed_with_a_rate_measured_here(tiny_bundle, rgb_byte, tmp_path):
    cache = tmp_path / "cache"
    first = _cli("label", rgb_byte, "--labels", "a,b", "--model", tiny_bundle, "--tile-size", 64,
                 "--cache-dir", cache)
    assert "plan: 156 tiles of 64 x 64 px\n" in first.stderr.replace("\r", "\n")
    rates = json.loads((cache / "rates.json").read_text())
    (entry,) = rates.values()
    rate = entry["rate"]
    assert rate > 0 and entry["tiles"] == 156
    second = _cli("label", rgb_byte, "--labels", "a,b", "--model", tiny_bundle, "--tile-size", 64,
                  "--cache-dir", cache)
    took = "under 1 s" if 156 / rate < 1 else f"about {156 / rate:.0f} s"   # never "about 0 s"
    assert f"plan: 156 tiles of 64 x 64 px, {took} at the {rate:.1f} tiles/s" in second.stderr


# ------------------------------------------------------------------------------------------ messages

def test_an_all_nodata_raster_says_why_there_are_no_tiles(tmp_path, tiny_bundle):
    path = _write_rgb(tmp_path / "empty.tif", nodata=0)
    err = _one_error_line(_cli("label", path, "--labels", "a,b", "--model", tiny_bundle, "--no-cache",
                               "--tile-size", 64))
    assert "Every tile of" in err and "is nodata (25 tiles read" in err


def test_a_one_pixel_raster(tmp_path, tiny_bundle):
    path = _write_rgb(tmp_path / "dot.tif", width=1, height=1)
    err = _one_error_line(_cli("label", path, "--labels", "a,b", "--model", tiny_bundle, "--no-cache"))
    assert "only 1 x 1 px: too small to tile" in err and "at most 1 px" not in err


def test_negative_coordinates_in_bbox(data_dir, tiny_bundle):
    shade = data_dir / "geotiff" / "rasterio_shade.tif"   # EPSG:3857, x about -11.85 million
    proc = _cli("label", shade, "--labels", "a,b", "--model", tiny_bundle, "--no-cache", "-q",
                "--bbox", "-11858000,4804000,-11850000,4813000", "--tile-size", 256)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^\d+ tiles", proc.stdout, re.M)


def test_a_missing_polygons_file_says_not_found(tiny_bundle, rgb_byte, tmp_path):
    err = _one_error_line(_cli("label", rgb_byte, "--labels", "a,b", "--model", tiny_bundle,
                               "--polygons", tmp_path / "none.gpkg"))
    assert "file not found" in err


def test_file_names_that_are_not_utf8(tmp_path, tiny_bundle, rgb_byte):
    bad = os.fsdecode(b"sc\xe8ne.tif")
    shutil.copy(rgb_byte, tmp_path / bad)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable.encode(), b"-m", b"core", b"label", bytes(tmp_path) + b"/sc\xe8ne.tif",
                           b"--labels", b"a,b", b"--model", bytes(tiny_bundle), b"--no-cache"],
                          capture_output=True, env=env)
    proc = subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(),
                                       proc.stderr.decode("utf-8", "replace"))
    assert "not UTF-8 text" in _one_error_line(proc)


def test_evaluate_without_a_task_or_with_a_damaged_image_fails(tmp_path, tiny_bundle, data_dir):
    from training import evaluate

    assert evaluate.main(["--bundle", str(tiny_bundle)]) == 2
    folder = tmp_path / "scenes"
    for cls in ("grass", "forest"):
        (folder / cls).mkdir(parents=True)
        for i, src in enumerate(sorted((data_dir / "scenes" / "rsscn7" / "aGrass").glob("*.jpg"))[:2]):
            shutil.copy(src, folder / cls / f"{i}.jpg")
    (folder / "forest" / "1.jpg").write_bytes(b"not a jpeg")
    assert evaluate.main(["--bundle", str(tiny_bundle), "--zeroshot", str(folder)]) == 2


def test_any_run_gives_a_first_rate_and_a_small_run_never_replaces_a_measured_one(tiny_bundle, rgb_byte, tmp_path):
    """The time estimate after any first run (issue 25: a 35-tile run never gave one), from a rate that a later
    run of fewer tiles than the one measured (and fewer than two batches) does not replace."""
    from core.pipeline import Job, LabelTask, RunOptions
    from core.pipeline.plan import known_rate, record_rate
    from core.runtime.bundle import load_bundle

    job = Job(raster=str(rgb_byte), task=LabelTask(["a", "b"]),
              run=RunOptions(model=str(tiny_bundle), cache_dir=str(tmp_path / "cache"), batch_size=8))
    bundle = load_bundle(job.run.model)
    assert known_rate(job, bundle) is None
    record_rate(job, bundle, "cpu", 3, 1.0)             # 3 tiles: a first estimate, better than none
    assert known_rate(job, bundle) == 3.0
    record_rate(job, bundle, "cpu", 40, 4.0)            # a larger run replaces it
    assert known_rate(job, bundle) == 10.0
    record_rate(job, bundle, "cpu", 15, 1.0)            # under 40 and under two batches (16): kept out
    assert known_rate(job, bundle) == 10.0
    record_rate(job, bundle, "cpu", 16, 1.0)            # two batches: the encoder dominates, it counts
    assert known_rate(job, bundle) == 16.0
    # a file of an earlier version (bare numbers) still gives its rate
    path = tmp_path / "cache" / "rates.json"
    path.write_text(json.dumps({k: 7.5 for k in json.loads(path.read_text())}))
    assert known_rate(job, bundle) == 7.5
