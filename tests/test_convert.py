"""core.runtime.convert: OpenCLIP checkpoints -> bundles without torch, checked against open_clip in torch.

The checkpoints are written here with torch (random weights, saved like RemoteCLIP's release files); every
conversion that the parity tests use runs in a subprocess where importing torch or open_clip raises.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, check_io_contract, require, save_random_checkpoint

from core.errors import Cancelled, InvalidInput, ModelError, OutputExists, SourceUnreadable
from core.runtime.bundle import load_bundle

try:
    import open_clip
    import torch
except ImportError as e:  # outside CI a runtime-only set-up skips; in CI a missing torch fails
    require(False, f"training dependencies missing ({e}); run scripts/setup.sh (it installs torch and open_clip)")

from core.runtime.convert import convert_checkpoint, detect_architecture, load_state_dict  # noqa: E402
from core.runtime.convert.architectures import derive_config, known_architectures, model_config  # noqa: E402
from training import checkpoints  # noqa: E402
from training.parity import THRESHOLDS, verify_bundle  # noqa: E402

# Installed first in the converter's subprocess: any import of torch / open_clip / torchvision fails there.
BLOCK_TORCH = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "open_clip", "torchvision"):
            raise ImportError(f"{name} is blocked: the converter must not need it")
sys.meta_path.insert(0, _NoTorch())
"""
RUN_CONVERTER = BLOCK_TORCH + """
from core.runtime.convert.__main__ import main
rc = main(sys.argv[1:])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "open_clip", "torchvision"))
assert not loaded, loaded
sys.exit(rc)
"""


def convert_without_torch(*args, timeout=1200) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", RUN_CONVERTER, *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=timeout)


def torch_model(arch: str, checkpoint, activation: str = "quick_gelu"):
    """open_clip's model for the checkpoint (the reference), with its preprocess config."""
    model, pp, _ = checkpoints.build_model(arch, checkpoints.read_state_dict(checkpoint), activation)
    return model, pp


def assert_parity(results: dict, precisions=("fp32", "fp16")) -> None:
    assert tuple(results) == precisions
    for precision, row in results.items():
        assert row["image_cos_min"] >= THRESHOLDS[precision], (precision, row)
        assert row["text_cos_min"] >= THRESHOLDS[precision], (precision, row)
        assert row["top1_agree"] == 1.0 and row["passed"], (precision, row)
    assert THRESHOLDS == {"fp32": 0.99999, "fp16": 0.999}


@pytest.fixture(scope="session")
def converted(tmp_path_factory, real_checkpoint):
    """arch -> bundle converted (fp32 + fp16) by `python -m core.runtime.convert` with torch blocked, once per session."""
    cache = {}
    folder = tmp_path_factory.mktemp("converted")

    def get(arch):
        if arch not in cache:
            out = folder / f"RemoteCLIP-{arch}"
            r = convert_without_torch(real_checkpoint(arch), "--out", out, "--fp16", "--quiet")
            assert r.returncode == 0, r.stderr
            assert r.stdout.strip() == str(out.resolve())
            cache[arch] = out
        return cache[arch]

    return get


def test_the_blocker_blocks_torch():
    r = subprocess.run([sys.executable, "-c", BLOCK_TORCH + "import torch"], capture_output=True, text=True)
    assert r.returncode != 0 and "torch is blocked" in r.stderr


# --- real architectures against open_clip ---------------------------------------------------------------------

