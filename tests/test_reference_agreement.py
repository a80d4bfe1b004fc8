"""run_job (manifest preprocessing + onnxruntime) against the reference pipeline
(PIL crops + open_clip's transform + the torch model, same weights) on the real rasters."""

from __future__ import annotations

import numpy as np
import pytest

from core.pipeline import Job, LabelTask, RunOptions, TileSpec, run_job
from training.reference_pipeline import random_bundle, random_model, reference_embeddings, reference_labels

LABELS = ["buildings", "trees", "road", "bare soil", "water", "grass"]

# (raster, tile px): RGB orthomosaic, RGB with nodata corners, 16-bit panchromatic, 8-bit hillshade with nodata
RASTERS = [("orthomosaic/kampala_oam_z20_mosaic_1536x1024.tif", 128),
           ("orthomosaic/kampala_oam_z21_mosaic_3072x2048.tif", 256),
           ("geotiff/rasterio_RGB.byte.tif", 64),
           ("geotiff/solaris_sample_geotiff.tif", 100),
           ("geotiff/rasterio_shade.tif", 128)]


def _compare(data_dir, bundle, model, pp, rel, tile, logit_scale):
    raster = str(data_dir / rel)
    spec = TileSpec(size=tile)
    res = run_job(Job(raster=raster, task=LabelTask(LABELS), tiles=spec,
                      run=RunOptions(model=str(bundle), device="cpu", cache_dir="")))
    ref = reference_labels(raster, model, pp, LABELS, tiles=spec, logit_scale=logit_scale)
    ours = {(r["row"], r["col"]): r for r in res.records}
    assert set(ours) == set(ref), f"{rel}: different tiles kept"
    agree = sum(ours[k]["label"] == ref[k][0] for k in ref) / len(ref)
    # probabilities too, not just the argmax
    worst = max(abs(ours[k]["score"] - ref[k][1]) for k in ref if ours[k]["label"] == ref[k][0])
    kept, emb = reference_embeddings(raster, model, pp, spec)
    cos = (res.embeddings * emb).sum(axis=1)
    return len(ref), agree, worst, float(cos.min())


@pytest.fixture(scope="module")
def tiny_model():
    return random_model("tiny-test", seed=0)


def test_tiny_model_agrees_on_real_rasters(data_dir, tiny_bundle, tiny_model):
    import json

    model, pp, _ = tiny_model
    scale = json.loads((tiny_bundle / "manifest.json").read_text())["logit_scale"]
    total = agreeing = 0
    for rel, tile in RASTERS:
        n, agree, worst, cos_min = _compare(data_dir, tiny_bundle, model, pp, rel, tile, scale)
        total += n
        agreeing += round(agree * n)
        assert agree >= 0.99, f"{rel}: top-1 agreement {agree:.4f} over {n} tiles"
        assert cos_min > 0.9999, f"{rel}: embedding cosine {cos_min}"
        assert worst < 1e-4, f"{rel}: probability differs by {worst}"
    assert total > 300 and agreeing / total >= 0.99


@pytest.mark.slow
def test_vit_b_32_agrees_on_real_rasters(data_dir, tmp_path_factory):
    bundle = random_bundle("ViT-B-32", tmp_path_factory.mktemp("vitb") / "ViT-B-32-random", seed=0)
    model, pp, _ = random_model("ViT-B-32", seed=0)
    for rel, tile in RASTERS[:3]:
        n, agree, _, cos_min = _compare(data_dir, bundle, model, pp, rel, tile, 100.0)
        assert agree >= 0.99 and cos_min > 0.9999, (rel, n, agree, cos_min)


def test_reference_imports_nothing_from_core(tiny_model):
    """The reference must be independent of core (grid, bands, stretch, prompts, preprocessing, inference),
    or agreement proves nothing; run in a fresh interpreter, importing it loads no core module but the error
    classes (training's checkpoint reader raises core's errors) and the file checksum (core.runtime.digest: one sha256
    loop for the project; it touches no pixel)."""
    import inspect
    import re
    import subprocess
    import sys

    import training.reference_pipeline as rp

    src = inspect.getsource(rp)
    assert not re.search(r"^\s*(from|import)\s+core\b", src, re.MULTILINE)
    code = ("import sys, training.reference_pipeline as rp; rp.TEMPLATES; "
            "print(sorted(m for m in sys.modules if m == 'core' or m.startswith('core.')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() in ("[]", "['core', 'core.errors']", "['core', 'core.errors', 'core.runtime', 'core.runtime.digest']")
    tf = rp.transform(tiny_model[1])
    assert type(tf).__module__.startswith("torchvision")
    assert np.isfinite(tiny_model[0].logit_scale.exp().item())
