"""The targets of `make bench` in one table: every target row of the result files in bench-results/ (the
pipeline's speed ratios, the scale figures, the plugin's load time) and the int8 rule (the CPU default only
at >= 99 % top-1 agreement with fp32), with the load the machine had and how long the whole run took.

    python bench/summary.py [--results bench-results] [--seconds N]

Reads what the benchmarks wrote; measures nothing itself. A result file missing (its benchmark not run) is
named, not guessed. Exit status 0 whether targets are met or not: the table says which.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INT8_DEFAULT_TOP1 = 0.99   # issue 13: int8 becomes the CPU default only above this agreement with fp32


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def _load_avg(data: dict) -> str:
    m = data.get("machine", {})
    start = m.get("load_avg_1min_start", m.get("load_avg_1min"))
    end = m.get("load_avg_1min_end")
    if start is None:
        return "?"
    return f"{start} -> {end}" if end is not None else str(start)


def int8_rows(int8: dict) -> list[dict]:
    """One row per model: label top-1 agreement of the dynamic int8 graphs with fp32, and whether it would
    allow int8 as the CPU default."""
    rows = []
    for m in int8.get("models", []):
        dyn = next((r for method, r in m["rows"].items() if "dynamic" in method), None)
        if dyn is None:
            continue
        got = dyn["label_top1"]
        rows.append({"target": f"int8 label top-1 agreement with fp32, {m['model']}",
                     "want": f">= {INT8_DEFAULT_TOP1:.0%}", "got": round(got, 4), "met": got >= INT8_DEFAULT_TOP1,
                     "rule": True})
    return rows


def summary(results: Path) -> tuple[list[tuple[str, list[dict]]], list[str]]:
    """(bench name, target rows) per result file found, and the names of the files not found."""
    found, missing = [], []
    for name, file in (("pipeline", "pipeline.json"), ("scale", "scale.json"), ("int8", "int8.json"),
                       ("plugin load", "plugin_load.json")):
        data = _load(results / file)
        if data is None:
            missing.append(file)
            continue
        rows = int8_rows(data) if name == "int8" else list(data.get("targets", []))
        title = ("int8 as the CPU default: a rule, not a speed target" if name == "int8" else name)
        found.append((f"{title} (load {_load_avg(data)})", rows))
    return found, missing


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(ROOT / "bench-results"))
    ap.add_argument("--seconds", type=float, help="how long the whole `make bench` took")
    args = ap.parse_args(argv)
    found, missing = summary(Path(args.results))
    print()
    print(f"{'target':66} {'want':>9} {'got':>8}  met")
    met = total = 0
    below = []
    for name, rows in found:
        print(f"-- {name}")
        for r in rows:
            if r.get("rule"):
                below += [] if r["met"] else [r["target"].rsplit(", ", 1)[-1]]
            else:
                total += 1
                met += bool(r["met"])
            print(f"{r['target'][:66]:66} {r['want']:>9} {r['got']:>8}  {'yes' if r['met'] else 'NO'}")
    print(f"{met} of {total} targets met" + (f"; make bench took {args.seconds / 60:.1f} min" if args.seconds else ""))
    if any(name.startswith("int8") for name, _ in found):
        print("CPU default precision: " + (f"fp32 (int8 agrees under {INT8_DEFAULT_TOP1:.0%} on {', '.join(below)})"
                                           if below else "int8 may be the default (every model agrees)"))
    for file in missing:
        print(f"not in the table: {file} is missing (its benchmark did not run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