def _check_converted(arch, converted, real_checkpoint, data_dir, embed_dim, image_size=224):
    out = converted(arch)
    b = load_bundle(out)
    m = b.manifest
    assert (b.architecture, b.embed_dim, b.activation, b.precisions) == (arch, embed_dim, "quick_gelu",
                                                                          ("fp32", "fp16"))
    assert m["model_config"] == {**open_clip.get_model_config(arch), "quick_gelu": True}
    assert b.image["size"] == [image_size, image_size] and b.image["interpolation"] == "bicubic"
    assert b.text["context_length"] == 77 and b.text["vocab_size"] == 49408
    assert m["opset"] == 17 and m["exporter"]["method"] == "core.convert" and "torch" not in m["exporter"]
    assert m["source"] == {"checkpoint": f"RemoteCLIP-{arch}.pt", "origin": f"file://RemoteCLIP-{arch}.pt",
                           "sha256": checkpoints.sha256_file(real_checkpoint(arch))}
    # the converter's own check (numpy reference), recorded in the manifest
    assert m["parity"]["method"] == "numpy-reference"
    assert_parity({p: m["parity"][p] for p in ("fp32", "fp16")})
    model, pp = torch_model(arch, real_checkpoint(arch))
    assert b.logit_scale == pytest.approx(float(model.logit_scale.detach().exp()), rel=1e-6)
    # and against open_clip in torch on real images and prompts
    assert_parity(verify_bundle(out, model, pp, arch=arch, data_dir=data_dir, write=False))
    check_io_contract(b, embed_dim)
    return b


def _same_outputs_as_export(arch, converted, real_export, data_dir):
    """The converted graphs and training.export's graphs of the same checkpoint give the same embeddings."""
    import onnxruntime as ort

    from training.parity import rsscn7_images
    from training.reference_pipeline import transform

    exported, table, rc = real_export(arch)
    assert rc == 0, table
    conv, exp = load_bundle(converted(arch)), load_bundle(exported)
    from PIL import Image

    tf = transform(exp.image)
    pixels = torch.stack([tf(Image.open(p).convert("RGB")) for p, _ in rsscn7_images(data_dir, 1)]).numpy()
    from core.runtime.tokenizer import Tokenizer

    ids = Tokenizer.from_bundle(exp)(["a satellite photo of a river.", "Dense residential houses", "", "12 ships"])
    for precision, atol in (("fp32", 1e-5), ("fp16", 2e-3)):
        for kind, feed in (("image", {"pixel_values": pixels}), ("text", {"input_ids": ids})):
            a, b = (ort.InferenceSession(str(x.graph_path(kind, precision)), providers=["CPUExecutionProvider"])
                    .run(None, feed)[0] for x in (conv, exp))
            np.testing.assert_allclose(a, b, atol=atol, err_msg=f"{arch} {kind} {precision}")


def test_vit_b_32_converts_without_torch_and_matches_open_clip(converted, real_checkpoint, data_dir):
    _check_converted("ViT-B-32", converted, real_checkpoint, data_dir, 512)


def test_rn50_converts_without_torch_and_matches_open_clip(converted, real_checkpoint, data_dir):
    _check_converted("RN50", converted, real_checkpoint, data_dir, 1024)


def test_vit_b_32_same_outputs_as_training_export(converted, real_export, data_dir):
    _same_outputs_as_export("ViT-B-32", converted, real_export, data_dir)


def test_rn50_same_outputs_as_training_export(converted, real_export, data_dir):
    _same_outputs_as_export("RN50", converted, real_export, data_dir)


@pytest.mark.slow
def test_vit_l_14_converts_without_torch_and_matches_open_clip(converted, real_checkpoint, real_export, data_dir):
    _check_converted("ViT-L-14", converted, real_checkpoint, data_dir, 768)
    _same_outputs_as_export("ViT-L-14", converted, real_export, data_dir)


