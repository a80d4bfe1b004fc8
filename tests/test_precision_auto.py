"""Precision "auto" (the default of the command line, the dock and Processing): core.runtime.inference.choose_precision
picks int8 on a CPU only where the bundle has int8 graphs whose recorded top-1 agreement with fp32 reaches
INT8_USABLE_TOP1, else fp32 (and fp32 on a GPU); the job's result, its output's metadata and the command
line say which precision ran and why. Real onnxruntime, the tiny test bundle with real int8 graphs."""

from __future__ import annotations

import json
import shutil

import pytest

from core.errors import MissingDependency
from core.pipeline import Job, LabelTask, RunOptions, TileSpec, run_job
from core.runtime.bundle import INT8_MIN_IMAGES, INT8_USABLE_TOP1, load_bundle
from core.runtime.inference import choose_precision, cuda_available


def _with_top1(int8_bundle, folder, top1, n_images=2800):
    """A copy of the int8 bundle whose manifest records ``top1`` measured on ``n_images`` (as training.export
    measures on the RSSCN7 images; None: no quantization record at all)."""
    shutil.copytree(int8_bundle, folder)
    m = json.loads((folder / "manifest.json").read_text())
    if top1 is None:
        del m["quantization"]
    else:
        m["quantization"]["int8"]["agreement_vs_fp32"].update(top1_agree=top1, n_images=n_images)
    (folder / "manifest.json").write_text(json.dumps(m))
    return folder


def test_auto_on_a_cpu_takes_int8_from_the_bar_up(int8_bundle, tiny_bundle, tmp_path):
    assert INT8_USABLE_TOP1 == 0.99
    at_bar = load_bundle(_with_top1(int8_bundle, tmp_path / "at", 0.99))
    below = load_bundle(_with_top1(int8_bundle, tmp_path / "below", 0.9899))
    unrecorded = load_bundle(_with_top1(int8_bundle, tmp_path / "none", None))
    assert choose_precision(at_bar, "auto", "cpu") == ("int8", "auto: int8 agrees 99.00 % with fp32 on this bundle")
    assert choose_precision(below, "auto", "cpu") == (
        "fp32", "auto: int8 agrees only 98.99 % with fp32 on this bundle (needs 99%)")
    assert choose_precision(load_bundle(tiny_bundle), "auto", "cpu") == ("fp32", "auto: no int8 graphs in this bundle")
    precision, why = choose_precision(unrecorded, "auto", "cpu")
    assert precision == "fp32" and "no agreement" in why
    # an agreement measured on too few images (16 synthetic ones: models convert/pull --int8) is not trusted
    assert INT8_MIN_IMAGES == 100
    few = load_bundle(_with_top1(int8_bundle, tmp_path / "few", 1.0, n_images=99))
    enough = load_bundle(_with_top1(int8_bundle, tmp_path / "enough", 1.0, n_images=100))
    assert choose_precision(few, "auto", "cpu") == (
        "fp32", "auto: the int8 agreement was measured on only 99 images (needs 100; --precision int8 runs them "
                "anyway)")
    assert choose_precision(enough, "auto", "cpu")[0] == "int8"
    assert load_bundle(int8_bundle).manifest["quantization"]["int8"]["agreement_vs_fp32"]["n_images"] == 16
    assert choose_precision(load_bundle(int8_bundle), "auto", "cpu")[0] == "fp32"
    # device auto on a machine without CUDA is a CPU
    if not cuda_available():
        assert choose_precision(at_bar, "auto", "auto")[0] == "int8"


def test_explicit_choices_are_kept(int8_bundle, tmp_path):
    below = load_bundle(_with_top1(int8_bundle, tmp_path / "below", 0.5))
    for precision in ("fp32", "fp16", "int8"):
        assert choose_precision(below, precision, "cpu") == (precision, "chosen in the run's settings")


def test_auto_with_cuda_asked_for(int8_bundle):
    b = load_bundle(int8_bundle)
    if cuda_available():   # a GPU: fp32 (int8 graphs are for CPUs)
        assert choose_precision(b, "auto", "cuda") == ("fp32", "auto: fp32 on a GPU (int8 graphs are for CPUs)")
        return
    with pytest.raises(MissingDependency) as err:   # no CUDA here: the typed error, before any pixel is read
        choose_precision(b, "auto", "cuda")
    assert "onnxruntime-gpu" in err.value.fix


def test_a_job_at_auto_records_what_ran_and_why(int8_bundle, data_dir, tmp_path):
    from osgeo import ogr

    z20 = str(data_dir / "orthomosaic" / "kampala_oam_z20_mosaic_1536x1024.tif")
    below = _with_top1(int8_bundle, tmp_path / "below", 0.985)

    def job(model, precision, out, cache="cache"):
        run = RunOptions(model=str(model), device="cpu", precision=precision,
                         cache_dir=str(tmp_path / cache) if cache else "")
        return run_job(Job(raster=z20, task=LabelTask(["trees", "road"]), run=run, tiles=TileSpec(size=512),
                           output=str(tmp_path / out)))

    usable = _with_top1(int8_bundle, tmp_path / "usable", 0.995)
    auto = job(usable, "auto", "auto.gpkg")
    explicit = job(usable, "int8", "int8.gpkg")
    short = job(below, "auto", "short.gpkg")
    assert (auto.precision, short.precision, explicit.precision) == ("int8", "fp32", "int8")
    assert auto.precision_reason.startswith("auto: int8 agrees ") and "only 98.50 %" in short.precision_reason
    # auto ran the int8 graphs themselves: the same embeddings as int8 asked for (from the same cache entry)
    assert explicit.cache_hit and (auto.embeddings == explicit.embeddings).all()
    # and encoded, not only keyed, by them: int8 and fp32 encoded afresh (no cache) tell the two apart
    int8_fresh, fp32_fresh = job(usable, "int8", "int8_fresh.gpkg", None), job(usable, "fp32", "fp32.gpkg", None)
    assert (auto.embeddings == int8_fresh.embeddings).all() and not (auto.embeddings == fp32_fresh.embeddings).all()
    assert not [w for w in short.warnings if "int8 graphs" in w]
    # the plan before a run at auto knows the rate measured by the last one (kept under the graphs that ran)
    from core.pipeline import plan_job

    for model in (usable, below):
        run = RunOptions(model=str(model), device="cpu", precision="auto", cache_dir=str(tmp_path / "cache"))
        assert plan_job(Job(raster=z20, task=LabelTask(["trees", "road"]), run=run, tiles=TileSpec(size=512))).rate > 0
    ds = ogr.Open(str(tmp_path / "short.gpkg"))
    meta = json.loads(ds.GetLayer(0).GetMetadataItem("REMOTECLIP"))
    assert meta["precision"] == "fp32" and meta["precision_reason"] == short.precision_reason


def test_the_command_line_defaults_to_auto_and_says_what_ran(int8_bundle, data_dir, tmp_path, capsys):
    from core.cli import main

    z20 = str(data_dir / "orthomosaic" / "kampala_oam_z20_mosaic_1536x1024.tif")
    below = _with_top1(int8_bundle, tmp_path / "below", 0.9899)
    usable = _with_top1(int8_bundle, tmp_path / "usable", 0.995)
    for model, words in ((usable, "precision: int8 (auto: int8 agrees 99.50 % with fp32 on this bundle)"),
                         (below, "precision: fp32 (auto: int8 agrees only 98.99 %")):
        assert main(["label", z20, "--labels", "trees,road", "--model", str(model), "--device", "cpu",
                     "--tile-size", "512", "--no-cache", "-q"]) == 0
        assert words in capsys.readouterr().out
