"""--int8-check RASTER (models convert / pull / int8, core.runtime.quantize.quantize_bundle): the int8 graphs'
agreement with fp32 measured on at least INT8_MIN_IMAGES tiles of the analyst's own raster (seeded, spread over
it, nodata skipped; static methods calibrate on other tiles of it), recorded with the raster's name, so that
precision auto (core.runtime.inference.choose_precision) can run int8 on that bundle. Real onnxruntime, real
GeoTIFFs, the tiny test bundle and a random tiny-test checkpoint."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
from test_models_pull import _run, _torch, entry, models, save_checkpoint, user_catalog  # noqa: F401 (fixture)

from core.errors import InvalidInput, OutputIsInput
from core.runtime.bundle import INT8_MIN_IMAGES, INT8_USABLE_TOP1, load_bundle
from core.runtime.inference import choose_precision
from core.runtime.quantize import (
    CALIBRATION_TILES,
    CHECK_TILES,
    MIN_CALIBRATION_TILES,
    quantize_bundle,
    raster_tiles,
)

Z20 = "kampala_oam_z20_mosaic_1536x1024.tif"


@pytest.fixture(scope="module")
def z20(data_dir):
    return data_dir / "orthomosaic" / Z20


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _with_top1(bundle, folder, top1):
    """A copy of ``bundle`` whose recorded agreement is ``top1`` (the rest of the record, n_images included, kept)."""
    shutil.copytree(bundle, folder)
    m = json.loads((folder / "manifest.json").read_text())
    m["quantization"]["int8"]["agreement_vs_fp32"]["top1_agree"] = top1
    (folder / "manifest.json").write_text(json.dumps(m))
    return load_bundle(folder)


def test_an_existing_bundle_checked_on_the_analysts_raster(tiny_bundle, int8_bundle, z20, tmp_path, capsys):
    """`remoteclip models int8 BUNDLE --int8-check RASTER --out OUT`: the record names the raster and holds at
    least INT8_MIN_IMAGES tiles (a ViT tower: dynamic, no calibration, every tile read is checked on); precision
    auto follows that figure on both sides of the bar, where the same figure on 16 synthetic images is not trusted."""
    before = _sha(z20)
    out = tmp_path / "tiny-int8"
    rc, printed, err = _run(capsys, "models", "int8", tiny_bundle, "--int8-check", z20, "--out", out, "-q")
    assert rc == 0, err
    assert _sha(z20) == before   # the raster is only read
    b = load_bundle(out)
    rec = b.manifest["quantization"]["int8"]
    agree = rec["agreement_vs_fp32"]
    assert agree["raster"] == Z20 and agree["seed"] == 0 and Z20 in agree["images"]
    assert agree["n_images"] == CALIBRATION_TILES + CHECK_TILES >= INT8_MIN_IMAGES
    assert rec["image"]["method"] == "dynamic" and "calibration_images" not in rec["image"]
    # the figure recorded is what choose_precision goes by, and the command line says what auto makes of it
    expected = "int8" if agree["top1_agree"] >= INT8_USABLE_TOP1 else "fp32"
    assert choose_precision(b, "auto", "cpu")[0] == expected
    assert choose_precision(b, "auto", "cpu")[1] in printed
    at_bar, below = _with_top1(out, tmp_path / "at", 0.99), _with_top1(out, tmp_path / "below", 0.9899)
    assert choose_precision(at_bar, "auto", "cpu")[0] == "int8"
    assert choose_precision(below, "auto", "cpu")[0] == "fp32"
    # the same 99 % measured on the 16 synthetic images of a plain --int8: not trusted
    synthetic = _with_top1(int8_bundle, tmp_path / "synthetic", 0.99)
    assert synthetic.manifest["quantization"]["int8"]["agreement_vs_fp32"]["n_images"] == 16
    assert choose_precision(synthetic, "auto", "cpu")[0] == "fp32"


def test_static_methods_calibrate_on_other_tiles_than_they_are_checked_on(tiny_bundle, z20, data_dir, tmp_path):
    tiles = raster_tiles(z20, load_bundle(tiny_bundle).image)
    calib, check, calib_windows, check_windows = tiles.split(static=True)
    assert len(calib) == len(calib_windows) == CALIBRATION_TILES and len(check) == len(check_windows) == CHECK_TILES
    assert not set(calib_windows) & set(check_windows) and len(set(check_windows)) == CHECK_TILES
    # spread over the raster (seeded random order, not the first rows), the same on every run
    rows = {w[1] for w in tiles.windows}
    assert min(rows) == 0 and max(rows) == 1024 - 64
    assert raster_tiles(z20, load_bundle(tiny_bundle).image).windows == tiles.windows
    assert raster_tiles(z20, load_bundle(tiny_bundle).image, seed=1).windows != tiles.windows
    # a dynamic method takes no calibration share: every tile is checked on
    none, every, _, _ = tiles.split(static=False)
    assert none is None and len(every) == CALIBRATION_TILES + CHECK_TILES
    # the check keeps INT8_MIN_IMAGES tiles: 117 tiles of 224 px in the z21 mosaic leave 17 to calibrate on;
    # fewer than MIN_CALIBRATION_TILES spare tiles calibrate nothing (the writer then quantises dynamically)
    z21 = raster_tiles(data_dir / "orthomosaic" / "kampala_oam_z21_mosaic_3072x2048.tif",
                       dict(load_bundle(tiny_bundle).image, size=[224, 224]))
    assert len(z21.pixels) == 117 and z21.pixels.shape[2:] == (224, 224)
    calib, check, _, _ = z21.split(static=True)
    assert len(calib) == 117 - INT8_MIN_IMAGES >= MIN_CALIBRATION_TILES and len(check) == INT8_MIN_IMAGES
    z21.pixels, z21.windows = z21.pixels[:INT8_MIN_IMAGES + MIN_CALIBRATION_TILES - 1], z21.windows[:115]
    calib, check, _, _ = z21.split(static=True)
    assert calib is None and len(check) == INT8_MIN_IMAGES + MIN_CALIBRATION_TILES - 1
    # what quantize_bundle records for a static method
    b = load_bundle(quantize_bundle(tiny_bundle, tmp_path / "static", method="static-ends", check_raster=z20))
    rec = b.manifest["quantization"]["int8"]
    assert rec["image"]["method"] == "static-ends" and rec["image"]["calibration_images"] == CALIBRATION_TILES
    assert Z20 in rec["image"]["calibration_tiles"]
    assert rec["agreement_vs_fp32"]["n_images"] == CHECK_TILES and rec["agreement_vs_fp32"]["raster"] == Z20


def test_a_raster_with_too_few_tiles_holding_data_is_refused(tiny_bundle, data_dir, tmp_path):
    """rasterio's RGB scene: 132 tiles of 64 px, only 95 of them at least half data (a rotated footprint in
    nodata); the hillshade: 15 of 256. One typed error naming the raster; nothing written."""
    for name in ("rasterio_RGB.byte.tif", "rasterio_shade.tif"):
        raster = data_dir / "geotiff" / name
        with pytest.raises(InvalidInput) as ei:
            quantize_bundle(tiny_bundle, tmp_path / name, check_raster=raster)
        assert ei.value.param == "int8_check" and ei.value.path == str(raster)
        assert not (tmp_path / name).exists() and list(tmp_path.iterdir()) == []


def test_the_raster_may_not_lie_in_the_bundle_being_written(tiny_bundle, z20, tmp_path, capsys):
    out = tmp_path / "mine"
    shutil.copytree(tiny_bundle, out)
    inside = out / Z20
    shutil.copyfile(z20, inside)
    with pytest.raises(OutputIsInput) as ei:
        quantize_bundle(tiny_bundle, out, check_raster=inside, overwrite=True)
    assert ei.value.path == str(inside.resolve()) and inside.is_file()
    rc, _, err = _run(capsys, "models", "int8", tiny_bundle, "--int8-check", inside, "--out", out, "--overwrite")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and inside.is_file()


def test_convert_and_pull_check_on_the_raster(models, z20, tmp_path, capsys):  # noqa: F811 (fixture)
    """--int8-check implies --int8, measures on the raster's tiles and names it."""
    ckpt = save_checkpoint(tmp_path / "tiny.pt", seed=2)
    out = tmp_path / "converted"
    rc, printed, err = _run(capsys, "models", "convert", ckpt, "--out", out, "--int8-check", z20, "-q")
    assert rc == 0, err
    agree = load_bundle(out).manifest["quantization"]["int8"]["agreement_vs_fp32"]
    assert agree["raster"] == Z20 and agree["n_images"] >= INT8_MIN_IMAGES and "int8 agrees" in printed
    user_catalog(models, entry())
    rc, _, err = _run(capsys, "models", "pull", "Tiny-RS", "--url", ckpt, "--int8-check", z20, "-q")
    assert rc == 0, err
    agree = load_bundle(models / "Tiny-RS").manifest["quantization"]["int8"]["agreement_vs_fp32"]
    assert agree["raster"] == Z20 and agree["n_images"] >= INT8_MIN_IMAGES
    # a raster too small is refused before anything is written
    small = z20.parent.parent / "geotiff" / "rasterio_shade.tif"
    rc, _, err = _run(capsys, "models", "convert", ckpt, "--out", tmp_path / "no", "--int8-check", small, "-q")
    assert rc == 2 and "rasterio_shade.tif" in err and not (tmp_path / "no").exists()


