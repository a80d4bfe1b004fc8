"""A run's outputs are one set: the vector output, the heat map, the saved classifier and the report are each
written to a temporary and checked before any of them is published, so a failed or cancelled run leaves the
complete set or nothing new, and with --overwrite every old file byte for byte (core.pipeline.write).

The writers are made to fail in-process at their own checks: the heat map's read-back check
(core.geodata.dense._written_back) and the synced write of the report (core.geodata.vectors._write_synced, an ENOSPC)."""

from __future__ import annotations

import errno

import pytest
from test_classify_jobs import kampala_samples

from core.errors import Cancelled, WriteFailed
from core.pipeline import Job, RunOptions, TileSpec, run_job
from core.samples import Samples
from core.tasks import ClassifyTask


@pytest.fixture(scope="module")
def kampala(data_dir):
    return kampala_samples(data_dir, seed=0)


def folder_state(folder) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def classify_job(kampala, bundle, cache, out, vector: str, overwrite: bool) -> Job:
    """The first run trains on all 8 samples; a run with ``overwrite`` on 6 of them, so that each of its outputs
    differs from the old one."""
    keep = [1, 2, 3, 5, 6, 7] if overwrite else range(8)
    samples = Samples([f"POINT ({x!r} {y!r})" for x, y in (kampala["points"][i] for i in keep)],
                      [kampala["classes"][i] for i in keep], kampala["crs"])
    return Job(raster=kampala["raster"], task=ClassifyTask(samples=samples, head_out=str(out / "head.json")),
               run=RunOptions(model=str(bundle), cache_dir=str(cache)), tiles=TileSpec(size=128),
               output=str(out / vector), raster_output=str(out / "heat.tif"), overwrite=overwrite)


def fail_heat_map(monkeypatch):
    import core.geodata.dense

    monkeypatch.setattr(core.geodata.dense, "_written_back", lambda tmp, data: False)


def fail_report(monkeypatch):
    import core.geodata.vectors

    real = core.geodata.vectors._write_synced

    def write(path, text):
        if "remoteclip-report" in path:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, text)

    monkeypatch.setattr(core.geodata.vectors, "_write_synced", write)


@pytest.mark.parametrize("vector", ["out.gpkg", "out.shp"])
@pytest.mark.parametrize("fail, failing", [(fail_heat_map, "heat.tif"),
                                           (fail_report, "out.remoteclip-report.json")])
def test_a_failed_output_publishes_none_of_the_set(kampala, tiny_bundle, tmp_path, monkeypatch, vector, fail,
                                                   failing):
    out, cache = tmp_path / "out", tmp_path / "cache"
    out.mkdir()
    res = run_job(classify_job(kampala, tiny_bundle, cache, out, vector, False))
    report = out / ("out.classes.remoteclip-report.json" if vector == "out.gpkg" else "out.remoteclip-report.json")
    assert res.output and res.raster_output and res.head_output and res.report_output == str(report)
    before = folder_state(out)
    assert {vector, "heat.tif", "head.json", report.name} <= set(before)

    fail(monkeypatch)
    with pytest.raises(WriteFailed) as err:   # --overwrite: nothing of the old set is replaced
        run_job(classify_job(kampala, tiny_bundle, cache, out, vector, True))
    assert err.value.path == str(report if failing.endswith("report.json") else out / failing)
    assert folder_state(out) == before        # every old file byte for byte, no temporary left

    new = tmp_path / "new"                    # a new set: no file at all
    new.mkdir()
    with pytest.raises(WriteFailed):
        run_job(classify_job(kampala, tiny_bundle, cache, new, vector, False))
    assert list(new.iterdir()) == []


def test_a_run_cancelled_while_writing_leaves_nothing(kampala, tiny_bundle, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    out.mkdir()
    run_job(classify_job(kampala, tiny_bundle, cache, tmp_path, "warm.gpkg", False))   # the cache, filled
    seen = []

    def cancelled_once_the_heat_map_is_written():   # the vector and the heat map are complete temporaries
        seen.append(sorted(p.name for p in out.iterdir()))
        return any(".heat.tmp-" in p.name for p in out.iterdir())

    with pytest.raises(Cancelled):
        run_job(classify_job(kampala, tiny_bundle, cache, out, "out.gpkg", False),
                is_cancelled=cancelled_once_the_heat_map_is_written)
    assert any(".out.tmp-" in name for names in seen for name in names)   # it was cancelled while writing
    assert list(out.iterdir()) == []


def test_an_existing_geopackage_is_written_before_any_rename(kampala, tiny_bundle, tmp_path, monkeypatch):
    """A layer of a GeoPackage that exists is written at publishing, in one transaction of that file: it may
    still fail, so it goes first, and then the heat map, the classifier and the report stay the old ones."""
    import core.geodata.vectors

    out, cache = tmp_path / "out", tmp_path / "cache"
    out.mkdir()
    run_job(classify_job(kampala, tiny_bundle, cache, out, "out.gpkg", False))
    before = folder_state(out)

    def full(path, layer_name, content, overwrite):
        raise WriteFailed(f"Cannot write to {path}.", "Free space.", path=path)

    monkeypatch.setattr(core.geodata.vectors, "_write_into_gpkg", full)
    with pytest.raises(WriteFailed) as err:
        run_job(classify_job(kampala, tiny_bundle, cache, out, "out.gpkg", True))
    assert err.value.path == str(out / "out.gpkg")
    assert folder_state(out) == before
    monkeypatch.undo()   # the same run, published: each of the four files is a new one
    run_job(classify_job(kampala, tiny_bundle, cache, out, "out.gpkg", True))
    after = folder_state(out)
    assert set(after) == set(before) and all(after[name] != before[name] for name in before)
