"""core.runtime.bundle: load_bundle on the tiny exported bundle, zip archives, and broken bundles."""

from __future__ import annotations

import json
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from core.errors import ModelError
from core.runtime.bundle import load_bundle


def test_load_tiny_bundle(tiny_bundle):
    b = load_bundle(tiny_bundle)
    assert b.name == "tiny-test"
    assert b.architecture == "tiny-test"
    assert b.embed_dim == 32
    assert b.activation == "quick_gelu"
    assert b.precisions == ("fp32", "fp16")
    assert b.image["size"] == [64, 64]
    assert b.text["context_length"] == 77
    assert b.logit_scale == pytest.approx(1 / 0.07, rel=1e-4)  # open_clip init value, exported as is
    assert b.graph_path("image").name == "image_fp32.onnx"
    assert b.graph_path("text", "fp16").is_file()
    assert len(b.sha256) == 64 and b.sha256 == load_bundle(tiny_bundle).sha256


def test_graphs_run_with_onnxruntime(tiny_bundle):
    import onnxruntime as ort

    b = load_bundle(tiny_bundle)
    for precision in b.precisions:
        img = ort.InferenceSession(str(b.graph_path("image", precision)), providers=["CPUExecutionProvider"])
        txt = ort.InferenceSession(str(b.graph_path("text", precision)), providers=["CPUExecutionProvider"])
        for n in (1, 5):  # dynamic batch
            x = np.random.default_rng(n).standard_normal((n, 3, 64, 64)).astype(np.float32)
            e = img.run(None, {"pixel_values": x})[0]
            assert e.shape == (n, 32) and e.dtype == np.float32
            np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-3)
            ids = np.zeros((n, 77), np.int64)
            ids[:, 0], ids[:, 1], ids[:, 2] = 49406, 320, 49407
            t = txt.run(None, {"input_ids": ids})[0]
            assert t.shape == (n, 32) and t.dtype == np.float32
            np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-3)


def test_zip_bundle(tiny_bundle, tmp_path, monkeypatch):
    from training.export import write_zip

    monkeypatch.setenv("REMOTECLIP_BUNDLE_CACHE", str(tmp_path / "cache"))
    z = write_zip(tiny_bundle, tmp_path / "tiny.rclip.zip")
    b = load_bundle(z)
    assert b.name == "tiny-test" and b.source == z
    assert b.sha256 == load_bundle(tiny_bundle).sha256
    assert load_bundle(z).path == b.path  # extracted once


