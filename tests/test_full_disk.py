"""A full disk: every writer checks its writes before publishing, and a failed one keeps the old file.

The disk is made full for one process without root or mounts: the command runs in a subprocess whose file
size limit (RLIMIT_FSIZE) is set low, with SIGXFSZ ignored, so any write beyond the limit fails with EFBIG,
in Python and in GDAL alike (stdout and stderr are pipes, which the limit does not touch). The run must exit
non-zero with a WriteFailed naming the file, print no traceback, leave the file that was there byte for byte
and no temporary beside it. A cache entry that cannot be written is one warning line and a good run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.cli import main

ROOT = Path(__file__).resolve().parents[1]
Z20 = "orthomosaic/kampala_oam_z20_mosaic_1536x1024.tif"

pytestmark = pytest.mark.skipif(not hasattr(os, "setrlimit") and sys.platform == "win32",
                                reason="RLIMIT_FSIZE is POSIX")

# the command line (or a snippet) with files limited to LIMIT bytes; run_job's error, if any, is reported on
# stdout as JSON (kind and path) before the command line turns it into its one-line message
_LIMITED = r"""
import json, resource, signal, sys
sys.path.insert(0, sys.argv[1])
import core.cli, core.pipeline, core.errors   # loaded before the limit
limit = int(sys.argv[2])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

def report(e):
    print("ERROR " + json.dumps({"kind": type(e).__name__, "path": getattr(e, "path", None),
                                 "problem": getattr(e, "problem", str(e))}), flush=True)

if sys.argv[3] == "-c":
    try:
        exec(sys.argv[4], {"args": sys.argv[5:]})
    except Exception as e:
        report(e)
        sys.exit(2)
    sys.exit(0)
run_job = core.pipeline.run_job
def observed(*a, **kw):
    try:
        return run_job(*a, **kw)
    except Exception as e:
        report(e)
        raise
core.pipeline.run_job = observed
sys.exit(core.cli.main(sys.argv[3:]))
"""


def limited(limit: int, *argv):
    """(exit code, stdout, stderr, run_job's error as a dict or None) of ``argv`` run with files limited to
    ``limit`` bytes (``"-c", code, *args``: a Python snippet instead of the command line)."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    p = subprocess.run([sys.executable, "-c", _LIMITED, str(ROOT), str(limit), *map(str, argv)],
                       capture_output=True, text=True, timeout=300, env=env)
    err = None
    for line in p.stdout.splitlines():
        if line.startswith("ERROR "):
            err = json.loads(line[6:])
    return p.returncode, p.stdout, p.stderr, err


