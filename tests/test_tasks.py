"""The task registry (core.tasks): every task declares what the front-ends need, raw inputs are parsed by one
rule everywhere, tasks and jobs are plain data (picklable), and a task added to the registry runs through
run_job and the command line without a line elsewhere."""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest

from core import prompts
from core.cli import _parser, main
from core.errors import InvalidInput
from core.pipeline import ClassifyTask, CountTask, Job, LabelTask, RunOptions, SearchTask, TileSpec, run_job
from core.samples import Samples
from core.tasks import TASKS, Param, Task, TaskOutput, register, task_class


def test_every_task_declares_what_the_front_ends_need():
    assert list(TASKS) == ["label", "count", "search", "embed", "classify", "change"]
    sub = next(a for a in _parser()._actions if a.dest == "command")
    # one sub-command per task, in the registry's order, then the tools that are no tile task
    assert list(sub.choices) == [*TASKS, "models", "sample", "assess"]
    for kind, cls in TASKS.items():
        assert cls.kind == kind and cls.title and cls.summary and cls.help and cls.algorithm
        assert task_class(kind) is cls
        keys = [p.processing_key for p in cls.params]
        assert len(set(keys)) == len(keys)
        for p in cls.params:
            if p.kind == "field":
                assert cls.param(p.parent).kind == "samples"
            if p.kind == "preset":
                assert cls.param(p.fills).kind == "names"
            if p.default is not None and p.kind in ("int", "float"):
                assert (p.lo is None or p.default >= p.lo) and (p.hi is None or p.default <= p.hi)
        if cls.dense:
            assert cls.style.renderer in ("categories", "graduated")
    with pytest.raises(InvalidInput) as err:
        task_class("cluster")
    assert err.value.param == "kind" and "'cluster'" in err.value.problem


def test_one_rule_for_class_names_and_templates():
    assert prompts.split_names("buildings, trees\nroad\n\n# a comment\n bare soil ") == \
        ["buildings", "trees", "road", "bare soil"]
    assert prompts.split_names("water,,trees") == ["water", "", "trees"]   # refused by check_labels
    assert prompts.split_names(["river, lake", "sea"]) == ["river, lake", "sea"]   # a list is taken as it is
    assert prompts.split_templates("a photo of {}, from above | {} seen by a drone\n# no\n") == \
        ["a photo of {}, from above", "{} seen by a drone"]
    task = LabelTask.from_inputs({"labels": "buildings, trees\nroad"})
    assert task.labels == ["buildings", "trees", "road"]
    with pytest.raises(InvalidInput) as err:
        LabelTask.from_inputs({"labels": "water,,trees"})
    assert err.value.param == "labels" and "''" in err.value.problem   # the empty name is shown


def test_the_command_line_splits_names_by_the_same_rule(tmp_path, data_dir, tiny_bundle, capsys):
    raster = str(data_dir / "geotiff" / "rasterio_RGB.byte.tif")
    f = tmp_path / "classes.txt"
    f.write_text("water, trees\nroad\n")
    j = tmp_path / "classes.json"
    j.write_text(json.dumps(["river, lake", "forest"]))
    for arg, want in ((["--labels", "water, trees\nroad"], ["water", "trees", "road"]),
                      (["--labels-file", f], ["water", "trees", "road"]),
                      (["--labels-file", j], ["river, lake", "forest"])):
        out = tmp_path / f"out{len(want)}{arg[0]}.gpkg"
        assert main(["label", raster, "--model", str(tiny_bundle), "--tile-size", "359", "--no-cache", "-q",
                     *map(str, arg), "-o", str(out)]) == 0
        from osgeo import ogr

        ds = ogr.Open(str(out))   # held: a layer outlives its dataset only in C
        meta = json.loads(ds.GetLayer(0).GetMetadataItem("REMOTECLIP"))
        assert sorted(meta["fields"].values()) == sorted(want)
    capsys.readouterr()
    assert main(["label", raster, "--labels", "a,b", "--labels-file", str(f)]) == 2
    assert "Both --labels and --labels-file" in capsys.readouterr().err


def test_inputs_combine_with_errors_that_name_them_as_the_front_end_does():
    with pytest.raises(InvalidInput) as err:
        LabelTask.from_inputs({"labels": "a,b", "preset": "water"}, spell=lambda p: p.processing_key)
    assert err.value.param == "preset" and "LABELS" in err.value.problem and "PRESET" in err.value.problem
    with pytest.raises(InvalidInput) as err:
        LabelTask.from_inputs({"labels": "a,b", "preset": "water"}, spell=lambda p: p.cli_flag)
    assert err.value.param == "preset" and "--labels" in err.value.problem and "--preset" in err.value.problem
    assert LabelTask.from_inputs({"preset": "water"}).labels == prompts.PRESETS["water"]
    assert SearchTask.from_inputs({"query": "pools", "top_k": None}).top_k is None
    assert CountTask.from_inputs({"object_name": "car", "max_count": None}).max_count == 10


