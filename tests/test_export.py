"""training.export / checkpoints / parity: checkpoints -> bundle, checked against open_clip on real images.

Real architectures (ViT-B-32, RN50; ViT-L-14 marked slow) use random weights saved exactly like
RemoteCLIP's files (``torch.save(model.state_dict(), path)``); the tiny config covers the rest fast.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import check_io_contract, require
from conftest import save_random_checkpoint as _save_random

from core.errors import InvalidInput, ModelError, SourceUnreadable
from core.runtime.bundle import load_bundle

try:
    import open_clip
    import torch
except ImportError as e:  # outside CI a runtime-only set-up skips; in CI a missing torch fails
    require(False, f"training dependencies missing ({e}); run scripts/setup.sh (it installs torch and open_clip)")

from training import checkpoints  # noqa: E402
from training.export import main as export_main  # noqa: E402
from training.parity import THRESHOLDS  # noqa: E402


def _check_real_bundle(arch, real_export, real_checkpoint, embed_dim, image_size=224):
    out, table, rc = real_export(arch)
    assert rc == 0, table
    assert "fp32" in table and "fp16" in table and "FAIL" not in table
    b = load_bundle(out)
    m = b.manifest
    assert b.architecture == arch and b.embed_dim == embed_dim and b.activation == "quick_gelu"
    assert b.precisions == ("fp32", "fp16")
    assert m["opset"] >= 17
    assert b.image["size"] == [image_size, image_size]
    assert b.image["resize_mode"] == "shortest" and b.image["interpolation"] == "bicubic"
    assert b.text["context_length"] == 77 and b.text["vocab_size"] == 49408
    assert m["model_config"]["quick_gelu"] is True
    assert m["source"]["checkpoint"] == f"RemoteCLIP-{arch}.pt"
    assert m["source"]["sha256"] == checkpoints.sha256_file(real_checkpoint(arch))
    assert m["exporter"]["torch"] and m["exporter"]["open_clip"] == open_clip.__version__
    parity = m["parity"]
    for precision, row in ((p, parity[p]) for p in ("fp32", "fp16")):
        assert row["image_cos_min"] >= THRESHOLDS[precision], (precision, row)
        assert row["text_cos_min"] >= THRESHOLDS[precision], (precision, row)
        assert row["top1_agree"] == 1.0 and row["n_images"] == 14 and row["passed"]
    assert THRESHOLDS == {"fp32": 0.99999, "fp16": 0.999}
    return b


def test_vit_b_32_export_parity(real_export, real_checkpoint):
    b = _check_real_bundle("ViT-B-32", real_export, real_checkpoint, 512)
    check_io_contract(b, 512)


def test_rn50_export_parity(real_export, real_checkpoint):
    b = _check_real_bundle("RN50", real_export, real_checkpoint, 1024)
    check_io_contract(b, 1024)


@pytest.mark.slow
def test_vit_l_14_export_parity(real_export, real_checkpoint):
    b = _check_real_bundle("ViT-L-14", real_export, real_checkpoint, 768)
    check_io_contract(b, 768)


def test_wrong_architecture_names_keys_and_the_fitting_arch(real_checkpoint, tmp_path):
    with pytest.raises(ModelError) as ei:
        checkpoints.load_checkpoint_model("ViT-B-32", str(real_checkpoint("RN50")))
    msg = ei.value.problem
    assert "ViT-B-32" in msg   # the architecture asked for
    assert "visual.class_embedding" in msg and "visual.attnpool" in msg  # a ViT key missing, an RN key extra
    assert "--arch RN50" in ei.value.fix
    rc = export_main(["--arch", "ViT-B-32", "--checkpoint", str(real_checkpoint("RN50")), "--out",
                      str(tmp_path / "b")])
    assert rc == 2 and not (tmp_path / "b").exists()


def test_tiny_skyclip_checkpoint_cli_gelu_zip(tmp_path, data_dir, capsys):
    """SkyCLIP-style training checkpoint ({'state_dict': {'module.'+k}}), GELU, zip, end to end through the CLI."""
    ckpt = _save_random("tiny-test", tmp_path / "skyclip_tiny.pt", seed=3, skyclip=True)
    out = tmp_path / "bundles" / "tiny-gelu"
    rc = export_main(["--arch", "tiny-test", "--checkpoint", str(ckpt), "--out", str(out), "--activation", "gelu",
                      "--fp16", "--verify", "--zip", "--data", str(data_dir)])
    table = capsys.readouterr().out
    assert rc == 0, table
    assert "PASS" in table and "FAIL" not in table
    b = load_bundle(out)
    assert b.activation == "gelu" and b.manifest["model_config"]["quick_gelu"] is False
    assert b.manifest["parity"]["fp32"]["passed"] and b.manifest["parity"]["fp16"]["passed"]
    z = out.with_name("tiny-gelu.rclip.zip")
    assert load_bundle(z).manifest == b.manifest
    # re-export over an existing bundle replaces it (atomically) instead of failing
    rc = export_main(["--arch", "tiny-test", "--checkpoint", str(ckpt), "--out", str(out)])
    assert rc == 0 and load_bundle(out).precisions == ("fp32",)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_checkpoint_formats_read_the_same(tmp_path):
    plain = _save_random("tiny-test", tmp_path / "plain.pt", seed=1)
    sky = _save_random("tiny-test", tmp_path / "sky.pt", seed=1, skyclip=True)
    a, b = checkpoints.read_state_dict(plain), checkpoints.read_state_dict(sky)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert checkpoints.guess_architecture(a) is None or checkpoints.guess_architecture(a) == "tiny-test"


def test_activation_choice_changes_the_model(tmp_path):
    sd = checkpoints.read_state_dict(_save_random("tiny-test", tmp_path / "t.pt"))
    z = torch.linspace(-4, 4, 81)
    outs = {}
    for act in checkpoints.ACTIVATIONS:
        model, _, cfg = checkpoints.build_model("tiny-test", sd, act)
        assert cfg["quick_gelu"] is (act == "quick_gelu")
        blocks = list(model.visual.transformer.resblocks) + list(model.transformer.resblocks)
        acts = {type(b.mlp.gelu).__name__ for b in blocks}
        assert acts == {"QuickGELU" if act == "quick_gelu" else "GELU"}
        outs[act] = blocks[0].mlp.gelu(z)
    # x*sigmoid(1.702x) vs the exact erf GELU: up to ~0.02 apart, which trained weights do notice
    assert (outs["quick_gelu"] - outs["gelu"]).abs().max().item() > 0.01


def test_corrupt_and_non_checkpoint_files(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(ModelError) as ei:
        checkpoints.read_state_dict(garbage)
    assert ei.value.path == str(garbage)
    good = _save_random("tiny-test", tmp_path / "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:100_000])
    with pytest.raises(ModelError) as ei:
        checkpoints.read_state_dict(truncated)
    assert ei.value.path == str(truncated)
    other = tmp_path / "list.pt"
    torch.save([1, 2, 3], other)
    with pytest.raises(ModelError) as ei:
        checkpoints.read_state_dict(other)
    assert ei.value.path == str(other) and "(list)" in ei.value.problem   # what it holds instead
    with pytest.raises(SourceUnreadable) as ei:
        checkpoints.read_state_dict(tmp_path / "absent.pt")
    assert ei.value.path == str(tmp_path / "absent.pt")
    with pytest.raises(InvalidInput) as ei:
        checkpoints.build_model("ViT-Q-99", None)
    assert ei.value.param == "arch" and "'ViT-Q-99'" in ei.value.problem
    with pytest.raises(ModelError) as ei:
        checkpoints.load_checkpoint_model("ViT-B-32", str(good))
    assert "ViT-B-32" in ei.value.problem and ei.value.fix


def test_unwritable_output_and_non_bundle_folder(tmp_path, capsys):
    ckpt = _save_random("tiny-test", tmp_path / "t.pt")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    rc = export_main(["--arch", "tiny-test", "--checkpoint", str(ckpt), "--out", str(blocker / "bundle")])
    err = capsys.readouterr().err
    assert rc == 2 and "Cannot write the bundle" in err and "Fix:" in err
    busy = tmp_path / "my_documents"
    busy.mkdir()
    (busy / "thesis.docx").write_text("precious")
    rc = export_main(["--arch", "tiny-test", "--checkpoint", str(ckpt), "--out", str(busy)])
    assert rc == 2 and "refusing to overwrite" in capsys.readouterr().err
    assert (busy / "thesis.docx").read_text() == "precious"


def test_offline_download_says_to_pass_a_local_checkpoint(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    r = subprocess.run([sys.executable, "-m", "training.export", "--arch", "ViT-B-32", "--out", str(tmp_path / "b")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2
    assert "chendelong/RemoteCLIP" in r.stderr and "--checkpoint" in r.stderr
    # an open_clip pretrained tag goes through open_clip's downloader: same kind of message
    r = subprocess.run([sys.executable, "-m", "training.export", "--arch", "ViT-B-32", "--pretrained", "openai",
                        "--out", str(tmp_path / "b")], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2 and "pretrained weights ViT-B-32/openai" in r.stderr and "--checkpoint" in r.stderr
    assert not (tmp_path / "b").exists()
    with pytest.raises(InvalidInput) as ei:
        checkpoints.download_remoteclip("ViT-H-14")
    assert ei.value.param == "arch" and "ViT-H-14" in ei.value.problem


def test_manifest_is_json_with_documented_fields(tiny_bundle):
    m = json.loads((tiny_bundle / "manifest.json").read_text())
    for key in ("format", "format_version", "name", "architecture", "model_config", "embed_dim", "activation",
                "image", "text", "logit_scale", "graphs", "opset", "source", "exporter"):
        assert key in m
    assert set(m["image"]) >= {"size", "mean", "std", "resize_mode", "interpolation", "crop", "fill_color"}
    assert m["text"]["tokenizer"] == "clip-bpe" and m["text"]["sot_token_id"] == 49406
