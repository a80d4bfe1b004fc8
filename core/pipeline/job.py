"""What a run is: a :class:`Job` (what to do, on which rasters, with which model), its :class:`RunOptions`,
the :class:`Plan` known before any pixel is read, and the :class:`JobResult`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .. import checks
from ..errors import InvalidInput
from ..geodata.tiles import TileSpec
from ..tasks import TASKS, Task

MAX_BATCH = 4096
MAX_TILES = checks.MAX_TILES   # a larger plan is refused unless confirmed (core.pipeline.plan.check_tile_limit)


@dataclass
class RunOptions:
    model: str
    device: str = "auto"
    precision: str = "fp32"      # or "auto": core.runtime.inference.choose_precision decides once the bundle is read
    batch_size: int | None = None  # None: auto (32 on a CPU; on a GPU what its free memory holds)
    cache_dir: str | None = None   # None: default cache folder; "" disables the cache
    threads: int | None = None     # CPU threads onnxruntime may use (None: one per core)
    readers: int | None = None     # tile reader threads (None: 1 beside a CPU encoder, more beside a GPU)

    def __post_init__(self):
        from ..runtime.bundle import PRECISION_CHOICES
        from ..runtime.inference import DEVICES

        if self.model is not None and not isinstance(self.model, str | os.PathLike) \
                and type(self.model).__name__ != "Bundle":
            raise InvalidInput(f"The model {self.model!r} is not a bundle path.",
                                  "Give the bundle folder or .rclip.zip as a path.", param="model")
        self.device = checks.choice(self.device, "device", DEVICES, param="device")
        self.precision = checks.choice(self.precision, "precision", PRECISION_CHOICES, param="precision")
        self.batch_size = checks.optional(checks.whole, self.batch_size, "Batch size", 1, MAX_BATCH, "e.g. 32",
                                          param="batch_size")
        self.threads = checks.optional(checks.whole, self.threads, "threads", 1, 1024, "e.g. 4", param="threads")
        self.readers = checks.optional(checks.whole, self.readers, "readers", 1, 64, "e.g. 4", param="readers")
        if self.cache_dir is not None and not isinstance(self.cache_dir, str | os.PathLike):
            raise InvalidInput(f"The cache folder {self.cache_dir!r} is not a path.",
                                  "Give a folder path, \"\" for no cache, or None for the default.", param="cache_dir")


@dataclass
class Job:
    raster: object                 # path/URI (str), a RasterSource, or a list of paths (a collection)
    task: Task                     # a core.tasks task (LabelTask, CountTask, SearchTask, EmbedTask, ClassifyTask)
    run: RunOptions
    tiles: TileSpec = field(default_factory=TileSpec)
    output: str | None = None      # .gpkg or .shp; written atomically
    layer_name: str | None = None
    dissolve: bool = False
    overwrite: bool = False        # replace existing outputs (a GeoPackage's other layers are always kept)
    max_tiles: int | None = MAX_TILES   # a larger plan is refused unless this is raised (None: no limit)
    raster_output: str | None = None    # dense GeoTIFF of the task's values (label, search, classify)
    out_crs: str | None = None     # several rasters: the output CRS (EPSG:n or WKT; default the first raster's)
    strict: bool = False           # several rasters: stop at an unreadable one instead of skipping it
    dask: str | None = None        # a Dask scheduler address, or "local:N" (core.pipeline.distributed)
    inputs: list = field(default_factory=list)   # other files the inputs were read from (a --labels-file):
    #                                              paths, or (path, what) pairs; no output may be one of them

    def __post_init__(self):
        self.max_tiles = checks.optional(checks.whole, self.max_tiles, "max_tiles", 1, param="max_tiles")
        if isinstance(self.raster, list | tuple):
            # each raster's name is checked when it is planned: one that GDAL cannot open is skipped (--strict: stops)
            self.raster = [os.fsdecode(r) if isinstance(r, bytes) else os.fspath(r) for r in self.raster]
            if not self.raster:
                raise InvalidInput("No raster was given.", "Give one or more raster files.", param="raster")
            for r in self.raster:
                if not r.strip():
                    raise InvalidInput("An empty raster path was given.", "Give raster files (GeoTIFF, VRT, ...).", param="raster")
        if self.raster is None or (isinstance(self.raster, str) and not self.raster.strip()):
            raise InvalidInput("No raster was given.", "Give a raster file (GeoTIFF, VRT, ...) or layer.", param="raster")
        if self.out_crs is not None and not isinstance(self.out_crs, str):
            raise InvalidInput(f"The output CRS {self.out_crs!r} is not text.", "Give e.g. EPSG:3857.", param="out_crs")
        if self.dask is not None and (not isinstance(self.dask, str) or not self.dask.strip()):
            raise InvalidInput(f"The Dask scheduler {self.dask!r} is not an address.",
                                  "Give tcp://HOST:8786, or local:N for N worker processes on this machine.", param="dask")
        if not isinstance(self.raster, str | os.PathLike | list) and not callable(getattr(self.raster, "read", None)):
            raise InvalidInput(f"The raster {self.raster!r} is neither a path nor a raster source.",
                                  "Give a raster file path or a core.geodata.raster.RasterSource.", param="raster")
        if not isinstance(self.task, Task):
            raise InvalidInput(f"Unknown task {type(self.task).__name__}.",
                                  "Use one of core.tasks' tasks: " + ", ".join(c.__name__ for c in TASKS.values())
                                  + ".", param="task")
        if not isinstance(self.run, RunOptions):
            raise InvalidInput(f"run is a {type(self.run).__name__}, not RunOptions.",
                                  "Give RunOptions(model=...).", param="run")
        if not isinstance(self.tiles, TileSpec):
            raise InvalidInput(f"tiles is a {type(self.tiles).__name__}, not a TileSpec.",
                                  "Give TileSpec(...) or leave it out for the default.", param="tiles")
        if self.output is not None and not isinstance(self.output, str | os.PathLike):
            raise InvalidInput(f"The output {self.output!r} is not a path.", "Give a .gpkg or .shp path.",
                               param="output")
        if not isinstance(self.inputs, list | tuple):
            raise InvalidInput(f"inputs {self.inputs!r} is not a list.",
                               "Give the files the job's inputs were read from as a list of paths.", param="inputs")
        if self.raster_output is not None:
            if not isinstance(self.raster_output, str | os.PathLike):
                raise InvalidInput(f"The raster output {self.raster_output!r} is not a path.",
                                      "Give a .tif path.", param="raster_output")
            if not self.task.dense:
                raise InvalidInput(f"The {self.task.kind} task has no dense map to write (--raster-output).",
                                      "Leave it out; " + ", ".join(k for k, c in TASKS.items() if c.dense)
                                      + " write one.", param="raster_output")

    @property
    def many(self) -> bool:
        """A collection: the output has a ``source`` field and an unreadable raster is skipped. A single raster
        (a path or a RasterSource, not on Dask, in its own CRS) is a collection of one without them: its
        errors are raised as they are."""
        return isinstance(self.raster, list) or bool(self.dask) or bool(self.out_crs)

    def rasters(self) -> list:
        """The job's rasters as a list (a single raster: a list of one)."""
        return list(self.raster) if isinstance(self.raster, list) else [self.raster]