def test_tasks_and_jobs_are_plain_data():
    samples = Samples(["POINT (1 2)", "POINT (3 4)"], ["a", "b"], "EPSG:32636")
    for task in (LabelTask(["a", "b"]), CountTask("car"), SearchTask("pool", 5), ClassifyTask(samples, suggest=3)):
        job = Job(raster="x.tif", task=task, run=RunOptions(model="m"), tiles=TileSpec(size=64, overlap=0.5))
        again = pickle.loads(pickle.dumps(job))
        assert again == job and again.task == task


def test_the_overlap_ceiling_is_one_for_everyone():
    """One rule (core.geodata.tiles.check_overlap) for TileSpec and the command line: the ceiling itself is taken,
    just above it is refused as the overlap input, spelled as the front-end shows it."""
    from core.errors import InvalidInput
    from core.geodata.tiles import MAX_OVERLAP, check_overlap

    assert TileSpec(overlap=MAX_OVERLAP).overlap == MAX_OVERLAP
    assert check_overlap(MAX_OVERLAP, "--overlap") == MAX_OVERLAP
    with pytest.raises(InvalidInput) as spec:
        TileSpec(overlap=MAX_OVERLAP + 0.01)
    with pytest.raises(InvalidInput) as cli:
        check_overlap(MAX_OVERLAP + 0.01, "--overlap")
    assert spec.value.param == cli.value.param == "overlap"
    assert spec.value.problem.startswith("Overlap ") and cli.value.problem.startswith("--overlap ")



def test_what_front_ends_used_to_decide_per_task_is_the_task_s_data():
    """Default templates, the cache rule and the result layers' names are read from the task class, not worked
    out again by the dock, Processing or the command line."""
    from core.tasks import EmbedTask

    assert CountTask.default_templates == tuple(prompts.COUNT_TEMPLATES)
    assert LabelTask.default_templates == ClassifyTask.default_templates == tuple(prompts.DEFAULT_TEMPLATES)
    assert [k for k, cls in TASKS.items() if not cls.can_skip_cache] == ["embed"] and not EmbedTask.can_skip_cache
    # the result layer: the task's title and the tile size, whole sizes whole and metres named
    count = CountTask("car").result_title("kampala", TileSpec(size=22.5, unit="m"))
    assert count == "kampala · count car · 22.5 m"
    assert LabelTask(["a", "b", "c"]).result_title("r", TileSpec(size=224)) == "r · labels · a, b, … · 224 px"
    assert CountTask.dense_title(count) == "kampala · count car · 22.5 m · heat map"


# --------------------------------------------------------------------------------- a new task

@dataclass
class BrightestTask(Task):
    """A task written for this test: the mean of the embedding's first component, and a rank."""
    scale: float = 1.0

    kind: ClassVar[str] = "brightest"
    title: ClassVar[str] = "Brightest"
    summary: ClassVar[str] = "a test task"
    help: ClassVar[str] = "A test task."
    algorithm: ClassVar[str] = "brightest"
    params: ClassVar[tuple] = (Param("scale", "float", "Scale", default=1.0, lo=0.0, hi=10.0),)

    def outputs(self, part, text, bundle, fitted):
        v = part.embeddings[:, 0] * self.scale
        return TaskOutput([{"value": float(x)} for x in v], [("value", "float")])

    def describe(self, result):
        return [f"brightest value {max(r['value'] for r in result.records):.3f}"]


def test_a_new_task_runs_through_run_job_and_the_command_line(data_dir, tiny_bundle, tmp_path, capsys):
    raster = str(data_dir / "geotiff" / "rasterio_RGB.byte.tif")
    register(BrightestTask)
    try:
        res = run_job(Job(raster=raster, task=BrightestTask(scale=2.0), tiles=TileSpec(size=359),
                          run=RunOptions(model=str(tiny_bundle), cache_dir="")))
        assert res.fields == ["row", "col", "value"]
        assert [r["value"] for r in res.records] == pytest.approx(list(2.0 * res.embeddings[:, 0]))
        out = tmp_path / "b.gpkg"
        assert main(["brightest", raster, "--scale", "3", "--model", str(tiny_bundle), "--tile-size", "359",
                     "--no-cache", "-q", "-o", str(out)]) == 0
        stdout = capsys.readouterr().out
        assert "brightest value" in stdout and f"output: {out}" in stdout
        from osgeo import ogr

        ds = ogr.Open(str(out))
        lyr = ds.GetLayer(0)
        assert lyr.GetName() == "tiles" and lyr.GetFeatureCount() == len(res.records)
        assert np.allclose(sorted(f.GetField("value") for f in lyr), sorted(1.5 * r["value"] for r in res.records),
                           atol=1e-6)
    finally:
        del TASKS["brightest"]


