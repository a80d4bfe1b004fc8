"""Tasks: what a job computes from a raster's tile embeddings, one class per task, and their registry.

A task class owns everything about its task that the front-ends used to repeat: its ``kind`` and
``title``, its inputs (``params``: name, kind, limits, default and help, which the command line's
options, the dock's tab and the Processing algorithm are built from), the parsing and checking of raw
inputs (:meth:`Task.from_inputs`, then the dataclass's ``__post_init__``), its prompts, how tile
embeddings become output records, its dissolve field, its default layer name and result layer title,
its style hints, its default templates, its cache rule and its summary. ``TASKS`` (the registry) lists them in the order front-ends show them; :func:`task_class`
finds one by kind.

Tasks are plain data (picklable: strings, numbers, lists and :class:`core.samples.Samples`), so a job
can be sent to another process. The work is split so that per-raster work (reading, encoding:
:class:`RasterPart`) is separate from fitting (:meth:`Task.fit`, across all parts) and from the
records of each part (:meth:`Task.outputs`); core.pipeline writes the outputs.

One rule for typed lists, everywhere (command line, dock, Processing, files): class names are
separated by new lines and commas (:func:`core.prompts.split_names`), prompt templates by new lines
and '|' (:func:`core.prompts.split_templates`); a class name with a comma in it comes from a JSON
list file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any, ClassVar

from . import checks
from .errors import InvalidInput
from .prompts import (
    COUNT_TEMPLATES,
    DEFAULT_TEMPLATES,
    PRESETS,
    check_labels,
    check_templates,
    check_text,
    count_captions,
    label_prompts,
    split_names,
    split_templates,
)
from .scores import UNKNOWN, class_scores, softmax  # noqa: F401 (re-exported: one definition of each)

__all__ = ["Param", "Style", "TaskOutput", "RasterPart", "Task", "LabelTask", "CountTask", "SearchTask",
           "EmbedTask", "ClassifyTask", "TASKS", "task_class", "register", "UNKNOWN", "softmax", "slug_fields",
           "class_scores"]

PARAM_KINDS = ("names", "preset", "templates", "text", "int", "float", "choice", "samples", "field", "file",
               "file_out", "raster", "flag")


# ------------------------------------------------------------------------------------- declarations

@dataclass(frozen=True)
class Param:
    """One input of a task, declared once for every front-end.

    ``kind``: ``names`` (class names, :func:`split_names`), ``preset`` (a name of
    :data:`core.prompts.PRESETS` that fills the ``names`` input ``fills``), ``templates``
    (:func:`split_templates`), ``text``, ``int``, ``float``, ``choice``, ``samples`` (points or polygons
    with a class), ``field`` (the class field of the ``samples`` input ``parent``), ``file`` (read),
    ``file_out`` (written), ``raster`` (a second raster read beside the job's: core.change), ``flag`` (on or
    off). ``lo``/``hi`` are the one set of limits; ``optional`` numbers may be unset
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
    grid: Any                        # core.tiles.TileGrid of the raster
    index: Any                       # (n,) int64 grid positions of the kept tiles, in the order of ``embeddings``
    embeddings: Any                  # (n, D) float32 unit vectors
    tile_px: tuple[int, int]         # (width, height) of a tile in pixels
    step_px: tuple[int, int]         # grid step in pixels (tile * (1 - overlap))
    cache_hit: bool = False
    images_encoded: int = 0
    dates: dict = field(default_factory=dict)   # a task of two dates: the other date's embeddings (core.change)

    @cached_property
    def tiles(self) -> list:
        """The kept tiles as core.tiles.Tile objects, made on first access (a grid may hold millions)."""
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
        unit = "px" if tiles.unit == "px" else "m"
        return f"{self.layer_title(raster_name)} · {tiles.size:g} {unit}"

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
    from .vectors import shapefile_names

    slugs = [prefix + (re.sub(r"[^a-z0-9]+", "_", n.lower()).strip("_") or "class") for n in names]
    return shapefile_names(slugs, width)