@dataclass
class JobResult:
    output: str | None
    layer_name: str | None
    crs_wkt: str
    records: list[dict]
    fields: list[str]
    provider: str
    n_tiles: int
    cache_hit: bool
    seconds: float
    warnings: list[str] = field(default_factory=list)   # e.g. prompts cut at the context length
    field_map: dict[str, str] = field(default_factory=dict)  # p_<slug> field -> class name
    embeddings: object = None                            # (n_tiles, D) numpy array, row order of records
    images_encoded: int = 0                              # tiles that went through the image encoder
    raster_output: str | None = None                     # the dense GeoTIFF written
    report: dict | None = None                           # classify: cross-validation and the mix
    report_output: str | None = None                     # where the report was saved
    head_output: str | None = None                       # classify: where the trained classifier was saved
    model: str = ""                                      # the bundle's name (core.runtime.bundle.DEMO_NAME: the demo)
    precision: str = ""                                  # the graphs that ran: fp32, fp16 or int8
    precision_reason: str = ""                           # why (core.runtime.inference.choose_precision), in plain words
    timings: dict[str, float] = field(default_factory=dict)  # seconds: prepare, text, tiles (read + encode), results
    sources: list[str] = field(default_factory=list)     # several rasters: those in the output
    skipped: list[tuple[str, str]] = field(default_factory=list)   # several rasters: (raster, why) not in it
    resumed: int = 0                                     # rasters done by an earlier, interrupted run


