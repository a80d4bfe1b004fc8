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

One module per task (``label``, ``count``, ``search``, ``embed``, ``classify``) and ``base`` (:class:`Param`,
:class:`Style`, :class:`RasterPart`, :class:`TaskOutput`, :class:`Task`, the registry); the names are
re-exported here.
"""

from ..scores import UNKNOWN, class_scores, softmax  # noqa: F401 (re-exported: one definition of each)
from .base import (  # noqa: F401 (re-exported)
    NAMES_HELP,
    PARAM_KINDS,
    TASKS,
    TEMPLATES_HELP,
    Param,
    RasterPart,
    Style,
    Task,
    TaskOutput,
    register,
    slug_fields,
    task_class,
    tile_size_text,
)

# the registry's order is the order of these imports (front-ends show the tasks in it)
# isort: off
from .label import LabelTask
from .count import CountTask
from .search import SearchTask, effective_threshold, stand_out_threshold  # noqa: F401 (re-exported)
from .embed import EmbedTask
from .classify import ClassifyTask, report_lines  # noqa: F401 (re-exported)
from .change import ChangeTask  # noqa: F401 (two dates; its helpers serve core.pipeline.dates too)
# isort: on

__all__ = ["Param", "Style", "TaskOutput", "RasterPart", "Task", "LabelTask", "CountTask", "SearchTask",
           "EmbedTask", "ClassifyTask", "TASKS", "task_class", "register", "UNKNOWN", "softmax", "slug_fields",
           "class_scores"]