def stand_out_threshold(sim, stand_out: float | None) -> float | None:
    """The similarity a tile needs to stand out from this raster's tiles: their mean plus ``stand_out``
    standard deviations (None: no such rule). Relative, because cosine similarities of one model and query
    sit in a narrow band of their own (all negative, or all near 0.25), so no fixed number suits them all."""
    import numpy as np

    if stand_out is None or len(sim) == 0:
        return None
    return float(np.mean(sim) + float(stand_out) * np.std(sim))


def effective_threshold(sim, threshold: float | None, stand_out: float | None) -> float | None:
    """The similarity a selected tile needs: the larger of ``threshold`` and the stand-out rule's."""
    cuts = [c for c in (threshold, stand_out_threshold(sim, stand_out)) if c is not None]
    return max(float(c) for c in cuts) if cuts else None


def _label_summary(records) -> list[str]:
    from collections import Counter

    top = Counter(r["label"] for r in records).most_common(5)
    return ["labels: " + ", ".join(f"{k} {v}" for k, v in top)] if top else []


TEMPLATES_HELP = "prompt templates, {} for the class; separated by new lines or '|'"
NAMES_HELP = "class names separated by commas or new lines"


# --------------------------------------------------------------------------------------------- tasks

@register
@dataclass
class LabelTask(Task):
    labels: list[str]
    templates: list[str] | None = None
    top_k: int = 3
    threshold: float | None = None

    kind: ClassVar[str] = "label"
    title: ClassVar[str] = "Label"
    summary: ClassVar[str] = "zero-shot labels per tile"
    algorithm: ClassVar[str] = "labeltiles"
    algorithm_title: ClassVar[str] = "Label tiles"
    output_title: ClassVar[str] = "Labelled tiles"
    help: ClassVar[str] = (
        "Cuts the raster into tiles and gives each tile the class name it matches best (zero-shot "
        "classification with a RemoteCLIP model). Give the classes as class names (separated by commas or new "
        "lines) or pick a preset, not both. Each class is matched through an ensemble of prompt templates ({} "
        "stands for the class; separated by new lines or |; default: remote sensing phrasings of CLIP's "
        "templates). The output has one polygon per tile with label, score (its probability), the top labels "
        "and scores, and p_<class> probabilities; a tile whose best probability is below the threshold is "
        "labelled 'unknown'.")
    params: ClassVar[tuple[Param, ...]] = (
        Param("labels", "names", "Class names", optional=True, help=NAMES_HELP),
        Param("preset", "preset", "Or a preset class list", optional=True, choices=tuple(PRESETS), fills="labels",
              help="a built-in class list"),
        Param("templates", "templates", "Prompt templates ({} = class name)", optional=True, advanced=True,
              help=TEMPLATES_HELP),
        Param("top_k", "int", "Top labels kept per tile", default=3, lo=1, hi=100),
        Param("threshold", "float", "Minimum probability (below: 'unknown')", optional=True, lo=0.0, hi=1.0,
              none_text="none", advanced=True, help="tiles whose best probability is lower are 'unknown'"),
    )
    style: ClassVar[Style] = Style("categories", "label", '"label"', False, "Show labels on the map",
                                   dense_range=(0.0, 1.0))
    dissolve_field: ClassVar[str | None] = "label"
    dense: ClassVar[bool] = True

    def __post_init__(self):
        self.labels = check_labels(self.labels)
        if len(self.labels) < 2:
            raise InvalidInput(f"Only one label was given ({self.labels[0]!r}); softmax over one class "
                                  "always says 100%.", "Give at least two class names.", param="labels")
        self.templates = check_templates(self.templates)
        self.top_k = checks.whole(self.top_k, "top_k", 1, 100, example="e.g. 3")
        self.threshold = checks.optional(checks.number, self.threshold, "The label threshold (a probability)",
                                         0.0, 1.0, example="e.g. 0.4")

    @classmethod
    def from_inputs(cls, raw, spell=None):
        spell = spell or (lambda p: p.label)
        labels, preset = raw.get("labels"), raw.get("preset")
        names, choose = cls.param("labels"), cls.param("preset")
        if isinstance(preset, str) and not preset.strip():
            preset = None
        if labels is not None and preset is not None:
            raise InvalidInput(f"Both {spell(names)} and {spell(choose)} were given.", "Use one of them.")
        if preset is not None:
            if preset not in PRESETS:
                raise InvalidInput(f"Unknown preset {preset!r}.", "Choose one of: " + ", ".join(PRESETS) + ".", param="preset")
            labels = list(PRESETS[preset])
        elif labels is None:
            raise InvalidInput("No classes given.", f"Give class names ({spell(names)}, e.g. 'buildings, "
                                  f"trees, water') or a preset ({spell(choose)}: " + ", ".join(PRESETS) + ").", param="labels")
        return super().from_inputs({**raw, "labels": labels}, spell)

    def prompts(self, prepared):
        return label_prompts(self.labels, self.templates)

    def outputs(self, part, text, bundle, fitted):
        from .records import class_columns, class_probs

        probs = class_probs(part.embeddings, text, bundle.logit_scale)
        pnames = slug_fields(self.labels)
        fields_, columns = class_columns(probs, self.labels, self.top_k, self.threshold, pnames)
        return TaskOutput(None, fields_, dict(zip(pnames, self.labels, strict=True)), dense=probs,
                          dense_names=list(self.labels), columns=columns)

    def layer_name(self):
        return "labels"

    def layer_title(self, raster_name):
        """'kampala · labels · land-cover', or the first class names typed: what tells two runs apart."""
        preset = next((name for name, classes in PRESETS.items() if list(classes) == list(self.labels)), None)
        classes = preset or ", ".join(self.labels[:2]) + (", …" if len(self.labels) > 2 else "")
        return f"{raster_name} · labels · {classes}"

    def describe(self, result):
        return _label_summary(result.records)

    widget_names: ClassVar[dict[str, str]] = {
        "preset": "preset_combo", "labels": "labels_edit", "templates": "templates_edit", "top_k": "label_topk",
        "threshold": "label_threshold", "map_labels": "label_map_labels"}
    remembered: ClassVar[dict[str, str]] = {"labels": "\n".join(PRESETS["land-cover"])}


