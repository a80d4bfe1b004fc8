"""The shared base of the tasks: a task's declared inputs (:class:`Param`), its style (:class:`Style`), one
raster's share of a job (:class:`RasterPart`), what a task makes of it (:class:`TaskOutput`), the base class
:class:`Task` and the registry (:data:`TASKS`, :func:`register`, :func:`task_class`). See :mod:`core.tasks`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any, ClassVar

from ..checks import slug
from ..errors import InvalidInput
from ..prompts import DEFAULT_TEMPLATES, split_names, split_templates

PARAM_KINDS = ("names", "preset", "templates", "text", "int", "float", "choice", "samples", "field", "file",
               "file_out", "raster", "flag", "examples", "images")


# ------------------------------------------------------------------------------------- declarations

@dataclass(frozen=True)
class Param:
    """One input of a task, declared once for every front-end.

    ``kind``: ``names`` (class names, :func:`split_names`), ``preset`` (a name of
    :data:`core.prompts.PRESETS` that fills the ``names`` input ``fills``), ``templates``
    (:func:`split_templates`), ``text``, ``int``, ``float``, ``choice``, ``samples`` (points or polygons
    with a class), ``field`` (the class field of the ``samples`` input ``parent``), ``file`` (read),
    ``file_out`` (written), ``raster`` (a second raster read beside the job's: core.tasks.change), ``flag`` (on or
    off), ``examples`` (points or polygons without a class: core.examples.Examples; search by example),
    ``images`` (image files: search by example). ``lo``/``hi`` are the one set of limits; ``optional`` numbers may be unset
    (None), shown as ``none_text`` in a form. ``form_default`` is what a form starts with when it
    differs from the task's default (the dock's search selects 20 tiles; the library selects all)."""
    name: str
    kind: str
    label: str
    default: Any = None
    optional: bool = False
    lo: float | None = None
    hi: float | None = None
    choices: tuple = ()
    help: str = ""
    key: str = ""             # Processing parameter name (default: NAME)
    flag: str = ""            # command-line option (default: --name)
    advanced: bool = False
    none_text: str = ""
    form_default: Any = None
    fills: str = ""           # preset: the names input it fills
    parent: str = ""          # field: the samples input it belongs to
    file_filter: str = ""     # file / file_out: e.g. "Classifier (*.json)"

    def __post_init__(self):
        if self.kind not in PARAM_KINDS:
            raise ValueError(f"parameter kind {self.kind!r} is not one of {PARAM_KINDS}")

    @property
    def processing_key(self) -> str:
        return self.key or self.name.upper()

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def start_value(self):
        return self.form_default if self.form_default is not None else self.default

    def parse(self, value):
        """A raw front-end value as the task's field takes it (checks are the task's): typed lists split by
        the one rule; empty text and unset numbers are None."""
        if self.kind == "names":
            return None if value is None else split_names(value)
        if self.kind == "templates":
            return split_templates(value) or None
        if self.kind == "flag":
            return bool(value) if value is not None else bool(self.default)
        if isinstance(value, str) and not value.strip() and self.kind in ("int", "float", "file", "file_out",
                                                                            "choice", "preset", "field", "raster"):
            return None if self.kind != "choice" else self.default
        if value is None:
            return self.default if self.kind in ("int", "float", "choice") and not self.optional else None
        return value


@dataclass(frozen=True)
class Style:
    """How a result layer is drawn (remoteclip_qgis.layers turns this into a QGIS renderer).

    ``renderer``: ``categories`` (a colour per value of ``field``, class colours), ``counts`` (sequential
    categories of ``field``), ``graduated`` (quantiles of ``field``) or ``outline``. ``map_labels`` is the
    expression written on tiles when map labels are on (``map_labels_default``; the dock offers a
    checkbox with ``map_labels_text``); ``highlight`` an expression for tiles drawn with a thick outline."""
    renderer: str = "outline"
    field: str | None = None
    map_labels: str | None = None
    map_labels_default: bool = False
    map_labels_text: str = ""
    highlight: str | None = None
    dense_range: tuple | None = None   # colour ramp range of the dense GeoTIFF (None: the data's)


@dataclass
class RasterPart:
    """One raster's share of a job: its kept tiles (not all nodata) and their embeddings."""
    name: str
    crs_wkt: str
    transform: tuple
    grid: Any                        # core.geodata.tiles.TileGrid of the raster
    index: Any                       # (n,) int64 grid positions of the kept tiles, in the order of ``embeddings``
    embeddings: Any                  # (n, D) float32 unit vectors
    tile_px: tuple[int, int]         # (width, height) of a tile in pixels
    step_px: tuple[int, int]         # grid step in pixels (tile * (1 - overlap))
    cache_hit: bool = False
    images_encoded: int = 0
    dates: dict = field(default_factory=dict)   # a task of two dates: the other date's embeddings (core.tasks.change)

    @cached_property
    def tiles(self) -> list:
        """The kept tiles as core.geodata.tiles.Tile objects, made on first access (a grid may hold millions)."""
        return [self.grid[int(i)] for i in self.index]