def test_search_selects_the_best_tiles_that_stand_out_and_reports_the_similarity_it_took():
    """Every similarity negative (a query the raster does not hold): a fixed 'top 20' would still select 20;
    the stand-out rule selects only tiles at least mean + 1 sd, the top-k caps them, a higher threshold wins."""
    from record_loops import search_records

    from core.tasks import RasterPart, effective_threshold

    sims = np.array([-0.31, -0.30, -0.29, -0.28, -0.27, -0.26, -0.25, -0.12, -0.10, -0.05])
    emb = np.stack([sims, np.sqrt(1 - sims ** 2)], axis=1)   # unit vectors whose cosine with the query is sims
    query = np.array([1.0, 0.0])
    cut = float(sims.mean() + sims.std())
    recs, _ = search_records(emb, query, top_k=20, threshold=None, stand_out=1.0)
    assert [r["selected"] for r in recs] == [int(s >= cut) for s in sims] and sum(r["selected"] for r in recs) == 3
    recs, _ = search_records(emb, query, top_k=2, threshold=None, stand_out=1.0)
    assert [i for i, r in enumerate(recs) if r["selected"]] == [8, 9]   # the top-k caps the tiles standing out
    assert effective_threshold(sims, -0.07, 1.0) == -0.07   # the stricter of the two
    assert effective_threshold(sims, -0.9, 1.0) == pytest.approx(cut)
    recs, _ = search_records(emb, query, top_k=None, threshold=None, stand_out=None)
    assert all(r["selected"] for r in recs)   # the library's default: every tile
    # the similarity the selection took is stored with the result, for the legend
    part = RasterPart("r", "", (1, 0, 0, 0, -1, 0), None, np.arange(len(sims)), emb, (1, 1), (1, 1))
    out = SearchTask("a swimming pool", top_k=20, stand_out=1.0).outputs(part, query[None, :], None, None)
    assert out.metadata["threshold"] == pytest.approx(cut) and out.metadata["stand_out"] == 1.0
    with pytest.raises(InvalidInput) as err:
        SearchTask("pools", stand_out=-1)
    assert err.value.param == "stand_out"


@pytest.mark.parametrize("n, want", [(2.0, [10]), (0.5, [7, 8, 9, 10])])
def test_stand_out_takes_its_number_of_standard_deviations(n, want):
    """--stand-out N other than 1: the cut is mean + N sd (not 1 sd) and selects what that cut keeps; the
    stored cut (the legend's) and the summary line say it. At N = 1 the same similarities select two tiles."""
    from record_loops import search_records

    from core.tasks import RasterPart, effective_threshold

    sims = np.array([-0.31, -0.30, -0.29, -0.28, -0.27, -0.26, -0.25, -0.12, -0.10, -0.05, 0.12])
    emb = np.stack([sims, np.sqrt(1 - sims ** 2)], axis=1)
    query = np.array([1.0, 0.0])
    cut = float(sims.mean() + n * sims.std())
    assert [i for i, s in enumerate(sims) if s >= sims.mean() + sims.std()] == [9, 10]   # N = 1: another set
    assert effective_threshold(sims, None, n) == pytest.approx(cut)
    recs, _ = search_records(emb, query, top_k=None, threshold=None, stand_out=n)
    assert [i for i, r in enumerate(recs) if r["selected"]] == want
    part = RasterPart("r", "", (1, 0, 0, 0, -1, 0), None, np.arange(len(sims)), emb, (1, 1), (1, 1))
    out = SearchTask("a swimming pool", stand_out=n).outputs(part, query[None, :], None, None)
    assert out.metadata["threshold"] == pytest.approx(cut) and out.metadata["stand_out"] == n
    assert list(np.flatnonzero(out.columns["selected"])) == want
    # the summary line names the cut and the rule that made it
    task = SearchTask("a swimming pool", stand_out=n)
    assert task._cut_text(sims) == f" (similarity >= {cut:.3f}: mean + {n:g} sd)"
    # a stricter threshold wins, and then the rule is not named
    assert SearchTask("a swimming pool", threshold=0.11, stand_out=n)._cut_text(sims) == " (similarity >= 0.110)"