@pytest.mark.parametrize("arch, activation", [("small-vit", "quick_gelu"), ("tiny-test", "gelu")])
def test_small_configs_and_gelu_match_open_clip(arch, activation, tmp_path, data_dir):
    """The demo's small-vit (text heads of width 16, vision head_width 32) and the exact-GELU path."""
    ckpt = save_random_checkpoint(arch, tmp_path / f"{arch}.pt", seed=4)
    out = tmp_path / "bundle"
    r = convert_without_torch(ckpt, "--out", out, "--activation", activation, "--fp16", "--quiet", timeout=300)
    assert r.returncode == 0, r.stderr
    b = load_bundle(out)
    assert b.architecture == arch and b.activation == activation
    assert b.manifest["model_config"]["quick_gelu"] is (activation == "quick_gelu")
    model, pp = torch_model(arch, ckpt, activation)
    right = verify_bundle(out, model, pp, arch=arch, data_dir=data_dir, write=False)
    assert_parity(right)
    # against the other activation the graphs are far further off (random weights keep activations small,
    # so "far" is a ratio here, not a threshold)
    other, _ = torch_model(arch, ckpt, "gelu" if activation == "quick_gelu" else "quick_gelu")
    wrong = verify_bundle(out, other, pp, arch=arch, data_dir=data_dir, write=False, precisions=["fp32"])

    def gap(row):
        return 1 - min(row["image_cos_min"], row["text_cos_min"])

    assert gap(wrong["fp32"]) > 10 * max(gap(right["fp32"]), 1e-7), (right, wrong)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_checkpoints(dtype, tmp_path, data_dir):
    """bf16 / fp16 checkpoints convert to the model their weights define (open_clip loading the same file)."""
    ckpt = save_random_checkpoint("tiny-test", tmp_path / f"{dtype}.pt", seed=5, dtype=getattr(torch, dtype),
                                  skyclip=dtype == "float16")
    out = convert_checkpoint(ckpt, tmp_path / "bundle")
    model, pp = torch_model("tiny-test", ckpt)
    assert_parity(verify_bundle(out, model.float(), pp, arch="tiny-test", data_dir=data_dir, write=False),
                  ("fp32",))


# --- reading checkpoints ----------------------------------------------------------------------------------------

def _tensors():
    t = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    return {"plain": t, "transposed": t.t(), "window": t[1:, 2:], "column": t[:, 3], "stepped": t[::2, ::3],
            "expanded": torch.ones(3).expand(4, 3), "empty": torch.zeros(0, 3), "scalar": torch.tensor(2.5),
            "half": t.half(), "bf16": t.bfloat16(), "bf16 scalar": torch.tensor(4.6, dtype=torch.bfloat16), "double": t.double(), "param": torch.nn.Parameter(t[0].clone()),
            "counter": torch.tensor(7), "int8": torch.arange(-3, 3, dtype=torch.int8),
            "flags": torch.tensor([True, False])}


def _expected(v):
    return v.detach().float().numpy() if v.is_floating_point() else v.numpy()


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_reader_matches_torch_on_dtypes_and_views(layout, tmp_path):
    """Strides, offsets, shared storages, 0-d and empty tensors; fp16/bf16/fp64 -> float32, integers kept."""
    sd = _tensors()
    path = tmp_path / "views.pt"
    torch.save(sd, path, _use_new_zipfile_serialization=layout == "zip")
    got = load_state_dict(path)
    assert got.keys() == sd.keys()
    for k, v in sd.items():
        ref = _expected(v)
        assert got[k].dtype == ref.dtype and got[k].shape == ref.shape, k
        np.testing.assert_array_equal(got[k], ref, err_msg=k)
    assert got["half"].dtype == got["bf16"].dtype == got["double"].dtype == np.float32
    assert got["counter"].dtype == np.int64 and got["flags"].dtype == np.bool_


def test_reader_training_checkpoints_module_prefix_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    sd = {k: v for k, v in _tensors().items() if k not in ("expanded", "param")}
    plain = tmp_path / "plain.pt"
    torch.save(sd, plain)
    sky = tmp_path / "sky.pt"
    torch.save({"epoch": 3, "optimizer": {"state": {0: {"exp_avg": torch.ones(4)}}}, "name": "run",
                "state_dict": OrderedDict(("module." + k, v) for k, v in sd.items())}, sky)
    ours = tmp_path / "checkpoint_last.pt"  # training.pretrain's own format
    torch.save({"model": sd, "epoch": 2, "rng": {"python": (3, tuple(range(5)), None)}}, ours)
    st = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, st, metadata={"format": "pt"})
    deflated = tmp_path / "deflated.pt"  # torch writes stored members; a re-zipped file compresses them
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    for path in (plain, sky, ours, st, deflated):
        got = load_state_dict(path)
        assert got.keys() == sd.keys(), path
        for k, v in sd.items():
            np.testing.assert_array_equal(got[k], _expected(v), err_msg=f"{path.name} {k}")


# --- refusing code ---------------------------------------------------------------------------------------------

class _Storage:
    """Pickled as a persistent id like a torch storage: what a crafted checkpoint puts around its payload."""