@dataclass
class TaskOutput:
    """What a task makes of one raster part."""
    records: list[dict] | None                        # per tile, in the part's order; no row/col/geometry
    fields: list[tuple[str, str]]                     # (name, "str" | "int" | "float")
    field_map: dict[str, str] = field(default_factory=dict)     # p_<slug> field -> class name
    dense: Any = None                                 # (n_tiles, bands) values for the dense GeoTIFF
    dense_names: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)      # stored with the vector layer
    report: dict | None = None                        # written as NAME.remoteclip-report.json
    head: Any = None                                  # classify: the trained head (to head_out)
    columns: dict | None = None                       # instead of records: core.records columns per field


# ---------------------------------------------------------------------------------------------- base

@dataclass
class Task:
    """Base class of the tasks (see the module docstring); subclasses are dataclasses of plain data."""
    kind: ClassVar[str] = ""
    title: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    help: ClassVar[str] = ""
    algorithm: ClassVar[str] = ""              # Processing algorithm id (remoteclip:<algorithm>)
    algorithm_title: ClassVar[str] = ""
    group: ClassVar[str] = "Zero-shot analysis"
    params: ClassVar[tuple[Param, ...]] = ()
    style: ClassVar[Style] = Style()
    dissolve_field: ClassVar[str | None] = None
    dense: ClassVar[bool] = False              # can write a dense GeoTIFF (--raster-output)
    reports: ClassVar[bool] = False            # makes a report (TaskOutput.report), saved beside the output
    whole_job: ClassVar[bool] = False          # outputs over every tile of the job at once (ranks), not per raster
    output_title: ClassVar[str] = "Tiles"
    can_skip_cache: ClassVar[bool] = True      # front-ends offer to leave the embedding cache out
    default_templates: ClassVar[tuple[str, ...]] = tuple(DEFAULT_TEMPLATES)   # what a templates input starts with

    # --------------------------------------------------------------------------------- inputs

    @classmethod
    def param(cls, name: str) -> Param:
        return next(p for p in cls.params if p.name == name)

    @classmethod
    def from_inputs(cls, raw: Mapping[str, Any], spell: Callable[[Param], str] | None = None) -> Task:
        """The task from a front-end's raw values (``raw[param.name]``: text as typed, numbers, None for
        unset). ``spell(param)`` names an input as that front-end shows it (``--labels``, ``LABELS``), for
        errors about how inputs combine; the values themselves are checked by the dataclass."""
        names = {f.name for f in fields(cls)}
        return cls(**{p.name: p.parse(raw.get(p.name)) for p in cls.params if p.name in names})

    # ------------------------------------------------------------------------------------ run

    def prepare(self, bundle, warnings: list[str]):
        """Called once the model is loaded, before any pixel is read: load what the task needs (a saved
        classifier, checked against the model). Returns plain data handed to the next steps."""
        return None

    def prompts(self, prepared) -> list[list[str]] | None:
        """Prompt groups (one text embedding per group: a template ensemble), or None for no text side."""
        return None

    def encode_inputs(self, encoder, prepared, warnings: list[str]):
        """Called after the text side, before any pixel of a raster is read: encode the task's own images
        (search's example image files) with the job's encoder. Returns what :meth:`fit` gets as ``prepared``."""
        return prepared

    def fit(self, parts: list[RasterPart], text, bundle, prepared, warnings: list[str]):
        """Learn from all parts before any records are made (classify); returns what :meth:`outputs` needs."""
        return prepared

    def outputs(self, part: RasterPart, text, bundle, fitted) -> TaskOutput:
        return TaskOutput(None, [], columns={})

    # ----------------------------------------------------------------------------- describing

    def layer_name(self) -> str:
        """The output layer's default name."""
        return "tiles"

    def layer_title(self, raster_name: str) -> str:
        """The name of the result layer in QGIS's layer tree."""
        return f"{raster_name} · {self.layer_name()}"

    def result_title(self, raster_name: str, tiles) -> str:
        """The result layer's name in QGIS: :meth:`layer_title` and the tile size of ``tiles`` (a TileSpec),
        'kampala · count car · 224 px'."""
        return f"{self.layer_title(raster_name)} · {tile_size_text(tiles)}"

    @staticmethod
    def dense_title(result_title: str) -> str:
        """The heat map's layer name beside the result layer named ``result_title``."""
        return f"{result_title} · heat map"

    def files_out(self) -> list[tuple[str, str]]:
        """(path, what) of the files this task writes besides the job's outputs (checked before the run)."""
        return []

    def files_in(self) -> list[tuple[str, str]]:
        """(path, what) of the files this task reads (no output may be one of them)."""
        return []

    def describe(self, result) -> list[str]:
        """Lines summing up a result (the command line prints them)."""
        return []

    # ------------------------------------------------------------------------------ front-ends

    # input (a param's name, or "map_labels": the style's check box) -> the name the dock gives its widget
    widget_names: ClassVar[dict[str, str]] = {}
    # inputs the dock remembers across sessions -> their text before anything was remembered
    remembered: ClassVar[dict[str, str]] = {}

    def value_text(self, value) -> str:
        """A value of the result's dissolve field as the result summary names it (a class, "3 cars")."""
        return str(value)


