"""bench/summary.py: the one table `make bench` ends with is read from what the benchmarks wrote, counts
targets and the int8 rule apart, sits on the right side of the 99 % rule, and names a missing result file."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _summary():
    spec = importlib.util.spec_from_file_location("bench_summary", ROOT / "bench" / "summary.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _int8_model(name, top1):
    return {"model": name, "rows": {"int8 dynamic": {"label_top1": top1}, "int8 static QDQ": {"label_top1": 1.0}}}


def test_targets_and_the_int8_rule(tmp_path, capsys):
    (tmp_path / "pipeline.json").write_text(json.dumps({
        "machine": {"load_avg_1min_start": 0.5, "load_avg_1min_end": 0.7},
        "targets": [{"target": "end-to-end int8 / reference", "want": ">= 2.0x", "got": 5.1, "met": True},
                    {"target": "int8 end-to-end / bare encoders", "want": ">= 85%", "got": 0.84, "met": False}]}))
    (tmp_path / "int8.json").write_text(json.dumps({
        "machine": {"load_avg_1min": 1.0, "load_avg_1min_end": 1.2},
        # exactly at the rule counts as agreeing; the static row (1.0) must not stand in for the dynamic one
        "models": [_int8_model("demo", 0.99), _int8_model("RN50", 0.9269)]}))
    assert _summary().main(["--results", str(tmp_path), "--seconds", "600"]) == 0
    out = capsys.readouterr().out
    assert "1 of 2 targets met; make bench took 10.0 min" in out      # the int8 rows are not targets
    assert "int8 end-to-end / bare encoders" in out and " NO" in out
    assert "CPU default precision: fp32 (int8 agrees under 99% on RN50)" in out
    assert "not in the table: scale.json is missing" in out
    assert "load 0.5 -> 0.7" in out


def test_every_model_agreeing_allows_int8(tmp_path, capsys):
    (tmp_path / "int8.json").write_text(json.dumps({"machine": {}, "models": [_int8_model("demo", 0.995)]}))
    _summary().main(["--results", str(tmp_path)])
    assert "int8 may be the default (every model agrees)" in capsys.readouterr().out