class _Tensor:
    def __init__(self, storage):
        self.storage = storage

    def __reduce__(self):
        from torch._utils import _rebuild_tensor_v2

        return _rebuild_tensor_v2, (self.storage, 0, (2,), (1,), False, OrderedDict())


class _CheckpointPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", torch.FloatStorage, "0", "cpu", 2)
        return None


class _Call:
    """Pickles as a call of ``func(*args)``: the payload of a malicious checkpoint."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _torch_zip(path: Path, data_pkl: bytes, storage: bytes = np.ones(2, np.float32).tobytes()) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/data/0", storage)
        zf.writestr("archive/version", "3\n")
    return path


def _pickled(obj, protocol=2) -> bytes:
    buf = io.BytesIO()
    _CheckpointPickler(buf, protocol=protocol).dump(obj)
    return buf.getvalue()


def _payloads(marker: Path) -> dict[str, tuple[bytes, str]]:
    """name -> (data.pkl bytes that would create ``marker``, the global the error must name)."""
    shell = f"touch {marker}"
    code = f"open({str(marker)!r}, 'w').close()"
    s = _Storage()
    return {
        # inside a state dict that is otherwise well formed: the tensor before it is rebuilt, then this
        "os.system in a state dict": (_pickled({"weight": _Tensor(s), "evil": _Call(os.system, shell)}),
                                      f"{os.system.__module__}.system"),
        "builtins.exec": (_pickled(OrderedDict(weight=_Tensor(s), bias=_Call(exec, code))), "builtins.exec"),
        "STACK_GLOBAL (protocol 4)": (_pickled({"w": _Call(exec, code)}, protocol=4), "builtins.exec"),
        "INST (protocol 0)": (b"(S'" + shell.encode() + b"'\nios\nsystem\n.", "os.system"),
        "OBJ": (b"\x80\x02(cbuiltins\nexec\nS'" + code.encode() + b"'\no.", "builtins.exec"),
        # a global that looks like torch's but is not on the list
        "torch.load": (b"\x80\x02ctorch\nload\nS'x'\n\x85R.", "torch.load"),
    }


@pytest.mark.parametrize("case", list(_payloads(Path("m"))))
def test_malicious_torch_zip_is_refused_and_runs_nothing(case, tmp_path):
    marker = tmp_path / "pwned"
    data, name = _payloads(marker)[case]
    ckpt = _torch_zip(tmp_path / "evil.pt", data)
    with pytest.raises(ModelError) as ei:
        load_state_dict(ckpt)
    assert ei.value.path == str(ckpt) and name in ei.value.problem and ei.value.fix   # names what it would call
    assert not marker.exists()
    # the converter refuses it the same way and writes nothing either
    with pytest.raises(ModelError) as ei:
        convert_checkpoint(ckpt, tmp_path / "bundle")
    assert ei.value.path == str(ckpt) and name in ei.value.problem
    assert not marker.exists() and not (tmp_path / "bundle").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pt"]


def test_real_pickle_would_have_run_the_payload(tmp_path):
    """The crafted file is a working exploit: plain pickle runs it (so the refusal above is what saves us)."""
    marker = tmp_path / "pwned"
    pickle.loads(_pickled({"evil": _Call(os.system, f"touch {marker}")}))
    assert marker.exists()


def test_malicious_legacy_checkpoint_and_plain_pickle_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    head = b"".join(pickle.dumps(o, protocol=2) for o in (0x1950A86A20F9469CFC6C, 1001,
                                                          {"protocol_version": 1001, "little_endian": True}))
    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(head + pickle.dumps(_Call(os.system, f"touch {marker}"), protocol=2))
    with pytest.raises(ModelError) as ei:
        load_state_dict(legacy)
    assert ei.value.path == str(legacy) and f"{os.system.__module__}.system" in ei.value.problem
    plain = tmp_path / "model.pkl"
    plain.write_bytes(pickle.dumps(_Call(os.system, f"touch {marker}"), protocol=2))
    with pytest.raises(ModelError) as ei:
        load_state_dict(plain)
    assert ei.value.path == str(plain) and ei.value.fix
    assert not marker.exists()


@pytest.mark.parametrize("record, message", [
    ((0, (3,), (1,)), "reaches past its storage"),      # 3 elements from a storage of 2
    ((1, (2,), (1,)), "reaches past its storage"),      # offset pushes the end out
    ((0, (2, 2), (0, 5)), "reaches past its storage"),  # a stride that jumps out
    ((-1, (1,), (1,)), "malformed tensor record"),
    ((0, (2,), (1, 1)), "malformed tensor record"),
])
def test_tensor_records_outside_their_storage_are_refused(record, message, tmp_path):
    offset, size, stride = record

    class Bad:
        def __reduce__(self):
            from torch._utils import _rebuild_tensor_v2

            return _rebuild_tensor_v2, (_Storage(), offset, size, stride, False, OrderedDict())

    ckpt = _torch_zip(tmp_path / "bad.pt", _pickled({"w": Bad()}))
    with pytest.raises(ModelError) as ei:
        load_state_dict(ckpt)
    # the record check's own ValueError is the cause (not whatever torch would say reading past the storage)
    assert ei.value.path == str(ckpt) and isinstance(ei.value.__cause__, ValueError)
    assert message in str(ei.value.__cause__)


def test_damaged_torchscript_and_foreign_files(tmp_path):
    good = save_random_checkpoint("tiny-test", tmp_path / "good.pt")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ModelError) as ei:
        load_state_dict(cut)
    assert ei.value.path == str(cut)
    short = _torch_zip(tmp_path / "short.pt", _pickled({"w": _Tensor(_Storage())}), storage=b"\0" * 4)
    with pytest.raises(ModelError) as ei:
        load_state_dict(short)
    assert ei.value.path == str(short) and "storage 0 " in ei.value.problem   # the storage named
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(ModelError) as ei:
        load_state_dict(garbage)
    assert ei.value.path == str(garbage) and ei.value.fix
    lst = tmp_path / "list.pt"
    torch.save([torch.ones(2)], lst)
    with pytest.raises(ModelError) as ei:
        load_state_dict(lst)
    assert ei.value.path == str(lst) and "(list)" in ei.value.problem   # what it holds instead
    with pytest.raises(SourceUnreadable) as ei:
        load_state_dict(tmp_path / "absent.pt")
    assert ei.value.path == str(tmp_path / "absent.pt")
    scripted = tmp_path / "jit.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), scripted)
    with pytest.raises(ModelError) as ei:
        load_state_dict(scripted)
    assert ei.value.path == str(scripted) and ei.value.fix
    st = tmp_path / "bad.safetensors"
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 64]}}).encode()
    st.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 16)
    with pytest.raises(ModelError) as ei:
        load_state_dict(st)
    assert ei.value.path == str(st) and "tensor w " in ei.value.problem   # the tensor named


# --- architectures ---------------------------------------------------------------------------------------------

def _shapes_only(arch: str) -> dict:
    """The state dict of open_clip's arch as zero-strided numpy arrays: right shapes, no memory."""
    checkpoints.register_local_configs()
    model = open_clip.create_model(arch, pretrained=None, device="meta")
    zero = np.zeros(1, np.float32)
    return {k: np.lib.stride_tricks.as_strided(zero, tuple(v.shape), [0] * v.dim()) for k, v in
            model.state_dict().items()}


