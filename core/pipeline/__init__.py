"""The run pipeline, one straight line for one raster or many: a :class:`Job` -> :func:`run_job` ->
:class:`JobResult` (see :mod:`core.pipeline.run`).

* ``job``: Job, RunOptions, JobResult, Plan (what a run is);
* ``sources``: the rasters a user typed (files, globs, folders, list files, URLs) and opening one;
* ``plan``: each raster's grid, the tile limit, :func:`plan_job`, the tile rates measured here;
* ``encode``: the text side, the reader thread, local encoding, the embedding cache;
* ``distributed``: encoding on a Dask cluster;
* ``write``: the output checks, the records of the task's outputs, a collection's grid and reprojection,
  the writes;
* ``resume``: the record that lets a collection's rerun resume;
* ``run``: :func:`run_job`.

This package imports nothing that imports it back; the front-ends (core.cli, the plugin's Processing
algorithms and dock, bench/) import what they need from here.
"""

from ..geodata.tiles import BBox, Polygons, TileSpec
from ..tasks import (
    TASKS,
    ClassifyTask,
    CountTask,
    EmbedTask,
    LabelTask,
    RasterPart,
    SearchTask,
    Task,
    TaskOutput,
)
from .job import MAX_TILES, Job, JobResult, Plan, RunOptions, duration_text, job_inputs, output_layer_name
from .plan import plan_job
from .run import run_job

__all__ = ["Job", "RunOptions", "JobResult", "Plan", "plan_job", "run_job", "MAX_TILES", "duration_text",
           "job_inputs", "output_layer_name", "TASKS", "Task", "TaskOutput", "RasterPart", "LabelTask", "CountTask",
           "SearchTask", "EmbedTask", "ClassifyTask", "TileSpec", "BBox", "Polygons"]