@register
@dataclass
class CountTask(Task):
    object_name: str
    max_count: int = 10
    templates: list[str] | None = None

    kind: ClassVar[str] = "count"
    title: ClassVar[str] = "Count"
    summary: ClassVar[str] = "count an object class per tile (RemoteCount captions)"
    algorithm: ClassVar[str] = "countobjects"
    algorithm_title: ClassVar[str] = "Count objects"
    output_title: ClassVar[str] = "Object counts"
    help: ClassVar[str] = (
        "Estimates per tile how many of an object (e.g. 'car' or 'cars') it shows, from 1 to the largest count, "
        "by matching one caption per count ('There are two cars in the image.', RemoteCLIP's RemoteCount). "
        "Templates replace that caption: use {count}, {object} and {is} (separated by new lines or |). The "
        "output has one polygon per tile with count and count_conf (the probability of that count).")
    params: ClassVar[tuple[Param, ...]] = (
        Param("object_name", "text", "Object to count", key="OBJECT", flag="--object", form_default="car",
              help="the object, singular or plural, e.g. car"),
        Param("max_count", "int", "Largest count", default=10, lo=1, hi=100),
        Param("templates", "templates", "Count captions ({count}, {object}, {is})", optional=True, advanced=True,
              help="count templates with {count}, {object} and {is}; separated by new lines or '|'"),
    )
    style: ClassVar[Style] = Style("counts", "count", '"count"', True)
    default_templates: ClassVar[tuple[str, ...]] = tuple(COUNT_TEMPLATES)
    dissolve_field: ClassVar[str | None] = "count"

    def __post_init__(self):
        self.object_name = check_text(self.object_name if self.object_name is not None else "", "object name")
        if not self.object_name:
            raise InvalidInput("The object to count is empty.", "Give an object name, e.g. --object car.", param="object")
        self.max_count = checks.whole(self.max_count, "max_count", 1, 100, "default 10")
        self.templates = check_templates(self.templates, "count templates")
        if self.templates:
            count_captions(self.object_name, 1, self.templates)   # refuses templates without {count}

    def prompts(self, prepared):
        return count_captions(self.object_name, int(self.max_count), self.templates)

    def outputs(self, part, text, bundle, fitted):
        from .records import count_columns

        fields_, columns = count_columns(part.embeddings, text, bundle.logit_scale)
        # the legend names the object and says that the largest count is a cap
        return TaskOutput(None, fields_, columns=columns,
                          metadata={"object": self.object_name, "max_count": self.max_count})

    def layer_name(self):
        return f"count_{re.sub(r'[^a-z0-9]+', '_', self.object_name.lower()).strip('_')}"

    def layer_title(self, raster_name):
        return f"{raster_name} · count {self.object_name}"

    def describe(self, result):
        return [f"total {self.object_name} count: {sum(r['count'] for r in result.records)}"]

    widget_names: ClassVar[dict[str, str]] = {"object_name": "count_object", "max_count": "count_max"}

    def value_text(self, value) -> str:
        return self.count_text(int(value), self.object_name, self.max_count)

    @staticmethod
    def count_text(value: int, object_name: str | None, max_count: int | None) -> str:
        """'1 building', '3 buildings', and at the largest count the model can tell, '10 or more buildings'."""
        from .prompts import object_nouns

        one, many = object_nouns(object_name)
        if max_count is not None and value >= int(max_count):
            return f"{value} or more {many}"
        return f"{value} {one if value == 1 else many}"