@pytest.mark.parametrize("arch", ["RN50", "ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336", "small-vit",
                                  "tiny-test"])
def test_architecture_from_shapes_and_configs_match_open_clip(arch):
    assert arch in known_architectures()
    sd = _shapes_only(arch)
    assert detect_architecture(sd) == arch
    checkpoints.register_local_configs()
    reference = open_clip.get_model_config(arch)
    assert model_config(arch) == reference  # core/runtime/data/clip_architectures.json, copied from open_clip's JSON
    derived = derive_config(sd)  # everything but the heads, read off the shapes
    for tower, heads in (("vision_cfg", "head_width"), ("text_cfg", "heads")):
        assert derived[tower] == {k: v for k, v in reference[tower].items() if k != heads}
    assert derived["embed_dim"] == reference["embed_dim"]


def test_unknown_architectures_name_the_shapes_found():
    with pytest.raises(ModelError) as ei:
        detect_architecture(_shapes_only("RN101"))
    assert "[3, 4, 23, 3]" in ei.value.problem and "512" in ei.value.problem   # the shapes found
    assert "training.export" in ei.value.fix
    sd = _shapes_only("ViT-B-32")
    sd["visual.positional_embedding"] = np.zeros((65, 768), np.float32)  # an 8x8 grid: 256 px
    with pytest.raises(ModelError) as ei:
        detect_architecture(sd)
    assert "256 px" in ei.value.problem
    with pytest.raises(ModelError) as ei:
        detect_architecture({"fc.weight": np.zeros((2, 2))})
    assert "token_embedding.weight" in ei.value.problem   # a key it lacks


