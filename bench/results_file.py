"""What every benchmark's result file carries: the machine it ran on, written whole or not at all."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path


def machine(threads) -> dict:
    return {"cpu_count": os.cpu_count(), "threads": threads, "platform": platform.platform(),
            "processor": platform.processor() or platform.machine()}


def write_json(out, result: dict) -> Path:
    """Write through a temporary file, so an interrupted run never leaves half a result behind."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp_out, out)
    print(f"wrote {out}")
    return out