@register
@dataclass
class SearchTask(Task):
    query: str
    top_k: int | None = None
    threshold: float | None = None
    stand_out: float | None = None

    kind: ClassVar[str] = "search"
    title: ClassVar[str] = "Search"
    summary: ClassVar[str] = "similarity of every tile to a text query"
    algorithm: ClassVar[str] = "textsearch"
    algorithm_title: ClassVar[str] = "Text search"
    output_title: ClassVar[str] = "Search results"
    help: ClassVar[str] = (
        "Scores every tile by the cosine similarity of its image embedding to a text query (e.g. 'a swimming "
        "pool'). Every tile is kept with similarity and rank (1 = best); selected is 1 for the top K tiles "
        "whose similarity is at least the threshold (both optional; neither selects all).")
    params: ClassVar[tuple[Param, ...]] = (
        Param("query", "text", "Query", help="e.g. 'a swimming pool'"),
        Param("top_k", "int", "Select the best K tiles", optional=True, lo=1, none_text="all", form_default=20,
              help="select the K best tiles"),
        Param("threshold", "float", "Select tiles with a similarity of at least", optional=True, lo=-1.0, hi=1.0,
              none_text="none", help="select tiles with a cosine similarity at least this"),
        Param("stand_out", "float", "Tiles must stand out by (sd)", optional=True, lo=0.0,
              hi=5.0, none_text="off", form_default=1.0,
              help="select only tiles whose similarity is at least the mean of this raster's tiles plus this many "
                   "standard deviations; the similarity this makes is reported"),
    )
    style: ClassVar[Style] = Style("graduated", "similarity", 'if("selected" = 1, "rank", \'\')', False,
                                   "Show ranks on the map", highlight='"selected" = 1')
    dissolve_field: ClassVar[str | None] = "selected"
    dense: ClassVar[bool] = True
    whole_job: ClassVar[bool] = True           # ranks and the top K over the whole collection

    def __post_init__(self):
        self.query = check_text(self.query if self.query is not None else "", "search query")
        if not self.query:
            raise InvalidInput("The search query is empty.", "Give a query, e.g. --query 'a swimming pool'.", param="query")
        self.top_k = checks.optional(checks.whole, self.top_k, "top_k", 1, example="e.g. 20")
        self.threshold = checks.optional(checks.number, self.threshold, "The similarity threshold (a cosine)",
                                         -1.0, 1.0, example="e.g. 0.25")
        self.stand_out = checks.optional(checks.number, self.stand_out, "stand_out (standard deviations)", 0.0, 5.0,
                                         example="e.g. 1")

    def prompts(self, prepared):
        return [[self.query.strip()]]

    def outputs(self, part, text, bundle, fitted):
        from .records import similarity_columns

        sim = part.embeddings @ text[0]
        # the legend and the summary say which similarity the selection took (the stand-out rule's is computed)
        cut = effective_threshold(sim, self.threshold, self.stand_out)
        fields_, columns = similarity_columns(sim, self.top_k, cut)
        return TaskOutput(None, fields_, dense=columns["similarity"][:, None], dense_names=["similarity"],
                          columns=columns, metadata={"query": self.query, "top_k": self.top_k, "threshold": cut,
                                                     "stand_out": self.stand_out})

    def layer_name(self):
        return "search"

    def layer_title(self, raster_name):
        return f"{raster_name} · search “{self.query}”"

    def describe(self, result):
        recs = result.records
        if not recs:
            return []
        best = sorted(recs, key=lambda r: r["rank"])[:3]
        return ["best tiles (row,col similarity): " + ", ".join(
            f"({r['row']},{r['col']} {r['similarity']:.3f})" for r in best)
            + f"; selected {sum(r['selected'] for r in recs)}" + self._cut_text([r["similarity"] for r in recs])]

    def _cut_text(self, sims) -> str:
        """The similarity the selection took, and whether the stand-out rule made it (as the legend says)."""
        import numpy as np

        sims = np.asarray(sims, dtype=np.float64)
        cut = effective_threshold(sims, self.threshold, self.stand_out)
        if cut is None:
            return ""
        rule = stand_out_threshold(sims, self.stand_out)
        why = f": mean + {self.stand_out:g} sd" if rule is not None and rule >= cut else ""
        return f" (similarity >= {cut:.3f}{why})"

    widget_names: ClassVar[dict[str, str]] = {"query": "search_query", "top_k": "search_topk",
                                              "threshold": "search_threshold", "map_labels": "search_map_labels"}

    def value_text(self, value) -> str:
        return "selected" if value else "not selected"


