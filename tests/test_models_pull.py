"""`remoteclip models pull` end to end: random-weight checkpoints saved exactly like RemoteCLIP's files
(``torch.save(model.state_dict())`` of an open_clip model) served by a loopback HTTP server, downloaded,
converted by core.runtime.convert (no torch) and used by `remoteclip label` on a real raster."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import require
from loopback import FileServer

from core.cli import main
from core.errors import (
    Cancelled,
    ModelError,
    OutputExists,
    OutputRefused,
    SourceUnreadable,
    WriteFailed,
)
from core.runtime import catalog as cat


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def save_checkpoint(path: Path, config: str = "tiny-test", seed: int = 0, **changes) -> Path:
    """A random open_clip CLIP saved as RemoteCLIP saves its files: torch.save(model.state_dict(), path)."""
    torch = _torch()
    from open_clip.model import CLIP

    if config in ("tiny-test", "small-vit"):
        cfg = json.loads((Path(__file__).resolve().parents[1] / "training" / "configs" / f"{config}.json").read_text())
    else:
        import open_clip

        cfg = open_clip.get_model_config(config)
    cfg.update(changes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(**cfg)
    torch.save(model.state_dict(), path)
    return path


def _torch():
    try:
        import open_clip  # noqa: F401
        import torch
    except ImportError:
        require(False, "torch and open_clip make the test checkpoints (requirements/training.txt)")
    return torch


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture
def models(tmp_path, monkeypatch):
    folder = tmp_path / "models"
    folder.mkdir()
    monkeypatch.setenv("REMOTECLIP_MODELS", str(folder))
    for k in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(k, raising=False)
    return folder


def user_catalog(folder: Path, *entries: dict) -> None:
    (folder / "catalog.json").write_text(json.dumps({"format": "remoteclip-model-catalog", "format_version": 1,
                                                     "models": list(entries)}))


def entry(name="Tiny-RS", arch="tiny-test", url="https://models.example/tiny.pt", **extra) -> dict:
    return {"name": name, "architecture": arch, "activation": "quick_gelu", "urls": [url], **extra}


@pytest.fixture(scope="module")
def mosaic(data_dir):
    return data_dir / "orthomosaic" / "kampala_oam_z20_mosaic_1536x1024.tif"


def test_pull_from_a_mirror_then_label_a_real_raster(models, tiny_ckpt, mosaic, capsys):
    user_catalog(models, entry())
    with FileServer({"tiny.pt": tiny_ckpt}) as srv:
        rc, out, err = _run(capsys, "models", "pull", "Tiny-RS", "--url", srv.url("tiny.pt", "resolve"))
        assert rc == 0, err
    bundle = models / "Tiny-RS"
    assert f"pulled Tiny-RS: {bundle}" in out
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["name"] == "Tiny-RS" and manifest["architecture"] == "tiny-test"
    assert manifest["source"]["tool"] == "remoteclip models pull"
    assert manifest["source"]["sha256"] == hashlib.sha256(tiny_ckpt.read_bytes()).hexdigest()
    assert list((models / "downloads").iterdir()) == []          # the checkpoint went after converting
    rc, out, err = _run(capsys, "label", mosaic, "--model", "Tiny-RS", "--labels", "buildings,trees,road",
                        "--tile-size", 512, "--no-cache", "-q")
    assert rc == 0, err
    assert "6 tiles" in out
    states = {m.name: m.state for m in cat.list_models(models)}
    assert states["Tiny-RS"] == "converted" and states["RemoteCLIP-ViT-B-32"] == "available"


def test_an_interrupted_pull_resumes_where_it_stopped(models, tiny_ckpt, capsys):
    from core.runtime.models import pull

    user_catalog(models, entry())
    size = tiny_ckpt.stat().st_size
    with FileServer({"tiny.pt": tiny_ckpt}, latency=0.01, chunk=256 * 1024) as srv:
        calls = {"n": 0}

        def cancel_soon():
            calls["n"] += 1
            return calls["n"] > 4

        with pytest.raises(Cancelled):
            pull("Tiny-RS", url=srv.url("tiny.pt"), is_cancelled=cancel_soon)
        part = cat.download_path(cat.load_catalog(models)["Tiny-RS"], models)
        part = part.with_name(part.name + ".part")
        kept = part.stat().st_size
        assert 0 < kept < size and not (models / "Tiny-RS").exists()
        assert {m.name: m.state for m in cat.list_models(models)}["Tiny-RS"] == "partial"
        srv.drops = [kept + 300_000]               # and the connection drops once more on the way
        rc, _, err = _run(capsys, "models", "pull", "Tiny-RS", "--url", srv.url("tiny.pt"), "-q")
        assert rc == 0, err
        assert srv.range_starts() == [kept, kept + 300_000]
    assert (models / "Tiny-RS" / "manifest.json").is_file() and not part.exists()


def test_a_wrong_sha256_is_refused_and_the_download_removed(models, tiny_ckpt, capsys):
    user_catalog(models, entry(sha256="ab" * 32))
    with FileServer({"tiny.pt": tiny_ckpt}) as srv:
        rc, _, err = _run(capsys, "models", "pull", "Tiny-RS", "--url", srv.url("tiny.pt"), "-q")
    assert rc == 2 and "is corrupt: its sha256 is" in err and "it was removed" in err
    assert err.count("\n") == 1
    assert list((models / "downloads").iterdir()) == [] and not (models / "Tiny-RS").exists()


def test_a_mirror_with_another_file_is_refused_before_downloading(models, tiny_ckpt, capsys):
    with FileServer({"tiny.pt": tiny_ckpt}) as srv:
        rc, _, err = _run(capsys, "models", "pull", "RemoteCLIP-ViT-B-32", "--url", srv.url("tiny.pt"), "-q")
    assert rc == 2 and f"the catalogue says {605208421}" in err
    assert not (models / "RemoteCLIP-ViT-B-32").exists()


def test_a_checkpoint_of_an_unknown_architecture_is_refused(models, tmp_path, capsys):
    odd = save_checkpoint(tmp_path / "odd.pt", embed_dim=48)     # a CLIP, but of no known shape
    user_catalog(models, entry("Odd", "auto"), entry("Odd-as-tiny", "tiny-test"))
    with FileServer({"odd.pt": odd}) as srv:
        for name in ("Odd", "Odd-as-tiny"):
            rc, _, err = _run(capsys, "models", "pull", name, "--url", srv.url("odd.pt"), "-q")
            assert rc == 2 and err.startswith("remoteclip: error:") and err.count("\n") == 1, err
            assert not (models / name).exists()
            assert not list(models.glob(f".{name}*")) and not list(models.glob(f"{name}*"))


def test_a_local_copy_is_converted_in_place_and_kept(models, tiny_ckpt, tmp_path, capsys):
    user_catalog(models, entry(sha256=hashlib.sha256(tiny_ckpt.read_bytes()).hexdigest(),
                               size=tiny_ckpt.stat().st_size))
    rc, _, err = _run(capsys, "models", "pull", "Tiny-RS", "--url", tiny_ckpt.as_uri(), "-q")
    assert rc == 0, err
    assert tiny_ckpt.is_file() and not (models / "downloads").exists()
    rc, out, _ = _run(capsys, "models", "remove", "Tiny-RS")
    assert rc == 0 and out.strip() == f"removed {models / 'Tiny-RS'}" and tiny_ckpt.is_file()
    user_catalog(models, entry(size=tiny_ckpt.stat().st_size + 1))
    rc, _, err = _run(capsys, "models", "pull", "Tiny-RS", "--url", str(tiny_ckpt), "-q")
    assert rc == 2 and "is truncated" in err and tiny_ckpt.is_file()


def test_convert_a_checkpoint_the_user_has(models, tiny_ckpt, tmp_path, capsys):
    out_dir = tmp_path / "bundles" / "mine"
    rc, out, err = _run(capsys, "models", "convert", tiny_ckpt, "--out", out_dir, "-q")
    assert rc == 0, err
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["architecture"] == "tiny-test" and manifest["source"]["tool"] == "remoteclip models convert"
    rc, _, err = _run(capsys, "models", "convert", tiny_ckpt, "--out", out_dir, "-q")
    assert rc == 2 and err.count("\n") == 1      # an existing bundle is never replaced


def test_convert_replaces_a_bundle_only_with_overwrite(models, tiny_ckpt, tmp_path, capsys):
    out_dir = tmp_path / "mine"
    assert _run(capsys, "models", "convert", tiny_ckpt, "--out", out_dir, "-q")[0] == 0
    stamp = (out_dir / "manifest.json").stat().st_mtime_ns
    rc, _, err = _run(capsys, "models", "convert", tiny_ckpt, "--out", out_dir, "-q")
    assert rc == 2 and "--overwrite" in err and (out_dir / "manifest.json").stat().st_mtime_ns == stamp
    rc, _, err = _run(capsys, "models", "convert", tiny_ckpt, "--out", out_dir, "--name", "again", "--overwrite", "-q")
    assert rc == 0, err
    assert json.loads((out_dir / "manifest.json").read_text())["name"] == "again"


def test_a_checkpoint_that_is_not_a_regular_file_is_named_so(models, tmp_path, capsys):
    from core.runtime.convert.checkpoint import read_checkpoint
    from core.runtime.models import convert

    last = tmp_path / "checkpoint_last.pt"
    last.symlink_to("/dev/zero")
    folder = tmp_path / "a-folder.pt"
    folder.mkdir()
    for path in (last, folder):
        for call in (lambda p: convert(p, tmp_path / "out"), read_checkpoint):
            with pytest.raises(SourceUnreadable) as err:
                call(path)
            assert err.value.path == str(path) and "not a regular file" in err.value.problem
        rc, _, err_text = _run(capsys, "models", "convert", path, "--out", tmp_path / "out", "-q")
        assert rc == 2 and "not a regular file" in err_text and err_text.count("\n") == 1
    user_catalog(models, entry())
    with pytest.raises(SourceUnreadable):
        from core.runtime.models import pull

        pull("Tiny-RS", url=str(last))
    assert not (tmp_path / "out").exists() and not (models / "Tiny-RS").exists()


@contextlib.contextmanager
def _without_write_access():
    """Permissions bind only a user that is not root: as root (CI containers), act as nobody meanwhile."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def test_a_read_only_models_folder_is_one_clear_error(tmp_path, capsys, monkeypatch):
    import tempfile

    from core.runtime.models import pull

    folder = Path(tempfile.mkdtemp(prefix="ro-models-"))   # in /tmp itself: tmp_path lies in a folder only root may enter
    try:
        user_catalog(folder, entry(), entry("Tiny-B"))
        marked = folder / "Tiny-RS"
        marked.mkdir()
        (marked / "manifest.json").write_text(json.dumps({"format": "remoteclip-onnx-bundle", "source": {
            "tool": "remoteclip models pull"}}))
        folder.chmod(0o555)
        monkeypatch.setenv("REMOTECLIP_MODELS", str(folder))
        with FileServer({"tiny.pt": b"x" * 5000}) as srv:
            with _without_write_access(), pytest.raises(WriteFailed) as err:
                pull("Tiny-B", url=srv.url("tiny.pt"))
            assert srv.requests == []
        assert err.value.path == str(folder) and "models folder" in err.value.problem
        with _without_write_access():
            rc, _, err_text = _run(capsys, "models", "remove", "Tiny-RS")
        assert rc == 2 and "Cannot remove" in err_text and err_text.count("\n") == 1
        assert (marked / "manifest.json").is_file()
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder)