@dataclass
class Plan:
    """What a run will do, known before any pixel is read."""
    n_tiles: int
    tile_px: tuple[int, int]
    rate: float | None = None       # tiles per second measured by an earlier run of this model here
    rasters: int = 1

    @property
    def seconds(self) -> float | None:
        return self.n_tiles / self.rate if self.rate else None

    def describe(self) -> str:
        text = f"{self.n_tiles:,} tiles of {self.tile_px[0]} x {self.tile_px[1]} px"
        if self.rasters > 1:
            text += f" in {self.rasters:,} rasters"
        if self.seconds is not None:
            text += f", {duration_text(self.seconds)} at the {self.rate:.1f} tiles/s measured here before"
        return text


def duration_text(seconds: float) -> str:
    """'under 1 s', 'about 40 s', 'about 12 min', 'about 2.5 h': an estimate, said as one."""
    if seconds < 1:
        return "under 1 s"
    if seconds < 90:
        return f"about {seconds:.0f} s"
    if seconds < 5400:
        return f"about {seconds / 60:.0f} min"
    return f"about {seconds / 3600:.1f} h"


def check_job(job: Job) -> None:
    """The checks of construction again: a dataclass's fields may have been changed since."""
    for obj in (job.run, job.tiles, job.task, job):
        post = getattr(obj, "__post_init__", None)
        if post is not None:
            post()


def output_layer_name(job: Job) -> str:
    """The layer the job writes: ``job.layer_name``, else the task's (``Task.layer_name``)."""
    return job.layer_name or job.task.layer_name()


def job_inputs(job: Job) -> list:
    """Every file ``job`` reads, as :func:`core.geodata.vectors.check_not_input` takes them: the rasters (paths),
    then (spec, what) pairs: the task's files (samples, a saved classifier), the extent polygons' file and
    ``job.inputs`` (a labels or templates file, a list of rasters)."""
    out: list = list(_raster_names(job.raster))
    out += [(p, w) for p, w in job.task.files_in() if p]
    origin = getattr(job.tiles.extent, "origin", "")
    if origin:
        out.append((origin, "extent polygons"))
    model = job.run.model
    model = model if isinstance(model, str | os.PathLike) else getattr(model, "source", None)
    if model is not None and os.path.isdir(model):
        # a bundle's files (manifest, graphs, tokenizer), not outputs someone wrote into its folder
        out += [(os.path.join(model, n), "model bundle's file") for n in sorted(os.listdir(model))
                if not n.lower().endswith((".gpkg", ".shp", ".shx", ".dbf", ".prj", ".cpg", ".tif", ".tiff"))]
    elif model is not None:
        out.append((os.fspath(model), "model bundle"))
    for item in job.inputs or ():
        spec, what = item if isinstance(item, tuple) else (item, "input file")
        if spec:
            out.append((os.fspath(spec), what))
    return out


def _raster_names(raster) -> list[str]:
    # a path or URI, or a RasterSource's file (QgisRasterSource.path) and source string (its name)
    if isinstance(raster, str | os.PathLike):
        return [os.fspath(raster)]
    if isinstance(raster, list):
        return [os.fspath(r) for r in raster]
    return [n for n in (getattr(raster, "path", None), getattr(raster, "name", None)) if isinstance(n, str) and n]