def tile_size_text(tiles) -> str:
    """The tile size of ``tiles`` (a TileSpec) as result titles show it: '224 px', '50 m'."""
    unit = "px" if tiles.unit == "px" else "m"
    return f"{tiles.size:g} {unit}"


TASKS: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    """Add a task class to the registry (a class decorator)."""
    if not cls.kind or cls.kind in TASKS and TASKS[cls.kind] is not cls:
        raise ValueError(f"task kind {cls.kind!r} is empty or taken")
    TASKS[cls.kind] = cls
    return cls


def task_class(kind: str) -> type[Task]:
    if kind not in TASKS:
        raise InvalidInput(f"Unknown task {kind!r}.", "Use one of " + ", ".join(TASKS) + ".", param="kind")
    return TASKS[kind]


# ------------------------------------------------------------------------------------------ records

def slug_fields(names: list[str], prefix: str = "p_", width: int = 10) -> list[str]:
    """Shapefile-safe unique field names (<= width chars) for class names."""
    from ..geodata.vectors import shapefile_names

    slugs = [prefix + slug(n, "class") for n in names]
    return shapefile_names(slugs, width)



def _label_summary(records) -> list[str]:
    from collections import Counter

    top = Counter(r["label"] for r in records).most_common(5)
    return ["labels: " + ", ".join(f"{k} {v}" for k, v in top)] if top else []


TEMPLATES_HELP = "prompt templates, {} for the class; separated by new lines or '|'"
NAMES_HELP = "class names separated by commas or new lines"