def test_the_command_line_stand_out_cut_is_mean_plus_n_sd_of_the_rasters_tiles(data_dir, tiny_bundle, tmp_path,
                                                                                capsys):
    """`remoteclip search --stand-out 2` on a real raster: the tiles written as selected are those at or above
    their mean + 2 sd, the stored cut is that similarity and the summary prints it."""
    from osgeo import ogr

    raster = str(data_dir / "geotiff" / "rasterio_RGB.byte.tif")
    out = tmp_path / "s.gpkg"
    assert main(["search", raster, "--query", "a swimming pool", "--stand-out", "2", "--model", str(tiny_bundle),
                 "--tile-size", "64", "--no-cache", "-q", "-o", str(out)]) == 0
    stdout = capsys.readouterr().out
    ds = ogr.Open(str(out))
    lyr = ds.GetLayer(0)
    rows = [(f.GetField("similarity"), f.GetField("selected")) for f in lyr]
    meta = json.loads(lyr.GetMetadataItem("REMOTECLIP"))
    sims = np.array([s for s, _ in rows])
    cut = sims.mean() + 2 * sims.std()
    assert meta["stand_out"] == 2 and meta["threshold"] == pytest.approx(cut, abs=1e-5)
    assert [sel for s, sel in rows if abs(s - cut) > 1e-5] == [int(s >= cut) for s in sims if abs(s - cut) > 1e-5]
    n1 = int((sims >= sims.mean() + sims.std()).sum())
    assert 0 < sum(sel for _, sel in rows) < n1   # 2 sd selects fewer than 1 sd would
    assert f"(similarity >= {meta['threshold']:.3f}: mean + 2 sd)" in stdout


@pytest.mark.parametrize("max_count", [1, 7])
def test_counting_has_captions_for_exactly_one_to_max_count_and_reaches_max_count(max_count):
    """One caption group per count 1..max_count, and a tile that matches the last caption gets max_count (an
    off-by-one would cap the counts one lower while the legend says max_count)."""
    from core.tasks import RasterPart

    task = CountTask("car", max_count=max_count)
    groups = task.prompts(None)
    assert len(groups) == max_count
    assert groups[0][0] == prompts.count_captions("car", 1)[0][0] and "one car" in groups[0][0]
    if max_count == 7:
        assert "seven cars" in groups[-1][0]
    # tiles whose embedding is a caption's: tile j is counted j + 1, the last max_count
    text = np.eye(max_count + 1, dtype=np.float32)[:max_count]
    emb = np.eye(max_count + 1, dtype=np.float32)[:max_count]
    part = RasterPart("r", "", (1, 0, 0, 0, -1, 0), None, np.arange(max_count), emb, (1, 1), (1, 1))
    bundle = type("B", (), {"logit_scale": 100.0})()
    out = task.outputs(part, text, bundle, None)
    assert list(out.columns["count"]) == list(range(1, max_count + 1))
    assert out.metadata["max_count"] == max_count


def test_a_task_names_its_result_values_and_its_dock_widgets():
    """What the dock used to know about each task (issue 21): the summary's words for a value and the names of
    the widgets come from the task classes."""
    count = CountTask(object_name="storage tank", max_count=5)
    assert [count.value_text(v) for v in (1, 3, 5, 7)] == [
        "1 storage tank", "3 storage tanks", "5 or more storage tanks", "7 or more storage tanks"]
    assert CountTask(object_name="buildings").value_text(1) == "1 building"   # typed as a plural
    assert [SearchTask(query="a pool").value_text(v) for v in (1, 0)] == ["selected", "not selected"]
    assert LabelTask(labels=["trees", "water"]).value_text("water") == "water"
    seen = {}
    for kind, cls in TASKS.items():
        names = {p.name for p in cls.params}
        for name, attr in cls.widget_names.items():
            # an input of the task (or its style's map-labels box), under a name no other task's widget has
            assert name in names or (name == "map_labels" and cls.style.map_labels_text), (kind, name)
            assert seen.setdefault(attr, kind) == kind, f"{attr} named by {seen[attr]} and {kind}"
        assert set(cls.remembered) <= names, kind
    assert LabelTask.remembered["labels"].split("\n") == prompts.PRESETS["land-cover"]


def test_one_slug_rule_and_one_tile_size_suffix():
    """core.checks.slug is the one slug rule (p_ fields, count layer names, the dock's file names) and
    core.tasks.tile_size_text the one tile-size suffix of result titles (the dock's run titles too)."""
    from core.checks import slug
    from core.tasks import slug_fields, tile_size_text

    assert slug("  Café—Bar 2 ") == "caf_bar_2"
    assert slug("***", "class") == "class"
    assert slug("Kampala West", "raster", lower=False, width=7) == "Kampala"
    assert slug_fields(["Café—Bar", "!!"]) == ["p_caf_bar", "p_class"]
    assert CountTask("Café—Bar").layer_name() == "count_caf_bar"
    tiles = TileSpec(size=50, unit="m")
    assert tile_size_text(tiles) == "50 m"
    assert CountTask("car").result_title("kampala", tiles) == "kampala · count car · 50 m"