def test_finding_an_architecture_returns_none_where_detecting_it_raises():
    """The lookup check_state_dict guesses with: None for a checkpoint of no known architecture (or no CLIP
    at all), not an error taken as "not found"; detect_architecture is the same lookup, raising."""
    from core.errors import ModelError
    from core.runtime.convert.architectures import find_architecture

    assert find_architecture(_shapes_only("ViT-B-16")) == "ViT-B-16"
    for sd in (_shapes_only("RN101"), {"fc.weight": np.zeros((2, 2))}):
        assert find_architecture(sd) is None
        with pytest.raises(ModelError):
            detect_architecture(sd)


def test_wrong_or_modified_architecture_is_refused_with_keys(tmp_path):
    from core.runtime.convert.architectures import resolve

    with pytest.raises(ModelError) as ei:
        resolve(_shapes_only("RN50"), "ViT-B-32")
    msg = ei.value.problem
    assert "ViT-B-32" in msg and "visual.class_embedding" in msg and "visual.attnpool" in msg
    assert "RN50" in ei.value.fix
    sd = _shapes_only("ViT-B-32")
    sd["visual.transformer.resblocks.0.ls_1.gamma"] = np.zeros(768, np.float32)  # LayerScale: another model
    with pytest.raises(ModelError) as ei:
        resolve(sd)
    assert "visual.transformer.resblocks.0.ls_1.gamma" in ei.value.problem   # the unexpected key
    with pytest.raises(InvalidInput) as ei:
        resolve(sd, "ViT-Q-99")
    assert ei.value.param == "arch" and "'ViT-Q-99'" in ei.value.problem


# --- convert_checkpoint: destination, cancel, progress, source ------------------------------------------------

@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return save_random_checkpoint("tiny-test", tmp_path_factory.mktemp("tiny") / "tiny.pt", seed=2)


def test_progress_source_name_and_overwrite(tiny_ckpt, tmp_path):
    seen = []
    out = tmp_path / "models" / "tiny"
    got = convert_checkpoint(tiny_ckpt, out, name="Tiny test", source={"origin": "https://example.org/tiny.pt"},
                             progress=lambda f, m: seen.append((f, m)))
    assert got == out.resolve()
    fractions = [f for f, _ in seen]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert all(isinstance(m, str) and m for _, m in seen)
    m = load_bundle(out).manifest
    assert m["name"] == "Tiny test" and m["source"]["origin"] == "https://example.org/tiny.pt"
    assert m["source"]["sha256"] == checkpoints.sha256_file(tiny_ckpt) and m["source"]["checkpoint"] == "tiny.pt"
    # an existing bundle is refused unless overwrite, and replaced when asked
    with pytest.raises(OutputExists) as ei:
        convert_checkpoint(tiny_ckpt, out)
    assert ei.value.path == str(out) and "overwrite" in ei.value.fix
    convert_checkpoint(tiny_ckpt, out, overwrite=True, fp16=True, source={"sha256": "given"})
    b = load_bundle(out)
    assert b.precisions == ("fp32", "fp16") and b.manifest["source"]["sha256"] == "given"
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny"]  # no temporary or old folders left
    # a folder that is not a bundle is never replaced, overwrite or not
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "thesis.docx").write_text("precious")
    with pytest.raises(OutputExists) as ei:
        convert_checkpoint(tiny_ckpt, docs, overwrite=True)
    assert ei.value.path == str(docs)
    assert (docs / "thesis.docx").read_text() == "precious"