@pytest.fixture(scope="module")
def resnet_bundle(tmp_path_factory):
    """A random tiny CLIP with a ModifiedResNet image tower (RN50's kind, 64 px, one block per stage)."""
    torch = _torch()   # a missing torch fails in CI, as every test that makes checkpoints
    from open_clip.model import CLIP

    from training.export import TINY_CONFIG, export_bundle, tiny_model

    cfg = json.loads(TINY_CONFIG.read_text())
    cfg["vision_cfg"] = {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 16}
    cfg["quick_gelu"] = True
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CLIP(**cfg).eval()
    pp = tiny_model()[2]
    return export_bundle(model, pp, tmp_path_factory.mktemp("bundles") / "tiny-rn", architecture="tiny-rn",
                         model_config=cfg, activation="quick_gelu", name="tiny-rn", fp16=False)


def test_a_convolutional_tower_is_calibrated_on_the_raster(resnet_bundle, z20, tmp_path, capsys):
    """`models int8` takes the writers' method per tower kind (WRITER_METHODS): static-ends for a ResNet tower,
    calibrated on CALIBRATION_TILES tiles of the raster and checked on CHECK_TILES others."""
    rc, _, err = _run(capsys, "models", "int8", resnet_bundle, "--int8-check", z20, "--out", tmp_path / "rn", "-q")
    assert rc == 0, err
    rec = load_bundle(tmp_path / "rn").manifest["quantization"]["int8"]
    assert rec["image"]["method"] == "static-ends" and rec["image"]["calibration_images"] == CALIBRATION_TILES
    assert rec["agreement_vs_fp32"]["n_images"] == CHECK_TILES and rec["agreement_vs_fp32"]["raster"] == Z20