def test_pull_refuses_a_model_that_is_already_there(models, tiny_ckpt):
    from core.runtime.models import pull

    user_catalog(models, entry())
    pull("Tiny-RS", url=str(tiny_ckpt))
    with pytest.raises(OutputExists) as err:
        pull("Tiny-RS", url=str(tiny_ckpt))
    assert err.value.path == str(models / "Tiny-RS") and "models remove Tiny-RS" in err.value.fix


@pytest.mark.slow
def test_vit_b_32_end_to_end(models, tmp_path, mosaic, capsys):
    ckpt = save_checkpoint(tmp_path / "RemoteCLIP-ViT-B-32.pt", "ViT-B-32")
    user_catalog(models, entry("Random-ViT-B-32", "ViT-B-32"))
    with FileServer({"RemoteCLIP-ViT-B-32.pt": ckpt}, chunk=1 << 20) as srv:
        rc, _, err = _run(capsys, "models", "pull", "Random-ViT-B-32", "--url",
                          srv.url("RemoteCLIP-ViT-B-32.pt", "resolve"), "-q")
        assert rc == 0, err
    rc, out, err = _run(capsys, "label", mosaic, "--model", "Random-ViT-B-32", "--labels", "buildings,trees",
                        "--tile-size", 224, "--no-cache", "-q")
    assert rc == 0, err
    assert "35 tiles" in out