def test_a_folder_that_appears_during_the_run_is_not_replaced(tiny_ckpt, tmp_path):
    out = tmp_path / "tiny"

    def progress(fraction, message):
        if message == "Writing the manifest":  # someone saves their work there meanwhile
            out.mkdir()
            (out / "notes.txt").write_text("mine")

    with pytest.raises(OutputExists) as ei:
        convert_checkpoint(tiny_ckpt, out, progress=progress)
    assert ei.value.path == str(out)
    assert (out / "notes.txt").read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]


@pytest.mark.parametrize("stop_at", [1, 3, 6, 9, 12])
def test_cancel_at_any_stage_leaves_nothing(stop_at, tiny_ckpt, tmp_path):
    calls = []

    def is_cancelled():
        calls.append(1)
        return len(calls) >= stop_at

    with pytest.raises(Cancelled):
        convert_checkpoint(tiny_ckpt, tmp_path / "out" / "tiny", fp16=True, is_cancelled=is_cancelled)
    assert len(calls) == stop_at
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_cancel_stages_reach_the_end(tiny_ckpt, tmp_path):
    """The stop points above span the whole run: a run with fp16 asks at least 12 times."""
    calls = []
    convert_checkpoint(tiny_ckpt, tmp_path / "tiny", fp16=True, is_cancelled=lambda: calls.append(1) and False)
    assert len(calls) >= 12


def test_self_check_refuses_a_wrong_graph(tiny_ckpt, tmp_path, monkeypatch):
    """A graph that differs from the reference (here: LayerNorm epsilon 0.1) is not written as a bundle."""
    from core.runtime.convert import graphs

    monkeypatch.setattr(graphs, "LN_EPS", 0.1)
    with pytest.raises(ModelError) as ei:
        convert_checkpoint(tiny_ckpt, tmp_path / "tiny")
    assert "fp32" in ei.value.problem and ei.value.fix   # the precision whose graphs failed the check
    assert list(tmp_path.iterdir()) == []


def test_fp16_graphs_keep_layer_norm_and_io_in_float32(tiny_ckpt, tmp_path):
    import onnx

    out = convert_checkpoint(tiny_ckpt, tmp_path / "tiny", fp16=True)
    for kind in ("image", "text"):
        model = onnx.load(str(out / f"{kind}_fp16.onnx"))
        inits = {t.name: t.data_type for t in model.graph.initializer}
        lns = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
        assert lns and all(inits[n.input[1]] == onnx.TensorProto.FLOAT for n in lns)
        matmul_weights = [inits[i] for n in model.graph.node if n.op_type == "MatMul" for i in n.input if i in inits]
        assert matmul_weights and set(matmul_weights) == {onnx.TensorProto.FLOAT16}
        assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert (out / "image_fp16.onnx").stat().st_size < 0.6 * (out / "image_fp32.onnx").stat().st_size


def test_without_onnx_the_error_says_to_install_it(tiny_ckpt, tmp_path):
    code = RUN_CONVERTER.replace('("torch", "open_clip", "torchvision")', '("torch", "open_clip", "torchvision", "onnx")')
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", code, str(tiny_ckpt), "--out", str(tmp_path / "b")], capture_output=True,
                       text=True, env=env, cwd=ROOT, timeout=300)
    assert r.returncode == 2 and "needs the onnx package" in r.stderr and "pip install onnx==" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_command_line(tiny_ckpt, tmp_path):
    out = tmp_path / "b"
    r = convert_without_torch(tiny_ckpt, "--out", out, "--name", "cli tiny", "--arch", "tiny-test", timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out.resolve()) and "[100.0%]" in r.stderr
    assert load_bundle(out).name == "cli tiny"
    r = convert_without_torch(tiny_ckpt, "--out", out, "--quiet", timeout=300)
    assert r.returncode == 2 and "already exists" in r.stderr and "Fix:" in r.stderr
    r = convert_without_torch(tiny_ckpt, "--out", tmp_path / "c", "--arch", "ViT-B-32", "--quiet", timeout=300)
    assert r.returncode == 2 and "does not fit ViT-B-32" in r.stderr and "looks like tiny-test" in r.stderr
    assert not (tmp_path / "c").exists()