def _copy(tiny_bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(tiny_bundle, dst)
    return dst


@pytest.mark.parametrize(
    "breakage, shown, file",
    [   # what the problem names, and the file the error names (in the bundle folder, or the folder)
        ("no_manifest", "manifest.json", ""),
        ("bad_json", "", ""),
        ("wrong_format", "'remoteclip-onnx-bundle'", "manifest.json"),
        ("future_version", "2", ""),
        ("missing_graph", "text_fp32.onnx", ""),
        ("missing_vocab", "bpe_simple_vocab_16e6.txt.gz", ""),
        ("missing_key", "embed_dim", ""),
    ],
)
def test_broken_bundles_get_clear_errors(tiny_bundle, tmp_path, breakage, shown, file):
    d = _copy(tiny_bundle, tmp_path)
    m = json.loads((d / "manifest.json").read_text())
    if breakage == "no_manifest":
        (d / "manifest.json").unlink()
    elif breakage == "bad_json":
        (d / "manifest.json").write_text("{not json")
    elif breakage == "wrong_format":
        m["format"] = "something-else"
    elif breakage == "future_version":
        m["format_version"] = 2
    elif breakage == "missing_graph":
        (d / "text_fp32.onnx").unlink()
    elif breakage == "missing_vocab":
        (d / "bpe_simple_vocab_16e6.txt.gz").unlink()
    elif breakage == "missing_key":
        del m["embed_dim"]
    if breakage in ("wrong_format", "future_version", "missing_key"):
        (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ModelError) as ei:
        load_bundle(d)
    assert ei.value.path == str(d / file if file else d) and shown in ei.value.problem.replace(str(d), "")
    assert ei.value.fix


def test_missing_path_and_non_bundle_file(tmp_path):
    with pytest.raises(ModelError) as ei:
        load_bundle(tmp_path / "nope")
    assert ei.value.path == str(tmp_path / "nope")
    f = tmp_path / "model.onnx"
    f.write_bytes(b"\x08\x01")
    with pytest.raises(ModelError) as ei:
        load_bundle(f)
    assert ei.value.path == str(f)
    z = tmp_path / "x.rclip.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(ModelError) as ei:
        load_bundle(z)
    assert ei.value.path == str(z) and "manifest.json" in ei.value.problem


def test_missing_precision(tiny_bundle, tmp_path):
    d = _copy(tiny_bundle, tmp_path)
    m = json.loads((d / "manifest.json").read_text())
    del m["graphs"]["fp16"]
    (d / "manifest.json").write_text(json.dumps(m))
    b = load_bundle(d)
    assert b.precisions == ("fp32",)
    with pytest.raises(ModelError) as ei:
        b.graph_path("image", "fp16")
    assert ei.value.path == str(d) and "fp16" in ei.value.problem


def test_core_bundle_and_tokenizer_import_no_torch():
    import subprocess

    code = ("import sys; import core.runtime.bundle, core.runtime.tokenizer; "
            "assert 'torch' not in sys.modules and 'onnxruntime' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def _edited(src, dst, edit):
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    edit(m)
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def test_swapped_graphs_are_one_model_error_before_a_run(tiny_bundle, tmp_path):
    from core.runtime.inference import Encoder

    def swap(m):
        g = m["graphs"]["fp16"]
        g["image"], g["text"] = g["text"], g["image"]

    d = _edited(tiny_bundle, tmp_path / "swapped", swap)
    enc = Encoder(d, device="cpu", precision="fp16")
    with pytest.raises(ModelError) as err:
        enc.encode_texts(["a river"])
    assert err.value.path == str(d / "image_fp16.onnx") and "inputs do not match" in err.value.problem
    with pytest.raises(ModelError) as err:
        enc.encode_images(np.zeros((1, 3, 64, 64), np.float32))
    assert err.value.path == str(d / "text_fp16.onnx")
    enc = Encoder(d, device="cpu", precision="fp32")      # the fp32 graphs are as they were
    assert enc.encode_texts(["a river"]).shape == (1, 32)


def test_a_manifest_that_disagrees_with_its_graphs_is_refused(tiny_bundle, tmp_path):
    from core.runtime.inference import Encoder

    def ctx5(m):
        m["text"]["context_length"] = 5

    with pytest.raises(ModelError) as err:          # the model's own config says 77
        load_bundle(_edited(tiny_bundle, tmp_path / "ctx5", ctx5))
    assert "text.context_length" in err.value.problem and err.value.path == str(tmp_path / "ctx5" / "manifest.json")

    def ctx5_no_config(m):
        ctx5(m)
        del m["model_config"]

    demo = Path(__file__).resolve().parents[1] / "models" / "remoteclip-demo"   # its text graph fixes 77 tokens
    enc = Encoder(_edited(demo, tmp_path / "demo5", ctx5_no_config), device="cpu")
    with pytest.raises(ModelError) as err:
        enc.encode_texts(["a river"])
    assert "takes 77 tokens" in err.value.problem and err.value.path == str(tmp_path / "demo5" / "text_fp32.onnx")

    def size96(m):
        m["image"]["size"] = [96, 96]

    enc = Encoder(_edited(tiny_bundle, tmp_path / "s96", size96), device="cpu")
    with pytest.raises(ModelError) as err:
        enc.encode_images(np.zeros((1, 3, 96, 96), np.float32))
    assert "image.size" in err.value.problem


def test_a_manifest_linked_from_another_bundle_is_refused_as_a_linked_graph_is(tiny_bundle, tmp_path):
    other = _edited(tiny_bundle, tmp_path / "other", lambda m: m.update(name="other"))
    for linked in ("manifest.json", "image_fp32.onnx"):
        d = tmp_path / f"linked-{linked}"
        shutil.copytree(tiny_bundle, d)
        (d / linked).unlink()
        (d / linked).symlink_to(other / linked)
        with pytest.raises(ModelError) as err:
            load_bundle(d)
        assert err.value.path == str(d / linked) and "leads outside the bundle folder" in err.value.problem
    inside = tmp_path / "inside"          # a link that stays inside the bundle is still fine
    shutil.copytree(tiny_bundle, inside)
    (inside / "manifest.json").rename(inside / "manifest-v1.json")
    (inside / "manifest.json").symlink_to("manifest-v1.json")
    assert load_bundle(inside).name == "tiny-test"