# ------------------------------------------------------------------------- the models folder is a fence

def _tree(root: Path) -> dict:
    """Every path under ``root`` with its bytes (files) or None (folders), symlinks not followed."""
    return {p: (p.read_bytes() if p.is_file() and not p.is_symlink() else None) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("hostile", [
    {"file": "../../../../victim.txt"},
    {"file": "../victim.txt"},
    {"name": "../../escape"},
    {"file": "/absolute-victim.txt"},
    {"urls": ["https://mirror.example/..%2F..%2F..%2Fvictim.txt"]},      # the file name taken from the URL
])
def test_a_hostile_catalogue_is_refused_when_read_and_writes_nothing(models, tmp_path, capsys, hostile):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"the user's file")
    user_catalog(models, {**entry(), **hostile})
    before = _tree(tmp_path)
    with pytest.raises(ModelError) as err:
        cat.load_catalog(models)
    assert err.value.path == str(models / "catalog.json")
    field = "name" if "name" in hostile else "file"
    assert f"has {field} " in err.value.problem
    with FileServer({"tiny.pt": b"not a checkpoint " * 1000, "victim.txt": b"downloaded bytes"}) as srv:
        for name in (hostile.get("name", "Tiny-RS"), "Tiny-RS"):
            rc, _, err_text = _run(capsys, "models", "pull", name, "--url", srv.url("victim.txt"), "-q")
            assert rc == 2 and "not a plain file name" in err_text and err_text.count("\n") == 1
        assert srv.requests == []
    assert victim.read_bytes() == b"the user's file"
    assert _tree(tmp_path) == before


