"""The model catalogue, the models folder and `remoteclip models list|remove`, and --model NAME."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from core.cli import main
from core.errors import ModelError, OutputRefused
from core.runtime import catalog as cat
from core.runtime.models import remove as cat_remove

ROOT = Path(__file__).resolve().parents[1]


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture
def models(tmp_path, monkeypatch):
    folder = tmp_path / "models"
    folder.mkdir()
    monkeypatch.setenv("REMOTECLIP_MODELS", str(folder))
    return folder


def _copy_bundle(src: Path, dest: Path, mark: bool) -> Path:
    shutil.copytree(src, dest)
    m = json.loads((dest / "manifest.json").read_text())
    m["name"] = dest.name
    if mark:
        m["source"] = dict(m.get("source") or {}, tool="remoteclip models pull")
    (dest / "manifest.json").write_text(json.dumps(m))
    return dest


# ------------------------------------------------------------------------------------------ catalogue

def test_the_catalogue_has_remoteclip_georsclip_skyclip_and_the_openai_baseline():
    entries = cat.load_catalog(Path("/nonexistent"))
    for arch in ("RN50", "ViT-B-32", "ViT-L-14"):
        e = entries[f"RemoteCLIP-{arch}"]
        assert e.architecture == arch and e.activation == "quick_gelu"
        assert e.urls == [f"https://huggingface.co/chendelong/RemoteCLIP/resolve/main/RemoteCLIP-{arch}.pt"]
        assert e.verified["status"] == "verified" and e.size and e.sha256
    assert {e.family for e in entries.values()} >= {"RemoteCLIP", "GeoRSCLIP", "SkyCLIP", "OpenAI CLIP"}
    # the baseline must be a state dict the converter reads, not OpenAI's TorchScript archive
    assert entries["OpenAI-CLIP-ViT-B-32"].urls[0].endswith("/open_clip_pytorch_model.bin")
    # SkyCLIP ViT-B-32 continued from open_clip's laion2b weights, which use GELU
    assert entries["SkyCLIP-ViT-B-32"].activation == "gelu" and entries["SkyCLIP-ViT-B-32"].archive == "zip"
    assert sum(e.recommended for e in entries.values()) == 1 and entries["RemoteCLIP-ViT-B-32"].recommended


def test_every_entry_says_whether_and_where_it_was_verified():
    raw = json.loads(cat.CATALOG_FILE.read_text())["models"]
    for d in raw:
        v = d["verified"]
        assert v["status"] in ("verified", "partial", "unverified"), d["name"]
        assert v["what"] and v["from"] and all(u.startswith("https://") for u in v["from"]), d["name"]
        assert all(u.startswith("https://") for u in d["urls"]) and d["licence"] and d["description"]
        if v["status"] == "verified":   # verified means size and sha256 are the publisher's
            assert isinstance(d["size"], int) and re.fullmatch(r"[0-9a-f]{64}", d["sha256"]), d["name"]
        else:
            assert "not" in v["what"], d["name"]    # says what could not be verified


def test_models_folder_per_platform(tmp_path):
    home = tmp_path / "home"
    assert cat.models_dir({"REMOTECLIP_MODELS": "/data/m"}, "linux") == Path("/data/m")
    assert cat.models_dir({}, "linux", home) == home / ".local/share/remoteclip/models"
    assert cat.models_dir({"XDG_DATA_HOME": "/x"}, "linux", home) == Path("/x/remoteclip/models")
    assert cat.models_dir({"LOCALAPPDATA": "C:/Users/a/AppData/Local"}, "win32", home) == \
        Path("C:/Users/a/AppData/Local/remoteclip/models")
    assert cat.models_dir({}, "darwin", home) == home / "Library/Application Support/remoteclip/models"
    # never inside the plugin or the repository
    assert not cat.models_dir({}, "linux", home).is_relative_to(ROOT)


def test_a_user_catalogue_beside_the_models_adds_and_replaces_entries(models):
    (models / "catalog.json").write_text(json.dumps({"format": "remoteclip-model-catalog", "format_version": 1,
        "models": [{"name": "Ours-ViT-B-32", "architecture": "ViT-B-32", "activation": "gelu",
                    "urls": ["https://mirror.example/ours.pt"]},
                   {"name": "RemoteCLIP-RN50", "architecture": "RN50", "activation": "quick_gelu",
                    "urls": ["https://mirror.example/RemoteCLIP-RN50.pt"]}]}))
    entries = cat.load_catalog(models)
    assert entries["Ours-ViT-B-32"].file == "ours.pt" and entries["Ours-ViT-B-32"].origin.endswith("catalog.json")
    assert entries["RemoteCLIP-RN50"].urls == ["https://mirror.example/RemoteCLIP-RN50.pt"]
    assert cat.lookup("remoteclip-vit-b-32", entries).name == "RemoteCLIP-ViT-B-32"
    (models / "catalog.json").write_text('{"models": 3}')
    with pytest.raises(ModelError) as err:
        cat.load_catalog(models)
    assert err.value.path == str(models / "catalog.json") and err.value.fix


def test_the_plugin_vendors_the_catalogue(built_plugin):
    vendored = built_plugin / "remoteclip_qgis" / "core" / "runtime" / "data" / "catalog.json"
    assert vendored.read_bytes() == cat.CATALOG_FILE.read_bytes()


# ------------------------------------------------------------------------------------- list, remove

def test_list_shows_every_state_with_sizes(models, tiny_bundle, capsys):
    _copy_bundle(tiny_bundle, models / "RemoteCLIP-RN50", mark=True)
    _copy_bundle(tiny_bundle, models / "my-own-bundle", mark=False)
    entries = cat.load_catalog(models)
    part = cat.download_path(entries["RemoteCLIP-ViT-L-14"], models)
    part = part.with_name(part.name + ".part")
    part.parent.mkdir()
    part.write_bytes(b"x" * 3_000_000)
    dl = cat.download_path(entries["GeoRSCLIP-ViT-B-32"], models)
    dl.write_bytes(b"y" * 1000)
    (dl.parent / (dl.name + ".json")).write_text(json.dumps({"tool": cat.TOOL, "sha256": "0" * 64}))
    states = {m.name: m for m in cat.list_models(models)}
    assert states["RemoteCLIP-RN50"].state == "converted" and states["RemoteCLIP-RN50"].size > 0
    assert states["RemoteCLIP-ViT-L-14"].state == "partial" and states["RemoteCLIP-ViT-L-14"].done_bytes == 3_000_000
    assert states["GeoRSCLIP-ViT-B-32"].state == "downloaded"
    assert states["RemoteCLIP-ViT-B-32"].state == "available" and states["RemoteCLIP-ViT-B-32"].size == 605208421
    assert states["my-own-bundle"].state == "converted" and states["my-own-bundle"].entry is None
    rc, out, _ = _run(capsys, "models", "list")
    assert rc == 0
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln and not ln.startswith(("NAME", "models", "*", "demo"))}
    assert "available" in lines["RemoteCLIP-ViT-B-32"] and "605 MB" in lines["RemoteCLIP-ViT-B-32"]
    assert "partial 3 MB" in lines["RemoteCLIP-ViT-L-14"] and "1.71 GB" in lines["RemoteCLIP-ViT-L-14"]
    assert "converted" in lines["RemoteCLIP-RN50"] and "downloaded" in lines["GeoRSCLIP-ViT-B-32"]
    assert "local bundle" in lines["my-own-bundle"]
    assert f"models folder: {models}" in out


def test_remove_takes_only_what_the_tool_made_and_says_what(models, tiny_bundle, capsys):
    b = _copy_bundle(tiny_bundle, models / "RemoteCLIP-RN50", mark=True)
    entry = cat.load_catalog(models)["RemoteCLIP-RN50"]
    part = cat.download_path(entry, models)
    part.parent.mkdir()
    part = part.with_name(part.name + ".part")
    part.write_bytes(b"partial")
    rc, out, err = _run(capsys, "models", "remove", "RemoteCLIP-RN50")
    assert rc == 0, err
    assert out.splitlines() == [f"removed {b}", f"removed {part}"]
    assert not b.exists() and not part.exists()

    foreign = _copy_bundle(tiny_bundle, models / "RemoteCLIP-ViT-B-32", mark=False)
    rc, _, err = _run(capsys, "models", "remove", "RemoteCLIP-ViT-B-32")
    assert rc == 2 and "was not made by `remoteclip models`" in err and err.count("\n") == 1
    assert (foreign / "manifest.json").is_file()
    (models / "notes").mkdir()
    for name, msg in (("notes", "is not a bundle made by"), ("../models", "is not a model name"),
                      ("RemoteCLIP-RN50", "Nothing to remove")):
        rc, _, err = _run(capsys, "models", "remove", name)
        assert rc == 2 and msg in err, (name, err)
    assert (models / "notes").is_dir()


def test_a_download_without_our_sidecar_is_left_alone(models, capsys):
    entry = cat.load_catalog(models)["RemoteCLIP-RN50"]
    dl = cat.download_path(entry, models)
    dl.parent.mkdir()
    dl.write_bytes(b"someone's file")
    rc, _, err = _run(capsys, "models", "remove", "RemoteCLIP-RN50")
    assert rc == 2 and "Nothing to remove" in err and dl.is_file()


# ------------------------------------------------------------------------------------ --model NAME

def test_model_by_name_runs_a_pulled_model_and_names_the_pull_command_otherwise(models, tiny_bundle, data_dir,
                                                                                 tmp_path, capsys):
    mosaic = data_dir / "orthomosaic" / "kampala_oam_z20_mosaic_1536x1024.tif"
    rc, _, err = _run(capsys, "label", mosaic, "--model", "RemoteCLIP-ViT-B-32", "--labels", "a,b", "-q")
    assert rc == 2 and "not pulled yet" in err and "remoteclip models pull RemoteCLIP-ViT-B-32" in err
    assert err.count("\n") == 1
    _copy_bundle(tiny_bundle, models / "RemoteCLIP-ViT-B-32", mark=True)
    rc, out, err = _run(capsys, "label", mosaic, "--model", "remoteclip-vit-b-32", "--labels", "trees,road",
                        "--tile-size", 768, "--no-cache", "-q")
    assert rc == 0, err
    assert "4 tiles" in out
    rc, _, err = _run(capsys, "label", mosaic, "--model", "no-such-model", "--labels", "a,b", "-q")
    assert rc == 2 and "Model bundle not found: no-such-model" in err


# ------------------------------------------------------------------------- the models folder is a fence

def test_confined_follows_links_and_refuses_what_leads_outside(models, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (models / "downloads").mkdir()
    assert cat.confined(models / "downloads" / "a.pt", models) == models / "downloads" / "a.pt"
    assert cat.confined(models / "not-yet" / "b.pt", models) == models / "not-yet" / "b.pt"
    (models / "linked").symlink_to(outside, target_is_directory=True)
    for path in (models / "linked" / "a.pt", models / "linked", models / "downloads" / ".." / ".." / "x",
                 models, models / "downloads" / ".."):
        with pytest.raises(OutputRefused) as err:
            cat.confined(path, models)
        assert err.value.path == str(path)
    # the models folder may itself be a link: what matters is where it leads
    alias = tmp_path / "alias"
    alias.symlink_to(models, target_is_directory=True)
    assert cat.confined(alias / "downloads" / "a.pt", alias) == alias / "downloads" / "a.pt"


def test_plain_names_are_single_components():
    for ok in ("RemoteCLIP-ViT-B-32", "RS5M_ViT-B-32.pt", "a..b", ".hidden"):
        assert cat.is_plain_name(ok), ok
    for bad in ("", " ", ".", "..", "../x", "a/b", "a\\b", "C:x", "/abs", "a\0b", None, 3):
        assert not cat.is_plain_name(bad), bad


def test_remove_deletes_nothing_through_a_link_out_of_the_models_folder(models, tiny_bundle, tmp_path, capsys):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    entry = cat.load_catalog(models)["RemoteCLIP-RN50"]
    dl = outside / cat.download_path(entry, models).name
    dl.write_bytes(b"someone's checkpoint")
    (outside / (dl.name + ".json")).write_text(json.dumps({"tool": cat.TOOL}))
    (models / "downloads").symlink_to(outside, target_is_directory=True)
    before = sorted(outside.iterdir())
    with pytest.raises(OutputRefused):
        cat_remove("RemoteCLIP-RN50", models)
    assert sorted(outside.iterdir()) == before and dl.read_bytes() == b"someone's checkpoint"
    # a bundle folder that is a link to a bundle elsewhere, marked as ours
    theirs = _copy_bundle(tiny_bundle, tmp_path / "their-bundle", mark=True)
    (models / "downloads").unlink()
    (models / "RemoteCLIP-ViT-B-32").symlink_to(theirs, target_is_directory=True)
    rc, _, err = _run(capsys, "models", "remove", "RemoteCLIP-ViT-B-32")
    assert rc == 2 and "leads outside the models folder" in err and err.count("\n") == 1
    assert (theirs / "manifest.json").is_file()