@register
@dataclass
class EmbedTask(Task):
    kind: ClassVar[str] = "embed"
    title: ClassVar[str] = "Embed"
    summary: ClassVar[str] = "compute and cache the tile embeddings"
    algorithm: ClassVar[str] = "computeembeddings"
    algorithm_title: ClassVar[str] = "Compute embeddings"
    group: ClassVar[str] = "Embeddings"
    can_skip_cache: ClassVar[bool] = False   # the cache is its point
    help: ClassVar[str] = (
        "Runs the image encoder over every tile and stores the embeddings in the cache, so that labelling, "
        "counting, searching and classifying the same raster with the same tiles and model read no pixels "
        "and run only the text encoder. The output holds the tile polygons (row, col).")

    def layer_name(self):
        return "tiles"


# ------------------------------------------------------------------------------------------ classify

@register
@dataclass
class ClassifyTask(Task):
    """Few-shot classification from the analyst's samples (core.classify has the classifier's rules)."""
    samples: Any = None                   # core.samples.Samples
    head: str | None = None               # a saved classifier to apply instead of training one
    head_out: str | None = None           # where to save the trained classifier
    suggest: int = 0                      # mark the N most uncertain tiles to label next
    method: str = "logistic"              # "logistic" or "knn"
    k: int = 5                            # neighbours of the k-NN vote
    templates: list[str] | None = None    # of the class names' zero-shot head
    folds: int = 5
    seed: int = 0

    kind: ClassVar[str] = "classify"
    title: ClassVar[str] = "Classify"
    summary: ClassVar[str] = "classify tiles into the analyst's classes, learnt from sample points or polygons"
    algorithm: ClassVar[str] = "classifyfromsamples"
    algorithm_title: ClassVar[str] = "Classify from samples"
    group: ClassVar[str] = "Few-shot analysis"
    output_title: ClassVar[str] = "Classified tiles"
    help: ClassVar[str] = (
        "Learns the analyst's own classes from a few samples (points or polygons, any CRS, with a class field) "
        "and classifies every tile. A tile takes a sample's class when it shares area with the sample polygon "
        "or contains the point; tiles claimed by two classes are left out. The classifier is a class-balanced "
        "logistic regression (or a k-NN vote) on the tile embeddings, mixed with the zero-shot head of the "
        "class names; the mix is chosen by cross-validation over the samples, and the cross-validated "
        "accuracy, per-class precision and recall and the confusion matrix are reported (and saved as "
        "NAME.remoteclip-report.json beside the output). The output has label, score, per-class "
        "probabilities, uncertainty (1 - the margin between the two best classes) and is_sample; asked for "
        "suggestions, suggest ranks the most uncertain tiles to label next (1 = first). The trained classifier "
        "can be saved and applied to other rasters with the same model.")
    params: ClassVar[tuple[Param, ...]] = (
        Param("samples", "samples", "Samples (points or polygons)", optional=True,
              help="vector file of sample points or polygons (any CRS)"),
        Param("class_field", "field", "Class field", optional=True, parent="samples",
              help="the samples' attribute that holds their class"),
        Param("head", "file", "Apply a saved classifier instead", optional=True, file_filter="Classifier (*.json)",
              help="a classifier saved with --head-out, applied instead of training on samples"),
        Param("head_out", "file_out", "Save the classifier to", optional=True, key="HEAD_OUTPUT",
              file_filter="Classifier (*.json)", help="save the trained classifier (JSON) for other rasters"),
        Param("suggest", "int", "Tiles to suggest for labelling next", default=0, lo=0, hi=10_000,
              help="mark the N most uncertain tiles as the ones to label next"),
        Param("method", "choice", "Classifier", default="logistic", choices=("logistic", "knn"), advanced=True,
              help="logistic regression (default) or a k-nearest-neighbour vote"),
        Param("k", "int", "Neighbours of the k-NN vote", default=5, lo=1, hi=100, advanced=True),
        Param("templates", "templates", "Prompt templates of the class names ({} = class)", optional=True,
              advanced=True, help=TEMPLATES_HELP),
    )
    style: ClassVar[Style] = Style("categories", "label", '"label"', False, "Show labels on the map",
                                   highlight='"is_sample" = 1', dense_range=(0.0, 1.0))
    dissolve_field: ClassVar[str | None] = "label"
    dense: ClassVar[bool] = True
    reports: ClassVar[bool] = True

    def __post_init__(self):
        from .classify import METHODS
        from .samples import Samples

        if self.samples is not None and not isinstance(self.samples, Samples):
            raise InvalidInput(f"The samples are a {type(self.samples).__name__}, not core.samples.Samples.",
                                  "Read them with core.samples.read_samples(path, class_field).", param="samples")
        for name in ("head", "head_out"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str | os.PathLike):
                raise InvalidInput(f"The classifier file {value!r} is not a path.", "Give a .json path.", param="head")
            if value is not None:
                setattr(self, name, checks.path_text(value, "classifier file"))
        if self.samples is None and self.head is None:
            raise InvalidInput("No samples and no saved classifier were given.",
                                  "Give sample points or polygons with their class field (--samples FILE "
                                  "--class-field NAME), or a saved classifier (--head FILE).")
        if self.samples is not None and self.head is not None:
            raise InvalidInput("Both samples and a saved classifier were given.",
                                  "Give samples to train a classifier, or a saved one to apply, not both.")
        if self.head is not None and self.head_out is not None:
            raise InvalidInput("A saved classifier (--head) is applied, so there is nothing new to save "
                                  "(--head-out).", "Leave out --head-out, or train with --samples.", param="head_out")
        self.suggest = checks.whole(self.suggest or 0, "suggest", 0, 10_000, "the number of tiles, e.g. 20")
        self.method = checks.choice(self.method or "logistic", "classifier", METHODS)
        self.k = checks.whole(self.k, "k", 1, 100, "e.g. 5")
        self.folds = checks.whole(self.folds, "folds", 2, 20, "e.g. 5")
        self.seed = checks.whole(self.seed, "seed", 0)
        self.templates = check_templates(self.templates)
        if self.samples is not None:
            self.samples.class_names()   # at least two classes, named as labels must be

    @classmethod
    def from_inputs(cls, raw, spell=None):
        spell = spell or (lambda p: p.label)
        samples, class_field = raw.get("samples"), raw.get("class_field")
        if isinstance(samples, str | os.PathLike) and str(samples).strip():
            if not class_field:
                raise InvalidInput(f"No class field was given for the samples ({spell(cls.param('class_field'))}).",
                                      "Name the attribute that holds each sample's class.", param="class_field")
            from .samples import read_samples

            samples = read_samples(samples, class_field)
        elif isinstance(samples, str):
            samples = None
        return super().from_inputs({**raw, "samples": samples}, spell)

    # -------------------------------------------------------------------------------------- run

    def prepare(self, bundle, warnings):
        if self.head is None:
            return {"classes": self.samples.class_names()}
        from .classify import Head

        head = Head.read(self.head)
        head.check_model(bundle, self.head)
        return {"classes": head.classes, "head": head}

    def prompts(self, prepared):
        if "head" in prepared:
            return None    # the saved classifier carries its class names' text embeddings
        return label_prompts(prepared["classes"], self.templates)

    def fit(self, parts, text, bundle, prepared, warnings):
        import numpy as np

        from .classify import FEW_SAMPLES, train
        from .samples import match_tiles

        if "head" in prepared:
            head = prepared["head"]
            report = {**(head.report or {}), "format": "remoteclip-classify-report", "classes": head.classes,
                      "method": head.method, "alpha": head.alpha, "applied": self.head, "model": head.model}
            return {"head": head, "sample_tiles": {}, "report": report}
        classes = prepared["classes"]
        xs, ys, gs = [], [], []
        kept: dict[str, np.ndarray] = {}
        conflicts = 0
        tiles_per_class = dict.fromkeys(classes, 0)
        samples_per_class = dict.fromkeys(classes, 0)
        outside = 0
        offset = 0
        for part in parts:
            m = match_tiles(self.samples, part.tiles, part.crs_wkt, classes)
            xs.append(part.embeddings[m.index])
            ys.append(m.y)
            gs.append(m.group + offset)   # groups of another raster are other samples' tiles
            offset += len(self.samples.wkts)
            kept[part.name] = m.index
            conflicts += m.conflicts
            outside += m.outside
            for c in classes:
                tiles_per_class[c] += m.tiles_per_class[c]
                samples_per_class[c] = max(samples_per_class[c], m.samples_per_class[c])
        if conflicts:
            warnings.append(f"{conflicts} tile{'s were' if conflicts > 1 else ' was'} claimed by samples of two "
                            "classes and left out of the training.")
        if outside:
            warnings.append(f"{outside} sample{'s' if outside > 1 else ''} touched no tile (outside the raster or "
                            "the extent) and taught nothing.")
        empty = [c for c in classes if tiles_per_class[c] == 0]
        if empty:
            raise InvalidInput(f"The class{'es' if len(empty) > 1 else ''} {', '.join(map(repr, empty))} "
                                  f"{'have' if len(empty) > 1 else 'has'} no sample tile (its samples are outside "
                                  "the raster or the extent, or every tile they claim is also claimed by another "
                                  "class).", "Draw at least one sample of every class over the raster.")
        few = [f"{c} ({tiles_per_class[c]})" for c in classes if tiles_per_class[c] < FEW_SAMPLES]
        if few:
            warnings.append(f"Few sample tiles for {', '.join(few)}: {FEW_SAMPLES} or more per class give a "
                            "steadier classifier and a truer accuracy.")
        x = np.concatenate(xs)
        y = np.concatenate(ys)
        model = {"name": bundle.name, "sha256": bundle.sha256, "embed_dim": bundle.embed_dim}
        head, report, notes = train(x, y, np.concatenate(gs), classes, text, bundle.logit_scale, self.method,
                                    self.k, self.folds, self.seed, model=model, templates=self.templates)
        warnings.extend(notes)
        report["samples"] = {"tiles": tiles_per_class, "samples": samples_per_class, "conflicts": conflicts,
                             "outside": outside}
        report["model"] = model
        return {"head": head, "sample_tiles": kept, "report": report}

    def outputs(self, part, text, bundle, fitted):
        import numpy as np

        from .classify import suggest, uncertainty
        from .records import class_columns

        head = fitted["head"]
        probs = head.proba(part.embeddings)
        pnames = slug_fields(head.classes)
        fields_, columns = class_columns(probs, head.classes, 3, None, pnames)
        fmap = dict(zip(pnames, head.classes, strict=True))
        unc = np.asarray(uncertainty(probs))
        samples = {int(i) for i in fitted["sample_tiles"].get(part.name, ())}
        picks = suggest(unc, self.suggest, samples, [t.window for t in part.tiles]) if self.suggest else []
        columns["uncertainty"] = unc
        is_sample = np.zeros(len(unc), dtype=np.int64)
        is_sample[sorted(samples)] = 1
        columns["is_sample"] = is_sample
        if self.suggest:
            order = np.zeros(len(unc), dtype=np.int64)
            order[list(picks)] = np.arange(1, len(picks) + 1)
            columns["suggest"] = order
        fields_ += [("uncertainty", "float"), ("is_sample", "int")] + ([("suggest", "int")] if self.suggest else [])
        report = dict(fitted["report"] or {})
        if picks:
            report["suggested"] = [{"rank": n + 1, "row": int(part.tiles[i].row), "col": int(part.tiles[i].col),
                                    "uncertainty": round(float(unc[i]), 4)} for n, i in enumerate(picks)]
        cv = (report.get("cv") or {}) if report else {}
        meta = {"classify": {"alpha": report.get("alpha"), "method": report.get("method"),
                             "accuracy": cv.get("accuracy"), "balanced_accuracy": cv.get("balanced_accuracy")}}
        return TaskOutput(None, fields_, fmap, dense=np.asarray(probs, dtype=np.float32),
                          dense_names=list(head.classes), metadata=meta, report=report or None,
                          head=head if self.head is None else None, columns=columns)

    def layer_name(self):
        return "classes"

    def files_out(self):
        return [(self.head_out, "classifier")] if self.head_out else []

    def files_in(self):
        out = [(self.head, "saved classifier")] if self.head else []
        origin = getattr(self.samples, "origin", "")
        return out + ([(origin, "samples")] if origin else [])

    def describe(self, result):
        lines = _label_summary(result.records)
        lines += report_lines(result.report)
        if self.suggest:
            picks = sorted((r for r in result.records if r.get("suggest")), key=lambda r: r["suggest"])
            if picks:
                lines.append("label these next (row,col uncertainty): " + ", ".join(
                    f"({r['row']},{r['col']} {r['uncertainty']:.2f})" for r in picks[:10])
                    + (f" and {len(picks) - 10} more" if len(picks) > 10 else ""))
        return lines