def test_pull_writes_nothing_through_a_link_out_of_the_models_folder(models, tmp_path):
    from core.runtime.models import pull

    user_catalog(models, entry())
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (models / "downloads").symlink_to(outside, target_is_directory=True)
    with FileServer({"tiny.pt": b"x" * 5000}) as srv:
        with pytest.raises(OutputRefused) as err:
            pull("Tiny-RS", url=srv.url("tiny.pt"))
        assert err.value.path == str(models / "downloads" / "Tiny-RS--tiny.pt")
        assert list(outside.iterdir()) == [] and srv.requests == []
        # a .part linked to a file elsewhere is not appended to either
        (models / "downloads").unlink()
        (models / "downloads").mkdir()
        victim = tmp_path / "victim.txt"
        victim.write_bytes(b"keep")
        (models / "downloads" / "Tiny-RS--tiny.pt.part").symlink_to(victim)
        with pytest.raises(OutputRefused):
            pull("Tiny-RS", url=srv.url("tiny.pt"))
        assert victim.read_bytes() == b"keep" and srv.requests == []
        # the bundle folder itself: a dangling link named like the model
        (models / "downloads" / "Tiny-RS--tiny.pt.part").unlink()
        (models / "Tiny-RS").symlink_to(tmp_path / "new-bundle", target_is_directory=True)
        with pytest.raises(OutputRefused):
            pull("Tiny-RS", url=srv.url("tiny.pt"))
        assert not (tmp_path / "new-bundle").exists() and srv.requests == []


def _refused_url() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/tiny.pt"   # nothing listens: as with no network


def test_a_checkpoint_already_in_downloads_is_converted_without_the_network(models, tiny_ckpt, tmp_path, capsys):
    """A complete file the analyst put in downloads/ (the publisher's file name, no sidecar) is listed as
    downloaded and pull converts it offline when its sha256 is the catalogue's; it stays (it is theirs). One
    of the right size but another sha256 is refused naming it, nothing downloaded, the file left alone."""
    from core.errors import VerificationFailed
    from core.runtime.models import pull

    user_catalog(models, entry(url=_refused_url(), sha256=hashlib.sha256(tiny_ckpt.read_bytes()).hexdigest(),
                               size=tiny_ckpt.stat().st_size))
    (models / "downloads").mkdir()
    theirs = models / "downloads" / "tiny.pt"
    shutil.copyfile(tiny_ckpt, theirs)
    assert {m.name: m.state for m in cat.list_models(models)}["Tiny-RS"] == "downloaded"
    rc, _, err = _run(capsys, "models", "pull", "Tiny-RS", "-q")
    assert rc == 0, err
    manifest = json.loads((models / "Tiny-RS" / "manifest.json").read_text())
    assert manifest["source"]["sha256"] == hashlib.sha256(tiny_ckpt.read_bytes()).hexdigest()
    assert manifest["source"]["origin"] == str(theirs)
    assert theirs.read_bytes() == tiny_ckpt.read_bytes()       # kept: it is the analyst's
    _run(capsys, "models", "remove", "Tiny-RS")
    other = bytearray(tiny_ckpt.read_bytes())
    other[-1] ^= 0xFF                                          # same size, another file
    theirs.write_bytes(bytes(other))
    with pytest.raises(VerificationFailed) as e:
        pull("Tiny-RS", models)
    assert e.value.path == str(theirs) and theirs.read_bytes() == bytes(other)
    assert not (models / "Tiny-RS").exists() and sorted(p.name for p in (models / "downloads").iterdir()) == ["tiny.pt"]
