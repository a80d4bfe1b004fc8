"""Resuming a collection: a rerun after a crash or Ctrl+C skips the rasters already done (their embeddings
are in the cache), and a small record beside the output (``OUT[.LAYER].remoteclip-resume.json``, removed once
the output is written) says which rasters were done, so the rerun can say what it resumed. A single raster
has no record."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os

from ..errors import OutputExists
from .job import Job
from .plan import RasterPlan

log = logging.getLogger(__name__)

RESUME_SUFFIX = ".remoteclip-resume.json"
RESUME_FORMAT = "remoteclip-resume"


def resume_path(output: str, layer_name: str | None) -> str:
    """The record of a collection run in progress, beside its output: ``OUT.LAYER.remoteclip-resume.json``
    for a GeoPackage layer, ``OUT.remoteclip-resume.json`` else."""
    stem, ext = os.path.splitext(os.fspath(output))
    if ext.lower() == ".gpkg" and layer_name:
        return f"{stem}.{layer_name}{RESUME_SUFFIX}"
    return stem + RESUME_SUFFIX


def fingerprint(job: Job, bundle) -> str:
    from ..geodata.tiles import spec_params

    ident = {"task": job.task.kind, "model": bundle.sha256, "precision": job.run.precision,
             "grid": spec_params(job.tiles), "rasters": [str(r) for r in job.rasters()]}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


class ResumeRecord:
    """The small record beside the output: which rasters are done (their embeddings are in the cache)."""

    def __init__(self, path: str | None, fingerprint: str, output: str | None = None):
        self.path, self.fingerprint = path, fingerprint
        # its temporary is named as the output's own (the stem, this process's id): a run killed while writing
        # the record leaves one that the next run's output check recognises and removes
        from ..geodata.vector_checks import _temp_prefix

        self.temp_prefix = _temp_prefix(os.path.splitext(os.path.basename(output))[0]) if output else ".tmp-"
        self.done: dict[str, str] = {}
        self.resumed = 0
        if path and os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    data = json.load(f)
            except (OSError, ValueError, UnicodeDecodeError):
                data = None
            if not isinstance(data, dict) or data.get("format") != RESUME_FORMAT:   # the user's: never replaced
                raise OutputExists(f"{path} exists and is not a file RemoteCLIP wrote.",
                                   "Move it away or give the output another name.", path=path)
            if data.get("job") == fingerprint and isinstance(data.get("done"), dict):
                self.done = {str(k): str(v) for k, v in data["done"].items()}
        elif path and os.path.lexists(path):
            raise OutputExists(f"{path} exists and is not a file RemoteCLIP wrote.",
                               "Move it away or give the output another name.", path=path)

    def was_done(self, plan: RasterPlan) -> bool:
        return plan.cache_key is not None and self.done.get(plan.path) == plan.cache_key

    def mark(self, plan: RasterPlan) -> None:
        if self.path is None or plan.cache_key is None:
            return
        self.done[plan.path] = plan.cache_key
        from ..cache import _atomic_write

        data = {"format": RESUME_FORMAT, "job": self.fingerprint, "done": self.done,
                "note": "RemoteCLIP's record of a run over many rasters; removed when the output is written."}
        try:
            _atomic_write(self.path, lambda f: f.write(json.dumps(data, indent=1).encode()), self.temp_prefix, "")
        except OSError as e:
            log.warning("could not write the resume record %s: %s", self.path, e)

    def remove(self) -> None:
        if self.path:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