def report_lines(report: dict | None) -> list[str]:
    """A classify report as text: the cross-validated accuracy, the mix, per-class precision and recall, and
    the confusion matrix (rows: true class, columns: predicted)."""
    if not report:
        return []
    lines = [f"applied the saved classifier {report['applied']}; its figures are from its training:"] \
        if report.get("applied") else []
    return lines + _report_lines(report)


def _report_lines(report: dict) -> list[str]:
    cv = report.get("cv")
    alpha = report.get("alpha")
    mix = "class names alone" if not alpha else "samples alone" if alpha == 1 else \
        f"{alpha:.0%} samples + {1 - alpha:.0%} class names"
    if not cv:
        return [f"cross-validation: not possible (a class has a single sample tile); classifier: {mix}"]
    by = "by sample" if cv.get("grouped_by") == "sample" else "by tile (optimistic)"
    lines = [f"cross-validated accuracy {cv['accuracy']:.1%}, balanced {cv['balanced_accuracy']:.1%} "
             f"({cv['folds']} folds {by}); class names alone {cv['zero_shot']:.1%} balanced; classifier: {mix}"]
    classes = list(report.get("classes") or cv["per_class"])
    width = max(len(c) for c in classes)
    lines.append(f"  {'class'.ljust(width)}  precision  recall  samples")
    for c in classes:
        pc = cv["per_class"][c]
        p = "-" if pc["precision"] is None else f"{pc['precision']:.0%}"
        r = "-" if pc["recall"] is None else f"{pc['recall']:.0%}"
        lines.append(f"  {c.ljust(width)}  {p:>9}  {r:>6}  {pc['support']:>7}")
    lines.append("  confusion (rows: true, columns: predicted, in the order above):")
    for c, row in zip(classes, cv["confusion"], strict=True):
        lines.append(f"  {c.ljust(width)}  " + " ".join(f"{v:>5}" for v in row))
    return lines