def folder_state(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def assert_refused(rc, err_text, err, path):
    assert rc == 2, err_text
    assert err is not None and err["kind"] == "WriteFailed" and err["path"] == str(path), err
    assert "Traceback" not in err_text and err_text.count("remoteclip: error:") <= 1, err_text


@pytest.mark.parametrize("limit", [0, 600])   # nothing fits; the header and part of the map fit
def test_a_heat_map_on_a_full_disk_fails_and_keeps_the_old_one(data_dir, tiny_bundle, tmp_path, capsys, limit):
    heat = tmp_path / "heat.tif"
    common = ["search", data_dir / Z20, "--model", tiny_bundle, "--query", "a road", "--tile-size", 256,
              "--no-cache", "-q", "--raster-output", heat]
    assert main([str(a) for a in common]) == 0
    capsys.readouterr()
    assert heat.stat().st_size > 600
    before = folder_state(tmp_path)
    rc, out, err_text, err = limited(limit, *common, "--overwrite")
    assert_refused(rc, err_text, err, heat)
    assert "raster output:" not in out
    assert folder_state(tmp_path) == before   # the old map byte for byte, no temporary left
    # a new one: nothing is published
    rc, _, err_text, err = limited(limit, *common[:-1], tmp_path / "new.tif")
    assert_refused(rc, err_text, err, tmp_path / "new.tif")
    assert folder_state(tmp_path) == before


def test_a_classifier_on_a_full_disk_fails_and_keeps_the_old_one(data_dir, tiny_bundle, tmp_path, capsys):
    from test_classify_jobs import kampala_samples, write_samples

    k = kampala_samples(data_dir, seed=0)
    samples = write_samples(tmp_path / "samples.gpkg", k["points"], k["classes"], k["crs"])
    head = tmp_path / "head.json"
    common = ["classify", k["raster"], "--samples", samples, "--class-field", "cls", "--model", tiny_bundle,
              "--tile-size", 128, "--no-cache", "-q", "--head-out", head]
    assert main([str(a) for a in common]) == 0
    capsys.readouterr()
    before = folder_state(tmp_path)
    rc, out, err_text, err = limited(100, *common, "--overwrite")   # the head is a few kB
    assert_refused(rc, err_text, err, head)
    assert "classifier:" not in out
    assert folder_state(tmp_path) == before


_WRITERS = r"""
import os, numpy as np
from core.outputs import write_report, write_text_file
from core.geodata.vectors import Field, write_vector
kind, path = args
n = int(os.environ["N_RECORDS"])
recs = [{"n": i, "s": "x" * 40, "geometry": f"POLYGON (({i} 0, {i + 1} 0, {i + 1} 1, {i} 1, {i} 0))"}
        for i in range(n)]
fields = [Field("n", "int"), Field("s", "str")]
if kind == "report":
    write_report(path, {"format": "remoteclip-classify-report", "big": "y" * (40 * n)})
elif kind == "text":
    write_text_file(path, "z" * (40 * n), overwrite=True)
else:
    write_vector(path, recs, fields, "", layer_name=os.environ.get("LAYER") or None, overwrite=True)
"""


@pytest.mark.parametrize("kind, name, layer", [("report", "out.remoteclip-report.json", None),
                                               ("text", "classifier.json", None),
                                               ("vector", "out.shp", None),
                                               ("vector", "out.gpkg", "tiles"),
                                               ("vector", "out.gpkg", "other")])
def test_every_writer_keeps_the_old_file_on_a_full_disk(tmp_path, kind, name, layer, monkeypatch):
    path = tmp_path / name
    monkeypatch.setenv("N_RECORDS", "50")
    monkeypatch.setenv("LAYER", "tiles")
    rc, _, err_text, err = limited(2 ** 30, "-c", _WRITERS, kind, path)   # the file that is there before
    assert rc == 0 and err is None, err_text
    before = folder_state(tmp_path)
    size = max(len(b) for b in before.values())
    monkeypatch.setenv("N_RECORDS", "3000")
    monkeypatch.setenv("LAYER", layer or "")
    # a GeoPackage updated in place may use the room the old file had; growing it fails
    rc, _, err_text, err = limited(size, "-c", _WRITERS, kind, path)
    assert rc == 2 and err is not None and err["kind"] == "WriteFailed", (err_text, err)
    assert err["path"] == str(path)
    assert folder_state(tmp_path) == before


def test_a_cache_entry_that_cannot_be_written_is_one_warning_and_a_good_run(data_dir, tiny_bundle, tmp_path,
                                                                           capsys):
    cache = tmp_path / "cache"
    argv = ["label", data_dir / Z20, "--model", tiny_bundle, "--labels", "buildings,trees", "--tile-size", 256,
            "--cache-dir", cache, "-q"]
    assert main([str(a) for a in argv]) == 0
    expected = capsys.readouterr().out
    (sidecar,) = [p for p in cache.glob("*.json") if p.name != "rates.json"]   # rates.json: the plan's tile rate
    room = sidecar.stat().st_size
    assert sidecar.with_suffix(".npz").stat().st_size > room
    for p in cache.iterdir():
        p.unlink()
    # room for the sidecar (written first), not for the embeddings
    rc, stdout, err_text, err = limited(room, *argv)
    assert rc == 0 and err is None, err_text
    assert stdout.splitlines()[1:] == expected.splitlines()[1:]   # the same labels (the first line: the time)
    lines = err_text.strip().splitlines()
    assert len(lines) == 1 and "could not write the embedding cache entry" in lines[0], err_text
    assert [p.name for p in cache.iterdir() if p.name != "rates.json"] == []   # no entry, no half of one, no temporary
