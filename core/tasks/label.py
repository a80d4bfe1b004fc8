"""Label: zero-shot labels per tile (the class names' prompts, softmax over the classes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .. import checks
from ..errors import InvalidInput
from ..prompts import PRESETS, check_labels, check_templates, label_prompts
from .base import (
    NAMES_HELP,
    TEMPLATES_HELP,
    Param,
    Style,
    Task,
    TaskOutput,
    _label_summary,
    register,
    slug_fields,
)


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
        self.top_k = checks.whole(self.top_k, "top_k", 1, 100, example="e.g. 3", param="top_k")
        self.threshold = checks.optional(checks.number, self.threshold, "The label threshold (a probability)",
                                         0.0, 1.0, example="e.g. 0.4", param="threshold")

    @classmethod
    def from_inputs(cls, raw, spell=None):
        spell = spell or (lambda p: p.label)
        labels, preset = raw.get("labels"), raw.get("preset")
        names, choose = cls.param("labels"), cls.param("preset")
        if isinstance(preset, str) and not preset.strip():
            preset = None
        if labels is not None and preset is not None:
            raise InvalidInput(f"Both {spell(names)} and {spell(choose)} were given.", "Use one of them.",
                               param="preset")
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
        from ..records import class_columns, class_probs

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
